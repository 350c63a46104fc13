"""LoRA against two outside implementations: PEFT on a Hugging Face GPT-2 with the same weights and
adapters, and the book's own ``replace_linear_with_lora`` (appendix E) on its GPTModel; plus merge,
saving adapters alone, the book's trainable-parameter count and training through the Trainer."""

from __future__ import annotations

import itertools

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.lora import (
    LoRALinear,
    apply_lora,
    load_adapters,
    lora_layers,
    merge_lora,
    save_adapters,
)
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.surgery import replace_head

CFG = GPTConfig(vocab_size=97, context_length=16, d_model=32, n_heads=4, n_layers=2, dropout=0.0, qkv_bias=True,
                gelu="tanh")


def _model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_dict({**CFG.to_dict(), **overrides})).eval()
    with torch.no_grad():  # off the init, so every weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _train_adapters(model: GPT, seed: int = 1) -> None:
    """Give every B a value (it starts at zero, which would hide any mistake in the update)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for B in layer.lora_B:
                B.copy_(torch.randn(B.shape, generator=gen) * 0.1)


def _idx() -> torch.Tensor:
    return torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))


def test_peft_on_hugging_face_gpt2_gives_our_logits_before_and_after_merging(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from scratchllm.interop import save_hf_gpt2

    model = _model(tie_embeddings=True)
    save_hf_gpt2(model, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    apply_lora(model, rank=4, alpha=8, targets=["attention", "ffn"], split_qkv=False)
    _train_adapters(model)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, fan_in_fan_out=True,
                             target_modules=["c_attn", "c_proj", "c_fc"])
    hf = peft.get_peft_model(hf, config).eval()
    ours_to_hf = {"att.W_qkv": "attn.c_attn", "att.out_proj": "attn.c_proj", "ff.fc_in": "mlp.c_fc",
                  "ff.fc_out": "mlp.c_proj"}
    theirs = dict(hf.named_parameters())
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            i, part = name.split(".")[1], ".".join(name.split(".")[2:])
            prefix = f"base_model.model.transformer.h.{i}.{ours_to_hf[part]}"
            theirs[f"{prefix}.lora_A.default.weight"].copy_(layer.lora_A[0])
            theirs[f"{prefix}.lora_B.default.weight"].copy_(layer.lora_B[0])
    idx = _idx()
    with torch.no_grad():
        ours, reference = model(idx), hf(idx).logits
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ours, GPT(model.config).eval()(idx))  # the adapters do change the outputs
        merged, reference_merged = merge_lora(model).eval()(idx), hf.merge_and_unload()(idx).logits
    torch.testing.assert_close(merged, reference_merged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, ours, rtol=1e-5, atol=1e-5)
    assert not lora_layers(model) and all(type(m) is torch.nn.Linear for m in model.trf_blocks.modules()
                                          if isinstance(m, (torch.nn.Linear, LoRALinear)))


def test_the_books_lora_on_its_gpt_model_gives_our_logits():
    appendix_e = pytest.importorskip("llms_from_scratch.appendix_e")
    from book_models import book_copy

    model = _model()
    book = book_copy(model)
    apply_lora(model, rank=4, alpha=8, targets=["all"])  # q, k and v each get their own, as the book's layers
    _train_adapters(model)
    appendix_e.replace_linear_with_lora(book, rank=4, alpha=8 / 4)  # the book scales by alpha, we by alpha/rank
    with torch.no_grad():
        for i, block in enumerate(model.trf_blocks):
            att, theirs = block.att, book.trf_blocks[i]
            pairs = [(att.W_qkv, j, getattr(theirs.att, n)) for j, n in enumerate(("W_query", "W_key", "W_value"))]
            pairs += [(att.out_proj, 0, theirs.att.out_proj), (block.ff.fc_in, 0, theirs.ff.layers[0]),
                      (block.ff.fc_out, 0, theirs.ff.layers[2])]
            for layer, j, their in pairs:
                their.lora.A.copy_(layer.lora_A[j].T)  # the book's A is (in, r), B (r, out)
                their.lora.B.copy_(layer.lora_B[j].T)
        book.out_head.lora.A.copy_(model.out_head.lora_A[0].T)
        book.out_head.lora.B.copy_(model.out_head.lora_B[0].T)
        idx = _idx()
        torch.testing.assert_close(model(idx), book(idx), rtol=1e-5, atol=1e-5)


def test_trainable_parameters_are_the_books_count_for_gpt2_with_a_two_class_head():
    appendix_e = pytest.importorskip("llms_from_scratch.appendix_e")
    from llms_from_scratch import ch04

    with torch.device("meta"):  # shapes only
        ours = GPT(GPTConfig.preset("gpt2-124m"))
        replace_head(ours, 2)
        apply_lora(ours, rank=16, alpha=16)
        book = ch04.GPTModel({"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12,
                              "n_layers": 12, "drop_rate": 0.0, "qkv_bias": False})
        book.out_head = torch.nn.Linear(768, 2)  # the book's chapter-6 head
        book.requires_grad_(False)
        appendix_e.replace_linear_with_lora(book, rank=16, alpha=16)

    def trainable(m):
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    assert trainable(ours) == trainable(book) == 2_666_528  # appendix E's figure


def test_merge_then_unmerge_restores_the_base_weight():
    model = _model()
    base = model.trf_blocks[0].ff.fc_in.weight.detach().clone()
    apply_lora(model, rank=2, alpha=4, targets=["ffn"])
    _train_adapters(model)
    layer = model.trf_blocks[0].ff.fc_in
    x = torch.randn(3, 32)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)
    assert not torch.equal(layer.base.weight, base)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, base, rtol=0, atol=1e-6)


def test_adapters_save_alone_and_load_onto_a_fresh_base(tmp_path):
    model = _model()
    apply_lora(model, rank=2, alpha=4, targets=["attention"])
    _train_adapters(model)
    path = save_adapters(model, tmp_path / "adapters")
    n_adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (path / "adapters.safetensors").stat().st_size < 4 * n_adapter + 4096  # the adapters, not the base
    fresh = _model()
    assert load_adapters(fresh, path) == list(lora_layers(model))
    with torch.no_grad():
        torch.testing.assert_close(fresh(_idx()), model(_idx()), rtol=0, atol=0)
    other = _model(d_model=64)
    with pytest.raises(ScratchLLMError, match=r"another base model: d_model 32 \(this model: 64\)"):
        load_adapters(other, path)


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ScratchLLMError, match="unknown LoRA targets"):
        apply_lora(_model(), targets=["attn"])
    with pytest.raises(ScratchLLMError, match="tied"):
        apply_lora(_model(tie_embeddings=True), targets=["head"])
    with pytest.raises(ScratchLLMError, match="rank must be at least 1"):
        apply_lora(_model(), rank=0)


def test_training_changes_only_the_adapters_and_resumes_exactly(tmp_path):
    from scratchllm.train import TrainConfig, Trainer

    def batches():
        gen = torch.Generator().manual_seed(3)
        while True:
            x = torch.randint(0, 97, (4, 16), generator=gen)
            yield x, torch.roll(x, -1, dims=1)

    settings = dict(lr=1e-2, min_lr=1e-2, warmup_steps=0, eval_interval=0,  # a flat schedule: max_steps may grow
                    eval_at_start=False, precision="fp32", peak_flops=1e11,
                    plot=False, sample_tokens=0, checkpoint_interval=2)

    def run(out, steps, resume=False):
        model = _model()
        apply_lora(model, rank=2, alpha=4)
        base = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}
        data = batches()
        if resume:  # the batch source is not resumable: skip what the first part consumed
            for _ in itertools.islice(data, 2):
                pass
        Trainer(model.train(), data, out, settings=TrainConfig(max_steps=steps, **settings),
                progress=False).fit(resume=resume)
        for n, p in model.named_parameters():
            if ".lora_" not in n:
                assert torch.equal(p, base[n]), f"{n} is frozen but changed"
        return {n: p.detach() for n, p in model.named_parameters() if ".lora_" in n}

    whole = run(tmp_path / "whole", 4)
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 4, resume=True)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in whole.items() if "lora_B" in k)  # it trained
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)


def test_a_checkpoint_of_a_lora_model_loads_with_its_adapters_and_generates(tmp_path):
    from scratchllm.checkpoint import load_checkpoint, save_checkpoint
    from scratchllm.generate import generate

    model = _model()
    apply_lora(model, rank=2, alpha=4, targets=["attention", "ffn"])
    _train_adapters(model)
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert list(lora_layers(loaded)) == list(lora_layers(model))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(_idx()), model(_idx()), rtol=0, atol=0)
    assert generate(loaded, _idx()[:1, :4], max_new_tokens=3).tolist() == generate(model, _idx()[:1, :4],
                                                                                  max_new_tokens=3).tolist()
