import pytest
import torch
from fake_hub import REPO, reference_greedy, run_against_hub
from sharp_models import book_generate, sharp_model

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate, sample_next, stream
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import BPETokenizer

POSITIONS = ["learned", "sinusoidal", "rope", "none"]


@pytest.mark.parametrize("pos", POSITIONS)
def test_cached_greedy_equals_uncached(pos):
    model = sharp_model(pos)
    idx = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(1))
    cached = generate(model, idx, 20)
    assert torch.equal(cached, generate(model, idx, 20, use_cache=False))
    assert torch.equal(cached[:, :9], idx) and cached.shape == (2, 29)


def test_position_encodings_change_the_output():
    idx = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(1))
    outs = {pos: tuple(generate(sharp_model(pos), idx, 12)[0, 9:].tolist()) for pos in POSITIONS}
    assert len(set(outs.values())) == len(POSITIONS)


@pytest.mark.parametrize("pos", ["sinusoidal", "rope"])
def test_extrapolating_models_generate_past_the_context(pos):
    model = sharp_model(pos)  # context_length 32
    idx = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(2))
    cached = generate(model, idx, 30)
    assert cached.shape == (1, 50)
    assert torch.equal(cached, generate(model, idx, 30, use_cache=False))


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_prompts_of_different_lengths_match_each_alone(pos, use_cache):
    model = sharp_model(pos)
    prompts = [[5, 9, 400, 2], [7], [3, 3, 3, 8, 100, 200, 300, 11, 12], [42, 43]]
    alone = [generate(model, [p], 10, use_cache=use_cache)[0] for p in prompts]
    assert generate(model, prompts, 10, use_cache=use_cache) == alone
    assert alone[0] == generate(model, torch.tensor([prompts[0]]), 10)[0].tolist()


def test_stop_ids_end_a_row_and_pad_the_rest():
    model = sharp_model()
    prompts = [[5, 9, 400, 2], [7, 8]]
    free = generate(model, prompts, 12)
    stop = free[0][4 + 3]  # the 4th new token of the first row
    stopped = generate(model, prompts, 12, stop_ids=[stop], pad_id=511)
    first_stop = free[0].index(stop, 4)
    assert stopped[0] == free[0][: first_stop + 1]
    tokens = list(stream(model, torch.tensor([prompts[0]]), 12, stop_ids=[stop]))
    assert [int(t) for t in tokens] == free[0][4 : first_stop + 1]


def test_stream_yields_the_same_tokens_as_generate():
    model = sharp_model("rope")
    idx = torch.tensor([[1, 2, 3, 4]])
    tokens = [int(t) for t in stream(model, idx, 8, temperature=0.9, top_k=50, seed=3)]
    assert tokens == generate(model, idx, 8, temperature=0.9, top_k=50, seed=3)[0, 4:].tolist()


def test_seed_makes_sampling_reproducible_and_leaves_the_global_rng_alone():
    model = sharp_model()
    idx = torch.tensor([[1, 2, 3]])
    torch.manual_seed(123)
    expected_global = torch.rand(1)
    torch.manual_seed(123)
    a = generate(model, idx, 15, temperature=1.5, seed=7)
    assert torch.equal(torch.rand(1), expected_global)
    assert torch.equal(a, generate(model, idx, 15, temperature=1.5, seed=7))
    assert not torch.equal(a, generate(model, idx, 15, temperature=1.5, seed=8))


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = sharp_model()
    idx = torch.tensor([[10, 20, 30]])
    greedy = generate(model, idx, 10)
    assert torch.equal(generate(model, idx, 10, temperature=1.0, top_k=1, seed=0), greedy)
    assert torch.equal(generate(model, idx, 10, temperature=1.0, top_p=1e-6, seed=0), greedy)


def test_sampling_follows_the_filtered_softmax():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(40_000, 1)
    g = torch.Generator().manual_seed(0)

    def freq(**kw):
        return torch.bincount(sample_next(logits, generator=g, **kw), minlength=4).float() / len(logits)

    torch.testing.assert_close(freq(temperature=1.0), torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.01, rtol=0)
    hot = torch.softmax(logits[0] / 2.0, dim=-1)
    torch.testing.assert_close(freq(temperature=2.0), hot, atol=0.01, rtol=0)
    torch.testing.assert_close(freq(temperature=1.0, top_k=2), torch.tensor([0.625, 0.375, 0, 0]), atol=0.01, rtol=0)
    # nucleus 0.7: the smallest set reaching 0.7 is {0, 1}
    torch.testing.assert_close(freq(temperature=1.0, top_p=0.7), torch.tensor([0.625, 0.375, 0, 0]), atol=0.01, rtol=0)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_bad_sampling_settings_are_clear_errors(kwargs, words):
    model = sharp_model()
    args = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ScratchLLMError, match=words):
        generate(model, torch.tensor([[1, 2]]), **args)


