"""Single-object images with three independent attributes (shape, colour, position); each
caption names one of them, chosen at random; zero-shot tasks probe each attribute separately.
One object's independent attributes fit in a single embedding, so this is the negative control
of the binding benchmark (llip.data.synthetic.scenes): parity between CLIP, SigLIP and Llip is
expected.

Splits: train, validation and test are independent draws (different seeds) of the same
distribution; there are only 4 x 4 x 4 attribute combinations, so all of them occur in every
split: what is held out is the images (jitter of place, size and colour), not the combinations.
catalog.json holds the test split's tasks, catalog_validation.json the validation split's (for
choosing settings, e.g. the lr: the test split is only for the final table).

    python -m llip.data.synthetic.attributes data/attributes  # shards, both catalogs
"""
import argparse
import io
import os
import random

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from llip.io import read_json, write_json

SHAPES = ["circle", "square", "triangle", "cross"]
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230),
          "yellow": (230, 210, 40)}
POSITIONS = ["top left", "top right", "bottom left", "bottom right"]
CAPTIONS = {
    "shape": ["a {v}", "a picture of a {v}", "there is a {v} in the image"],
    "color": ["something {v}", "a {v} object", "the thing is {v}"],
    "position": ["an object in the {v}", "something at the {v}", "the {v} is occupied"],
}
TASKS = {"shape": (SHAPES, ["a {c}", "a picture of a {c}"]),
         "color": (list(COLORS), ["a {c} object", "something {c}"]),
         "position": (POSITIONS, ["an object in the {c}", "something at the {c}"])}
SIZE = 32


def draw(shape: str, color: str, position: str, rng: random.Random) -> bytes:
    image = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    pen = ImageDraw.Draw(image)
    half = SIZE // 2
    x0 = (0 if "left" in position else half) + rng.randint(1, 3)
    y0 = (0 if "top" in position else half) + rng.randint(1, 3)
    s = rng.randint(9, 12)
    fill = tuple(int(np.clip(c + rng.randint(-20, 20), 0, 255)) for c in COLORS[color])
    if shape == "circle":
        pen.ellipse([x0, y0, x0 + s, y0 + s], fill=fill)
    elif shape == "square":
        pen.rectangle([x0, y0, x0 + s, y0 + s], fill=fill)
    elif shape == "triangle":
        pen.polygon([(x0 + s // 2, y0), (x0, y0 + s), (x0 + s, y0 + s)], fill=fill)
    else:
        w = max(2, s // 4)
        pen.rectangle([x0 + s // 2 - w // 2, y0, x0 + s // 2 + w // 2, y0 + s], fill=fill)
        pen.rectangle([x0, y0 + s // 2 - w // 2, x0 + s, y0 + s // 2 + w // 2], fill=fill)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write(out_dir: str, prefix: str, n: int, seed: int, per_shard: int = 1000) -> str:
    rng = random.Random(seed)
    with wds.ShardWriter(os.path.join(out_dir, f"{prefix}-%06d.tar"), maxcount=per_shard,
                         verbose=0) as sink:
        for i in range(n):
            values = {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)),
                      "position": rng.choice(POSITIONS)}
            named = rng.choice(list(CAPTIONS))  # the caption describes one attribute only
            caption = rng.choice(CAPTIONS[named]).format(v=values[named])
            sample = {"__key__": f"{prefix}{i:06d}", "txt": caption,
                      "png": draw(values["shape"], values["color"], values["position"], rng)}
            for attr, (names, _) in TASKS.items():
                sample[attr] = str(names.index(values[attr]))
            sink.write(sample)
        shards = sink.shard
    return os.path.join(out_dir, f"{prefix}-{{000000..{shards - 1:06d}}}.tar")


def catalog(path: str, split: str) -> dict:
    """One zero-shot task per attribute on one split's shards."""
    return {attr: {"task": "zeroshot_classification", "format": "wds", "path": path,
                   "split": split, "classnames": names, "templates": templates,
                   "metric": "acc1", "label_key": attr, "classes": len(names),
                   "chance": 1 / len(names)}
            for attr, (names, templates) in TASKS.items()}


def build(out_dir: str, n_train: int = 20000, n_test: int = 1000, seed: int = 0,
          n_validation: int = 1000) -> dict:
    """Write the train, validation and test shards and their catalogs; idempotent (specs.json
    marks a complete build of these sizes and seed)."""
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, "specs.json")
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    if os.path.exists(marker):
        specs = read_json(marker)
        if specs.get("sizes") == sizes and specs.get("seed") == seed:
            return specs
    # seeds as before for train (seed) and test (seed + 1): the same samples as earlier builds
    specs = {"train": write(out_dir, "train", n_train, seed),
             "test": write(out_dir, "test", n_test, seed + 1),
             "validation": write(out_dir, "validation", n_validation, seed + 2),
             "n_train": n_train, "sizes": sizes, "seed": seed}
    for split, name in (("test", "catalog.json"), ("validation", "catalog_validation.json")):
        specs[f"catalog_{split}"] = write_json(os.path.join(out_dir, name),
                                               catalog(specs[split], split), indent=1)
    specs["catalog"] = specs["catalog_test"]
    write_json(marker, specs)
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--validation", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    print(build(args.out_dir, args.train, args.test, n_validation=args.validation))


if __name__ == "__main__":
    main()
