"""Class names and prompt templates from CLIP_benchmark, the field's shared source, so zero-shot
numbers are comparable with published ones.

llip/evaluation/zeroshot_metadata.json is a verbatim copy of the English class names and
templates that CLIP_benchmark ships as package data, with the version it came from. Catalog
entries refer to it as "clip_benchmark:<key>" (e.g. "templates": "clip_benchmark:cifar10"). The
copy keeps llip free of CLIP_benchmark's heavy dependencies; a test compares it with the
installed package (requirements-nodeps.txt pins the version). To move to another version:

    pip install --no-deps clip_benchmark==X.Y.Z && python -m llip.evaluation.prompts

For datasets whose class names CLIP_benchmark reads from the dataset files themselves (CIFAR,
Food-101, DTD, ...) the catalog keeps them in llip/evaluation/classnames/, in the dataset's
label order.
"""
import argparse
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys

from llip.errors import ConfigError
from llip.io import atomic_write, read_json

METADATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zeroshot_metadata.json")
PACKAGE = "clip_benchmark"
PREFIX = "clip_benchmark:"
FILES = {"classnames": "en_classnames.json",
         "templates": "en_zeroshot_classification_templates.json"}


def package_files() -> dict:
    """kind -> path of the installed CLIP_benchmark data file (the package is not imported: its
    modules need torch extras we do not install)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{PACKAGE} is not installed: pip install --no-deps -r "
                          "requirements-nodeps.txt")
    root = os.path.join(list(spec.submodule_search_locations)[0], "datasets")
    return {kind: os.path.join(root, name) for kind, name in FILES.items()}


def generate(path: str = METADATA) -> dict:
    """Write the metadata file from the installed package; return its content."""
    files = package_files()
    out = {"source": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}",
           "files": {}, "classnames": None, "templates": None}
    for kind, file in files.items():
        raw = open(file, "rb").read()
        out["files"][kind] = {"name": os.path.basename(file),
                              "sha256": hashlib.sha256(raw).hexdigest()}
        out[kind] = json.loads(raw)
    atomic_write(path, json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return out


@functools.lru_cache(maxsize=None)
def load(path: str = METADATA) -> dict:
    return read_json(path)


def lookup(ref: str, field: str, where: str) -> list:
    """"clip_benchmark:<key>" -> the list of class names or templates stored under key."""
    key = ref[len(PREFIX):]
    table = load()[field]
    if key not in table:
        raise ConfigError(f"{where}: {field} {ref!r} is not in {load()['source']}; known keys: "
                          f"{', '.join(sorted(table))}")
    return list(table[key])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate llip/evaluation/zeroshot_metadata"
                                     ".json from the installed CLIP_benchmark package")
    parser.add_argument("--out", default=METADATA)
    out = generate(parser.parse_args(argv).out)
    print(f"wrote {len(out['classnames'])} class-name lists and {len(out['templates'])} template "
          f"lists from {out['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
