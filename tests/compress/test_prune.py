"""Pruning: the promised sparsity and shapes; Wanda's score is |W| times the input norm computed here from
the inputs themselves (block by block, through the blocks already pruned); a smaller model computes
what the full one computes with the removed units' outputs zeroed; pruned checkpoints save, load and
generate (cached equal to uncached); bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.checkpoint import load_checkpoint, save_checkpoint
from scratchllm.cli import main
from scratchllm.compress.prune import (
    calibration_batches,
    frozen_zeros,
    head_importance,
    layer_mask,
    n_m_mask,
    neuron_importance,
    prune,
    recover,
    row_mask,
    shrink,
    sparsity_of,
)
from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import BPETokenizer


def _model(**overrides) -> GPT:
    torch.manual_seed(0)
    settings = {"vocab_size": 96, "context_length": 16, "d_model": 32, "n_heads": 4, "n_layers": 2, "dropout": 0.0,
                **overrides}
    return GPT(GPTConfig(**settings)).eval()


def _calibration(n=8, seq=16, batch=4, vocab=96):
    gen = torch.Generator().manual_seed(1)
    return list(torch.randint(0, vocab, (n, seq), generator=gen).split(batch))


def test_masks_keep_the_highest_scores_in_the_promised_numbers():
    scores = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    keep = row_mask(scores, 0.3)
    assert (keep.sum(dim=1) == 16 - int(0.3 * 16)).all()
    for row, kept in zip(scores, keep, strict=True):  # every removed score is below every kept one
        assert row[~kept].max() < row[kept].min()
    keep = layer_mask(scores, 0.4)
    assert int((~keep).sum()) == int(0.4 * 96) and scores[~keep].max() < scores[keep].min()
    keep = n_m_mask(scores, 2, 4).reshape(6, 4, 4)
    groups = scores.reshape(6, 4, 4)
    assert (keep.sum(dim=2) == 2).all()
    assert (torch.where(keep, groups, torch.inf).amin(dim=2) > torch.where(keep, -torch.inf, groups).amax(dim=2)).all()


def test_wanda_scores_each_block_on_the_inputs_the_pruned_blocks_before_it_produce():
    model, calibration = _model(), _calibration()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, "wanda", 0.5, calibration)
    # The oracle: the inputs of block 0's and block 1's W_qkv and fc_out, computed here step by step.
    x = torch.cat(calibration)  # (8, 16)
    with torch.no_grad():
        dense = _model()
        dense.load_state_dict(original)
        h = dense.pos_emb.add_to(dense.tok_emb(x), torch.arange(16))  # (8, 16, 32), the embeddings
        for i in range(2):
            block, pruned_block = dense.trf_blocks[i], model.trf_blocks[i]
            a = block.norm1(h)  # W_qkv's input
            mid = h + block.att(a)
            f = block.ff.activation(block.ff.fc_in(block.norm2(mid)))  # fc_out's input
            for inputs, name in ((a, "att.W_qkv"), (f, "ff.fc_out")):
                weight = original[f"trf_blocks.{i}.{name}.weight"]
                norm = inputs.reshape(-1, inputs.shape[-1]).pow(2).sum(dim=0).sqrt()  # ||X_j||_2
                scores = weight.abs() * norm  # S_ij = |W_ij| ||X_j||
                n_pruned = weight.shape[1] // 2
                cut = scores.sort(dim=1).values[:, n_pruned - 1 : n_pruned]  # each row's highest removed score
                got = pruned_block.get_submodule(name).weight
                assert torch.equal(got == 0, scores <= cut), (i, name)  # exactly the lowest half of each row
                assert torch.equal(got[got != 0], weight[got != 0])
            h = pruned_block(h)  # block i+1 sees what the *pruned* block i produces
    assert sparsity_of(model) == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "2:4"])
def test_unstructured_methods_reach_the_promised_sparsity(method):
    model = _model()
    sparsity = 0.5 if method == "2:4" else 0.25  # every layer's width is a multiple of 4: exact counts
    prune(model, method, sparsity, _calibration())
    assert sparsity_of(model) == sparsity
    for block in model.trf_blocks:
        for linear in (block.att.W_qkv, block.att.out_proj, block.ff.fc_in, block.ff.fc_out):
            zero = (linear.weight == 0)
            if method == "wanda":
                assert (zero.sum(dim=1) == linear.in_features // 4).all()
            elif method == "magnitude":
                assert int(zero.sum()) == linear.weight.numel() // 4
            elif method == "2:4":
                assert (zero.reshape(linear.out_features, -1, 4).sum(dim=2) == 2).all()
    assert (model.tok_emb.weight != 0).all()  # the token table (and the head) stay dense


@pytest.mark.parametrize("overrides", [{}, {"ffn": "swiglu", "pos_encoding": "rope", "norm": "rmsnorm"}])
def test_a_shrunk_model_is_the_full_one_with_the_removed_units_silenced(overrides):
    model = _model(**overrides)
    idx = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))
    heads = [torch.tensor([0, 3]), torch.tensor([1, 2])]
    hidden = model.config.hidden_dim
    neurons = [torch.arange(0, hidden, 3), torch.arange(1, hidden, 3)]
    small = shrink(model, heads=heads, neurons=neurons)
    assert small.config.n_heads == 2 and small.config.head_dim == 8 and small.config.attn_dim == 16
    assert small.config.hidden_dim == len(neurons[0])
    block = small.trf_blocks[0]
    assert block.att.W_qkv.weight.shape == (3 * 16, 32) and block.att.out_proj.weight.shape == (32, 16)
    fc_in_rows = 2 * len(neurons[0]) if overrides else len(neurons[0])
    assert block.ff.fc_in.weight.shape == (fc_in_rows, 32) and block.ff.fc_out.weight.shape == (32, len(neurons[0]))
    assert small.num_params() < model.num_params()
    # the oracle: the full model whose removed heads and neurons write nothing (their out_proj / fc_out columns zero)
    with torch.no_grad():
        for i, b in enumerate(model.trf_blocks):
            silent = torch.ones(4, dtype=torch.bool)
            silent[heads[i]] = False
            b.att.out_proj.weight.view(32, 4, 8)[:, silent] = 0
            gone = torch.ones(hidden, dtype=torch.bool)
            gone[neurons[i]] = False
            b.ff.fc_out.weight[:, gone] = 0
        torch.testing.assert_close(small(idx), model(idx), atol=1e-5, rtol=1e-5)


def test_structured_pruning_keeps_the_most_important_units_in_the_promised_number():
    model, calibration = _model(), _calibration()
    heads, neurons = head_importance(model, calibration), neuron_importance(model, calibration)
    # the oracle for one head and one neuron: the norm of what it adds to the stream, from the layer's own input
    captured = {}
    block = model.trf_blocks[1]
    block.att.out_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("o", []).append(a[0]))
    block.ff.fc_out.register_forward_pre_hook(lambda m, a: captured.setdefault("f", []).append(a[0]))
    with torch.no_grad():
        for batch in calibration:
            model(batch)
        o = torch.cat(captured["o"]).reshape(-1, 32)
        head2 = o[:, 16:24] @ block.att.out_proj.weight[:, 16:24].T  # head 2's writes (tokens, d)
        assert heads[1][2].item() == pytest.approx(head2.norm().item(), rel=1e-4)
        f = torch.cat(captured["f"]).reshape(-1, model.config.hidden_dim)
        neuron7 = f[:, 7:8] @ block.ff.fc_out.weight[:, 7:8].T  # neuron 7's writes, a rank-1 (tokens, d)
        assert neurons[1][7].item() == pytest.approx(neuron7.norm().item(), rel=1e-4)
    small = prune(model, "heads", 0.5, calibration)
    assert small.config.n_heads == 2
    for i, b in enumerate(small.trf_blocks):  # the survivors are the two heads scored highest
        kept = heads[i].topk(2).indices.sort().values
        rows = (kept[:, None] * 8 + torch.arange(8)).flatten()
        assert torch.equal(b.att.out_proj.weight, model.trf_blocks[i].att.out_proj.weight[:, rows])
    small = prune(model, "neurons", 0.25, calibration)
    assert small.config.hidden_dim == 96 and small.trf_blocks[0].ff.fc_in.weight.shape == (96, 32)


def test_pruned_checkpoints_save_load_and_generate_cached_as_uncached(tmp_path, verdict_path):
    tokenizer = BPETokenizer.train(verdict_path.read_text(encoding="utf-8"), vocab_size=300, progress=False)
    save_checkpoint(tmp_path / "ckpt", _model(vocab_size=300, context_length=32), tokenizer)
    for method, sparsity in (("heads", 0.5), ("neurons", 0.5), ("wanda", 0.5)):
        out = tmp_path / method
        assert main(["prune", "--checkpoint", str(tmp_path / "ckpt"), "--method", method, "--sparsity",
                     str(sparsity), "--data", str(verdict_path), "--calibration-samples", "8", "--batch-size", "4",
                     "--out", str(out), "--quiet"]) == 0
        model, tok = load_checkpoint(out)
        assert tok == tokenizer
        report = json.loads((out / "prune.json").read_text())
        assert report["parameters_after"] == model.num_params()
        if method == "heads":
            assert model.config.n_heads == 2 and model.trf_blocks[0].att.W_qkv.weight.shape == (48, 32)
        if method == "neurons":
            assert model.config.hidden_dim == 64
        if method == "wanda":
            assert sparsity_of(model) == pytest.approx(0.5)
        prompt = tok.encode("I had always")
        cached = generate(model, [prompt], 12)[0]
        assert cached == generate(model, [prompt], 12, use_cache=False)[0]
        assert len(cached) == len(prompt) + 12


def test_recovery_trains_the_kept_weights_and_keeps_the_pruned_ones_zero():
    model = prune(_model(), "magnitude", 0.5)
    zeros = {n: (p == 0) for n, p in model.named_parameters() if p.dim() == 2 and "trf_blocks" in n}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 96, (2000,), generator=torch.Generator().manual_seed(3)).numpy()
    recover(model, tokens, 3, lr=1e-2, batch_size=4)
    for name, p in model.named_parameters():
        if name in zeros:
            assert (p[zeros[name]] == 0).all(), name
            assert not torch.equal(p[~zeros[name]], before[name][~zeros[name]]), name
    assert sparsity_of(model) == pytest.approx(0.5)
    with frozen_zeros(model):  # the hooks go when the block ends
        pass
    assert all(not p._backward_hooks for p in model.parameters())


@pytest.mark.parametrize(("method", "sparsity", "message"), [
    ("magnitude", 1.0, r"--sparsity must be in \[0, 1\)"),
    ("wanda", -0.1, r"--sparsity must be in \[0, 1\)"),
    ("2:4", 0.3, "2:4 removes 2 of every 4"),
    ("wanda", 0.5, "give calibration text"),
    ("heads", 0.9, "keeps no head"),
])
def test_bad_methods_and_sparsities_are_one_line(method, sparsity, message):
    with pytest.raises(ScratchLLMError, match=message):
        prune(_model(), method, sparsity, None if message == "give calibration text" else _calibration())


def test_the_command_offers_every_method():
    from scratchllm.commands import prune as command
    from scratchllm.compress import prune as library

    assert command.METHODS == library.METHODS


def test_a_head_pruned_config_keeps_its_head_width_and_hugging_face_export_refuses_it():
    from scratchllm.interop.hf_gpt2 import config_to_hf

    config = GPTConfig(d_model=30, n_heads=2, attn_head_dim=8)  # 30 is not 2 heads of 15: the width is its own
    assert (config.head_dim, config.attn_dim) == (8, 16)
    with pytest.raises(ScratchLLMError, match="attn_head_dim"):
        GPTConfig(attn_head_dim=0)
    with pytest.raises(ScratchLLMError, match="attn_head_dim=None"):
        config_to_hf(config)


def test_head_pruning_refuses_grouped_query_attention():
    with pytest.raises(ScratchLLMError, match="grouped-query"):
        prune(_model(attention="grouped_query", n_kv_heads=2), "heads", 0.5, _calibration())


def test_a_calibration_set_smaller_than_one_batch_is_refused(tmp_path, verdict_path, capsys):
    with pytest.raises(ScratchLLMError, match="smaller than one batch of 8"):
        calibration_batches(list(range(100)), 16, 64, 8)  # 6 windows of 16 in 100 tokens
    with pytest.raises(ScratchLLMError, match="smaller than one batch of 8"):
        calibration_batches(list(range(10_000)), 16, 4, 8)  # 4 samples asked for
    tokenizer = BPETokenizer.train(verdict_path.read_text(encoding="utf-8"), vocab_size=300, progress=False)
    save_checkpoint(tmp_path / "ckpt", _model(vocab_size=300, context_length=32), tokenizer)
    (tmp_path / "short.txt").write_text("Too short. " * 10)
    assert main(["prune", "--checkpoint", str(tmp_path / "ckpt"), "--method", "wanda", "--sparsity", "0.5",
                 "--data", str(tmp_path / "short.txt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "smaller than one batch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert main(["prune", "--checkpoint", str(tmp_path / "ckpt"), "--method", "neurons", "--sparsity", "0.5",
                 "--out", str(tmp_path / "out")]) == 2
    assert "give --data" in capsys.readouterr().err
