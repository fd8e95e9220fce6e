"""Readers for eval sets in the catalog's formats, streaming in batches (never all in memory).

Classification yields (images, labels); retrieval gives the caption list (cheap: text only)
plus batches of (images, image indices) and, for each caption, the index of its image.

Images are decoded in DataLoader workers. `rank` / `world` give each process its own share of
the images (evals inside distributed training): every reader splits the samples between all
(rank, worker) slots without overlap, and each sample keeps its identity (label, or retrieval
index), so the scores never depend on how many workers or ranks read the data.
"""
import csv
import inspect
import io
import json
import os
from urllib.parse import urlparse

import torch
from PIL import Image
from webdataset import tarfile_to_samples
from webdataset.gopen import rewrite_url

from llip.data import IMAGE_KEYS, caption_list, open_image, to_rgb
from llip.data.remote import unread_scheme
from llip.data.stream import expand_sources, local_path, worker_init
from llip.errors import ConfigError, one_line
from llip.io import read_json

ALLOW_PIPE = "_allow_pipe"  # set by the catalog loader from the user's flag, never from a catalog


def refuse_pipe(urls, entry) -> None:
    """Shell commands as shard URLs only when the user allowed them for this sweep. The URL is
    judged as webdataset will open it: after its GOPEN_REWRITE rules (which could turn a path
    into a command), by its scheme as a URL parser reads it ("PIPE:" is pipe:)."""
    for url in urls[:1]:  # one spec: one scheme
        instead = unread_scheme(url)
        if instead:
            raise ConfigError(f"dataset '{entry['name']}': {url[:80]} is not read directly (no "
                              f"reader here for its scheme): use a local or http(s) path, or "
                              f"'{instead}' with --allow-pipe")
    if entry.get(ALLOW_PIPE):
        return
    for url in urls:
        try:
            opened = rewrite_url(url.strip())
        except ValueError:
            raise ConfigError("GOPEN_REWRITE is malformed (rules 'prefix=replacement' joined by "
                              "';'): fix or unset it") from None
        if urlparse(opened).scheme == "pipe":
            raise ConfigError(f"dataset '{entry['name']}': path {url[:80]!r} is a shell command "
                              "(pipe:); a catalog is data and runs no commands: give a file "
                              "path, or pass --allow-pipe to llip-eval if you trust this catalog")


class _Files(torch.utils.data.Dataset):
    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, target = self.items[i]
        return self.transform(open_image(path)), target


def _loader(items, transform, batch_size, workers, rank=0, world=1):
    return torch.utils.data.DataLoader(_Files(items[rank::world], transform),
                                       batch_size=batch_size, num_workers=workers,
                                       shuffle=False, worker_init_fn=worker_init)


def _require(path: str, entry) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"dataset '{entry['name']}': {path} does not exist: edit its 'path' in "
                          "the catalog (or set the variable it uses)")


def _require_images(items, entry) -> None:
    """Every listed image exists (one stat each): a missing file fails before any encoding."""
    missing = [path for path, _ in items if not os.path.exists(path)]
    if missing:
        raise ConfigError(f"dataset '{entry['name']}': {len(missing)} of {len(items)} images "
                          f"are missing, e.g. {missing[0]}: fix image_root or the list")


def _resolve_image(entry, rel: str) -> str:
    return os.path.join(entry.get("image_root", ""), rel)


def _shard_urls(entry) -> list[str]:
    urls = [u for s in expand_sources(entry["path"]) for u in s]
    refuse_pipe(urls, entry)
    for url in urls:
        if local_path(url):
            _require(local_path(url), entry)
    return urls


def require_data(entry) -> None:
    """The dataset's files are where the catalog says (checked before a run starts)."""
    if entry["format"] == "wds":
        _shard_urls(entry)
    elif entry["format"] == "torchvision":
        _torchvision_class(entry)
    else:
        _require(entry["path"], entry)


# ------------------------------------------------------------ torchvision's datasets
# Format "torchvision" (the Llip release's "special" entries): torchvision's own dataset class
# reads its files from a local root, as its download=True lays them out; nothing is downloaded.
# Reading runs no code from the files: CIFAR's pickles are opened only once every file matches
# the official md5 torchvision holds; MNIST is raw idx files, STL10 raw binary.
TORCHVISION = ("CIFAR10", "CIFAR100", "MNIST", "STL10")


