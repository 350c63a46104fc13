"""``scratchllm serve``: a real process on a free port answers the OpenAI client (a checkpoint, or pretrained
weights by name from a loopback Hub); a busy port is one line."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from fake_hub import REPO, hub_env, reference_greedy, tiny_gpt2_hub
from serve_helpers import alone, text_of

from scratchllm.checkpoint import save_checkpoint
from scratchllm.cli import main
from scratchllm.finetune.templates import get_template, instruct_task
from scratchllm.tokenizer import BPETokenizer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(proc, port):
    """The server's URL once /health answers."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return url
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)


def test_the_command_serves_a_checkpoint_under_its_folder_name_with_its_chat_template(tmp_path, model, tokenizer):
    ckpt = save_checkpoint(tmp_path / "verdict-lm", model, tokenizer, task=instruct_task("chat"))
    port = free_port()
    env = {**os.environ, "SCRATCHLLM_API_KEY": "k1"}
    command = ["serve", "--checkpoint", str(ckpt), "--port", str(port), "--max-batch", "2", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *command], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = wait_for(proc, port)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        out = client.completions.create(model="verdict-lm", prompt="He laughed", max_tokens=10, temperature=0)
        assert out.choices[0].text == text_of(tokenizer, alone(model, tokenizer, "He laughed", 10, 0))
        assert httpx.get(url + "/v1/models").status_code == 401  # the key came from $SCRATCHLLM_API_KEY
        messages = [{"role": "user", "content": "Who painted it?"}]
        chat = client.chat.completions.create(model="verdict-lm", messages=messages, max_tokens=8, temperature=0)
        template = get_template("chat")
        new = alone(model, tokenizer, template.prompt_ids(tokenizer, messages), 8, 0)
        assert chat.choices[0].message.content == text_of(tokenizer, new)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert f"serving 'verdict-lm' at http://127.0.0.1:{port} (chat page at /, API at /v1; chat template 'chat')" in err
    assert proc.returncode == 0


def test_the_command_serves_pretrained_weights_by_name_with_transformers_greedy_text(tmp_path, gpt2_files):
    pytest.importorskip("transformers")
    hub = tiny_gpt2_hub(tmp_path, gpt2_files)
    port = free_port()
    env = hub_env(hub, tmp_path)
    command = ["serve", "--model", REPO, "--port", str(port), "--max-batch", "2", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *command], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = wait_for(proc, port)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [REPO]
        out = client.completions.create(model=REPO, prompt="Hello, world!", max_tokens=8, temperature=0)
        tokenizer = BPETokenizer.from_gpt2_files(*gpt2_files)
        new = reference_greedy(hub.reference, tokenizer.encode("Hello, world!"), 8)  # transformers' own: the oracle
        assert out.choices[0].text == tokenizer.decode([t for t in new if t != 50256])
        assert out.usage.completion_tokens == len(new)
        with pytest.raises(openai.BadRequestError, match="chat template"):  # GPT-2 weights are a base model
            client.chat.completions.create(model=REPO, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        hub.close()
    assert f"serving '{REPO}' at http://127.0.0.1:{port}" in err and "no chat template" in err
    assert proc.returncode == 0


def test_a_busy_port_is_one_line(tmp_path, model, tokenizer, capsys):
    ckpt = save_checkpoint(tmp_path / "lm", model, tokenizer)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["serve", "--checkpoint", str(ckpt), "--port", str(busy.getsockname()[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("scratchllm: error: cannot listen on 127.0.0.1:")
    assert "choose another --port" in err[-1]
