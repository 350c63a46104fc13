#!/usr/bin/env bash
# GPU throughput of gpt2-124m training: one prepared script for whenever a machine with GPUs is
# lent (see docs/scaling.md). For each of DDP and FSDP on all the GPUs it finds, it trains
# gpt2-124m's shape in bf16 with torch.compile for a fixed number of steps and reads tokens/s and
# MFU (against the bf16 matmul peak the trainer measures at the start of the same run) from the
# run's metrics.jsonl; everything lands in one JSON file. Needs no network: the data is the
# committed fixture text, repeated, at the byte level (throughput does not depend on the text).
#
#     bash benchmarks/gpu.sh [OUT.json]        # default: gpu-benchmark.json
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-benchmark.json}"
py="${PYTHON:-.venv/bin/python}"
steps="${STEPS:-60}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

gpus="$("$py" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$gpus" -lt 1 ]; then
  echo "no CUDA GPU found: nothing to measure" >&2
  exit 1
fi
for _ in $(seq 400); do cat tests/fixtures/the-verdict.txt; done > "$work/corpus.txt"   # ~8 MB
"$py" -m scratchllm prepare --corpus "$work/corpus.txt" --vocab-size 257 --out "$work/data" --workers 4 >&2

# gpt2-124m's shape with GPT-2's padded vocabulary, micro-batch 16 x 1024, 60 steps, no evaluation
settings=(--set model.vocab_size=50304 --set model.dropout=0.0 --set train.max_steps="$steps"
          --set train.batch_size=16 --set train.grad_accum_steps=1 --set train.warmup_steps=10
          --set train.precision=bf16 --set train.compile=true --set train.eval_interval=0
          --set train.eval_batches=1 --set train.eval_at_start=false --set train.sample_tokens=0
          --set train.plot=false --set train.log_interval=1)
for parallel in ddp fsdp; do
  "$py" -m torch.distributed.run --standalone --nproc_per_node="$gpus" -m scratchllm train --preset gpt2-124m \
    --data "$work/data" --out "$work/$parallel" --quiet "${settings[@]}" --set train.parallel="$parallel" >&2
done

"$py" - "$work" "$out" "$gpus" <<'EOF'
import json, statistics, sys, torch
work, out, gpus = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = {"gpu": torch.cuda.get_device_name(0), "gpus": gpus, "torch": torch.__version__, "model": "gpt2-124m",
          "micro_batch": [16, 1024], "precision": "bf16", "compile": True, "runs": {}}
for parallel in ("ddp", "fsdp"):
    records = [json.loads(line) for line in open(f"{work}/{parallel}/metrics.jsonl")]
    steady = [r for r in records if "tokens_per_s" in r][len(records) // 3:]  # after compilation and warm-up
    result["runs"][parallel] = {
        "tokens_per_s_all_gpus": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu_per_gpu": statistics.median(r["mfu"] for r in steady),
        "final_loss": records[-1].get("loss"),
    }
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result, indent=2))
EOF
