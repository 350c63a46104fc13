"""Generation speed: our GPT against transformers.GPT2LMHeadModel with the same weights.

Both get the same random gpt2-124m weights (float32, tied head, as GPT-2), a 32-token prompt and
produce 256 greedy tokens, one after the other in the same run. Then the KV cache's effect:
uncached generation, and the cost of one new token at 256 and 1024 tokens of context with and
without the cache. Last, a learned-position model generating past its context (the demo shape,
4 layers x 256, context 128, vocab 4096): ms/token while the KV cache serves and after the window
fills, when every step recomputes the whole window (docs/generation.md says why). ``--window``
runs only that part, ``--batch`` measures several sequences decoding together.

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/generate.py [--quick] [--window] [--batch 8]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch
import transformers

from scratchllm.generate import generate, stream
from scratchllm.interop import load_hf_gpt2
from scratchllm.model import GPT, GPTConfig, lay_out_weights


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def hf_generate(model, prompt: torch.Tensor, n: int, use_cache: bool = True) -> torch.Tensor:
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=use_cache, pad_token_id=0)


@torch.inference_mode()
def hf_forward_loop(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding calling GPT2LMHeadModel's forward with its KV cache directly: transformers
    without the overhead of ``generate`` (logits processors, stopping criteria)."""
    ids, past, step = prompt, None, prompt
    for _ in range(n):
        out = model(step, cache=past, use_cache=True)
        past, step = out.cache, out.logits[:, -1:].argmax(-1)
        ids = torch.cat([ids, step], dim=1)
    return ids


@torch.inference_mode()
def per_token_seconds(model, context: int, steps: int = 16) -> tuple[float, float]:
    """Seconds for one new token at ``context`` tokens: with the KV cache (prefill context-steps
    tokens, time ``steps`` single-token steps) and without (one forward over all ``context``)."""
    idx = torch.randint(0, model.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1, context)
    model(idx[:, : context - steps], cache=cache, last_only=True)
    start = time.perf_counter()
    for t in range(context - steps, context):
        model(idx[:, t : t + 1], cache=cache, last_only=True)
    cached = (time.perf_counter() - start) / steps
    model(idx, last_only=True)  # warm-up at this length
    uncached = min(timed(lambda: model(idx, last_only=True))[0] for _ in range(3))
    return cached, uncached


def stream_median_ms(model, prompt: torch.Tensor, n: int) -> float:
    """Median ms between the tokens ``stream`` yields (the engine's decode step as a user meets
    it), after the first (the prefill): robust to the stalls of a shared machine."""
    gaps, last = [], time.perf_counter()
    for _ in stream(model, prompt, n):
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    return 1e3 * statistics.median(gaps[1:])


@torch.inference_mode()
def window_ms_per_token(batch: int = 1, prompt_tokens: int = 16, new_tokens: int = 240) -> tuple[float, float]:
    """The demo shape (learned positions, context 128) generating ``new_tokens`` greedy tokens
    past its context with ``crop=True``: mean ms/token of the steps whose text still fits the
    context (the KV cache serves) and of the steps after the window filled (recompute)."""
    torch.manual_seed(0)
    model = lay_out_weights(GPT(GPTConfig.preset("demo", vocab_size=4096)).eval())  # as scratchllm generate
    ctx = model.config.context_length
    prompt = torch.randint(0, 4096, (batch, prompt_tokens), generator=torch.Generator().manual_seed(1))
    list(stream(model, prompt, 8, crop=True))  # warm-up
    before, after = [], []
    last = time.perf_counter()
    for i, _ in enumerate(stream(model, prompt, new_tokens, crop=True)):
        now = time.perf_counter()
        # step i reads prompt_tokens + i tokens; the first step (the prefill) counts for neither
        if i > 0:
            (before if prompt_tokens + i <= ctx else after).append(now - last)
        last = now
    return 1e3 * sum(before) / len(before), 1e3 * sum(after) / len(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="skip the slow uncached 256-token runs")
    parser.add_argument("--window", action="store_true", help="only the past-the-context measurement (demo shape)")
    parser.add_argument("--batch", type=int, default=1, help="sequences in the past-the-context measurement")
    args = parser.parse_args()
    n = args.new_tokens
    if args.window:
        print_window(args.batch)
        return

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # gpt2-124m shape, random weights
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = lay_out_weights(load_hf_gpt2(tmp))  # the decode layout, as scratchllm generate loads it
    prompt = torch.randint(0, 50257, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    generate(ours, prompt, 4)  # warm-up: first-call allocations and kernel selection
    hf_generate(hf, prompt, 4)

    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; gpt2-124m float32, prompt {args.prompt_tokens}, {n} greedy tokens")
    rows = []
    t_ours, out_ours = timed(lambda: generate(ours, prompt, n))
    t_hf, out_hf = timed(lambda: hf_generate(hf, prompt, n))
    t_loop, _ = timed(lambda: hf_forward_loop(hf, prompt, n))
    same = int((out_ours[0, -n:] == out_hf[0, -n:]).cumprod(0).sum())
    rows.append(("KV cache, vs generate()", n / t_ours, n / t_hf))
    rows.append(("KV cache, vs a plain forward loop", n / t_ours, n / t_loop))
    if not args.quick:
        t_ours_nc, out_nc = timed(lambda: generate(ours, prompt, n, use_cache=False))
        t_hf_nc, _ = timed(lambda: hf_generate(hf, prompt, n, use_cache=False))
        assert torch.equal(out_nc, out_ours), "uncached tokens differ from cached ones"
        rows.append(("no cache, vs generate()", n / t_ours_nc, n / t_hf_nc))
    print(f"\n| {n} new tokens | scratchllm tok/s | transformers tok/s | ratio |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print(f"\ngreedy tokens identical to transformers for the first {same} of {n}")
    print(f"median ms between streamed tokens (scratchllm): {stream_median_ms(ours, prompt, n):.1f}")

    print("\n| context | cached ms/token | uncached ms/token | cache speed-up |")
    print("|---:|---:|---:|---:|")
    for context in (256, 1024):
        cached, uncached = per_token_seconds(ours, context)
        print(f"| {context} | {cached * 1e3:.1f} | {uncached * 1e3:.1f} | {uncached / cached:.1f}x |")
    print_window(args.batch)


def print_window(batch: int) -> None:
    before, after = window_ms_per_token(batch)
    print(f"\n# demo shape (4 x 256, learned positions, context 128), batch {batch}, 16-token prompt, "
          "240 greedy tokens with crop=True")
    print("| | ms/token (whole batch) |\n|---|---:|")
    print(f"| text within the context (KV cache) | {before:.2f} |")
    print(f"| past the context (window recomputed per step) | {after:.2f} |")


if __name__ == "__main__":
    main()
