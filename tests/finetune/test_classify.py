"""Classification fine-tuning: a separable task learnt through the trainer, the last real token
under padding against each text run alone, which parameters change, the checkpoint with its labels."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from scratchllm.checkpoint import load_checkpoint, read_task, save_checkpoint
from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.classify import (
    ClassifySettings,
    class_logits,
    collate,
    encode_texts,
    fine_tune,
    load_classifier,
    predict,
    prepare_classifier,
    trainable_parameters,
)
from scratchllm.finetune.labelled import split_examples
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import PADDING, BPETokenizer

FILLER = "the a of and to in is it that was he for on are with as his they be at one have this".split()
KEYWORDS = {"fruit": "apple", "space": "rocket"}


def _examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Texts of 2-6 filler words with one keyword after the first: the keyword decides the label."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = sorted(KEYWORDS)[i % 2]
        words = rng.choices(FILLER, k=rng.randint(2, 6))
        words.insert(rng.randint(1, len(words)), KEYWORDS[label])  # " apple": one token, wherever it stands
        out.append((" ".join(words), label))
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: on a shared 2-core machine two threads wait on each other (0.46 s against
    0.03 s a step, measured under load), and one is as fast on a quiet one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    text = " ".join(t for t, _ in _examples(200, seed=9))
    return BPETokenizer.train(text, vocab_size=300, progress=False)


def _model(tokenizer, tied: bool = True, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=32, d_model=32, n_heads=2, n_layers=2,
                         dropout=0.0, tie_embeddings=tied))


def test_a_separable_task_is_learnt_through_the_trainer(tokenizer, tmp_path):
    model = _model(tokenizer)
    splits = split_examples(_examples(128), seed=1)
    settings = ClassifySettings(epochs=4, batch_size=8, lr=3e-3, train="all")
    result = fine_tune(model, tokenizer, splits, tmp_path / "run", settings, progress=False)
    assert result.labels == ["fruit", "space"]
    assert result.epochs[0]["epoch"] == 0 and result.epochs[-1]["epoch"] == 4
    assert result.test_accuracy >= 0.9, result
    assert result.epochs[-1]["val_accuracy"] >= 0.9 and result.epochs[0]["val_loss"] > result.epochs[-1]["val_loss"]
    assert sum(map(sum, result.confusion)) == len(splits[2])
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 0 and (tmp_path / "run" / "accuracy.png").is_file()

    # The run's newest checkpoint is the classifier, with its labels: it predicts the keyword's class.
    loaded, tok, task = load_classifier(tmp_path / "run")
    assert task["labels"] == ["fruit", "space"]
    texts = ["he was at the apple one", "a rocket is in the that"]
    assert [label for label, _ in predict(loaded, tok, task, texts)] == ["fruit", "space"]


def test_the_last_real_token_under_padding_is_the_text_run_alone(tokenizer):
    model = _model(tokenizer).eval()
    prepare_classifier(model, 3)
    texts = [t for t, _ in _examples(5, seed=3)]
    ids = [tokenizer.encode_ordinary(t) for t in texts]
    pad = tokenizer.special_tokens[PADDING]
    alone = torch.cat([model(torch.tensor([x]))[:, -1] for x in ids])  # oracle: each text by itself
    for pad_to in (None, 32):
        inputs, lengths = collate(ids, pad, pad_to)
        assert (inputs == pad).any()
        torch.testing.assert_close(class_logits(model, inputs, lengths), alone, rtol=1e-5, atol=1e-6)
        mean = class_logits(model, inputs, lengths, "mean")
        oracle = torch.stack([model(torch.tensor([x]))[0].mean(0) for x in ids])
        torch.testing.assert_close(mean, oracle, rtol=1e-5, atol=1e-6)
    # Reading the last position of a padded batch (a padding token) would give other logits.
    assert not torch.allclose(model(inputs)[:, -1], alone, atol=1e-3)


def test_the_head_swap_keeps_the_tied_token_table(tokenizer):
    model = _model(tokenizer, tied=True)
    table = model.tok_emb.weight.detach().clone()
    assert model.out_head.weight is model.tok_emb.weight
    prepare_classifier(model, 2)
    assert model.out_head.weight.shape == (2, 32) and model.out_head.bias is not None
    assert model.out_head.weight is not model.tok_emb.weight
    torch.testing.assert_close(model.tok_emb.weight, table, rtol=0, atol=0)


@pytest.mark.parametrize("train, changed", [
    ("last-block", ("trf_blocks.1.", "final_norm.", "out_head.")),
    ("last-2", ("trf_blocks.0.", "trf_blocks.1.", "final_norm.", "out_head.")),
])
def test_only_the_chosen_parameters_change(tokenizer, tmp_path, train, changed):
    model = _model(tokenizer)
    torch.manual_seed(123)  # the head fine_tune will make, to compare against
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("out_head")}
    splits = split_examples(_examples(40), seed=2)
    fine_tune(model, tokenizer, splits, tmp_path / "run", ClassifySettings(epochs=1, batch_size=8, lr=1e-3,
              train=train), progress=False)
    for name, p in model.named_parameters():
        if name in before:
            moved = not torch.equal(p, before[name])
            assert moved == name.startswith(changed), name
    assert len(trainable_parameters(model, train)) == sum(1 for n, _ in model.named_parameters()
                                                          if n.startswith(changed))


def test_a_text_longer_than_the_context_is_cut_and_counted_or_refused(tokenizer):
    long_text = " ".join(FILLER * 3)  # over 32 tokens
    ids, cut = encode_texts(["the apple", long_text], tokenizer, 32)
    assert cut == 1 and ids[1] == tokenizer.encode_ordinary(long_text)[:32]
    assert ids[0] == tokenizer.encode_ordinary("the apple") and len(ids[0]) < 32
    with pytest.raises(ScratchLLMError, match=r"text 2 is \d+ tokens, longer than the context of 32"):
        encode_texts(["the apple", long_text], tokenizer, 32, truncate=False)


def test_bad_train_choice_is_one_line(tokenizer):
    with pytest.raises(ScratchLLMError, match="last-block, last-N"):
        trainable_parameters(_model(tokenizer), "last-3")


def test_the_checkpoint_round_trips_with_its_labels(tokenizer, tmp_path):
    model = _model(tokenizer, tied=True)
    prepare_classifier(model, 3)
    task = {"kind": "classify", "labels": ["a", "b", "c"], "pooling": "last"}
    save_checkpoint(tmp_path / "ck", model, tokenizer, task=task)
    loaded, tok = load_checkpoint(tmp_path / "ck")  # strict: every name and shape must match
    assert read_task(tmp_path / "ck") == task and loaded.config.head_size == 3
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    x = torch.tensor([tokenizer.encode_ordinary("the apple of it")])
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_a_language_model_is_not_a_classifier(tokenizer, tmp_path):
    save_checkpoint(tmp_path / "lm", _model(tokenizer), tokenizer)
    assert read_task(tmp_path / "lm") is None
    with pytest.raises(ScratchLLMError, match="is not a classifier"):
        load_classifier(tmp_path / "lm")


def test_resume_continues_exactly(tokenizer, tmp_path):
    splits = split_examples(_examples(48), seed=4)
    base = _model(tokenizer)
    whole = fine_tune(copy.deepcopy(base), tokenizer, splits, tmp_path / "whole",
                      ClassifySettings(epochs=2, batch_size=8, lr=1e-3), progress=False)
    # The same run stopped after its first epoch (one checkpoint per epoch), then resumed.
    first = copy.deepcopy(base)
    fine_tune(first, tokenizer, splits, tmp_path / "split", ClassifySettings(epochs=1, batch_size=8, lr=1e-3),
              progress=False)
    resumed = fine_tune(copy.deepcopy(base), tokenizer, splits, tmp_path / "split",
                        ClassifySettings(epochs=2, batch_size=8, lr=1e-3), resume=True, progress=False)
    assert resumed.test_loss == pytest.approx(whole.test_loss, rel=1e-6)
    assert resumed.confusion == whole.confusion


def test_lora_is_the_books_appendix_e_only_the_adapters_train(tokenizer, tmp_path):
    from scratchllm.finetune.lora import lora_layers

    splits = split_examples(_examples(48), seed=4)
    model = _model(tokenizer)
    result = fine_tune(model, tokenizer, splits, tmp_path / "run",
                       ClassifySettings(epochs=1, lr=1e-3, train="lora", lora_rank=4, lora_alpha=8), progress=False)
    layers = lora_layers(model)
    assert "out_head" in layers and len(layers) == 2 * 4 + 1  # every linear layer, the new head's too
    rank, d, hidden, n_classes = 4, 32, 4 * 32, 2
    # W_qkv: one adapter per part (q, k, v: (4, d) + (d, 4) each), out_proj, fc_in, fc_out; the head (4, d) + (2, 4)
    per_block = 3 * rank * (d + d) + rank * (d + d) + rank * (d + hidden) + rank * (hidden + d)
    assert result.trainable_params == 2 * per_block + rank * (d + n_classes)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    clf, tok, task = load_classifier(tmp_path / "run")
    assert predict(clf, tok, task, ["the apple"]) == predict(model, tokenizer, task, ["the apple"])