def torchvision_files(cls, root: str) -> list[str]:
    """The files torchvision's `cls` needs under `root` (it checks them all, train and test)."""
    if hasattr(cls, "resources"):  # MNIST: <root>/MNIST/raw/<idx files, uncompressed>
        return [os.path.join(root, cls.__name__, "raw", os.path.basename(url)[:-len(".gz")])
                for url, _ in cls.resources]
    names = [name for name, _ in cls.train_list + cls.test_list]
    if isinstance(getattr(cls, "meta", None), dict):  # CIFAR's label names
        names.append(cls.meta["filename"])
    return [os.path.join(root, cls.base_folder, name) for name in names]


def _torchvision_class(entry):
    """The entry's torchvision dataset class, its files checked: a missing one is one line
    naming the dataset, the layout torchvision expects and the first file missing."""
    import torchvision.datasets
    cls = getattr(torchvision.datasets, entry["dataset"])
    root = entry["path"]
    files = torchvision_files(cls, root)
    missing = [os.path.relpath(f, root) for f in files if not os.path.isfile(f)]
    if missing:
        expected = ", ".join(os.path.relpath(f, root) for f in files)
        raise ConfigError(f"dataset '{entry['name']}': torchvision's {cls.__name__} finds no data "
                          f"under {root}: it reads {expected} there (the layout its "
                          f"download=True writes); {missing[0]} is missing: fix the catalog's "
                          "path or put the files there")
    return cls


class _RGB:
    """A transform of RGB images (torchvision's MNIST gives grey ones)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(to_rgb(image))


def torchvision_dataset(entry, transform):
    cls = _torchvision_class(entry)
    split = entry.get("split") or "test"
    which = {"split": split} if "split" in inspect.signature(cls).parameters else \
        {"train": split == "train"}
    try:
        return cls(entry["path"], transform=_RGB(transform), download=False, **which)
    except (RuntimeError, ValueError) as exn:  # checksums (CIFAR, STL10), a split it lacks
        raise ConfigError(f"dataset '{entry['name']}': torchvision's {cls.__name__} refused the "
                          f"files under {entry['path']} ({one_line(exn)}): they are corrupt or "
                          "of another version, or the split is not one it has") from None


def _shard_samples(url: str):
    return tarfile_to_samples()([{"url": url}])


def _first(sample, keys: str, what: str, entry):
    for key in keys.split(";"):
        if key in sample:
            return sample[key]
    raise ConfigError(f"dataset '{entry['name']}': sample {sample.get('__key__')} of "
                      f"{sample.get('__url__')} has no {what} member ({keys})")


class _Shards(torch.utils.data.IterableDataset):
    """(image, target, shard number, position in the shard) for the samples of this (rank,
    worker) slot. With at least as many shards as slots, each slot reads whole shards; with
    fewer (a small eval set in one shard), each slot reads every shard and decodes every
    n_slots-th sample. Either way each sample is read by exactly one slot."""

    def __init__(self, urls, entry, transform, target_key, rank=0, world=1):
        super().__init__()
        self.urls, self.entry, self.transform = urls, entry, transform
        self.target_key, self.rank, self.world = target_key, rank, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        slots, slot = self.world * n_workers, self.rank * n_workers + worker
        whole_shards, counter = len(self.urls) >= slots, 0
        for shard, url in enumerate(self.urls):
            if whole_shards and shard % slots != slot:
                continue
            for pos, sample in enumerate(_shard_samples(url)):
                if not whole_shards:
                    counter += 1
                    if (counter - 1) % slots != slot:
                        continue
                data = _first(sample, IMAGE_KEYS, "image", self.entry)
                with Image.open(io.BytesIO(data)) as image:
                    pixels = self.transform(to_rgb(image))
                target = int(_first(sample, self.target_key, "label", self.entry)) \
                    if self.target_key else 0
                yield pixels, target, shard, pos


def _shard_loader(urls, entry, transform, target_key, batch_size, workers, rank, world):
    return torch.utils.data.DataLoader(
        _Shards(urls, entry, transform, target_key, rank, world), batch_size=batch_size,
        num_workers=workers, worker_init_fn=worker_init)


# ------------------------------------------------------------ classification
def classification_items(entry):
    """(path, label) pairs and class names for the file-based formats."""
    fmt, path = entry["format"], entry["path"]
    _require(path, entry)
    if fmt == "imagefolder":
        root = os.path.join(path, entry["split"]) if entry.get("split") and \
            os.path.isdir(os.path.join(path, entry["split"])) else path
        classes = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
        # Label order: numeric folder names (ImageNetV2's 0..999) sort as numbers, unless
        # class_order is "name" (torchvision's ImageFolder: by name, so 10 before 2).
        classes.sort(key=(lambda d: d) if entry.get("class_order") == "name" else
                     (lambda d: (0, int(d), "") if d.isdigit() else (1, 0, d)))
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


def classification_batches(entry, transform, batch_size: int, workers: int, rank: int = 0,
                           world: int = 1):
    """-> (iterable of (images, labels), classnames): this rank's share of the images."""
    if entry["format"] == "wds":
        loader = _shard_loader(_shard_urls(entry), entry, transform,
                               entry.get("label_key", "cls"), batch_size, workers, rank, world)
        return ((images, labels) for images, labels, _, _ in loader), entry["classnames"]
    if entry["format"] == "torchvision":
        dataset = torchvision_dataset(entry, transform)
        share = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
        return torch.utils.data.DataLoader(share, batch_size=batch_size, num_workers=workers,
                                           shuffle=False), entry["classnames"]
    items, names = classification_items(entry)
    bad = [label for _, label in items if names is not None and not 0 <= label < len(names)]
    if bad:
        raise ConfigError(f"dataset '{entry['name']}': label {bad[0]} is outside the "
                          f"{len(names)} classnames: fix classnames or the labels")
    _require_images(items, entry)
    return _loader(items, transform, batch_size, workers, rank, world), names


