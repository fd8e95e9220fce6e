"""Readers for eval sets in the catalog's formats, streaming in batches (never all in memory).

Classification yields (images, labels); retrieval gives the caption list (cheap: text only)
plus batches of (images, image indices) and, for each caption, the index of its image.
"""
import csv
import os

import torch
import webdataset as wds
from PIL import Image

from evals.catalog import refuse_pipe
from llip.cli import ConfigError
from llip.data import caption_list, sample_image
from llip.data.stream import expand_sources, local_path
from llip.io import read_json


class _Files(torch.utils.data.Dataset):
    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, target = self.items[i]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), target


def _loader(items, transform, batch_size, workers):
    return torch.utils.data.DataLoader(_Files(items, transform), batch_size=batch_size,
                                       num_workers=workers, shuffle=False)


def _require(path: str, entry) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"dataset '{entry['name']}': {path} does not exist: edit its 'path' in "
                          "the catalog (or set the variable it uses)")


def _resolve_image(entry, rel: str) -> str:
    return os.path.join(entry.get("image_root", ""), rel)


def _wds(entry, first_shard_check=True):
    """The entry's shards, undecoded: members are decoded by sample_image / caption_list only
    (webdataset's default decoders would unpickle .pyd and torch.load .pth members)."""
    urls = [u for s in expand_sources(entry["path"]) for u in s]
    refuse_pipe(urls, entry)
    if first_shard_check:
        for url in urls:
            if local_path(url):
                _require(local_path(url), entry)
    return wds.WebDataset(urls, shardshuffle=False, empty_check=False)


def _label(sample, key: str) -> int:
    if key not in sample:
        raise ValueError(f"sample {sample.get('__key__')!r} has no '{key}' member")
    return int(sample[key].decode("ascii").strip())  # e.g. .cls: the class index as text


# ------------------------------------------------------------ classification
def classification_items(entry):
    """(path, label) pairs and class names for the file-based formats."""
    fmt, path = entry["format"], entry["path"]
    _require(path, entry)
    if fmt == "imagefolder":
        root = os.path.join(path, entry["split"]) if entry.get("split") and \
            os.path.isdir(os.path.join(path, entry["split"])) else path
        classes = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
        # Label order: numeric folder names (ImageNetV2's 0..999) sort as numbers.
        classes.sort(key=lambda d: (0, int(d), "") if d.isdigit() else (1, 0, d))
        items = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
                 for f in sorted(os.listdir(os.path.join(root, c)))]
        names = entry["classnames"] if entry["classnames"] != "folder" else \
            [c.replace("_", " ") for c in classes]
        return items, names
    if fmt == "filelist":
        image_key, label_key = entry.get("image_key", "filepath"), entry.get("label_key", "label")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=entry.get("separator", ",")))
        return [(_resolve_image(entry, r[image_key]), int(r[label_key])) for r in rows], \
            entry["classnames"]
    if fmt == "json":
        rows = read_json(path)
        image_key, label_key = entry.get("image_key", "image"), entry.get("label_key", "label")
        return [(_resolve_image(entry, r[image_key]), int(r[label_key])) for r in rows], \
            entry["classnames"]
    raise ConfigError(f"dataset '{entry['name']}': format {fmt} has no file list")


def classification_batches(entry, transform, batch_size: int, workers: int):
    """-> (iterable of (images, labels), classnames)."""
    if entry["format"] == "wds":
        label_key = entry.get("label_key", "cls")
        pipeline = (_wds(entry).map(lambda s: (transform(sample_image(s)), _label(s, label_key)))
                    .batched(batch_size))
        loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=0)
        return ((x, torch.as_tensor(y)) for x, y in loader), entry["classnames"]
    items, names = classification_items(entry)
    bad = [label for _, label in items if not 0 <= label < len(names)]
    if bad:
        raise ConfigError(f"dataset '{entry['name']}': label {bad[0]} is outside the "
                          f"{len(names)} classnames: fix classnames or the labels")
    return _loader(items, transform, batch_size, workers), names


# ------------------------------------------------------------ retrieval
def retrieval_data(entry, transform, batch_size: int, workers: int):
    """-> (captions, caption_image_index, batches of (images, image indices))."""
    fmt = entry["format"]
    if fmt == "wds":
        caption_key = entry.get("caption_key", "txt;json")
        captions, owner = [], []
        for i, (text,) in enumerate(_wds(entry).to_tuple(caption_key)):
            for c in caption_list(text):
                captions.append(c)
                owner.append(i)
        pipeline = (_wds(entry, False).map(lambda s: (transform(sample_image(s)), s["__key__"]))
                    .batched(batch_size))
        loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=0)

        def batches():
            start = 0
            for images, _ in loader:
                yield images, torch.arange(start, start + len(images))
                start += len(images)
        return captions, owner, batches()
    path = entry["path"]
    _require(path, entry)
    image_key = entry.get("image_key", "image" if fmt == "json" else "filepath")
    caption_key = entry.get("caption_key", "caption")
    if fmt == "json":  # Karpathy style: [{"image": ..., "caption": str | [str, ...]}, ...]
        rows = [(r[image_key], caption_list(r[caption_key])) for r in read_json(path)]
    elif fmt == "filelist":  # one row per (image, caption); rows of one image are grouped
        grouped = {}
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f, delimiter=entry.get("separator", ",")):
                grouped.setdefault(r[image_key], []).append(r[caption_key])
        rows = list(grouped.items())
    else:
        raise ConfigError(f"dataset '{entry['name']}': retrieval does not read format {fmt}")
    captions = [c for _, caps in rows for c in caps]
    owner = [i for i, (_, caps) in enumerate(rows) for _ in caps]
    items = [(_resolve_image(entry, image), i) for i, (image, _) in enumerate(rows)]
    return captions, owner, iter(_loader(items, transform, batch_size, workers))
