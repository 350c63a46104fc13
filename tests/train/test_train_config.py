"""Run configs: presets, TOML files, typed --set overrides, and resume conflicts."""

from __future__ import annotations

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPTConfig
from scratchllm.presets import PRESETS
from scratchllm.train.config import (
    RunConfig,
    explicit_settings,
    load_run_config,
    parse_override,
    resume_conflicts,
)
from scratchllm.train.precision import check_precision


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    config = load_run_config(name, base={"model": {"vocab_size": 258}})
    preset = PRESETS[name]
    for section, values in (("model", preset.model), ("train", preset.train)):
        for key, value in values.items():
            if key != "vocab_size":
                assert getattr(getattr(config, section), key) == value
    assert config.model.vocab_size == 258  # training takes the data's vocabulary, whatever the preset's
    assert GPTConfig.preset(name).to_dict() == GPTConfig.from_dict(preset.model).to_dict()  # model info's shape


def test_baby_shakespeare_is_nanogpts_cpu_recipe():
    c = load_run_config("baby-shakespeare")
    assert (c.model.n_layers, c.model.n_heads, c.model.d_model, c.model.context_length) == (4, 4, 128, 64)
    assert (c.train.batch_size, c.train.max_steps, c.train.lr) == (12, 2000, 1e-3)


def test_layers_apply_in_order(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "baby-shakespeare"\n[model]\nn_layers = 6\n[train]\nlr = 5e-4\nprecision = "bf16"\n')
    c = load_run_config(config_file=toml, overrides=["train.lr=2e-4", "model.pos_encoding=rope"])
    assert (c.model.n_layers, c.model.d_model, c.model.pos_encoding) == (6, 128, "rope")
    assert (c.train.lr, c.train.precision) == (2e-4, "bf16")


def test_saved_config_round_trips(tmp_path):
    c = load_run_config("shakespeare-small", overrides=["model.ffn_hidden=100", "data.dir=/some/where"],
                        base={"model": {"vocab_size": 300}})
    c.save(tmp_path / "config.toml")
    assert RunConfig.load(tmp_path / "config.toml") == c


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.lrr=1", "did you mean 'train.lr'"),
        ("model.n_layer=2", "did you mean 'model.n_layers'"),
        ("train.lr=fast", "train.lr expects float"),
        ("train.max_steps=1.5", "train.max_steps expects int"),
        ("train.compile=yes", "train.compile expects bool"),
        ("optim.lr=1", "unknown section 'optim'"),
        ("lr=1", "section.key=value"),
    ],
)
def test_bad_overrides_are_named(item, message):
    with pytest.raises(ScratchLLMError, match=message):
        parse_override(item)


def test_override_values_are_typed():
    assert parse_override("train.lr=1") == ("train", "lr", 1.0)
    assert parse_override("train.compile=true") == ("train", "compile", True)
    assert parse_override("train.precision=bf16") == ("train", "precision", "bf16")
    assert parse_override("model.ffn_hidden=none") == ("model", "ffn_hidden", None)


def test_invalid_combinations_fail_with_the_source():
    with pytest.raises(ScratchLLMError, match="n_heads"):
        load_run_config("baby-shakespeare", overrides=["model.n_heads=5"])
    with pytest.raises(ScratchLLMError, match="precision"):
        load_run_config(overrides=["train.precision=fp8"])
    with pytest.raises(ScratchLLMError, match="did you mean 'baby-shakespeare'"):
        load_run_config("baby-shakespear")


def test_resume_conflicts_name_the_keys():
    saved = load_run_config("baby-shakespeare", overrides=["data.dir=/a"])
    given = explicit_settings("baby-shakespeare", overrides=["train.lr=0.01", "model.n_layers=4", "data.dir=/b",
                                                             "train.max_steps=9000", "train.eval_interval=7"])
    assert resume_conflicts(saved, given) == ["train.lr (saved 0.001, given 0.01)"]


def test_fp16_on_cpu_is_refused():
    import torch

    with pytest.raises(ScratchLLMError, match="fp16 needs a CUDA GPU"):
        check_precision("fp16", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))
