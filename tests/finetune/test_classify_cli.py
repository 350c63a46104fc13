"""`scratchllm finetune classify` and `scratchllm classify` end to end on a file the test writes."""

from __future__ import annotations

import json

import pytest
import torch
from fake_hub import REPO, run_against_hub
from test_classify import _examples, _model

from scratchllm.checkpoint import load_checkpoint, save_checkpoint
from scratchllm.cli import main
from scratchllm.finetune.classify import prepare_classifier
from scratchllm.tokenizer import BPETokenizer


@pytest.fixture
def pretrained(tmp_path):
    text = " ".join(t for t, _ in _examples(200, seed=9))
    tokenizer = BPETokenizer.train(text, vocab_size=300, progress=False)
    return save_checkpoint(tmp_path / "lm", _model(tokenizer), tokenizer)


def test_finetune_then_classify(pretrained, tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_classify.one_thread
    try:
        data = tmp_path / "keywords.jsonl"
        data.write_text("".join(json.dumps({"message": t, "topic": lab}) + "\n" for t, lab in _examples(60)),
                        encoding="utf-8")
        code = main(["finetune", "classify", "--checkpoint", str(pretrained), "--data", str(data), "--out",
                     str(tmp_path / "run"), "--text-column", "message", "--label-column", "topic", "--epochs", "1",
                     "--lr", "1e-3", "--quiet"])
        out = capsys.readouterr().out
        assert code == 0
        assert "60 examples; train 42, validation 6, test 12" in out
        assert "epoch 0: train accuracy" in out and "epoch 1: train accuracy" in out
        results = json.loads((tmp_path / "run" / "results.json").read_text())
        assert f"test accuracy {results['test_accuracy']:.2%}" in out
        assert main(["classify", "--checkpoint", str(tmp_path / "run"), "--text", "the apple"]) == 0
        label, prob = capsys.readouterr().out.split()
        assert label in ("fruit", "space") and 0.5 <= float(prob) <= 1
    finally:
        torch.set_num_threads(threads)


def test_one_class_is_an_error_before_any_training(pretrained, tmp_path, capsys):
    data = tmp_path / "one.csv"
    data.write_text("text,label\na,x\nb,x\n", encoding="utf-8")
    assert main(["finetune", "classify", "--checkpoint", str(pretrained), "--data", str(data), "--out",
                 str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"scratchllm: error: {data} has 1 class (x); a classifier needs at least two\n"
    assert not (tmp_path / "run").exists()


def test_classify_refuses_a_language_model(pretrained, capsys):
    assert main(["classify", "--checkpoint", str(pretrained), "--text", "hi"]) == 2
    assert "is not a classifier" in capsys.readouterr().err


def test_generate_refuses_a_classifier(pretrained, tmp_path, capsys):
    model, tokenizer = load_checkpoint(pretrained)
    prepare_classifier(model, 2)
    save_checkpoint(tmp_path / "clf", model, tokenizer, task={"kind": "classify", "labels": ["a", "b"]})
    assert main(["generate", "--checkpoint", str(tmp_path / "clf"), "--prompt", "the"]) == 2
    assert "is a classifier (2 outputs, not a vocabulary): label texts with `scratchllm classify" in \
        capsys.readouterr().err


def test_eval_refuses_a_classifier(pretrained, tmp_path, capsys):
    model, tokenizer = load_checkpoint(pretrained)
    prepare_classifier(model, 3)
    save_checkpoint(tmp_path / "clf", model, tokenizer, task={"kind": "classify", "labels": ["a", "b", "c"]})
    (tmp_path / "text.txt").write_text("the quick brown fox " * 50)
    assert main(["eval", "--checkpoint", str(tmp_path / "clf"), "--corpus", str(tmp_path / "text.txt")]) == 2
    assert "is a classifier (3 outputs, not a vocabulary)" in capsys.readouterr().err


def test_finetune_classify_starts_from_pretrained_weights_by_name(tmp_path, gpt2_files):
    pytest.importorskip("transformers")
    data = tmp_path / "keywords.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in _examples(40)),
                    encoding="utf-8")
    command = ["finetune", "classify", "--model", REPO, "--data", str(data), "--out", str(tmp_path / "run"),
               "--epochs", "1", "--quiet"]
    done, reference = run_against_hub(tmp_path, gpt2_files, command)
    assert done.returncode == 0, done.stderr
    model, tokenizer = load_checkpoint(tmp_path / "run")
    reference = reference.transformer
    assert tokenizer.fingerprint() == BPETokenizer.from_gpt2_files(*gpt2_files).fingerprint()
    assert model.config.head_size == 2 and model.config.n_layers == 2 and model.config.d_model == 16
    # --train last-block: the token table and the first block stay the Hub's weights, exactly
    assert torch.equal(model.tok_emb.weight, reference.wte.weight)
    assert torch.equal(model.trf_blocks[0].ff.fc_in.weight, reference.h[0].mlp.c_fc.weight.t())
    assert not torch.equal(model.trf_blocks[1].ff.fc_in.weight, reference.h[1].mlp.c_fc.weight.t())
