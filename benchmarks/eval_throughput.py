"""Zero-shot classification throughput with 1,000 classes: images/s of CLIP vs Llip, whose
image embedding is recomputed for every (image, class) pair.

    python benchmarks/eval_throughput.py                 # demo and tiny models
    python benchmarks/eval_throughput.py --configs clip_b16,llip_b16 --images 32 --batch 32
    python benchmarks/eval_throughput.py --configs clip_b16,llip_b16 --images 4096 --batch 256 \
        --bf16                                           # on a GPU

Random weights and inputs (throughput does not depend on them); CPU float32 or the GPU if
present. Class embeddings (1,000 classes x templates) are built once, as in evals.
"""
import argparse
import time

import torch

from llip.models import build_model
from llip.run_configs import resolve


@torch.no_grad()
def measure(name: str, n_images: int, batch: int, n_classes: int, device: str,
            bf16: bool = False) -> dict:
    cfg = resolve(name)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    if bf16:
        model = model.to(torch.bfloat16)
    tokens = torch.randint(1, 49000, (n_classes, cfg.context_length), device=device)
    tokens[:, 10] = 49407
    classes = torch.cat([model.encode_text(tokens[i:i + 250]) for i in range(0, n_classes, 250)])
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device,
                         dtype=torch.bfloat16 if bf16 else torch.float32)
    model.logits(model.encode_image(images[:2]), classes)  # warm-up
    start, done = time.time(), 0
    while done < n_images:
        model.logits(model.encode_image(images), classes).argmax(dim=1).tolist()
        done += batch
    return {"config": name, "images_per_s": done / (time.time() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="clip_demo,llip_demo,clip_tiny,llip_tiny")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights and inputs")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = [measure(n, args.images, args.batch, args.classes, device, args.bf16)
            for n in args.configs.split(",")]
    print(f"{device}{' bf16' if args.bf16 else ''}, {args.classes} classes, batch "
          f"{args.batch}, {args.images} images\n")
    print("| config | images/s | vs the CLIP of the same size |")
    print("|---|---|---|")
    clip = {r["config"].replace("clip_", ""): r["images_per_s"] for r in rows
            if r["config"].startswith("clip_")}
    for r in rows:
        base = clip.get(r["config"].split("_", 1)[1])
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else ""
        print(f"| {r['config']} | {r['images_per_s']:,.1f} | {ratio} |")


if __name__ == "__main__":
    main()
