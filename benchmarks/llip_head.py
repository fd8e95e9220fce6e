"""The Llip head at paper shape vs SigLIP's loss: forward + backward time and peak memory.

    python benchmarks/llip_head.py                          # GPU: B_local 256 x B_global 32768
    python benchmarks/llip_head.py --local 32 --global 512 --chunks 128,512   # a CPU smoke run

Paper shape (llip_b16 on 128 GPUs): this rank's 256 images (K=32 keys and values, D=512) against
the 32,768 texts of the global batch, H=8 heads, the sigmoid loss over all pairs, in blocks of
`llip_chunk` texts recomputed in backward. SigLIP: the same pairs as one (256 x 512) @ (512 x
32768) product. bf16 autocast on GPU (fp32 softmax and loss reductions), fp32 on CPU. Also
printed: the head's share of a llip_b16 training step's model FLOPs (the trainer's counter).
"""
import argparse
import contextlib
import dataclasses
import time

import torch
import torch.nn.functional as F

import llip.models.llip as llip_module
from llip.losses import sigmoid_loss
from llip.run_configs import resolve
from llip.training.throughput import step_flops


def _inputs(cfg, b_local, b_global, device):
    g = torch.Generator(device).manual_seed(0)
    k, d = cfg.mixture_tokens, cfg.embed_dim
    image_kv = torch.randn(b_local, 2, k, d, device=device, generator=g).requires_grad_()
    text_qy = torch.randn(b_global, 2, d, device=device, generator=g)
    text_qy[:, 1] = F.normalize(text_qy[:, 1], dim=-1)
    return image_kv, text_qy.requires_grad_()


def run(kind: str, cfg, b_local: int, b_global: int, device: str, steps: int) -> dict:
    head = llip_module.LlipHead(cfg).to(device)
    image_kv, text_qy = _inputs(cfg, b_local, b_global, device)
    image, text = image_kv[:, 1, 0].detach().requires_grad_(), text_qy[:, 1].detach()
    text.requires_grad_()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                else contextlib.nullcontext())

    def step():
        with autocast:
            if kind == "siglip":
                logits = head.logit_scale.exp() * image @ text.T + head.logit_bias
            else:
                logits = head.logit_scale.exp() * head.cosines(image_kv, text_qy) \
                    + head.logit_bias
            loss = sigmoid_loss(logits, 0)
        loss.backward()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    ms = 1e3 * (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30 if device == "cuda" else None
    return {"kind": kind, "chunk": cfg.llip_chunk, "ms": ms, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=int, default=256)
    parser.add_argument("--global", dest="global_", type=int, default=32768)
    parser.add_argument("--chunks", default="512,1024,2048,4096")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the block")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.compile:  # LlipHead.cosines looks the block function up at call time
        llip_module.pair_scores_factored = torch.compile(llip_module.pair_scores_factored)
    base = resolve("llip_b16")
    rows = [run("siglip", base, args.local, args.global_, device, args.steps)]
    for chunk in map(int, args.chunks.split(",")):
        cfg = dataclasses.replace(base, llip_chunk=chunk)
        rows.append(run("llip", cfg, args.local, args.global_, device, args.steps))
    world = args.global_ // args.local
    step = step_flops(base, args.local, world)
    towers = step_flops(base, args.local, 1) - (step_flops(base, args.local, 2)
                                                - step_flops(base, args.local, 1))
    print(f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, B_local "
          f"{args.local} x B_global {args.global_}, K={base.mixture_tokens}, "
          f"D={base.embed_dim}, H={base.cross_attn_heads}, compile {args.compile}; its pairwise "
          f"part is {100 * (step - towers) / step:.0f}% of a llip_b16 step's model FLOPs\n")
    print("| loss | text block | ms (fwd+bwd) | vs SigLIP | peak memory (GiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        block = r["chunk"] if r["kind"] == "llip" else "-"
        print(f"| {r['kind']} | {block} | {r['ms']:.1f} | {r['ms'] / rows[0]['ms']:.1f}x | "
              f"{peak} |")


if __name__ == "__main__":
    main()