def test_prompt_longer_than_a_learned_context_errors_or_crops():
    model = sharp_model("learned")  # context 32
    long = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ScratchLLMError, match="context_length of 32"):
        generate(model, long, 5)
    cropped = generate(model, long, 5, crop=True)
    assert torch.equal(cropped[:, :40], long)  # the whole prompt comes back
    assert torch.equal(cropped, book_generate(model, long, 5))


@pytest.mark.parametrize("use_cache", [True, False])
def test_learned_positions_generate_past_the_context_with_a_sliding_window(use_cache):
    model = sharp_model("learned")  # context 32
    prompt = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(1))
    out = generate(model, prompt, 60, crop=True, use_cache=use_cache)  # 70 tokens > 32
    assert torch.equal(out, book_generate(model, prompt, 60))
    rows = [[5, 6, 7], prompt[1].tolist()]  # left-padded batch == each row alone
    batch = generate(model, rows, 45, crop=True, use_cache=use_cache)
    for row, got in zip(rows, batch, strict=True):
        assert got == book_generate(model, torch.tensor([row]), 45)[0].tolist()
    with pytest.raises(ScratchLLMError, match="every prompt"):
        generate(model, [[1], []], 2)


def test_cli_streams_the_greedy_continuation_and_stops_at_endoftext(tmp_path, gpt2_files, capsys):
    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.cli import main
    tok = BPETokenizer.from_gpt2_files(*gpt2_files)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size, d_model=32, n_heads=2))
    save_checkpoint(tmp_path / "ckpt", model, tok)
    prompt = "Héllo, wörld"
    ids = tok.encode(prompt)
    expected = generate(model, [ids], 12)[0][len(ids) :]
    assert main(["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", prompt, "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == prompt + tok.decode(expected) + "\n"
    eot = tok.special_tokens["<|endoftext|>"]
    past_context = generate(model, [ids], 150, crop=True)[0][len(ids) :]  # 150 + prompt > context 64
    past_context = past_context[: past_context.index(eot)] if eot in past_context else past_context
    assert main(["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", prompt, "--max-new-tokens", "150",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == prompt + tok.decode(past_context) + "\n"

    with torch.no_grad():  # make <|endoftext|> the likeliest next token everywhere
        model.out_head.weight[eot] = model.out_head.weight[expected[2]] * 5
    save_checkpoint(tmp_path / "ckpt", model, tok)
    assert main(["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", prompt, "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert "<|endoftext|>" not in out and len(out) < len(prompt) + 100


@pytest.mark.parametrize("use_cache", [True, False])
def test_seeded_rows_of_a_batch_each_equal_their_row_alone_with_seed_plus_b(use_cache):
    model = sharp_model("rope")
    prompts = [[5, 9, 400, 2], [7], [5, 9, 400, 2]]
    batch = generate(model, prompts, 12, temperature=1.0, top_k=30, seed=4, use_cache=use_cache)
    assert batch == [generate(model, [p], 12, temperature=1.0, top_k=30, seed=4 + b)[0] for b, p in enumerate(prompts)]
    assert batch[0] != batch[2]  # the same prompt, its own generator: a different sample


def test_cli_generates_from_pretrained_weights_by_name_with_transformers_greedy_text(tmp_path, gpt2_files):
    pytest.importorskip("transformers")
    command = ["generate", "--model", REPO, "--prompt", "Hello, world!", "--max-new-tokens", "8", "--temperature", "0"]
    done, reference = run_against_hub(tmp_path, gpt2_files, command)
    assert done.returncode == 0, done.stderr
    tokenizer = BPETokenizer.from_gpt2_files(*gpt2_files)
    new = reference_greedy(reference, tokenizer.encode("Hello, world!"), 8)  # the oracle
    if 50256 in new:
        new = new[: new.index(50256)]
    assert done.stdout == "Hello, world!" + tokenizer.decode(new) + "\n"
