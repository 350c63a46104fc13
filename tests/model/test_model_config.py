import json

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT, GPTConfig


def test_preset_overrides_and_json_round_trip():
    cfg = GPTConfig.preset("tiny", pos_encoding="rope", n_layers=3)
    assert cfg.n_layers == 3 and cfg.pos_encoding == "rope"
    assert GPTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: GPTConfig.preset("gpt2-124"), ["unknown preset", "gpt2-124m"]),
        (lambda: GPTConfig.preset("tiny", n_head=2), ["unknown config key", "n_heads"]),
        (lambda: GPTConfig.from_dict({"d_modle": 8}), ["d_modle", "d_model"]),
        (lambda: GPTConfig.preset("tiny", d_model=30, n_heads=4), ["not divisible", "n_heads"]),
        (lambda: GPTConfig.preset("tiny", pos_encoding="rotary"), ["pos_encoding", "learned"]),
        (lambda: GPTConfig.preset("tiny", norm="layer"), ["norm", "layernorm"]),
        (lambda: GPTConfig.preset("tiny", dropout=1.5), ["dropout"]),
        (lambda: GPTConfig.preset("tiny", n_layers=0), ["n_layers"]),
    ],
)
def test_bad_config_is_one_clear_error(call, words):
    with pytest.raises(ScratchLLMError) as err:
        call()
    for word in words:
        assert word in str(err.value)


def _meta_gpt(name, **overrides):
    with torch.device("meta"):
        return GPT(GPTConfig.preset(name, **overrides))


def test_gpt2_124m_parameter_counts_match_the_book():
    assert _meta_gpt("gpt2-124m").num_params() == 163_009_536
    assert _meta_gpt("gpt2-124m", tie_embeddings=True).num_params() == 124_412_160


def test_parameter_count_by_hand_for_every_variant():
    for overrides in [{}, {"ffn": "swiglu", "norm": "rmsnorm", "pos_encoding": "rope"}, {"qkv_bias": True}]:
        cfg = GPTConfig.preset("tiny", **overrides)
        d, h, V = cfg.d_model, cfg.hidden_dim, cfg.vocab_size
        norm = d if cfg.norm == "rmsnorm" else 2 * d
        ffn_in = (2 * h if cfg.ffn == "swiglu" else h) * (d + 1)
        block = 3 * d * d + (3 * d if cfg.qkv_bias else 0) + d * d + d + ffn_in + h * d + d + 2 * norm
        pos = cfg.context_length * d if cfg.pos_encoding == "learned" else 0
        expected = V * d + pos + cfg.n_layers * block + norm + V * d
        assert _meta_gpt("tiny", **overrides).num_params() == expected


def test_flops_and_memory_estimates():
    model = _meta_gpt("gpt2-124m", tie_embeddings=True)
    cfg = model.config
    N = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 50257 * 768  # every matmul weight, the head included
    assert model.flops_per_token() == 6 * N + 12 * cfg.n_layers * cfg.d_model * cfg.context_length
    assert model.flops_per_token(training=False) * 3 == model.flops_per_token()
    mem = model.memory_estimate()
    assert mem["weights"] == 4 * 124_412_160 and mem["training_state"] == 4 * mem["weights"]
    assert mem["kv_cache"] == 2 * 12 * 1024 * 768 * 4
    assert model.memory_estimate(batch_size=3, bytes_per_value=2)["kv_cache"] == 3 * 2 * 12 * 1024 * 768 * 2
    with pytest.raises(ScratchLLMError, match="bytes_per_value must be one of"):
        model.memory_estimate(bytes_per_value=3)


def test_cli_model_info_prints_both_counts(capsys):
    from scratchllm.cli import main

    assert main(["model", "info", "--preset", "gpt2-124m"]) == 0
    out = capsys.readouterr().out
    assert "163,009,536" in out and "124,412,160" in out and "FLOPs per token" in out
    assert main(["model", "info", "--preset", "tiny", "--set", "model.n_head=2"]) == 2
    assert "model.n_heads" in capsys.readouterr().err  # the closest key, as `train --set` suggests it
    assert main(["model", "info", "--preset", "tiny", "--set", "n_layers=2"]) == 2
    assert "section.key=value" in capsys.readouterr().err
    assert main(["model", "info", "--preset", "tiny", "--set", "model.n_layers=3"]) == 0
    assert "n_layers=3" in capsys.readouterr().out
