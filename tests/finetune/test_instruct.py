"""Instruction tuning: collation against the book's custom_collate_fn, prompt masking, a small task
learnt through the trainer (held-out response loss falls, answers written), exact resume, the
records' errors and the book's file fetched by its pinned checksum."""

from __future__ import annotations

import copy
import hashlib
import json
import random

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.finetune import records as records_module
from scratchllm.finetune.instruct import (
    InstructSettings,
    collate_instructions,
    encode_records,
    fine_tune,
    respond,
)
from scratchllm.finetune.records import book_split, load_records, read_records
from scratchllm.finetune.templates import END_OF_TURN, get_template
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import PADDING, BPETokenizer
from scratchllm.train.losses import IGNORE_INDEX

ch07 = pytest.importorskip("llms_from_scratch.ch07")

WORDS = "apple river stone cloud bread lamp".split()


def task_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """'Repeat the word.' with a word as input: the answer is the word (or it twice for 'Say it twice.')."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word = rng.choice(WORDS)
        twice = rng.random() < 0.5
        out.append({"instruction": "Say it twice." if twice else "Repeat the word.", "input": word,
                    "output": f"{word} {word}" if twice else word})
    return out


def located(recs):
    return [(f"test record {i + 1}", r) for i, r in enumerate(recs)]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: see tests/finetune/test_classify.py
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    alpaca = get_template("alpaca")
    return BPETokenizer.train(" ".join(alpaca.render(r) for r in task_records(40, seed=5)).replace(END_OF_TURN, " "),
                              vocab_size=360, progress=False)


def tiny_model(tokenizer, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=48, n_heads=2, n_layers=2,
                         dropout=0.0))


@pytest.mark.parametrize("allowed", [None, 5, 30])
def test_collation_is_the_books_when_the_padding_is_its_end_of_text(allowed):
    rng = random.Random(allowed)
    for _ in range(20):
        items = [[rng.randrange(50000) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 5))]
        book_x, book_y = ch07.custom_collate_fn(items, pad_token_id=50256, allowed_max_length=allowed)
        x, y = collate_instructions([item + [50256] for item in items], pad_id=50256, max_len=allowed)
        assert torch.equal(x, book_x) and torch.equal(y, book_y)


def test_with_its_own_padding_token_only_the_padding_changes():
    items = [[11, 12, 13], [14]]
    x, y = collate_instructions([item + [0] for item in items], pad_id=9)  # 0: end-of-text, 9: <|padding|>
    book_x, book_y = ch07.custom_collate_fn(items, pad_token_id=0)
    assert torch.equal(y, book_y)  # the same scored targets
    assert x.tolist() == [[11, 12, 13], [14, 0, 9]] and book_x.tolist() == [[11, 12, 13], [14, 0, 0]]


def test_prompt_masking_scores_exactly_each_response_and_its_end(tokenizer):
    examples = encode_records(located(task_records(6)), tokenizer, get_template("alpaca"))
    pad = tokenizer.special_tokens[PADDING]
    _, y = collate_instructions([e.ids for e in examples], pad, responses=[e.response for e in examples])
    _, unmasked = collate_instructions([e.ids for e in examples], pad)
    for row, e in enumerate(examples):
        scored = [int(t) for t in y[row] if t != IGNORE_INDEX]
        assert tokenizer.decode(scored) == e.record["output"] + END_OF_TURN
        assert int((unmasked[row] != IGNORE_INDEX).sum()) == len(e.ids) - 1  # every target but the padding


def test_a_small_task_is_learnt_and_the_test_prompts_answered(tokenizer, tmp_path):
    recs = located(task_records(120, seed=1))
    splits = book_split(recs)
    result = fine_tune(tiny_model(tokenizer), tokenizer, splits, tmp_path / "run",
                       InstructSettings(epochs=3, lr=3e-3, max_new_tokens=6, mask_prompt=True), progress=False)
    assert result.examples == {"train": 102, "val": 6, "test": 12}
    for key in ("val_loss", "val_response_loss", "test_loss", "test_response_loss"):
        assert result.after[key] < result.before[key] * 0.6, key
    assert result.before["val_loss"] == result.before["val_response_loss"]  # masked: the loss is the responses'
    assert [r["step"] for r in result.evaluations] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36]
    answers = json.loads((tmp_path / "run" / "responses.json").read_text())
    assert [{k: a[k] for k in ("instruction", "input", "output")} for a in answers] == [r for _, r in splits[2]]
    assert all(isinstance(a["model_response"], str) for a in answers)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["after"] == result.after and results["template"] == "alpaca"


def test_answers_are_the_greedy_continuation_cut_at_the_end_of_text(tokenizer):
    model = tiny_model(tokenizer, seed=3)
    alpaca = get_template("alpaca")
    conversation = encode_records(located(task_records(1)), tokenizer, alpaca)[0].conversation.to_prompt()
    prompt = alpaca.prompt_ids(tokenizer, conversation)
    ids = list(prompt)
    eot = tokenizer.special_tokens[END_OF_TURN]
    with torch.no_grad():  # the book's generate loop, written out
        for _ in range(5):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            if nxt == eot:
                break
            ids.append(nxt)
    expected = alpaca.response(tokenizer.decode(ids[len(prompt):]))
    assert respond(model, tokenizer, alpaca, [conversation, conversation], max_new_tokens=5) == [expected] * 2


def test_resume_continues_exactly(tokenizer, tmp_path):
    splits = book_split(located(task_records(60, seed=2)))
    base = tiny_model(tokenizer)
    settings = dict(lr=1e-3, max_new_tokens=0, eval_every=3)
    whole = fine_tune(copy.deepcopy(base), tokenizer, splits, tmp_path / "whole",
                      InstructSettings(epochs=2, **settings), progress=False)
    fine_tune(copy.deepcopy(base), tokenizer, splits, tmp_path / "split", InstructSettings(epochs=1, **settings),
              progress=False)
    resumed = fine_tune(copy.deepcopy(base), tokenizer, splits, tmp_path / "split",
                        InstructSettings(epochs=2, **settings), resume=True, progress=False)
    assert resumed.before == whole.before
    assert resumed.after == pytest.approx(whole.after, rel=1e-6)


def test_records_longer_than_the_context_are_cut_and_counted(tokenizer, tmp_path, capsys):
    recs = task_records(30, seed=4)
    for r in recs[:3]:
        r["output"] = " ".join(WORDS * 8)
    result = fine_tune(tiny_model(tokenizer), tokenizer, book_split(located(recs)), tmp_path / "run",
                       InstructSettings(epochs=1, max_new_tokens=0))
    assert result.truncated == 3
    assert "3 records are longer than the context of 64 tokens" in capsys.readouterr().out


@pytest.mark.parametrize("name, content, message", [
    ("a.jsonl", '{"instruction": "x", "output": "y"}\n\n[1]\n', "a.jsonl:3: a JSON object was expected, got list"),
    ("a.jsonl", '{"instruction": "x"\n', "a.jsonl:1: not a JSON record"),
    ("a.json", '{"instruction": "x"}', "holds a JSON dict, not an array of records"),
    ("a.json", "[]", "holds no records"),
    ("a.json", "[{", "is unreadable or corrupt"),
])
def test_bad_files_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ScratchLLMError) as err:
        read_records(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_record_is_named(tokenizer, tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x"}]), encoding="utf-8")
    with pytest.raises(ScratchLLMError, match="a.json record 2: the record has no response to learn"):
        encode_records(read_records(path), tokenizer, get_template("alpaca"))
    path.write_text(json.dumps([{"messages": [{"role": "robot", "content": "x"}]}]), encoding="utf-8")
    with pytest.raises(ScratchLLMError, match="a.json record 1: message 1 has role 'robot'"):
        encode_records(read_records(path), tokenizer, get_template("alpaca"))


def test_the_books_file_is_fetched_once_and_checked(server, tmp_path, monkeypatch):
    data = json.dumps(task_records(20)).encode()
    (server.root / "instruction-data.json").write_bytes(data)
    remote = records_module.RemoteFile("instruction-data.json", f"{server.url}/instruction-data.json",
                                       hashlib.sha256(data).hexdigest(), len(data))
    monkeypatch.setitem(records_module.BOOK_FILES, "book-instructions", remote)
    got = load_records("book-instructions", cache_dir=tmp_path / "cache")
    assert [r for _, r in got] == task_records(20)
    assert load_records("book-instructions", cache_dir=tmp_path / "cache") == got and server.requests == 1
    wrong = records_module.RemoteFile(remote.filename, remote.url, "0" * 64, remote.size)
    monkeypatch.setitem(records_module.BOOK_FILES, "book-instructions", wrong)
    with pytest.raises(ScratchLLMError, match="expected 0000"):
        load_records("book-instructions", cache_dir=tmp_path / "other")


def test_lora_trains_only_the_adapters_and_the_run_loads_with_them(tokenizer, tmp_path):
    from scratchllm.checkpoint import load_checkpoint
    from scratchllm.finetune.lora import lora_layers

    model = tiny_model(tokenizer)
    base = copy.deepcopy(model)
    result = fine_tune(model, tokenizer, book_split(located(task_records(40, seed=6))), tmp_path / "run",
                       InstructSettings(train="lora", lora_rank=2, lora_alpha=4, epochs=1, lr=1e-2, max_new_tokens=0),
                       progress=False)
    layers = lora_layers(model)
    assert len(layers) == 2 * 4  # W_qkv, out_proj, fc_in, fc_out of each of the 2 blocks
    assert result.trainable_params == sum(p.numel() for layer in layers.values() for n, p in layer.named_parameters()
                                          if "lora_" in n)
    for name, p in base.named_parameters():  # every base weight as it was (inside its LoRA layer); the adapters moved
        module, _, leaf = name.rpartition(".")
        assert torch.equal(model.get_parameter(f"{module}.base.{leaf}" if module in layers else name), p)
    assert any(layer.lora_B[0].abs().sum() > 0 for layer in layers.values())
    loaded, _ = load_checkpoint(tmp_path / "run")
    assert set(lora_layers(loaded)) == set(layers)
    with torch.no_grad():
        ids = torch.tensor([encode_records(located(task_records(1)), tokenizer, get_template("alpaca"))[0].ids])
        assert torch.allclose(loaded(ids), model(ids))
