import pytest
import torch
import torch.nn.functional as F

from scratchllm.model.config import GPTConfig
from scratchllm.model.layers import GELU, FeedForward, LayerNorm, RMSNorm


@pytest.mark.parametrize("explicit", [True, False])
def test_layernorm_equals_torch(explicit):
    torch.manual_seed(0)
    ours = LayerNorm(16)
    ours.explicit = explicit
    ref = torch.nn.LayerNorm(16)
    with torch.no_grad():
        for p in (ours.scale, ours.shift, ref.weight, ref.bias):
            p.normal_()
        ref.weight.copy_(ours.scale)
        ref.bias.copy_(ours.shift)
    x = torch.randn(3, 5, 16) * 4 + 2
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("explicit", [True, False])
def test_rmsnorm_equals_torch(explicit):
    torch.manual_seed(0)
    ours = RMSNorm(16)
    ours.explicit = explicit
    ref = torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.scale.normal_()
        ref.weight.copy_(ours.scale)
    x = torch.randn(3, 5, 16) * 3
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("explicit", [True, False])
def test_layernorm_without_shift_equals_torch_without_bias(explicit):
    torch.manual_seed(0)
    ours = LayerNorm(16, bias=False)
    ours.explicit = explicit
    ref = torch.nn.LayerNorm(16, bias=False)
    with torch.no_grad():
        ours.scale.normal_()
        ref.weight.copy_(ours.scale)
    x = torch.randn(3, 5, 16) * 4 + 2
    assert ours.shift is None and [n for n, _ in ours.named_parameters()] == ["scale"]
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("form, torch_name", [("tanh", "tanh"), ("exact", "none")])
def test_gelu_equals_torch_gelu(explicit, form, torch_name):
    gelu = GELU(form)
    gelu.explicit = explicit
    x = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(gelu(x), torch.nn.GELU(approximate=torch_name)(x), atol=1e-6, rtol=1e-5)


def test_the_two_gelu_forms_differ_by_less_than_1e_3():
    x = torch.linspace(-8, 8, 10001)
    assert 1e-5 < (GELU("tanh")(x) - GELU("exact")(x)).abs().max() < 1e-3


def test_swiglu_feedforward_is_silu_gate_times_up():
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", ffn="swiglu")
    ff = FeedForward(cfg)
    x = torch.randn(2, 3, cfg.d_model)
    h = cfg.hidden_dim
    gate_w, up_w = ff.fc_in.weight[:h], ff.fc_in.weight[h:]  # (out, in): W_gate's rows, then W_up's
    gate_b, up_b = ff.fc_in.bias[:h], ff.fc_in.bias[h:]
    expected = ff.fc_out(F.silu(x @ gate_w.T + gate_b) * (x @ up_w.T + up_b))
    torch.testing.assert_close(ff(x), expected)
    ff.activation.explicit = True
    torch.testing.assert_close(ff(x), expected)
