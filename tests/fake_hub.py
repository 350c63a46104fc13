"""A loopback server in the Hugging Face Hub's URL layout, serving a tiny random GPT-2 that
transformers makes (for ``--model NAME`` tests, offline: ``HF_ENDPOINT`` points at it)."""

from __future__ import annotations

import hashlib
import shutil
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import torch
from loopback import LoopbackServer

REPO = "someone/tiny-gpt2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(LoopbackServer):
    """``/{owner}/{name}/resolve/{revision}/{file}`` for the repositories given (repo id -> folder)."""

    def __init__(self, repos: dict[str, Path]):
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: bool):
                outer.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].strip("/").split("/")
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if len(parts) < 5 or parts[2] != "resolve" or repo not in repos:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.end_headers()
                    return
                path = repos[repo] / filename
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        super().__init__(Handler)


def tiny_gpt2_hub(tmp_path: Path, gpt2_files: tuple[Path, Path]) -> FakeHub:
    """A running ``FakeHub`` with ``REPO``: a random GPT-2 (``.reference``, transformers' model) and
    GPT-2's vocabulary files; ``close`` it after."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    reference = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path / "repo"
    reference.save_pretrained(folder, safe_serialization=True)
    shutil.copy(gpt2_files[0], folder / "vocab.json")  # GPT-2's encoder.json is the Hub's vocab.json
    shutil.copy(gpt2_files[1], folder / "merges.txt")
    server = FakeHub({REPO: folder})
    server.reference = reference
    return server
