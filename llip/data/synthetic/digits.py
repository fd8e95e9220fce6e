"""Demo data: scikit-learn's handwritten digits (1,797 real 8x8 scans that ship with the package)
as WebDataset shards with templated captions, and a held-out test split for zero-shot evals.

    python -m llip.data.synthetic.digits data/digits      # ~1 s; writes train-*.tar, test-*.tar
"""
import argparse
import io
import os
import random

import numpy as np
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from llip.io import atomic_write, read_text

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Training captions vary wording and name the digit as a word or a numeral.
CAPTION_TEMPLATES = [
    "a handwritten digit {word}",
    "the number {num}, written by hand",
    "a scan of a hand-drawn {word}",
    "handwritten {num}",
    "a small grey image of the digit {word}",
    "someone wrote the number {word}",
]
# Zero-shot prompts (the classnames are the words).
EVAL_TEMPLATES = ["a handwritten digit {c}", "the number {c}, written by hand"]
IMAGE_PX = 32
TEST_FRACTION = 0.2


def _png(pixels: np.ndarray) -> bytes:
    gray = (pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(gray, mode="L").resize((IMAGE_PX, IMAGE_PX), Image.BICUBIC)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_split(out_dir: str, prefix: str, images, labels, per_shard: int, seed: int) -> int:
    rng = random.Random(seed)
    pattern = os.path.join(out_dir, f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for i, (pixels, label) in enumerate(zip(images, labels)):
            label = int(label)
            caption = rng.choice(CAPTION_TEMPLATES).format(word=CLASSNAMES[label], num=label)
            sink.write({"__key__": f"{prefix}{i:05d}", "png": _png(pixels), "txt": caption,
                        "cls": str(label)})
        return sink.shard


def build(out_dir: str, seed: int = 0) -> dict:
    """Write the shards (idempotent: an existing complete build is kept) and return their specs."""
    os.makedirs(out_dir, exist_ok=True)
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=TEST_FRACTION, random_state=seed,
        stratify=digits.target)
    marker = os.path.join(out_dir, "COMPLETE")
    if not os.path.exists(marker):
        n_train = write_split(out_dir, "train", x_train, y_train, per_shard=250, seed=seed)
        n_test = write_split(out_dir, "test", x_test, y_test, per_shard=1000, seed=seed + 1)
        atomic_write(marker, f"{n_train} {n_test}\n")
    n_train, n_test = map(int, read_text(marker).split())
    return {
        "train": os.path.join(out_dir, f"train-{{000000..{n_train - 1:06d}}}.tar"),
        "test": os.path.join(out_dir, f"test-{{000000..{n_test - 1:06d}}}.tar"),
        "n_train": len(y_train), "n_test": len(y_test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    specs = build(parser.parse_args().out_dir, parser.parse_args().seed)
    print(f"digits: {specs['n_train']} train samples in {specs['train']}, "
          f"{specs['n_test']} held-out in {specs['test']}")


if __name__ == "__main__":
    main()
