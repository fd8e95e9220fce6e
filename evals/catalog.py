"""The dataset catalog: name -> how to read an eval set and score it. Validated on load; a bad
entry is one line naming the catalog, the dataset, the field and the fix.

Entry fields:
  task        zeroshot_classification | retrieval | multiple_choice | multilabel
              (the last two read per-image labels from `label_key`: see evals/multilabel.py)
  format      wds | imagefolder | filelist | json
  path        shard spec (wds), folder (imagefolder), CSV/TSV (filelist), JSON file (json);
              ${VAR} and ${VAR:-default} are expanded from the environment
  split       recorded with results; for imagefolder, a sub-folder of path if it exists
  classnames  (classification) a list, a file (one per line, relative to the catalog),
              "open_clip:imagenet", or "folder" (imagefolder directory names)
  templates   (classification) a list or a file of prompts with {c}, or
              "open_clip:openai_imagenet" / "open_clip:simple_imagenet"
  metric      the main metric: acc1 | acc5 | mean_per_class_recall | image_retrieval_recall@k |
              text_retrieval_recall@k (k in 1, 5, 10); multiple_choice: acc1;
              multilabel: mAP | image_mAP
  optional    image_root (json, filelist), image_key, label_key, caption_key, separator
"""
import json
import os
import re

from llip.cli import ConfigError
from llip.io import read_json, read_text

TASKS = ("zeroshot_classification", "retrieval", "multiple_choice", "multilabel")
FORMATS = ("wds", "imagefolder", "filelist", "json")
CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
RETRIEVAL_METRICS = tuple(f"{d}_retrieval_recall@{k}"
                          for d in ("image", "text") for k in (1, 5, 10))
METRICS = {"zeroshot_classification": CLASSIFICATION_METRICS,
           "retrieval": RETRIEVAL_METRICS, "multiple_choice": ("acc1",),
           "multilabel": ("mAP", "image_mAP")}
NEEDS_PROMPTS = ("zeroshot_classification", "multilabel")  # classnames + templates
OPTIONAL = ("image_root", "image_key", "label_key", "caption_key", "separator", "split")
DEFAULT_CATALOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dataset_catalog.json")
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


def validate_entry(name: str, entry, source: str, base_dir: str) -> dict:
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
    metrics = METRICS[entry["task"]]
    if entry["metric"] not in metrics:
        raise ConfigError(f"{where}: metric {entry['metric']!r} for {entry['task']} must be one "
                          f"of {', '.join(metrics)}")
    known = {"task", "format", "path", "metric", "classnames", "templates", "description",
             "classes", "chance", *OPTIONAL}
    unknown = set(entry) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    out = {**entry, "name": name, "path": expand(entry["path"])}
    if "image_root" in out:
        out["image_root"] = expand(out["image_root"])
    if entry["task"] in ("multiple_choice", "multilabel") and "label_key" not in entry:
        raise ConfigError(f"{where}: missing field 'label_key' (the member holding each "
                          f"image's labels, needed for {entry['task']})")
    if entry["task"] in NEEDS_PROMPTS:
        for field in ("classnames", "templates"):
            if field not in entry:
                raise ConfigError(f"{where}: missing field '{field}' (needed for "
                                  f"{entry['task']})")
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


def load_catalogs(paths) -> dict:
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
            merged[name] = validate_entry(name, entry, path, base)
    return merged
