"""DPO: the loss and rewards against the book's formula on fixed log-probabilities, the sequence
log-probability against its compute_logprobs, the reference frozen, log 2 at the start, a
preference learnt through the trainer, exact resume, bad records."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.dpo import (
    DPOSettings,
    batch_of,
    dpo_loss,
    encode_pairs,
    frozen_reference,
    preference_loss,
    sequence_logprobs,
    tune,
)
from scratchllm.finetune.records import book_split
from scratchllm.finetune.templates import END_OF_TURN, get_template
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import PADDING, BPETokenizer

WORDS = "apple river stone cloud bread lamp".split()


# The book's functions, from ch07/04_preference-tuning-with-dpo/dpo-from-scratch.ipynb (its
# llms-from-scratch package 1.0.19 does not ship them), as the notebook writes them.
def book_compute_dpo_loss(model_chosen_logprobs, model_rejected_logprobs, reference_chosen_logprobs,
                          reference_rejected_logprobs, beta=0.1):
    model_logratios = model_chosen_logprobs - model_rejected_logprobs
    reference_logratios = reference_chosen_logprobs - reference_rejected_logprobs
    logits = model_logratios - reference_logratios
    losses = -F.logsigmoid(beta * logits)
    chosen_rewards = (model_chosen_logprobs - reference_chosen_logprobs).detach()
    rejected_rewards = (model_rejected_logprobs - reference_rejected_logprobs).detach()
    return losses.mean(), chosen_rewards.mean(), rejected_rewards.mean()


def book_compute_logprobs(logits, labels, selection_mask=None):
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    log_probs = F.log_softmax(logits, dim=-1)
    selected_log_probs = torch.gather(input=log_probs, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    if selection_mask is not None:
        mask = selection_mask[:, 1:].clone()
        selected_log_probs = selected_log_probs * mask
        return selected_log_probs.sum(-1) / mask.sum(-1)
    return selected_log_probs.mean(-1)


def preference_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Repeat a word: chosen repeats it, rejected names another word."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word, other = rng.sample(WORDS, 2)
        out.append({"instruction": "Repeat the word.", "input": word, "output": word, "chosen": word,
                    "rejected": other})
    return out


def located(recs):
    return [(f"pairs record {i + 1}", r) for i, r in enumerate(recs)]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    alpaca = get_template("alpaca")
    text = " ".join(alpaca.render({**r, "output": r["chosen"]}) for r in preference_records(30, seed=5))
    return BPETokenizer.train(text.replace(END_OF_TURN, " "), vocab_size=360, progress=False)


def tiny_model(tokenizer, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=48, n_heads=2, n_layers=2,
                         dropout=0.0))


def test_the_loss_and_rewards_are_the_books_on_fixed_logprobs():
    g = torch.Generator().manual_seed(0)
    for beta in (0.1, 0.5, 2.0):
        logps = [-torch.rand(16, generator=g, dtype=torch.float64) * 5 for _ in range(4)]
        losses, chosen, rejected = dpo_loss(*logps, beta=beta)
        book_loss, book_chosen, book_rejected = book_compute_dpo_loss(*logps, beta=beta)
        assert float(losses.mean()) == pytest.approx(float(book_loss), abs=1e-12)
        assert float(chosen.mean()) == pytest.approx(float(book_chosen), abs=1e-12)
        assert float(rejected.mean()) == pytest.approx(float(book_rejected), abs=1e-12)
    # and the paper's equation 7 written once more: -log sigmoid(beta ((pw - rw) - (pl - rl)))
    loss, _, _ = dpo_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-3.5]), torch.tensor([-3.0]), 0.5)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.5 * ((-3.0 + 3.5) - (-4.0 + 3.0)))))


def test_sequence_logprobs_are_the_books_mean_over_the_answer(tokenizer):
    model = tiny_model(tokenizer)
    pairs = encode_pairs(located(preference_records(4)), tokenizer, get_template("alpaca"))
    chosen_x, chosen_y, _, _ = batch_of(pairs, tokenizer.special_tokens[PADDING], 64)
    # the book's inputs: the full padded sequence (labels = inputs) and a mask of the answer's tokens
    width = max(len(p.chosen) for p in pairs)
    full = torch.full((len(pairs), width), tokenizer.special_tokens[PADDING])
    mask = torch.zeros(len(pairs), width, dtype=torch.bool)
    for row, p in enumerate(pairs):
        full[row, :len(p.chosen)] = torch.tensor(p.chosen)
        mask[row, len(p.prompt):len(p.chosen)] = True
    with torch.no_grad():
        book = book_compute_logprobs(model(full), full, mask)
        ours = sequence_logprobs(model, chosen_x, chosen_y)
    assert torch.allclose(ours, book, atol=1e-6)


def test_at_the_start_the_loss_is_log_2_and_the_reference_gets_no_gradient(tokenizer):
    model = tiny_model(tokenizer)
    reference = frozen_reference(model)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    pairs = encode_pairs(located(preference_records(8)), tokenizer, get_template("alpaca"))
    batch = batch_of(pairs, tokenizer.special_tokens[PADDING], 64)
    got = preference_loss(reference, beta=0.1)(model, batch)
    assert float(got.total.detach()) / 8 == pytest.approx(math.log(2), abs=1e-6)
    assert float(got.terms["margin"]) == pytest.approx(0.0, abs=1e-6)
    got.total.backward()
    assert all(p.grad is None and not p.requires_grad for p in reference.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())


def test_the_preference_is_learnt_through_the_trainer(tokenizer, tmp_path):
    splits = book_split(located(preference_records(120, seed=1)))
    model = tiny_model(tokenizer)
    start = copy.deepcopy(model)
    result = tune(model, tokenizer, splits, tmp_path / "run", DPOSettings(lr=3e-4, beta=0.5, epochs=2, eval_every=4),
                  progress=False)
    assert result.before["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result.after["val_loss"] < 0.6 < result.before["val_loss"]
    assert result.after["val_margin"] > 0 and result.after["test_margin"] > 0
    assert result.after["val_margin"] == pytest.approx(result.after["val_chosen_reward"]
                                                       - result.after["val_rejected_reward"])
    assert [r["step"] for r in result.evaluations][:3] == [4, 8, 12]
    assert result.train_log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # step 1 starts at the reference
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters(), strict=True))


def test_resume_continues_exactly(tokenizer, tmp_path):
    splits = book_split(located(preference_records(60, seed=2)))
    base = tiny_model(tokenizer)
    whole = tune(copy.deepcopy(base), tokenizer, splits, tmp_path / "whole", DPOSettings(lr=1e-4, epochs=2),
                 progress=False)
    tune(copy.deepcopy(base), tokenizer, splits, tmp_path / "split", DPOSettings(lr=1e-4, epochs=1), progress=False)
    resumed = tune(copy.deepcopy(base), tokenizer, splits, tmp_path / "split", DPOSettings(lr=1e-4, epochs=2),
                   resume=True, progress=False)
    assert resumed.before == whole.before  # the reference is the start, also when resuming
    assert resumed.after == pytest.approx(whole.after, rel=1e-6)


@pytest.mark.parametrize("record, message", [
    ({"instruction": "x", "chosen": "a"}, "pairs record 1: the record has no 'rejected' answer"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "pairs record 1: the prompt's messages end with an answer"),
    ({"question": "x", "chosen": "a", "rejected": "b"}, "pairs record 1: the record has no 'instruction'"),
])
def test_bad_records_are_named(tokenizer, record, message):
    with pytest.raises(ScratchLLMError, match=message):
        encode_pairs(located([record]), tokenizer, get_template("alpaca"))


def test_a_text_prompt_is_the_instruction(tokenizer):
    alpaca = get_template("alpaca")
    (pair,) = encode_pairs(located([{"prompt": "Name a fruit.", "chosen": "apple", "rejected": "stone"}]), tokenizer,
                           alpaca)
    assert tokenizer.decode(pair.chosen) == alpaca.render({"instruction": "Name a fruit.", "output": "apple"})
