"""`scratchllm finetune instruct` end to end with a judge on a loopback OpenAI-compatible server,
`scratchllm chat` against the engine's greedy answers, and `finetune dpo` from the tuned run."""

from __future__ import annotations

import io
import json
import sys
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from fake_hub import REPO, run_against_hub
from loopback import LoopbackServer
from test_instruct import task_records, tiny_model

from scratchllm.checkpoint import load_checkpoint, read_task, save_checkpoint
from scratchllm.cli import main
from scratchllm.finetune.classify import prepare_classifier
from scratchllm.finetune.instruct import respond
from scratchllm.finetune.templates import END_OF_TURN, Conversation, Exchange, get_template, instruct_task
from scratchllm.interop import load_hf_gpt2
from scratchllm.tokenizer import BPETokenizer

ch07 = pytest.importorskip("llms_from_scratch.ch07")


class Judge(LoopbackServer):
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that records each prompt and replies from a list."""

    def __init__(self, replies):
        self.prompts, self.bodies, outer = [], [], self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                outer.bodies.append(body)
                outer.prompts.append(body["messages"][0]["content"])
                reply = replies[(len(outer.prompts) - 1) % len(replies)]
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler, path="/v1")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    alpaca = get_template("alpaca")
    text = " ".join(alpaca.render(r) for r in task_records(40, seed=5)).replace(END_OF_TURN, " ")
    tokenizer = BPETokenizer.train(text, vocab_size=360, progress=False)
    return save_checkpoint(tmp_path_factory.mktemp("lm") / "lm", tiny_model(tokenizer), tokenizer)


def test_finetune_instruct_then_judge_with_the_books_prompt(pretrained, tmp_path, capsys):
    data = tmp_path / "tasks.json"
    data.write_text(json.dumps(task_records(60, seed=1)), encoding="utf-8")
    judge = Judge(["great!", "50", " 70\n"])
    try:
        code = main(["finetune", "instruct", "--checkpoint", str(pretrained), "--data", str(data), "--out",
                     str(tmp_path / "run"), "--epochs", "1", "--lr", "1e-3", "--max-new-tokens", "4", "--quiet",
                     "--judge-url", judge.url, "--judge-model", "llama3"])
    finally:
        judge.close()
    out = capsys.readouterr().out
    assert code == 0
    assert "60 records; train 51, validation 3, test 6" in out
    answers = json.loads((tmp_path / "run" / "responses.json").read_text())
    # the book's generate_model_scores prompt, built with its own format_input
    assert judge.prompts == [
        f"Given the input `{ch07.format_input(a)}` and correct output `{a['output']}`, score the model response "
        f"`{a['model_response']}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer "
        "number only." for a in answers]
    assert all(b["model"] == "llama3" and b["temperature"] == 0 and b["seed"] == 123 for b in judge.bodies)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["judge"]["scores"] == [None, 50, 70, None, 50, 70]
    assert results["judge"]["mean"] == 60 and results["judge"]["unparsed"] == ["great!", "great!"]
    assert "judge llama3: mean score 60.00 / 100 over 4 of 6 answers (2 replies were not a number" in out
    assert f"val: loss {results['before']['val_loss']:.4f} -> {results['after']['val_loss']:.4f}" in out
    assert read_task(tmp_path / "run") == {"kind": "instruct", "template": "alpaca", "method": "sft"}


def test_an_unreachable_judge_is_one_line(pretrained, tmp_path, capsys):
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in task_records(20)), encoding="utf-8")
    assert main(["finetune", "instruct", "--checkpoint", str(pretrained), "--data", str(data), "--out",
                 str(tmp_path / "run"), "--judge-url", "http://127.0.0.1:9/v1"]) == 2
    assert capsys.readouterr().err == "scratchllm: error: --judge-url and --judge-model go together: give both, or " \
        "neither\n"
    assert main(["finetune", "instruct", "--checkpoint", str(pretrained), "--data", str(data), "--out",
                 str(tmp_path / "run"), "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--epochs", "1",
                 "--max-new-tokens", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchllm: error: cannot reach the judge at http://127.0.0.1:9/v1") and err.count("\n") == 1


def _chat(monkeypatch, capsys, checkpoint, lines, *extra):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    code = main(["chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "6", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_chat_answers_as_the_engine_does_with_the_stored_template_and_history(pretrained, tmp_path, monkeypatch,
                                                                             capsys):
    model, tokenizer = load_checkpoint(pretrained)
    save_checkpoint(tmp_path / "chat", model, tokenizer, task=instruct_task("chat"))
    code, out, err = _chat(monkeypatch, capsys, tmp_path / "chat", ["Repeat the word.", "Again.", "/reset", "Again."])
    assert code == 0 and err == ""
    chat = get_template("chat")
    first = respond(model, tokenizer, chat, [Conversation((Exchange("Repeat the word."),))], max_new_tokens=6)[0]
    second = respond(model, tokenizer, chat, [Conversation((Exchange("Repeat the word.", "", first),
                                                            Exchange("Again.")))], max_new_tokens=6)[0]
    alone = respond(model, tokenizer, chat, [Conversation((Exchange("Again."),))], max_new_tokens=6)[0]
    # an untrained model's answers may hold newlines: compare the printed text without its whitespace
    assert out.count("\n") >= 3 and "".join(out.split()) == "".join((first + second + alone).split())


def test_chat_with_a_plain_model_says_which_template_and_refuses_a_classifier(pretrained, tmp_path, monkeypatch,
                                                                             capsys):
    code, out, err = _chat(monkeypatch, capsys, pretrained, ["hi"])
    assert code == 0 and out.endswith("\n")
    assert "was not instruction-tuned here; writing prompts in the alpaca template" in err
    model, tokenizer = load_checkpoint(pretrained)
    prepare_classifier(model, 2)
    save_checkpoint(tmp_path / "clf", model, tokenizer, task={"kind": "classify", "labels": ["a", "b"]})
    code, out, err = _chat(monkeypatch, capsys, tmp_path / "clf", ["hi"])
    assert code == 2 and out == ""
    assert err == (f"scratchllm: error: {tmp_path / 'clf'} is a classifier (labels a, b), not a model that writes "
                   "text: label texts with `scratchllm classify`\n")


def test_finetune_dpo_from_the_instruction_tuned_run(pretrained, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    recs = [{**r, "chosen": r["output"], "rejected": "stone"} for r in task_records(40, seed=3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    model, tokenizer = load_checkpoint(pretrained)
    save_checkpoint(tmp_path / "sft", model, tokenizer, task=instruct_task("chat"))
    assert main(["finetune", "dpo", "--checkpoint", str(tmp_path / "sft"), "--data", str(data), "--out",
                 str(tmp_path / "dpo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "40 pairs; train 34, validation 2, test 4; template chat, beta 0.1" in out
    assert "val: loss 0.6931 -> " in out
    assert read_task(tmp_path / "dpo") == {"kind": "instruct", "template": "chat", "method": "dpo"}


def test_chat_talks_to_pretrained_weights_by_name_as_the_engine_answers(tmp_path, gpt2_files):
    pytest.importorskip("transformers")
    command = ["chat", "--model", REPO, "--template", "chat", "--max-new-tokens", "5", "--temperature", "0"]
    done, _ = run_against_hub(tmp_path, gpt2_files, command, stdin="Hi\n")
    assert done.returncode == 0, done.stderr
    model, tokenizer = load_hf_gpt2(tmp_path / "repo"), BPETokenizer.from_gpt2_files(*gpt2_files)
    answer = respond(model, tokenizer, get_template("chat"), [Conversation((Exchange("Hi"),))], max_new_tokens=5)[0]
    assert "".join(done.stdout.split()) == "".join(answer.split()) and answer.strip()
