"""One definition of loss, perplexity and bits per byte: training's validation, the demo and
``scratchllm eval`` give the same figures, and they equal a plain cross-entropy over the windows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratchllm.checkpoint import load_checkpoint
from scratchllm.cli import main
from scratchllm.data.shards import open_prepared
from scratchllm.train.metrics import read_metrics


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    from train_helpers import TINY

    from scratchllm.train import load_run_config, train

    run = tmp_path_factory.mktemp("eval") / "run"
    config = load_run_config(overrides=[*TINY, f"data.dir={tiny_data}", "train.max_steps=3", "train.eval_batches=0",
                                        "train.sample_tokens=0"], base={"model": {"vocab_size": 258}})
    train(config, run, progress=False)
    return run


def _eval_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_equals_a_plain_cross_entropy_over_the_text_tokens(tiny_run, tiny_data, capsys):
    score = _eval_json(capsys, "--checkpoint", str(tiny_run), "--corpus", str(tiny_data), "--batch-size", "3")
    model, tokenizer = load_checkpoint(tiny_run)
    data = open_prepared(tiny_data)
    T = model.config.context_length
    val = torch.from_numpy(np.asarray(data.val, dtype=np.int64))
    starts = range(0, len(val) - T, T)
    x = torch.stack([val[s : s + T] for s in starts])
    y = torch.stack([val[s + 1 : s + T + 1] for s in starts]).flatten()
    with torch.no_grad():
        nats = F.cross_entropy(model(x).flatten(0, 1), y, reduction="none")
    text = ~torch.isin(y, torch.tensor(list(tokenizer.special_tokens.values())))
    n_bytes = len(tokenizer.decode(y[text].tolist()).encode("utf-8"))
    assert set(score) == {"loss", "perplexity", "bits_per_byte", "tokens", "bytes"}
    assert score["tokens"] == int(text.sum()) and score["bytes"] == n_bytes
    assert score["loss"] == pytest.approx(nats[text].mean().item(), rel=1e-5)
    assert score["perplexity"] == pytest.approx(math.exp(nats[text].mean().item()), rel=1e-5)
    assert score["bits_per_byte"] == pytest.approx(nats[text].sum().item() / math.log(2) / n_bytes, rel=1e-5)


def test_training_validation_reports_the_figures_eval_gives(tiny_run, tiny_data, capsys):
    last = [r for r in read_metrics(tiny_run) if "val_loss" in r][-1]
    score = _eval_json(capsys, "--checkpoint", str(tiny_run), "--corpus", str(tiny_data), "--batch-size", "4")
    assert last["step"] == 3
    assert last["val_loss"] == pytest.approx(score["loss"], rel=1e-6)
    assert last["val_bpb"] == pytest.approx(score["bits_per_byte"], rel=1e-6)


def test_a_text_file_is_split_and_encoded_as_prepare_does(tiny_run, tiny_data, capsys):
    text_file = tiny_data.parent / "the-verdict.txt"
    from_text = _eval_json(capsys, "--checkpoint", str(tiny_run), "--corpus", str(text_file))
    from_shards = _eval_json(capsys, "--checkpoint", str(tiny_run), "--corpus", str(tiny_data))
    assert from_text == from_shards
    train_split = _eval_json(capsys, "--checkpoint", str(tiny_run), "--corpus", str(text_file), "--split", "train")
    assert train_split["bytes"] > 5 * from_text["bytes"]  # 90% of the text against 10%


def test_eval_prints_one_line_and_refuses_a_text_too_short(tiny_run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tiny_run), "--corpus", str(tiny_run.parent / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.\n" * 3)
    assert main(["eval", "--checkpoint", str(tiny_run), "--corpus", str(short)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "context" in err
