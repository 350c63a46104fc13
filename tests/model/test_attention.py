import pytest
import torch
import torch.nn.functional as F

import scratchllm.model.attention as attention_module
from scratchllm.model.attention import MultiHeadAttention, masked_softmax_attention
from scratchllm.model.config import GPTConfig
from scratchllm.model.teaching import MultiHeadAttentionWrapper


def test_explicit_attention_equals_sdpa_outputs_and_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, requires_grad=True) for _ in range(3))
    ours = masked_softmax_attention(q, k, v, None)[0]
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref)
    grad = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, (q, k, v), grad)
    g_ref = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_module_paths_agree_in_outputs_and_gradients(qkv_bias):
    torch.manual_seed(0)
    att = MultiHeadAttention(GPTConfig.preset("tiny", qkv_bias=qkv_bias))
    x = torch.randn(2, 9, 64)
    results = []
    for explicit in (False, True):
        att.explicit = explicit
        att.zero_grad()
        y = att(x)
        (y * torch.linspace(-1, 1, 64)).sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in att.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cpu_bf16_autocast_runs_the_written_out_formula_with_the_same_result(monkeypatch):
    torch.manual_seed(0)
    att = MultiHeadAttention(GPTConfig.preset("tiny"))
    x = torch.randn(2, 9, 64)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return masked_softmax_attention(*args, **kwargs)

    monkeypatch.setattr(attention_module, "masked_softmax_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = att(x)
    assert calls and y.dtype == torch.bfloat16
    fp32 = att(x)
    assert len(calls) == 1  # outside autocast: the fused kernel
    torch.testing.assert_close(y.float(), fp32, atol=3e-2, rtol=3e-2)


def test_book_wrapper_of_single_heads_computes_the_same_function():
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", qkv_bias=True)
    att = MultiHeadAttention(cfg)
    wrapper = MultiHeadAttentionWrapper(cfg.d_model, cfg.d_model, cfg.n_heads, qkv_bias=True)
    hd = cfg.head_dim
    with torch.no_grad():
        for h, head in enumerate(wrapper.heads):
            for j, name in enumerate(["W_query", "W_key", "W_value"]):
                weight = getattr(att, name)  # the (d_out, d_in) block of the fused W_qkv
                rows = slice(h * hd, (h + 1) * hd)
                getattr(head, name).weight.copy_(weight[rows])
                getattr(head, name).bias.copy_(att.W_qkv.bias[j * cfg.d_model :][rows])
        wrapper.out_proj.load_state_dict(att.out_proj.state_dict())
    x = torch.randn(2, 11, cfg.d_model)
    torch.testing.assert_close(wrapper(x), att(x))


def test_store_attention_keeps_causal_probabilities():
    torch.manual_seed(0)
    att = MultiHeadAttention(GPTConfig.preset("tiny"))
    x = torch.randn(1, 6, 64)
    y = att(x)
    att.store_attention = True
    torch.testing.assert_close(att(x), y)
    w = att.last_attention
    assert w.shape == (1, 4, 6, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 6))
    assert torch.all(w.triu(diagonal=1) == 0)
