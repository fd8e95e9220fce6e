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

An output dir belongs to one conversion: .convert.json (also in the manifest) records the
input's sha256 (a folder's: of its listing with sizes and times) and the parameters that shape
the shards. Re-running with the same ones resumes; with others it is refused, or rebuilt from
scratch with --overwrite (never a mix of old and new shards). Images referenced by a JSON/CSV
file are not hashed: edit them in place and you must --overwrite.

Each sample: <key>.jpg|webp, <key>.txt (the captions, one per line) and <key>.json
({"captions": [...], "image_id": ...}); training draws one caption per use from the json.
"""
import argparse
import concurrent.futures
import csv
import hashlib
import io
import itertools
import json
import os
import re
import sys

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from llip.cli import cli
from llip.data import caption_list, open_image
from llip.errors import ConfigError, StorageError, storage_error
from llip.io import atomic_path, atomic_write, read_text, sha256_file, write_json
from llip.io import read_json as read_json_file

MANIFEST = "manifest.json"
JOB = ".convert.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Every file a conversion writes in its output dir (what --overwrite removes, nothing else).
OWN_FILES = re.compile(r"^(shard-\d{6}\.tar|\.shard-\d{6}\.tar(\.json|\..*\.tmp)|"
                       r"manifest\.json|failed\.tsv|\.convert\.json|\..*\.tmp)$")


class Unreadable(str):
    """In place of a record's captions: why the record cannot be converted (failed.tsv)."""


# ------------------------------------------------------------ record readers (streaming)
def read_json(path, image_root, image_key="image", caption_key="caption", id_key="image_id"):
    """A JSON list of {image, caption[, image_id]} (caption may be a list), or JSON lines."""
    with _input_errors(path), open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            rows = (_json_line(path, n, line) for n, line in enumerate(f, 1) if line.strip())
        else:
            rows = json.load(f)
            if not isinstance(rows, list):
                raise ConfigError(f"{path}: expected a JSON list of {{image, caption}} objects, "
                                  f"found a {type(rows).__name__}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or image_key not in row or caption_key not in row:
                raise ConfigError(f"{path}: record {i} is not an object with '{image_key}' and "
                                  f"'{caption_key}': set --image-key / --caption-key")
            if not isinstance(row[image_key], str) or not row[image_key]:
                raise ConfigError(f"{path}: record {i} has {image_key}={row[image_key]!r}, "
                                  "not an image path")
            yield (os.path.join(image_root, row[image_key]), caption_list(row[caption_key]),
                   row.get(id_key, i))


def _json_line(path, number, line):
    try:
        return json.loads(line)
    except json.JSONDecodeError as exn:
        raise ConfigError(f"{path}: line {number} is not valid JSON ({exn.msg})") from None
    except RecursionError:
        raise ConfigError(f"{path}: line {number} is nested too deeply") from None


class _input_errors:
    """Undecodable input files as one line naming the file and the fix."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exn, tb):
        if isinstance(exn, UnicodeDecodeError):
            raise ConfigError(f"{self.path} is not UTF-8 text (byte {exn.start}): re-encode it, "
                              "e.g. iconv -f latin1 -t utf-8") from None
        if isinstance(exn, json.JSONDecodeError):
            raise ConfigError(f"{self.path} is not valid JSON ({exn.msg}, line {exn.lineno} "
                              f"column {exn.colno})") from None
        if isinstance(exn, csv.Error):
            raise ConfigError(f"{self.path} is not a readable CSV/TSV ({exn})") from None
        if isinstance(exn, RecursionError):
            raise ConfigError(f"{self.path} is nested too deeply to be a list of image-caption "
                              "records") from None
        return False


def read_csv(path, image_root, image_column="filepath", caption_column="title", sep=","):
    with _input_errors(path), open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        missing = {image_column, caption_column} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: no column(s) {sorted(missing)} (columns: "
                              f"{reader.fieldnames}): set --image-column / --caption-column / "
                              "--sep")
        for i, row in enumerate(reader):
            image, caption = row[image_column], row[caption_column]
            if not image or caption is None:  # a short row: reported, not fatal
                yield f"{path}:row {i + 2}", Unreadable("row has too few columns"), i
                continue
            yield os.path.join(image_root, image), caption_list(caption), i


def walk_files(root):
    """Files under root in a stable order, following symlinks but never into a directory
    already seen (a symlink loop is walked once)."""
    seen, stack = set(), [root]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as entries:
            ordered = sorted(entries, key=lambda e: e.name)
        subdirs = []
        for entry in ordered:
            if entry.is_dir():
                subdirs.append(entry.path)
            else:
                yield entry
        stack.extend(reversed(subdirs))


def read_folder(root):
    """Images anywhere under root, each with a caption file of the same name and .txt."""
    for entry in walk_files(root):
        if entry.name.lower().endswith(IMAGE_SUFFIXES):
            stem = os.path.splitext(entry.path)[0]
            try:
                captions = caption_list(read_text(stem + ".txt")) \
                    if os.path.exists(stem + ".txt") else []
            except (UnicodeDecodeError, ValueError):
                captions = Unreadable(f"caption file {stem}.txt is not UTF-8 text")
            yield entry.path, captions, os.path.relpath(stem, root)


def input_digest(path: str) -> str:
    """sha256 of an input file, or of a folder's listing (names, sizes, modification times)."""
    if os.path.isfile(path):
        return sha256_file(path)
    digest = hashlib.sha256()
    for entry in walk_files(path):
        try:
            st = entry.stat()
            digest.update(f"{os.path.relpath(entry.path, path)}\t{st.st_size}\t"
                          f"{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{os.path.relpath(entry.path, path)}\t?\n".encode(
                "utf-8", "surrogateescape"))
    return digest.hexdigest()


# ------------------------------------------------------------ shard writing (in workers)
def encode_image(path, resize, image_format, quality) -> bytes:
    image = open_image(path)  # upright (EXIF orientation applied), 8-bit RGB
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
            if isinstance(captions, Unreadable):
                failed.append((path, str(captions)))
                continue
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
            workers=4, progress=True, source=None, overwrite=False) -> dict:
    """`source` describes the input (kind, path, digest, reader options) for the job record."""
    for name, value, low in (("per_shard", per_shard, 1), ("workers", workers, 1),
                             ("resize", resize, 0), ("quality", quality, 1)):
        if value < low:
            raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= {low}")
    if quality > 100:
        raise ConfigError(f"--quality={quality} must be <= 100")
    job = {**(source or {}), "per_shard": per_shard, "resize": resize, "format": image_format,
           "quality": quality}
    claim_output(out_dir, job, overwrite)
    stats, pending = {}, set()
    # closed before an error propagates: the error is the last line, not the bar
    with tqdm(unit="shard", desc="convert", disable=not progress) as bar, \
            concurrent.futures.ProcessPoolExecutor(workers) as pool:
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
    return write_manifest(out_dir, [stats[i] for i in sorted(stats)], job)


