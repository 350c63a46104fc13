"""Pictures: every PNG decodes, masked entries are drawn blank, labels show the real token bytes."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch

from scratchllm import viz
from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import BPETokenizer

TEXT = "the cat sat on the mat; the cat ate the rat. " * 20


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train(TEXT, 270, progress=False)


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, n_layers=2, n_heads=2)).eval()


def _image(path) -> np.ndarray:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return image


def test_token_text_shows_partial_utf8_as_hex(tokenizer):
    euro = "€".encode()  # three bytes, none a character alone
    assert viz.token_text(tokenizer, euro[0]) == f"<0x{euro[0]:02X}>"
    ids = tokenizer.encode_ordinary(" the cat\n")
    labels = viz.token_labels(tokenizer, ids)
    assert "".join(labels).replace("·", " ").replace("⏎", "\n") == " the cat\n"


def test_hide_future_blanks_exactly_the_entries_after_the_query():
    weights = torch.rand(3, 5, 5)
    hidden = viz.hide_future(weights)
    future = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    assert torch.isnan(hidden[:, future]).all()
    assert torch.equal(hidden[:, ~future], weights[:, ~future])


def test_heatmap_draws_masked_entries_blank(tmp_path):
    # Drawn cells are coloured (viridis), while the background is white and text is grey: with
    # the future hidden, the coloured cells fill exactly the lower-left triangle of the plot.
    path = viz.plot_heatmaps([("w", viz.hide_future(torch.ones(8, 8)))], tmp_path / "h.png", cmap="viridis")
    image = _image(path)[..., :3]
    cells = image.max(-1) - image.min(-1) > 0.2
    columns = cells.any(axis=0)
    left = int(np.argmax(columns))
    right = left + int(np.argmin(columns[left:])) - 1  # the plot ends where a blank column starts
    cells[:, right + 1:] = False  # the colorbar
    rows = np.nonzero(cells.any(axis=1))[0]
    top, bottom = rows.min(), rows.max()
    assert abs((bottom - top) - (right - left)) <= 2  # a square of 8 x 8 cells
    step = (right - left) / 8
    for i in range(8):
        for j in range(8):
            y, x = int(top + (i + 0.5) * step), int(left + (j + 0.5) * step)
            assert cells[y, x] == (j <= i), (i, j)


def test_sinusoidal_and_other_plots_decode(tmp_path):
    paths = [
        viz.plot_sinusoidal_encoding(tmp_path / "pe.png", n_positions=32, dim=16),
        viz.plot_residual_stream(torch.rand(3, 4), tmp_path / "res.png", labels=list("abcd")),
        viz.plot_next_token([0.5, 0.2, 0.1], ["a", "b", "c"], tmp_path / "next.png"),
    ]
    for path in paths:
        _image(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next.png", "pe.png", "res.png"]  # no temp files left


def test_next_token_bars_are_as_long_as_their_probabilities(tmp_path):
    image = _image(viz.plot_next_token([0.5, 0.2, 0.1], ["a", "b", "c"], tmp_path / "next.png"))[..., :3]
    blue = np.abs(image - np.array([31, 119, 180]) / 255).max(-1) < 0.02  # matplotlib's tab:blue
    rows = blue.any(axis=1)
    starts = np.flatnonzero(rows[1:] & ~rows[:-1]) + 1  # each bar is a run of rows, the likeliest on top
    ends = np.flatnonzero(rows[:-1] & ~rows[1:]) + 1
    widths = [int(blue[a:b].sum(axis=1).max()) for a, b in zip(starts, ends, strict=True)]
    assert len(widths) == 3 and widths[0] > 200
    assert widths[1] / widths[0] == pytest.approx(0.4, abs=0.01)
    assert widths[2] / widths[0] == pytest.approx(0.2, abs=0.01)


def test_save_attention_maps_one_png_per_layer_and_an_overview(model, tokenizer, tmp_path):
    paths = viz.save_attention_maps(model, tokenizer, "the cat sat on the mat", tmp_path)
    assert [p.name for p in paths] == ["attention-layer0.png", "attention-layer1.png", "attention.png"]
    for path in paths:
        _image(path)
    only = viz.save_attention_maps(model, tokenizer, "the cat", tmp_path / "one", per_layer=False)
    assert [p.name for p in only] == ["attention.png"]


def test_attention_maps_refuse_bad_text(model, tokenizer, tmp_path):
    with pytest.raises(ScratchLLMError, match="empty"):
        viz.save_attention_maps(model, tokenizer, "", tmp_path)
    too_long = "the cat sat on the mat " * 40
    with pytest.raises(ScratchLLMError, match="at most 64"):
        viz.save_attention_maps(model, tokenizer, too_long, tmp_path)
