"""Compression methods side by side, in one run: size on disk, decode speed, held-out quality.

Rows are ``METHODS``, each a way to compress a float GPT in place (quantization here; pruning
rows go in the same list), against our fp32 model and transformers' GPT2LMHeadModel fp32:

- size and speed: the GPT-2 124M shape (tied head, seeded random weights: speed does not depend
  on the values), compressed, saved with ``save_checkpoint`` (size = model.safetensors), loaded back
  with ``load_checkpoint`` and timed generating ``--new-tokens`` greedy tokens with the KV cache after
  a 32-token prompt (best of ``--repeats``). Rows of the same ``format`` (GPTQ and round-to-nearest
  store the same integers) share one measurement, made with the first row of the format.
- quality: a model pretrained here (``--checkpoint``, else the speedrun-tinyshakespeare preset
  trained in the run on byte-level Tiny Shakespeare), each method applied to it, then held-out
  bits per byte with ``scratchllm eval``'s code (``score_tokens``) on the validation split; GPTQ
  calibrates on windows of the training split. The last column scores again with the fbgemm kernel
  forced (one window per call: its activations are rounded with one scale per 128-token window,
  coarser than decoding's one scale per token), what the decode path's rounding costs at most.

``--kernels`` first prints the per-call time of each kernel on the 124M shapes, the measurement
that chose ``quantized_layers.FBGEMM_MAX_ROWS``.

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/compress.py [--kernels] [--checkpoint RUN]
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from generate import hf_generate
from reference_files import tinyshakespeare

from scratchllm.checkpoint import load_checkpoint, save_checkpoint
from scratchllm.compress.gptq import calibration_windows
from scratchllm.compress.quantize import quantize_weight
from scratchllm.compress.quantize_model import quantize_model, set_kernel
from scratchllm.compress.quantized_layers import QuantizedLinear, fbgemm_available
from scratchllm.data.shards import open_prepared, prepare
from scratchllm.generate import generate
from scratchllm.interop import load_hf_gpt2
from scratchllm.model import GPT, lay_out_weights
from scratchllm.train import Score, load_run_config, score_tokens, train
from scratchllm.train.evaluation import corpus_tokens

Compress = Callable[[GPT, torch.Tensor], None]  # (model, calibration windows) -> None, in place


@dataclass(frozen=True)
class Method:
    """One row of the table: how to compress a float model, and which stored format it makes."""

    name: str
    compress: Compress
    format: str  # rows of one format have the same size and speed (measured once, with the first of them)
    kernel: str = "auto"


def _quantize(bits: int, group_size: int | None = None, method: str = "rtn", embeddings: bool = True) -> Compress:
    def compress(model: GPT, calibration: torch.Tensor) -> None:
        quantize_model(model, bits, group_size, method=method, calibration=calibration, embeddings=embeddings)
    return compress


METHODS = [
    Method("int8, round to nearest", _quantize(8), "int8"),
    Method("int8, round to nearest, dequantize kernel", _quantize(8), "int8 dequantize", kernel="dequantize"),
    Method("int8, GPTQ", _quantize(8, method="gptq"), "int8"),
    Method("int4 g128, round to nearest", _quantize(4, 128), "int4 g128"),
    Method("int4 g128, GPTQ", _quantize(4, 128, "gptq"), "int4 g128"),
    Method("int4 g128, AWQ", _quantize(4, 128, "awq"), "int4 g128"),
    Method("int4 g64, round to nearest", _quantize(4, 64), "int4 g64"),
    Method("int4 g64, GPTQ", _quantize(4, 64, "gptq"), "int4 g64"),
    Method("int4 g64, AWQ", _quantize(4, 64, "awq"), "int4 g64"),
    Method("int4 g32, round to nearest", _quantize(4, 32), "int4 g32"),
    Method("int4 g32, GPTQ", _quantize(4, 32, "gptq"), "int4 g32"),
    Method("int4 g32, AWQ", _quantize(4, 32, "awq"), "int4 g32"),
    Method("int4 g128, round to nearest, float32 table", _quantize(4, 128, embeddings=False), "int4 g128 keep"),
    Method("int4 g128, GPTQ, float32 table", _quantize(4, 128, "gptq", embeddings=False), "int4 g128 keep"),
]


def decode_tokens_per_second(model, prompt: torch.Tensor, n: int, repeats: int, hf: bool = False) -> float:
    run = (lambda: hf_generate(model, prompt, n)) if hf else (lambda: generate(model, prompt, n))
    if hf:
        hf_generate(model, prompt, 4)
    else:
        generate(model, prompt, 4)  # warm-up: first-call allocations, fbgemm packing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return n / best


def speed_model(tmp: Path) -> tuple[GPT, transformers.GPT2LMHeadModel]:
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # gpt2-124m shape, random weights
    hf.save_pretrained(tmp / "hf")
    return load_hf_gpt2(tmp / "hf").eval(), hf


def quality_model(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """A pretrained checkpoint and the corpus (a prepared folder or text) its tokenizer reads."""
    if args.checkpoint:
        return Path(args.checkpoint), args.corpus or str(tinyshakespeare(args.text))
    data_dir = prepare(tinyshakespeare(args.text), tmp / "bytes", vocab_size=257, workers=1)
    overrides = ["train.sample_tokens=0", "train.plot=false"]
    if args.train_steps:
        overrides.append(f"train.max_steps={args.train_steps}")
    base = {"model": {"vocab_size": open_prepared(data_dir).vocab_size}, "data": {"dir": str(data_dir)}}
    config = load_run_config(args.preset, overrides=overrides, base=base)
    start = time.perf_counter()
    train(config, tmp / "pretrained", progress=False)
    print(f"# pretrained {args.preset} for {config.train.max_steps} steps in {time.perf_counter() - start:.0f} s")
    return tmp / "pretrained", str(data_dir)


def print_kernels(rows_list: tuple[int, ...] = (1, 4, 16, 64), repeats: int = 10) -> None:
    """ms per call of each way to multiply by a GPT-2 124M matrix, by rows of input."""
    shapes = {"W_qkv 768->2304": (2304, 768), "fc_in 768->3072": (3072, 768), "fc_out 3072->768": (768, 3072),
              "head 768->50257": (50257, 768)}
    print("\n| matrix | rows | fp32 F.linear ms | int8 fbgemm ms | int8 dequantize ms | int4 dequantize ms "
          "| _weight_int8pack_mm ms | fbgemm vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (out, n_in) in shapes.items():
        w = torch.randn(out, n_in) * 0.02
        layers = {}
        for bits, g, kernel in ((8, None, "fbgemm"), (8, None, "dequantize"), (4, 128, "dequantize")):
            layer = QuantizedLinear.from_weight(quantize_weight(w, bits, g))
            layer.kernel = kernel
            layers[(bits, kernel)] = layer
        q8 = quantize_weight(w, 8)
        for rows in rows_list:
            x = torch.randn(rows, n_in)
            calls = {
                "fp32": lambda x=x, w=w: F.linear(x, w),
                "fbgemm": lambda x=x, layer=layers[(8, "fbgemm")]: layer(x),
                "deq8": lambda x=x, layer=layers[(8, "dequantize")]: layer(x),
                "deq4": lambda x=x, layer=layers[(4, "dequantize")]: layer(x),
                "pack": lambda x=x, q8=q8: torch._weight_int8pack_mm(x, q8.q, q8.scales),
            }
            ms = {}
            for key, call in calls.items():
                call()
                start = time.perf_counter()
                for _ in range(repeats):
                    call()
                ms[key] = (time.perf_counter() - start) / repeats * 1e3
            print(f"| {name} | {rows} | {ms['fp32']:.3f} | {ms['fbgemm']:.3f} | {ms['deq8']:.3f} | {ms['deq4']:.3f} "
                  f"| {ms['pack']:.3f} | {ms['fp32'] / ms['fbgemm']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="the pretrained model for quality (default: train one)")
    parser.add_argument("--corpus", default=None, help="with --checkpoint: the text to score (val split) and "
                        "calibrate on (train split); default Tiny Shakespeare")
    parser.add_argument("--text", type=Path, default=None, help="Tiny Shakespeare (default: fetched into the cache)")
    parser.add_argument("--preset", default="speedrun-tinyshakespeare", help="what to pretrain without --checkpoint")
    parser.add_argument("--train-steps", type=int, default=0, help="steps to pretrain (default: the preset's)")
    parser.add_argument("--calibration-windows", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", default="", help="comma-separated row numbers of METHODS (default: all)")
    parser.add_argument("--kernels", action="store_true", help="also time each kernel per call (the 124M shapes)")
    args = parser.parse_args()
    methods = [METHODS[int(i)] for i in args.methods.split(",")] if args.methods else METHODS
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; decode: gpt2-124m shape, prompt 32, {args.new_tokens} greedy tokens, KV cache, "
          f"best of {args.repeats}")
    if args.kernels:
        print_kernels()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt, corpus = quality_model(args, tmp)
        base, tokenizer = load_checkpoint(ckpt)
        context = base.config.context_length
        held_out = corpus_tokens(corpus, tokenizer, split="val")
        calibration = calibration_windows(corpus_tokens(corpus, tokenizer, split="train"), context,
                                          args.calibration_windows, batch_size=8)

        def quality(model: GPT, batch_size: int = 8) -> Score:
            return score_tokens(model, held_out, tokenizer, batch_size=batch_size)

        fp32, hf = speed_model(tmp)
        prompt = torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(1))
        save_checkpoint(tmp / "fp32", fp32)
        fp32_bytes = (tmp / "fp32" / "model.safetensors").stat().st_size
        # decoded in the layout `scratchllm generate` loads (model/layout.py); the copy keeps fp32 as it was trained
        decoding = lay_out_weights(copy.deepcopy(fp32))
        fp32_speed = decode_tokens_per_second(decoding, prompt, args.new_tokens, args.repeats)
        del decoding
        hf_speed = decode_tokens_per_second(hf, prompt, args.new_tokens, args.repeats, hf=True)
        hf_bytes = (tmp / "hf" / "model.safetensors").stat().st_size
        ref = quality(base)
        print(f"# quality: {ckpt} ({sum(p.numel() for p in base.parameters()):,} parameters, d_model "
              f"{base.config.d_model}), {len(held_out):,} held-out tokens, {len(calibration)} calibration windows "
              f"of {context}\n")
        print("| method | size on disk (124M shape) | vs fp32 | decode tokens/s (124M shape) | vs our fp32 "
              "| held-out bits/byte | perplexity | vs fp32 | bits/byte, fbgemm kernel forced |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| fp32, scratchllm | {fp32_bytes / 1e6:.1f} MB | 1.00x | {fp32_speed:.1f} | 1.00x "
              f"| {ref.bits_per_byte:.4f} | {ref.perplexity:.3f} | | |")
        print(f"| fp32, transformers GPT2LMHeadModel | {hf_bytes / 1e6:.1f} MB | {hf_bytes / fp32_bytes:.2f}x "
              f"| {hf_speed:.1f} | {hf_speed / fp32_speed:.2f}x | (same weights: same logits) | | | |")
        measured: dict[str, tuple[int, float]] = {}
        for method in methods:
            if method.format not in measured:
                model = copy.deepcopy(fp32)
                method.compress(model, torch.randint(0, 50257, (8, 128), generator=torch.Generator().manual_seed(2)))
                save_checkpoint(tmp / "q", model)
                del model
                size = (tmp / "q" / "model.safetensors").stat().st_size
                loaded = lay_out_weights(load_checkpoint(tmp / "q")[0])  # as `scratchllm generate` loads it
                set_kernel(loaded, method.kernel)
                measured[method.format] = size, decode_tokens_per_second(loaded, prompt, args.new_tokens, args.repeats)
                del loaded
            size, speed = measured[method.format]
            model = copy.deepcopy(base)
            method.compress(model, calibration)
            set_kernel(model, method.kernel)
            score = quality(model)
            forced = ""
            if method.kernel == "auto" and fbgemm_available():  # the decode path: activations rounded too
                set_kernel(model, "fbgemm")
                forced = f"{quality(model, batch_size=1).bits_per_byte:.4f}"
            print(f"| {method.name} | {size / 1e6:.1f} MB | {size / fp32_bytes:.2f}x | {speed:.1f} "
                  f"| {speed / fp32_speed:.2f}x | {score.bits_per_byte:.4f} | {score.perplexity:.3f} "
                  f"| {100 * (score.perplexity / ref.perplexity - 1):+.2f}% | {forced} |", flush=True)


if __name__ == "__main__":
    main()
