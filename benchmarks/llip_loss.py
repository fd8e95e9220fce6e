"""The Llip loss at growing batch: naive (every x_ij materialised), factored + chunked (ours),
and the SigLIP loss, forward + backward on CPU float32. Each case runs in its own process so that
its peak memory (max RSS above the idle process) is its own.

    python benchmarks/llip_loss.py [--batches 256,512,1024,2048,4096,8192] [--dim 128 --tokens 8]

Dims default to a CPU-sized head (D=128, K=8, H=8); the FLOP model printed below the table
scales the comparison to the paper's B/16 (D=512, K=32, H=8, global batch 32,768).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from llip.losses import sigmoid_loss
from llip.models.llip import pair_scores_factored, pair_scores_naive

NAIVE_LIMIT_GB = 12.0  # the naive path is skipped where its B x B x D tensors would not fit


def run_case(kind: str, batch: int, dim: int, tokens: int, heads: int, chunk: int) -> dict:
    torch.manual_seed(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    keys = torch.randn(batch, tokens, dim, requires_grad=True)
    values = torch.randn(batch, tokens, dim, requires_grad=True)
    queries = torch.randn(batch, dim, requires_grad=True)
    targets = torch.nn.functional.normalize(torch.randn(batch, dim), dim=-1).requires_grad_()
    w_out = (torch.randn(dim, dim) / dim ** 0.5).requires_grad_()
    image_feat = torch.nn.functional.normalize(torch.randn(batch, dim), dim=-1).requires_grad_()
    start = time.time()
    if kind == "siglip":
        logits = 10.0 * image_feat @ targets.T - 10.0
    elif kind == "naive":
        logits = 10.0 * pair_scores_naive(keys, values, queries, targets, w_out, heads, 5.0) - 10
    else:  # blocks of texts, recomputed in backward: what LlipHead.cosines does in training
        from torch.utils.checkpoint import checkpoint
        blocks = [checkpoint(pair_scores_factored, keys, values, queries[s:s + chunk],
                             targets[s:s + chunk], w_out, heads, 5.0, use_reentrant=False)
                  for s in range(0, batch, chunk)]
        logits = 10.0 * torch.cat(blocks, dim=1) - 10.0
    sigmoid_loss(logits, 0).backward()
    seconds = time.time() - start
    peak_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 2 ** 20
    return {"kind": kind, "batch": batch, "seconds": seconds, "peak_gb": peak_gb}


def flop_model(dim, tokens, heads, batch, tower_gflop_per_sample=60.0) -> str:
    """Forward FLOPs per (image, text) pair; training ~3x (forward, backward; Llip recomputes
    its blocks: ~4x). Tower cost: ViT-B/16 + text tower forward+backward per sample."""
    hk = heads * tokens
    llip_pair = 2 * (2 * tokens * dim + hk * hk)  # attention logits, numerator, Gram form
    siglip_pair = 2 * dim
    per_sample_llip = 4 * batch * llip_pair / 1e9
    per_sample_siglip = 3 * batch * siglip_pair / 1e9
    step_ratio = (tower_gflop_per_sample + per_sample_llip) / \
        (tower_gflop_per_sample + per_sample_siglip)
    return (f"D={dim} K={tokens} H={heads}, global batch {batch}: Llip loss "
            f"{per_sample_llip:.1f} GFLOP/sample vs SigLIP {per_sample_siglip:.3f}; with "
            f"~{tower_gflop_per_sample:.0f} GFLOP/sample of towers the training step costs "
            f"{step_ratio:.2f}x SigLIP's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="256,512,1024,2048,4096,8192")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--case", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process: one measurement
        kind, batch = args.case.split(":")
        print(json.dumps(run_case(kind, int(batch), args.dim, args.tokens, args.heads,
                                  args.chunk)))
        return
    print(f"CPU float32, {os.cpu_count()} cores, torch {torch.__version__}; D={args.dim}, "
          f"K={args.tokens}, H={args.heads}, text blocks of {args.chunk}; forward+backward\n")
    print("| batch | SigLIP s | Llip factored s | Llip naive s | SigLIP GB | factored GB | "
          "naive GB | factored/SigLIP | naive/factored |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in map(int, args.batches.split(",")):
        row = {}
        for kind in ("siglip", "factored", "naive"):
            if kind == "naive" and 4 * 4 * batch * batch * args.dim / 2 ** 30 > NAIVE_LIMIT_GB:
                continue
            out = subprocess.run([sys.executable, __file__, "--case", f"{kind}:{batch}",
                                  "--dim", str(args.dim), "--tokens", str(args.tokens),
                                  "--heads", str(args.heads), "--chunk", str(args.chunk)],
                                 capture_output=True, text=True, check=True)
            row[kind] = json.loads(out.stdout.strip().splitlines()[-1])

        def cell(kind, key, fmt):
            return format(row[kind][key], fmt) if kind in row else "n/a (memory)"
        ratio = row["factored"]["seconds"] / row["siglip"]["seconds"]
        naive_ratio = (f"{row['naive']['seconds'] / row['factored']['seconds']:.2f}"
                       if "naive" in row else "n/a")
        print(f"| {batch} | {cell('siglip', 'seconds', '.3f')} | "
              f"{cell('factored', 'seconds', '.3f')} | {cell('naive', 'seconds', '.3f')} | "
              f"{cell('siglip', 'peak_gb', '.2f')} | {cell('factored', 'peak_gb', '.2f')} | "
              f"{cell('naive', 'peak_gb', '.2f')} | {ratio:.0f}x | {naive_ratio} |", flush=True)
    print("\nFLOP model:")
    print("  " + flop_model(args.dim, args.tokens, args.heads, max(map(int,
                                                                     args.batches.split(",")))))
    print("  " + flop_model(512, 32, 8, 32768))


if __name__ == "__main__":
    main()
