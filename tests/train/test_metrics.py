"""metrics.jsonl reading and truncation, and the loss-curve PNG."""

from __future__ import annotations

import json

import matplotlib.image

from scratchllm.train.metrics import METRICS_FILE, MetricsLog, plot_run, read_metrics


def _write_run(run_dir, steps=20):
    log = MetricsLog(run_dir)
    for step in range(1, steps + 1):
        log.log(step=step, loss=3.0 / step, lr=1e-3, tokens=step * 100)
        if step % 5 == 0:
            log.log(step=step, val_loss=3.5 / step, tokens=step * 100)
    log.close()


def test_torn_last_line_is_skipped_and_resume_truncates(tmp_path):
    _write_run(tmp_path)
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 21, "lo')  # a kill in the middle of a write
    assert len(read_metrics(tmp_path)) == 24
    MetricsLog(tmp_path, resume_step=10).close()
    records = read_metrics(tmp_path)
    assert max(r["step"] for r in records) == 10
    assert [r for r in records if "val_loss" in r] == [
        {"step": 5, "val_loss": 0.7, "tokens": 500},
        {"step": 10, "val_loss": 0.35, "tokens": 1000},
    ]
    assert all(json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines())


def test_plot_writes_a_png_that_decodes(tmp_path):
    _write_run(tmp_path)
    out = plot_run(tmp_path)
    assert out == tmp_path / "loss.png"
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas
