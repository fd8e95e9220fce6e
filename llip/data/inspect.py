"""Look inside shards: python -m llip.data.inspect '<shard spec>' [--grid grid.png] [--fast]

Prints the sample count (from manifest.json with --fast, else by streaming every member),
unreadable shards and corrupt members, caption length statistics, and writes a PNG grid of the
first images with their captions.
"""
import argparse
import io
import os
import statistics
import sys
import textwrap

import webdataset as wds
from PIL import Image

from llip.cli import cli
from llip.data import IMAGE_KEYS, caption_list
from llip.data.stream import check_shards, expand_sources, manifest_samples
from llip.errors import ConfigError

IMAGE_EXTS = tuple(IMAGE_KEYS.split(";"))


def scan(spec: str, grid_size: int = 16) -> dict:
    """Stream every sample once, decoding images: counts, corrupt members, caption lengths."""
    sources = expand_sources(spec)
    check_shards(sources)
    stats = {"samples": 0, "corrupt": [], "bad_shards": [], "caption_words": [], "grid": []}

    def shard_error(exn):
        stats["bad_shards"].append(f"{type(exn).__name__}: {str(exn)[:160]}")
        return True

    urls = [u for s in sources for u in s]
    for sample in wds.tarfile_to_samples(handler=shard_error)({"url": u} for u in urls):
        key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        image_key = next((k for k in IMAGE_EXTS if k in sample), None)
        try:
            captions = caption_list(sample.get("json", sample.get("txt", b"")))
            if image_key is None:
                raise ValueError("no image member")
            with Image.open(io.BytesIO(sample[image_key])) as image:
                image.load()
                thumb = image.convert("RGB") if len(stats["grid"]) < grid_size else None
        except Exception as exn:  # noqa: BLE001 - report, keep scanning
            stats["corrupt"].append(f"{key}: {type(exn).__name__}: {str(exn)[:120]}")
            continue
        stats["samples"] += 1
        stats["caption_words"].extend(len(c.split()) for c in captions)
        if thumb is not None:
            stats["grid"].append((thumb, captions[0] if captions else ""))
    return stats


def save_grid(items, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(4, len(items))
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption) in zip(axes.flat, items):
        ax.imshow(image)
        ax.set_title("\n".join(textwrap.wrap(caption, 30)[:3]), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--grid", default="", help="PNG path for a grid of sample images")
    parser.add_argument("--fast", action="store_true", help="count from manifest.json only")
    args = parser.parse_args(argv)
    if args.fast:
        n = manifest_samples(expand_sources(args.spec))
        if n is None:
            raise ConfigError("no manifest.json covers these shards: run without --fast")
        print(f"samples: {n} (from manifest.json)")
        return 0
    stats = scan(args.spec)
    words = stats["caption_words"]
    print(f"samples:        {stats['samples']}")
    print(f"corrupt:        {len(stats['corrupt'])}")
    for line in stats["corrupt"][:10]:
        print(f"  {line}")
    print(f"bad shards:     {len(stats['bad_shards'])}")
    for line in stats["bad_shards"][:10]:
        print(f"  {line}")
    if words:
        ordered = sorted(words)
        print(f"caption words:  mean {statistics.mean(words):.1f}, median "
              f"{statistics.median(words):g}, p95 {ordered[int(0.95 * (len(words) - 1))]}, "
              f"max {ordered[-1]} ({len(words)} captions)")
    if args.grid and stats["grid"]:
        save_grid(stats["grid"], args.grid)
        print(f"grid:           {os.path.abspath(args.grid)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
