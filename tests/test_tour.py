"""The tour: its numbers are the model's own (checked against torch and tiktoken), for every
kind of position encoding, with and without a checkpoint; its pictures decode."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F

from scratchllm.checkpoint import save_checkpoint
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import BPETokenizer
from scratchllm.tour import BUILTIN_TEXT, tour

TEXT = "Every effort moves you"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    return tour(text=TEXT, out=out, echo=None), out


def _checkpoint(tmp_path, **overrides) -> tuple:
    tok = BPETokenizer.train(BUILTIN_TEXT, 400, progress=False)
    torch.manual_seed(1)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size, **overrides))
    path = save_checkpoint(tmp_path / "ckpt", model, tok)
    return path, model, tok


def test_tour_without_checkpoint_walks_every_stage_in_order(fresh):
    steps, out = fresh
    titles = [s.title.split(".")[0] for s in steps]
    assert titles == ["The model", "1", "2", "3", "4", "5", "6", "7", "8"]
    assert "NO CHECKPOINT" in steps[0].lines[0]
    pictures = [p for s in steps for p in s.pictures]
    assert {p.name for p in pictures} == {"sinusoidal.png", "attention-scores.png", "attention.png", "residual.png",
                                         "next-token.png"}
    for p in pictures:
        assert p.parent == out and matplotlib.image.imread(p).ndim == 3


def test_token_ids_and_merges_match_tiktoken(fresh, tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    steps, _ = fresh
    tok = BPETokenizer.train(BUILTIN_TEXT, 400, progress=False)  # the tour's own, rebuilt
    tok.export_tiktoken(tmp_path / "tour.tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(tmp_path / "tour.tiktoken"))
    enc = tiktoken.Encoding("tour", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=tok.special_tokens)
    assert steps[2].data["ids"] == enc.encode_ordinary(TEXT)
    chunks = steps[1].data["chunks"]
    assert "".join(chunks) == TEXT
    # Applying the listed merges to the word's bytes gives tiktoken's tokens for that word.
    word, ids = steps[1].data["word"], list(steps[1].data["word"].encode())
    for (left, right), new in steps[1].data["merges"]:
        i = next(i for i in range(len(ids) - 1) if ids[i : i + 2] == [left, right])
        ids[i : i + 2] = [new]
    assert ids == enc.encode_ordinary(word)


def test_attention_and_next_token_match_torch(tmp_path):
    path, model, tok = _checkpoint(tmp_path)
    steps = tour(path, TEXT, tmp_path / "out", echo=None)
    q, k, v = (steps[4].data[name] for name in "qkv")
    weights = steps[5].data["weights"]
    # torch's fused attention on the same Q, K, V gives the weighted sum of the tour's weights.
    expected = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
    torch.testing.assert_close(weights @ v, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(weights.sum(-1), torch.ones(len(weights)))
    # Top-5 next tokens: those of the model's plain forward pass.
    ids = torch.tensor([tok.encode_ordinary(TEXT)])
    probs = torch.softmax(model.eval()(ids)[0, -1], dim=-1)
    top = torch.topk(probs, 5)
    assert steps[7].data["top_ids"] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor(steps[7].data["top_probs"]), top.values)
    assert "loaded from" in steps[0].lines[0]


@pytest.mark.parametrize(("pos_encoding", "tied"), [("sinusoidal", False), ("rope", False), ("none", False),
                                                    ("learned", True)])
def test_hand_computations_hold_for_every_position_encoding(tmp_path, pos_encoding, tied):
    # The tour checks each recomputed stage against the model and raises on a mismatch.
    path, _, _ = _checkpoint(tmp_path, pos_encoding=pos_encoding, n_heads=2, qkv_bias=True, tie_embeddings=tied)
    steps = tour(path, TEXT, tmp_path / "out", echo=None)
    checks = [line for s in steps for line in s.lines if line.startswith("check:")]
    assert len(checks) == 3


def test_text_longer_than_a_learned_context_is_one_clear_error(tmp_path):
    with pytest.raises(ScratchLLMError, match="at most 64"):
        tour(text="word " * 100, out=tmp_path, echo=None)
    with pytest.raises(ScratchLLMError, match="needs some text"):
        tour(text="", out=tmp_path, echo=None)


def test_cli_tour_and_attention(tmp_path, capsys):
    path, model, _ = _checkpoint(tmp_path)
    assert main(["tour", "--checkpoint", str(path), "--out", str(tmp_path / "tour")]) == 0
    printed = capsys.readouterr().out
    assert "== 8. Sampling at two temperatures" in printed and "loaded from" in printed
    assert main(["attention", "--checkpoint", str(path), "--text", TEXT, "--out", str(tmp_path / "att")]) == 0
    names = sorted(p.name for p in (tmp_path / "att").iterdir())
    assert names == [f"attention-layer{i}.png" for i in range(model.config.n_layers)] + ["attention.png"]
    assert main(["attention", "--checkpoint", str(tmp_path / "missing"), "--text", TEXT]) == 2
    assert "error" in capsys.readouterr().err


def test_the_tour_doc_labels_its_output_an_example_of_the_current_demo_shape():
    from pathlib import Path

    from scratchllm import presets

    doc = (Path(__file__).resolve().parents[1] / "docs" / "tour.md").read_text(encoding="utf-8")
    assert "The output and figures below are an example" in doc  # not figures of today's code
    recipe = presets.get("demo")
    config = GPTConfig.from_dict({**recipe.model, "vocab_size": recipe.vocab_size})
    with torch.device("meta"):
        params = GPT(config).num_params()
    assert (f"{params:,} parameters: {config.n_layers} blocks, {config.n_heads} heads, d_model {config.d_model}, "
            f"context {config.context_length}") in doc
