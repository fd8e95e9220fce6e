"""The dataset catalog: name -> how to read an eval set and score it. Validated on load; a bad
entry is one line naming the catalog, the dataset, the field and the fix.

Entry fields:
  task        zeroshot_classification | retrieval
  format      wds | imagefolder | filelist | json
  path        shard spec (wds), folder (imagefolder), CSV/TSV (filelist), JSON file (json);
              ${VAR} and ${VAR:-default} are expanded from the environment
  split       recorded with results; for imagefolder, a sub-folder of path if it exists
  classnames  (classification) a list, a file (one per line, relative to the catalog),
              "open_clip:imagenet", or "folder" (imagefolder directory names)
  templates   (classification) a list or a file of prompts with {c}, or
              "open_clip:openai_imagenet" / "open_clip:simple_imagenet"
  metric      the main metric: acc1 | acc5 | mean_per_class_recall | image_retrieval_recall@k |
              text_retrieval_recall@k (k in 1, 5, 10)
  optional    image_root (json, filelist), image_key, label_key, caption_key, separator

A catalog is data: a `pipe:` path (a shell command) is refused unless the user opts in with
`llip-eval --allow-pipe` (a catalog cannot opt itself in).
"""
import json
import os
import re

import braceexpand

from llip.cli import ConfigError
from llip.data.stream import expand_sources
from llip.io import read_json, read_text

TASKS = ("zeroshot_classification", "retrieval")
FORMATS = ("wds", "imagefolder", "filelist", "json")
CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
RETRIEVAL_METRICS = tuple(f"{d}_retrieval_recall@{k}"
                          for d in ("image", "text") for k in (1, 5, 10))
OPTIONAL = ("image_root", "image_key", "label_key", "caption_key", "separator", "split")
DEFAULT_CATALOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dataset_catalog.json")
ALLOW_PIPE = "_allow_pipe"  # set by the loader from the user's flag, never from a catalog
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand(text: str) -> str:
    """${VAR} and ${VAR:-default} from the environment (unset without default: left as is)."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) if m.group(2) is not None
                                              else m.group(0)), text)


def _open_clip_list(ref: str, where: str):
    import open_clip.zero_shot_metadata as meta
    table = {"open_clip:imagenet": list(meta.IMAGENET_CLASSNAMES),
             "open_clip:openai_imagenet": [t("{c}") for t in meta.OPENAI_IMAGENET_TEMPLATES],
             "open_clip:simple_imagenet": [t("{c}") for t in meta.SIMPLE_IMAGENET_TEMPLATES]}
    if ref not in table:
        raise ConfigError(f"{where}: unknown reference {ref!r}; use one of {', '.join(table)}")
    return table[ref]


def _string_list(value, field: str, where: str, base_dir: str, allow_folder: bool = False):
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: field '{field}' must be a non-empty list of strings")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: field '{field}' must be a list, a file or a reference")
    if value.startswith("open_clip:"):
        return _open_clip_list(value, where)
    if value == "folder" and allow_folder:
        return "folder"
    path = value if os.path.isabs(value) else os.path.join(base_dir, value)
    if not os.path.exists(path):
        raise ConfigError(f"{where}: {field} file {path} does not exist: fix the path or give "
                          "the list inline")
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def refuse_pipe(urls, entry) -> None:
    """Shell commands as shard URLs only when the user allowed them for this sweep."""
    if entry.get(ALLOW_PIPE):
        return
    for url in urls:
        if url.strip().startswith("pipe:"):
            raise ConfigError(f"dataset '{entry['name']}': path {url[:80]!r} is a shell command "
                              "(pipe:); a catalog is data and runs no commands: give a file "
                              "path, or pass --allow-pipe to llip-eval if you trust this catalog")


def validate_entry(name: str, entry, source: str, base_dir: str, allow_pipe=False) -> dict:
    where = f"catalog {source}: dataset '{name}'"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object with task, format, path, metric")
    for field in ("task", "format", "path", "metric"):
        if field not in entry:
            raise ConfigError(f"{where}: missing field '{field}'")
        if not isinstance(entry[field], str):
            raise ConfigError(f"{where}: field '{field}' must be a string")
    if entry["task"] not in TASKS:
        raise ConfigError(f"{where}: task {entry['task']!r} must be one of {', '.join(TASKS)}")
    if entry["format"] not in FORMATS:
        raise ConfigError(f"{where}: format {entry['format']!r} must be one of "
                          f"{', '.join(FORMATS)}")
    metrics = CLASSIFICATION_METRICS if entry["task"] == TASKS[0] else RETRIEVAL_METRICS
    if entry["metric"] not in metrics:
        raise ConfigError(f"{where}: metric {entry['metric']!r} for {entry['task']} must be one "
                          f"of {', '.join(metrics)}")
    known = {"task", "format", "path", "metric", "classnames", "templates", "description",
             "classes", "chance", *OPTIONAL}
    unknown = set(entry) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    out = {**entry, "name": name, "path": expand(entry["path"]), ALLOW_PIPE: allow_pipe}
    try:  # every shard URL: a brace alternative could hide a command
        urls = [u for s in expand_sources(out["path"]) for u in s] \
            if entry["format"] == "wds" else [out["path"]]
    except braceexpand.UnbalancedBracesError:
        raise ConfigError(f"{where}: path {out['path']!r} has unbalanced braces") from None
    refuse_pipe(urls, out)
    if "image_root" in out:
        out["image_root"] = expand(out["image_root"])
    if entry["task"] == "zeroshot_classification":
        for field in ("classnames", "templates"):
            if field not in entry:
                raise ConfigError(f"{where}: missing field '{field}' (needed for classification)")
        out["classnames"] = _string_list(entry["classnames"], "classnames", where, base_dir,
                                         allow_folder=entry["format"] == "imagefolder")
        out["templates"] = _string_list(entry["templates"], "templates", where, base_dir)
        n = entry.get("classes")
        if isinstance(out["classnames"], list) and n is not None and n != len(out["classnames"]):
            raise ConfigError(f"{where}: {len(out['classnames'])} classnames but classes={n}: "
                              "fix the list or the count")
        if not all("{c}" in t for t in out["templates"]):
            raise ConfigError(f"{where}: every template needs the placeholder {{c}}")
    return out


def load_catalogs(paths, allow_pipe: bool = False) -> dict:
    """Merge catalogs in order (later ones override earlier names); validate every entry."""
    merged = {}
    for path in paths:
        path = expand(path)
        if not os.path.exists(path):
            raise ConfigError(f"catalog {path} does not exist")
        try:
            raw = read_json(path)
        except json.JSONDecodeError as exn:
            raise ConfigError(f"catalog {path} is not valid JSON: {exn}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"catalog {path} must be a JSON object: name -> entry")
        base = os.path.dirname(os.path.abspath(path))
        for name, entry in raw.items():
            if name.startswith("_"):  # comments
                continue
            merged[name] = validate_entry(name, entry, path, base, allow_pipe)
    return merged
