"""A loopback server in the Hugging Face Hub's URL layout, serving a tiny random GPT-2 that
transformers makes (for ``--model NAME`` tests, offline: ``HF_ENDPOINT`` points at it)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
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


def hub_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """The environment of a scratchllm process that downloads from ``hub`` into an empty cache."""
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub-cache")}


def run_against_hub(tmp_path: Path, gpt2_files: tuple[Path, Path], command: list[str],
                    stdin: str | None = None) -> tuple[subprocess.CompletedProcess, torch.nn.Module]:
    """Run ``python -m scratchllm COMMAND`` against a ``tiny_gpt2_hub`` (closed after); return the
    finished process and the Hub's model (transformers', the oracle)."""
    hub = tiny_gpt2_hub(tmp_path, gpt2_files)
    try:
        done = subprocess.run([sys.executable, "-m", "scratchllm", *command], input=stdin, env=hub_env(hub, tmp_path),
                              capture_output=True, text=True, timeout=300)
    finally:
        hub.close()
    return done, hub.reference


def reference_greedy(reference: torch.nn.Module, ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy continuation of ``ids`` (GPT-2's end of text, 50256, stops it and is kept)."""
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=50256, pad_token_id=50256)
    return out[0, len(ids):].tolist()
