"""The dataset catalog: name -> how to read an eval set and score it. Validated on load; a bad
entry is one line naming the catalog, the dataset, the field and the fix.

Entry fields:
  task        zeroshot_classification | retrieval | linear_probe | knn | multiple_choice |
              multilabel: the evaluator that scores it (llip.evaluation.evaluators; the last
              two read per-image labels from `label_key`: see llip/evaluation/multilabel.py)
  format      wds | imagefolder | filelist | json
  path        shard spec (wds), folder (imagefolder), CSV/TSV (filelist), JSON file (json);
              ${VAR} and ${VAR:-default} are expanded from the environment
  split       recorded with results; for imagefolder, a sub-folder of path if it exists
  classnames  (zero-shot) a list, a file (one per line, relative to the catalog),
              "clip_benchmark:<key>" (llip/evaluation/zeroshot_metadata.json), "open_clip:imagenet",
              or "folder" (imagefolder directory names)
  templates   (zero-shot) a list or a file of prompts with {c}, "clip_benchmark:<key>", or
              "open_clip:openai_imagenet" / "open_clip:simple_imagenet"
  metric      the main metric: acc1 | acc5 | mean_per_class_recall (classification and probes) |
              image_retrieval_recall@k | text_retrieval_recall@k (k in 1, 5, 10);
              multiple_choice: acc1; multilabel: mAP | image_mAP
  probes      (linear_probe, knn) train_path (default: path) and train_split (default "train"):
              the labelled set the probe is fitted on; `path`/`split` is the test set.
              linear_probe: val_proportion (default 0.2) of train held out to choose the L2
              penalty, then refit on all of train. knn: k (default 20).
  optional    image_root (json, filelist), image_key, label_key, caption_key, separator

Top-level "_groups": {"name": [dataset, ...]} names dataset suites: a sweep may list a group in
`datasets`, and the aggregated table has a column average_<group> over exactly its members.
Other top-level keys starting with "_" are comments.
A catalog is data: a `pipe:` path (a shell command) is refused unless the user opts in with
`llip-eval --allow-pipe` (a catalog cannot opt itself in).
"""
import json
import os
import re

import braceexpand

from llip.data.stream import expand_sources
from llip.errors import ConfigError
from llip.evaluation import prompts
from llip.evaluation.datasets import ALLOW_PIPE, refuse_pipe
from llip.evaluation.evaluators import EVALUATORS
from llip.io import read_json, read_text

FORMATS = ("wds", "imagefolder", "filelist", "json")
OPTIONAL = ("image_root", "image_key", "label_key", "caption_key", "separator", "split")
PATHS = ("path", "image_root", "train_path")  # ${VAR} expanded
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
    if value.startswith(prompts.PREFIX):
        return prompts.lookup(value, field, where)
    if value == "folder" and allow_folder:
        return "folder"
    path = value if os.path.isabs(value) else os.path.join(base_dir, value)
    if not os.path.exists(path):
        raise ConfigError(f"{where}: {field} file {path} does not exist: fix the path or give "
                          "the list inline")
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def validate_entry(name: str, entry, source: str, base_dir: str, allow_pipe=False) -> dict:
    where = f"catalog {source}: dataset '{name}'"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object with task, format, path, metric")
    for field in ("task", "format", "path", "metric"):
        if field not in entry:
            raise ConfigError(f"{where}: missing field '{field}'")
        if not isinstance(entry[field], str):
            raise ConfigError(f"{where}: field '{field}' must be a string")
    if entry["task"] not in EVALUATORS:
        raise ConfigError(f"{where}: task {entry['task']!r} must be one of "
                          f"{', '.join(EVALUATORS)}")
    evaluator = EVALUATORS[entry["task"]]
    if entry["format"] not in FORMATS:
        raise ConfigError(f"{where}: format {entry['format']!r} must be one of "
                          f"{', '.join(FORMATS)}")
    if entry["metric"] not in evaluator.metrics:
        raise ConfigError(f"{where}: metric {entry['metric']!r} for {entry['task']} must be one "
                          f"of {', '.join(evaluator.metrics)}")
    known = {"task", "format", "path", "metric", "classnames", "templates", "description",
             "classes", "chance", *OPTIONAL, *evaluator.fields}
    unknown = set(entry) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    out = {**entry, "name": name, ALLOW_PIPE: allow_pipe,
           **{f: expand(entry[f]) for f in PATHS if isinstance(entry.get(f), str)}}
    try:  # every shard URL: a brace alternative could hide a command
        urls = [u for s in expand_sources(out["path"]) for u in s] \
            if entry["format"] == "wds" else [out["path"]]
    except braceexpand.UnbalancedBracesError:
        raise ConfigError(f"{where}: path {out['path']!r} has unbalanced braces") from None
    refuse_pipe(urls, out)
    evaluator.check(out, where)
    if evaluator.needs_prompts:
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


def _read(path: str):
    path = expand(path)
    if not os.path.exists(path):
        moved = " (the benchmark catalog is now llip/evaluation/dataset_catalog.json)" \
            if path.replace(os.sep, "/").endswith("evals/dataset_catalog.json") else ""
        raise ConfigError(f"catalog {path} does not exist{moved}")
    try:
        raw = read_json(path)
    except json.JSONDecodeError as exn:
        raise ConfigError(f"catalog {path} is not valid JSON: {exn}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"catalog {path} must be a JSON object: name -> entry")
    return path, raw


def load_groups(paths) -> dict:
    """group name -> dataset names, from the catalogs' "_groups" (later ones override)."""
    groups = {}
    for path in paths:
        path, raw = _read(path)
        found = raw.get("_groups", {})
        if not isinstance(found, dict):
            raise ConfigError(f"catalog {path}: _groups must be an object: name -> [datasets]")
        for name, members in found.items():
            if name.startswith("_"):
                continue
            if not isinstance(members, list) or not members or \
                    not all(isinstance(m, str) for m in members):
                raise ConfigError(f"catalog {path}: group '{name}' must be a non-empty list of "
                                  "dataset names")
            groups[name] = list(members)
    return groups


def expand_names(names, catalog: dict, groups: dict) -> list:
    """Dataset names with groups replaced by their members, in order, without repeats."""
    out = []
    for name in names:
        members = groups.get(name, [name]) if name not in catalog else [name]
        missing = [m for m in members if m not in catalog]
        if missing and name in groups:
            raise ConfigError(f"group '{name}' names datasets missing from the catalogs: "
                              f"{', '.join(missing)}: add catalog entries for them or list the "
                              "datasets one by one")
        out.extend(members)
    return list(dict.fromkeys(out))


def load_catalogs(paths, allow_pipe: bool = False) -> dict:
    """Merge catalogs in order (later ones override earlier names); validate every entry."""
    merged = {}
    for path in paths:
        path, raw = _read(path)
        base = os.path.dirname(os.path.abspath(path))
        for name, entry in raw.items():
            if name.startswith("_"):  # comments
                continue
            merged[name] = validate_entry(name, entry, path, base, allow_pipe)
    return merged