def claim_output(out_dir: str, job: dict, overwrite: bool) -> None:
    """Make out_dir this conversion's: resume the same job, refuse (or --overwrite) another."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir} exists and is not a directory: give a directory")
    os.makedirs(out_dir, exist_ok=True)
    own = [f for f in os.listdir(out_dir) if OWN_FILES.match(f)]
    previous = None
    if os.path.exists(os.path.join(out_dir, JOB)):
        try:
            previous = read_json_file(os.path.join(out_dir, JOB))
        except (ValueError, UnicodeDecodeError):
            previous = {}
    if overwrite:
        for name in own:
            os.remove(os.path.join(out_dir, name))
    elif previous is None and own:
        raise ConfigError(f"--out {out_dir} holds shards of an unknown conversion: pass "
                          "--overwrite to rebuild it, or choose another --out")
    elif previous is not None and previous != job:
        changed = [f"{k} {previous.get(k)!r} -> {job.get(k)!r}" for k in sorted(set(previous)
                   | set(job)) if previous.get(k) != job.get(k)]
        raise ConfigError(f"--out {out_dir} was converted from another input or with other "
                          f"parameters ({', '.join(changed)}): pass --overwrite to rebuild it, "
                          "or choose another --out")
    write_json(os.path.join(out_dir, JOB), job, indent=1)


def write_manifest(out_dir, shard_stats, job=None) -> dict:
    n = len(shard_stats)
    manifest = {"spec": os.path.join(out_dir, f"shard-{{000000..{n - 1:06d}}}.tar") if n else "",
                "shards": {s["shard"]: s["samples"] for s in shard_stats},
                "total_samples": sum(s["samples"] for s in shard_stats),
                "failed": sum(len(s["failed"]) for s in shard_stats), "source": job or {}}
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
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild --out from scratch if it holds another conversion")
    args = parser.parse_args(argv)
    if not os.path.exists(args.input):
        raise ConfigError(f"input {args.input} does not exist")
    if (args.kind == "folder") != os.path.isdir(args.input):
        need = "a folder" if args.kind == "folder" else "a file"
        raise ConfigError(f"input {args.input}: the {args.kind} converter needs {need}")
    options = {}
    if args.kind in ("json", "karpathy"):
        options = {"image_root": args.image_root, "image_key": args.image_key,
                   "caption_key": args.caption_key}
        records = read_json(args.input, args.image_root, args.image_key, args.caption_key)
    elif args.kind == "csv":
        sep = (args.sep or ("\t" if args.input.endswith(".tsv") else ",")).encode().decode(
            "unicode_escape")
        if len(sep) != 1:
            raise ConfigError(f"--sep {args.sep!r} must be one character")
        options = {"image_root": args.image_root, "image_column": args.image_column,
                   "caption_column": args.caption_column, "sep": sep}
        records = read_csv(args.input, args.image_root, args.image_column,
                           args.caption_column, sep)
    else:
        records = read_folder(args.input)
    source = {"kind": args.kind, "input": os.path.abspath(args.input),
              "input_sha256": input_digest(args.input), **options}
    try:
        manifest = convert(records, args.out, args.per_shard, args.resize, args.format,
                           args.quality, args.workers, source=source, overwrite=args.overwrite)
    except Exception as exn:
        line = storage_error(exn, args.out)  # read-only, full or not a directory: one line
        if line is None:
            raise
        raise StorageError(line) from None
    print(f"{manifest['total_samples']} samples in {len(manifest['shards'])} shards: "
          f"{manifest['spec']}\n{manifest['failed']} skipped (see {args.out}/failed.tsv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
