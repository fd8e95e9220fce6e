"""Convert image-caption data to WebDataset shards.

    python -m llip.data.convert json pairs.json --out shards/    # ALBEF/LilT/SIMLA list, .jsonl
    python -m llip.data.convert csv pairs.tsv --out shards/ --image-column filepath \\
        --caption-column title                                   # open_clip/ITRA CSV or TSV
    python -m llip.data.convert folder images/ --out shards/     # image + same-name .txt
    python -m llip.data.convert karpathy test.json --out shards/ # eval sets, several captions

Records are streamed (JSON lines, CSV and folders are never loaded whole) and cut into shards of
--per-shard samples; worker processes encode whole shards. Each shard is written to a temporary
name and renamed when complete, next to a small stats file, so re-running skips finished shards.
Unreadable images are skipped and listed in failed.tsv; manifest.json records samples per shard
and totals (training reads it when train_num_samples is not given).

Each sample: <key>.jpg|webp, <key>.txt (the captions, one per line) and <key>.json
({"captions": [...], "image_id": ...}); training draws one caption per use from the json.
"""
import argparse
import concurrent.futures
import csv
import io
import itertools
import json
import os
import sys

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from llip.cli import ConfigError, cli
from llip.data import caption_list
from llip.io import atomic_path, atomic_write, read_text, write_json
from llip.io import read_json as read_json_file

MANIFEST = "manifest.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# ------------------------------------------------------------ record readers (streaming)
def read_json(path, image_root, image_key="image", caption_key="caption", id_key="image_id"):
    """A JSON list of {image, caption[, image_id]} (caption may be a list), or JSON lines."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            rows = (json.loads(line) for line in f if line.strip())
        else:
            rows = json.load(f)
            if not isinstance(rows, list):
                raise ConfigError(f"{path}: expected a JSON list of {{image, caption}} objects")
        for i, row in enumerate(rows):
            if image_key not in row or caption_key not in row:
                raise ConfigError(f"{path}: record {i} lacks '{image_key}' or '{caption_key}': "
                                  "set --image-key / --caption-key")
            yield (os.path.join(image_root, row[image_key]), caption_list(row[caption_key]),
                   row.get(id_key, i))


def read_csv(path, image_root, image_column="filepath", caption_column="title", sep=","):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        missing = {image_column, caption_column} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: no column(s) {sorted(missing)} (columns: "
                              f"{reader.fieldnames}): set --image-column / --caption-column / "
                              "--sep")
        for i, row in enumerate(reader):
            yield os.path.join(image_root, row[image_column]), caption_list(row[caption_column]), i


def read_folder(root):
    """Images anywhere under root, each with a caption file of the same name and .txt."""
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                    stem = os.path.splitext(entry.path)[0]
                    caption = read_text(stem + ".txt") if os.path.exists(stem + ".txt") else ""
                    yield entry.path, caption_list(caption), os.path.relpath(stem, root)


# ------------------------------------------------------------ shard writing (in workers)
def encode_image(path, resize, image_format, quality) -> bytes:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if resize and min(image.size) > resize:
            scale = resize / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)),
                                 Image.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="WEBP" if image_format == "webp" else "JPEG", quality=quality)
        return buf.getvalue()


def write_shard(out_dir, index, records, resize, image_format, quality) -> dict:
    name = f"shard-{index:06d}.tar"
    written, failed = 0, []
    with atomic_path(os.path.join(out_dir, name)) as tmp, wds.TarWriter(tmp) as sink:
        for offset, (path, captions, image_id) in enumerate(records):
            if not captions:
                failed.append((path, "no caption"))
                continue
            try:
                data = encode_image(path, resize, image_format, quality)
            except Exception as exn:  # noqa: BLE001 - any unreadable image is reported, skipped
                failed.append((path, f"{type(exn).__name__}: {exn}"[:200]))
                continue
            sink.write({"__key__": f"{index:06d}{offset:06d}", image_format: data,
                        "txt": "\n".join(captions),
                        "json": {"captions": captions, "image_id": image_id}})
            written += 1
    stats = {"index": index, "shard": name, "samples": written, "failed": failed}
    write_json(os.path.join(out_dir, f".{name}.json"), stats)  # marks the shard complete
    return stats


def _done(out_dir, index):
    path = os.path.join(out_dir, f".shard-{index:06d}.tar.json")
    return read_json_file(path) if os.path.exists(path) else None


def _chunks(records, size):
    it = iter(records)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def convert(records, out_dir, per_shard=10000, resize=0, image_format="jpg", quality=95,
            workers=4, progress=True) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    stats, pending = {}, set()
    bar = tqdm(unit="shard", desc="convert", disable=not progress)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        for index, chunk in enumerate(_chunks(records, per_shard)):
            previous = _done(out_dir, index)
            if previous is not None:  # finished by an earlier run
                stats[index] = previous
                bar.update()
                continue
            pending.add(pool.submit(write_shard, out_dir, index, chunk, resize, image_format,
                                    quality))
            if len(pending) >= 2 * workers:  # bounded: never hold the whole dataset
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    stats[future.result()["index"]] = future.result()
                    bar.update()
        for future in concurrent.futures.as_completed(pending):
            stats[future.result()["index"]] = future.result()
            bar.update()
    bar.close()
    return write_manifest(out_dir, [stats[i] for i in sorted(stats)])


def write_manifest(out_dir, shard_stats) -> dict:
    n = len(shard_stats)
    manifest = {"spec": os.path.join(out_dir, f"shard-{{000000..{n - 1:06d}}}.tar") if n else "",
                "shards": {s["shard"]: s["samples"] for s in shard_stats},
                "total_samples": sum(s["samples"] for s in shard_stats),
                "failed": sum(len(s["failed"]) for s in shard_stats)}
    atomic_write(os.path.join(out_dir, "failed.tsv"), "image\treason\n" + "".join(
        f"{path}\t{reason}\n" for s in shard_stats for path, reason in s["failed"]))
    write_json(os.path.join(out_dir, MANIFEST), manifest, indent=1)
    return manifest


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="convert image-caption data to WebDataset shards")
    parser.add_argument("kind", choices=["json", "csv", "folder", "karpathy"])
    parser.add_argument("input")
    parser.add_argument("--out", required=True)
    parser.add_argument("--image-root", default="", help="prefix of relative image paths")
    parser.add_argument("--per-shard", type=int, default=10000)
    parser.add_argument("--resize", type=int, default=0, help="shorter side in px (0: keep)")
    parser.add_argument("--format", choices=["jpg", "webp"], default="jpg")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--image-key", default="image")
    parser.add_argument("--caption-key", default="caption")
    parser.add_argument("--image-column", default="filepath")
    parser.add_argument("--caption-column", default="title")
    parser.add_argument("--sep", default=None, help="CSV separator (default: tab for .tsv)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.input):
        raise ConfigError(f"input {args.input} does not exist")
    if args.kind in ("json", "karpathy"):
        records = read_json(args.input, args.image_root, args.image_key, args.caption_key)
    elif args.kind == "csv":
        sep = args.sep or ("\t" if args.input.endswith(".tsv") else ",")
        records = read_csv(args.input, args.image_root, args.image_column,
                           args.caption_column, sep.encode().decode("unicode_escape"))
    else:
        records = read_folder(args.input)
    manifest = convert(records, args.out, args.per_shard, args.resize, args.format,
                       args.quality, args.workers)
    print(f"{manifest['total_samples']} samples in {len(manifest['shards'])} shards: "
          f"{manifest['spec']}\n{manifest['failed']} skipped (see {args.out}/failed.tsv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
