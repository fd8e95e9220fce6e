"""Data throughput: converter and training loader, samples/s per worker count.

    python benchmarks/data_throughput.py [--images 2000] [--size 256]

Builds real JPEG files (random pixels, so they do not compress away), converts them with
llip.data.convert at 1 and 2 workers, then streams the shards through the training loader
(decode + open_clip transform + tokenizer) at 0, 1 and 2 DataLoader workers. Prints a table.
"""
import argparse
import dataclasses
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from llip.data import tokenizer_for, transform_for
from llip.data.convert import convert, read_json
from llip.data.stream import build_train_stream
from llip.run_configs import resolve


def make_images(root: str, n: int, size: int) -> str:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        pixels = rng.integers(0, 255, (size, size * 4 // 3, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, f"{i}.jpg"), quality=90)
        records.append({"image": f"{i}.jpg", "caption": f"a photo of thing number {i}"})
    path = os.path.join(root, "pairs.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="short side of the source JPEGs")
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = make_images(tmp, args.images, args.size)
        for workers in (1, 2):
            out = os.path.join(tmp, f"shards{workers}")
            start = time.time()
            manifest = convert(read_json(src, tmp), out, per_shard=250, resize=224,
                               workers=workers, progress=False)
            rate = manifest["total_samples"] / (time.time() - start)
            rows.append(("convert (resize 224, JPEG q95)", workers, rate, rate / workers))
        spec = manifest["spec"]
        cfg = dataclasses.replace(resolve("clip_b16"), train_data=spec, batch_size=64,
                                  train_num_samples=args.images, shuffle_buffer=500)
        for workers in (0, 1, 2):
            cfg_w = dataclasses.replace(cfg, workers=workers)
            loader = iter(build_train_stream(cfg_w, 0, 1, 0, transform_for(cfg_w, True),
                                             tokenizer_for(cfg_w)))
            next(loader)  # start-up and buffer fill are not throughput
            start = time.time()
            for _ in range(args.batches):
                next(loader)
            rate = args.batches * 64 / (time.time() - start)
            rows.append(("train loader (decode, 224 crop, tokenize)", workers, rate,
                         rate / max(workers, 1)))
    print(f"{os.cpu_count()} CPU cores, {args.images} images of short side {args.size}\n")
    print("| stage | workers | samples/s | samples/s per worker |")
    print("|---|---|---|---|")
    for stage, workers, rate, per in rows:
        print(f"| {stage} | {workers} | {rate:,.0f} | {per:,.0f} |")


if __name__ == "__main__":
    main()
