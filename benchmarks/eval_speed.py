"""Eval task speed: DataLoader workers decoding WebDataset shards, and all eval taus of Llip
scored from one image pass instead of one pass per tau.

    python -m benchmarks.eval_speed                         # tiny Llip, 1024 JPEGs in 8 shards
    python -m benchmarks.eval_speed --config llip_b16 --images 4096 --workers 0,8

Synthetic 256x256 JPEGs (decode cost as real photos), random weights (speed does not depend on
them), 100 classes x 1 template. The GPU with bf16 autocast if present, else CPU fp32.
"""
import argparse
import io
import os
import tempfile
import time

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from llip.data import tokenizer_for, transform_for
from llip.evaluation.datasets import classification_batches
from llip.evaluation.zeroshot import Classification, class_embeddings, score_images
from llip.models import build_model
from llip.run_configs import resolve


def write_shards(folder: str, n_images: int, n_shards: int) -> str:
    rng = np.random.default_rng(0)
    per_shard = -(-n_images // n_shards)
    for s in range(n_shards):
        with wds.TarWriter(os.path.join(folder, f"b-{s:06d}.tar")) as sink:
            for i in range(s * per_shard, min(n_images, (s + 1) * per_shard)):
                small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                image = Image.fromarray(small).resize((256, 256), Image.BICUBIC)
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=90)
                sink.write({"__key__": f"{i:06d}", "jpg": buf.getvalue(), "cls": str(i % 100)})
    return os.path.join(folder, f"b-{{000000..{n_shards - 1:06d}}}.tar")


def one_task(model, cfg, entry, class_emb, workers, taus, passes, batch, device) -> float:
    """Seconds for one classification task scoring `taus`, in `passes` image passes."""
    start = time.time()
    for group in (taus,) if passes == 1 else [[t] for t in taus]:
        batches, _ = classification_batches(entry, transform_for(cfg, False), batch, workers)
        scorers = {tau: Classification(100, device) for tau in group}
        score_images(model, batches, class_emb, scorers, device)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="llip_tiny")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--taus", default="1,3,5,8,10")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = resolve(args.config)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    taus = [float(t) for t in args.taus.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        names = [f"class {i}" for i in range(100)]
        entry = {"name": "bench", "format": "wds", "classnames": names,
                 "path": write_shards(folder, args.images, args.shards)}
        class_emb = class_embeddings(model, tokenizer_for(cfg), names, ["a photo of a {c}."],
                                     device)
        one_task(model, cfg, entry, class_emb, 0, taus[:1], 1, args.batch, device)  # warm-up
        print(f"{args.config} on {device}, {args.images} JPEGs 256px in {args.shards} shards, "
              f"batch {args.batch}, {os.cpu_count()} CPUs\n")
        print("| workers | taus | image passes | seconds | images/s (per tau) |")
        print("|---|---|---|---|---|")
        for workers in (int(w) for w in args.workers.split(",")):
            for n_taus, passes in ((1, 1), (len(taus), len(taus)), (len(taus), 1)):
                secs = one_task(model, cfg, entry, class_emb, workers, taus[:n_taus], passes,
                                args.batch, device)
                print(f"| {workers} | {n_taus} | {passes} | {secs:.1f} | "
                      f"{args.images * n_taus / secs:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
