"""Scenes that need binding: the paper's claim in miniature (Llip vs CLIP / SigLIP).

Each 32 px image holds 3 objects in 3 distinct quadrants; their shapes are drawn without
replacement from 6 and their colours without replacement from 6, so knowing which colours and
which shapes are present is not enough: a model must know which colour goes with which shape.
Each sample carries several captions, each naming 1 or 2 of its objects ("a red circle", "a red
circle and a blue square"); the training stream draws one caption every time the sample is used,
so one image is paired with captions about different parts of it - the setting where one image
embedding per image is at a disadvantage and a caption-contextualised one (Llip) should not be.

Splits (train / validation / test) are disjoint in their sets of objects: a test scene's
combination of three (colour, shape) objects never occurs in training, though every single
(colour, shape) pair does. Per sample, the eval members are:
  bind_colour.json  one question per object: "a {c} {s}" for the 6 colours c, the object's shape s
  bind_shape.json   one question per object: "a {c} {s}" for the 6 shapes s, the object's colour c
  presence.json     the indices of the objects present among the 36 "{c} {s}" classnames
read by evals.main_mc's multiple_choice and multilabel tasks (catalog.json: test split,
catalog_validation.json: validation split).

    python -m llip.data.synthetic.scenes data/scenes   # writes shards, catalogs and specs.json
"""
import argparse
import hashlib
import io
import itertools
import os
import random

import webdataset as wds
from PIL import Image, ImageDraw

from llip.io import read_json, write_json

SHAPES = ["circle", "square", "triangle", "cross", "diamond", "ring"]
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230),
          "yellow": (230, 210, 40), "purple": (150, 60, 200), "white": (235, 235, 235)}
QUADRANTS = ["top left", "top right", "bottom left", "bottom right"]
OBJECTS = 3
SIZE = 32
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}  # fractions of the object sets
# The multi-label classnames: every (colour, shape) pair, colour-major.
CLASSNAMES = [f"{c} {s}" for c in COLORS for s in SHAPES]
PROMPT = "a {c} {s}"