# ------------------------------------------------------------ per-image annotations
def annotated_batches(entry, transform, batch_size: int, workers: int):
    """(images, [annotation of each image]) with the annotation a JSON value read from member
    `label_key` (wds) or field `label_key` of each row (json: [{image, <label_key>}, ...])."""
    label_key = entry.get("label_key")
    if not label_key:
        raise ConfigError(f"dataset '{entry['name']}': {entry['task']} needs 'label_key', the "
                          "member (wds) or field (json) holding each image's labels")
    if entry["format"] == "wds":
        return _annotated_shard_batches(entry, transform, label_key, batch_size)
    if entry["format"] == "json":
        _require(entry["path"], entry)
        rows = read_json(entry["path"])
        image_key = entry.get("image_key", "image")
        items = [(_resolve_image(entry, r[image_key]), i) for i, r in enumerate(rows)]
        return ((images, [rows[i][label_key] for i in index.tolist()])
                for images, index in _loader(items, transform, batch_size, workers))
    raise ConfigError(f"dataset '{entry['name']}': {entry['task']} reads format wds or json, "
                      f"not {entry['format']}")


def _annotated_shard_batches(entry, transform, label_key: str, batch_size: int):
    """Images and their JSON annotations in shard order; only these two members are decoded."""
    images, labels = [], []
    for url in _shard_urls(entry):
        for sample in _shard_samples(url):
            with Image.open(io.BytesIO(_first(sample, IMAGE_KEYS, "image", entry))) as image:
                images.append(transform(to_rgb(image)))
            labels.append(json.loads(_first(sample, label_key, "label", entry)))
            if len(images) == batch_size:
                yield torch.stack(images), labels
                images, labels = [], []
    if images:
        yield torch.stack(images), labels


# ------------------------------------------------------------ retrieval
def retrieval_data(entry, transform, batch_size: int, workers: int, rank: int = 0,
                   world: int = 1):
    """-> (captions, caption_image_index, batches of (images, image indices)); the captions are
    all of them, the batches this rank's share of the images. An image's index is its position
    in the whole set (shard order, then order in the shard), whoever reads it."""
    fmt = entry["format"]
    if fmt == "wds":
        urls = _shard_urls(entry)
        caption_key = entry.get("caption_key", "txt;json")
        captions, owner, offsets, n_images = [], [], [], 0
        for url in urls:  # text only, in this process: cheap
            offsets.append(n_images)
            for sample in _shard_samples(url):
                for c in caption_list(_first(sample, caption_key, "caption", entry)):
                    captions.append(c)
                    owner.append(n_images)
                n_images += 1
        offsets = torch.tensor(offsets)
        loader = _shard_loader(urls, entry, transform, "", batch_size, workers, rank, world)
        return captions, owner, ((images, offsets[shard] + pos)
                                 for images, _, shard, pos in loader)
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
    _require_images(items, entry)
    return captions, owner, iter(_loader(items, transform, batch_size, workers, rank, world))
