#!/usr/bin/env bash
# Every GPU measurement of this project in one command, on one CUDA GPU:
#
#     bash benchmarks/gpu_all.sh [out_dir]          # default: results/gpu-<UTC time>
#
# 1. tests/integration/test_gpu.py (FSDP2 bf16 steps over nccl);
# 2. benchmarks/gpu_step.py: clip_b16 and llip_b16, FSDP2 bf16 params + fp32 reductions,
#    torch.compile off/on x activation checkpointing off/on, at the largest per-GPU batch that
#    fits and at 256 (the paper's per-GPU batch): samples/s, TFLOP/s, MFU, peak memory;
# 3. trainer_vs_open_clip.py --model b16 --device cuda: our trainer vs open_clip_train, same
#    model, batch and shards (bf16 autocast; open_clip_train with amp_bf16), 3 alternating runs;
# 4. llip_head.py: the Llip head at paper shape (256 x 32768, K=32, D=512, H=8) vs SigLIP's loss
#    over text blocks of 512..4096, eager and compiled;
# 5. eval_throughput.py: 1,000-class zero-shot images/s of clip_b16 and llip_b16 (bf16).
# Each step's output goes to <out_dir>/<step>.txt and its tables to <out_dir>/RESULTS.md, ready
# to paste into benchmarks/RESULTS.md. Expect about an hour on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-results/gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/tmp"
export TMPDIR="$(realpath "$OUT/tmp")"  # torchrun leaves its scratch dirs here
TORCHRUN="$PY -m torch.distributed.run --nproc_per_node 1"

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA GPU visible to $PY: these measurements need one" >&2
    exit 2
fi

step() {  # step <name> <command...>: run, keep its output, fail loudly
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.txt"
}

step tests $PY -m pytest -q tests/integration/test_gpu.py
step gpu_step_max $TORCHRUN benchmarks/gpu_step.py --batch max --compile off,on --ckpt off,on \
    --json "$OUT/gpu_step.jsonl"
step gpu_step_256 $TORCHRUN benchmarks/gpu_step.py --batch 256 --compile off,on --ckpt off,on \
    --json "$OUT/gpu_step.jsonl"
step vs_open_clip $PY benchmarks/trainer_vs_open_clip.py --model b16 --device cuda --batch 256 \
    --workers 12 --steps 100 --log-every 20 --runs 3 --also llip
step llip_head $PY benchmarks/llip_head.py
step llip_head_compiled $PY benchmarks/llip_head.py --compile
step eval_throughput $PY benchmarks/eval_throughput.py --configs clip_b16,llip_b16 \
    --images 4096 --batch 256 --bf16

{
    echo "# GPU results ($(date -u +%Y-%m-%d), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    echo
    echo "Command: \`bash benchmarks/gpu_all.sh\` at commit $(git rev-parse --short HEAD)."
    for name in gpu_step_max gpu_step_256 vs_open_clip llip_head llip_head_compiled \
                eval_throughput; do
        echo
        echo "## $name"
        echo
        # the line that heads the first table, then every table row
        awk '/^\|/ { if (!seen) { print head; print ""; seen = 1 } print; next }
             $0 != "" { head = $0 }' "$OUT/$name.txt"
    done
} > "$OUT/RESULTS.md"
echo "tables: $OUT/RESULTS.md"