def draw(objects, rng: random.Random) -> bytes:
    """objects: [(shape, colour, quadrant)] -> PNG bytes (black background, jittered)."""
    image = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    pen = ImageDraw.Draw(image)
    half = SIZE // 2
    for shape, color, quadrant in objects:
        s = rng.randint(10, 12)
        x0 = (0 if "left" in quadrant else half) + rng.randint(1, half - s - 1)
        y0 = (0 if "top" in quadrant else half) + rng.randint(1, half - s - 1)
        fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLORS[color])
        box = [x0, y0, x0 + s, y0 + s]
        if shape == "circle":
            pen.ellipse(box, fill=fill)
        elif shape == "ring":
            pen.ellipse(box, outline=fill, width=3)
        elif shape == "square":
            pen.rectangle(box, fill=fill)
        elif shape == "triangle":
            pen.polygon([(x0 + s // 2, y0), (x0, y0 + s), (x0 + s, y0 + s)], fill=fill)
        elif shape == "diamond":
            m = s // 2
            pen.polygon([(x0 + m, y0), (x0 + s, y0 + m), (x0 + m, y0 + s), (x0, y0 + m)],
                        fill=fill)
        else:  # cross
            w = max(3, s // 3)
            pen.rectangle([x0 + (s - w) // 2, y0, x0 + (s + w) // 2, y0 + s], fill=fill)
            pen.rectangle([x0, y0 + (s - w) // 2, x0 + s, y0 + (s + w) // 2], fill=fill)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def split_of(pairs) -> str:
    """The split an object set belongs to: a stable hash of its sorted (colour, shape) pairs, so
    the same set of objects always lands in the same split, whatever the seed or sizes."""
    key = ";".join(sorted(f"{c} {s}" for c, s in pairs)).encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") / 2 ** 64
    edge = 0.0
    for name, fraction in SPLITS.items():
        edge += fraction
        if u < edge:
            return name
    return name


def captions(objects) -> list[str]:
    """Every caption of a scene: each object alone, and each ordered pair of objects."""
    names = [PROMPT.format(c=color, s=shape) for shape, color, _ in objects]
    return names + [f"{a} and {b}" for a, b in itertools.permutations(names, 2)]


def questions(objects) -> dict:
    """The eval members of a scene: two multiple-choice questions per object, and presence."""
    colors = list(COLORS)
    return {
        "bind_colour": [{"choices": [PROMPT.format(c=c, s=shape) for c in colors],
                         "answer": colors.index(color)} for shape, color, _ in objects],
        "bind_shape": [{"choices": [PROMPT.format(c=color, s=s) for s in SHAPES],
                        "answer": SHAPES.index(shape)} for shape, color, _ in objects],
        "presence": sorted(CLASSNAMES.index(f"{color} {shape}") for shape, color, _ in objects),
    }


def scenes(split: str, rng: random.Random):
    """An endless stream of [(shape, colour, quadrant)] scenes of one split."""
    while True:
        shapes = rng.sample(SHAPES, OBJECTS)
        colors = rng.sample(list(COLORS), OBJECTS)
        if split_of(zip(colors, shapes)) != split:
            continue
        yield list(zip(shapes, colors, rng.sample(QUADRANTS, OBJECTS)))


def write(out_dir: str, split: str, n: int, seed: int, per_shard: int = 2000) -> str:
    rng = random.Random(f"{seed}:{split}")
    with wds.ShardWriter(os.path.join(out_dir, f"{split}-%06d.tar"), maxcount=per_shard,
                         verbose=0) as sink:
        for i, objects in zip(range(n), scenes(split, rng)):
            sample = {"__key__": f"{split}{i:06d}", "png": draw(objects, rng),
                      "json": {"captions": captions(objects)},
                      "scene.json": {"objects": [dict(zip(("shape", "colour", "quadrant"), o))
                                                 for o in objects]}}
            if split != "train":  # eval members; training reads only the image and captions
                sample.update({f"{name}.json": v for name, v in questions(objects).items()})
            sink.write(sample)
        shards = sink.shard
    return os.path.join(out_dir, f"{split}-{{000000..{shards - 1:06d}}}.tar")


def catalog(path: str, split: str) -> dict:
    """The three eval tasks on one split's shards."""
    choice = {"task": "multiple_choice", "format": "wds", "path": path, "split": split,
              "metric": "acc1", "chance": 1 / len(SHAPES)}
    return {
        "bind_colour": {**choice, "label_key": "bind_colour.json", "description":
                        "which colour has the {shape} in the image? 6-way, per object"},
        "bind_shape": {**choice, "label_key": "bind_shape.json", "description":
                       "which shape is {colour} in the image? 6-way, per object"},
        "presence": {"task": "multilabel", "format": "wds", "path": path, "split": split,
                     "classnames": CLASSNAMES, "templates": ["a {c}"], "metric": "mAP",
                     "label_key": "presence.json", "chance": OBJECTS / len(CLASSNAMES),
                     "description": "rank images for each of the 36 single-object prompts"},
    }


def build(out_dir: str, n_train: int = 20000, n_validation: int = 500, n_test: int = 1000,
          seed: int = 0) -> dict:
    """Write the three splits and their catalogs; idempotent (specs.json marks a complete
    build of these sizes)."""
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, "specs.json")
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    if os.path.exists(marker):
        specs = read_json(marker)
        if specs["sizes"] == sizes and specs["seed"] == seed:
            return specs
    specs = {split: write(out_dir, split, n, seed) for split, n in sizes.items()}
    specs.update(sizes=sizes, seed=seed, n_train=n_train)
    for split, name in (("test", "catalog.json"), ("validation", "catalog_validation.json")):
        specs[f"catalog_{split}"] = write_json(os.path.join(out_dir, name),
                                               catalog(specs[split], split), indent=1)
    write_json(marker, specs)
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--validation", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    specs = build(args.out_dir, args.train, args.validation, args.test, args.seed)
    print(f"scenes: {args.train} train in {specs['train']}, {args.validation} validation, "
          f"{args.test} test; catalogs {specs['catalog_test']}, {specs['catalog_validation']}")


if __name__ == "__main__":
    main()
