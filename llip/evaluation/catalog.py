"""The dataset catalog: name -> how to read an eval set and score it. Validated on load; a bad
entry is one line naming the catalog, the dataset, the field and the fix.

Entry fields:
  task        zeroshot_classification | retrieval | linear_probe | knn | multiple_choice |
              multilabel: the evaluator that scores it (llip.evaluation.evaluators; the last
              two read per-image labels from `label_key`: see llip/evaluation/multilabel.py)
  format      wds | imagefolder | filelist | json | torchvision
  path        shard spec (wds), folder (imagefolder), CSV/TSV (filelist), JSON file (json),
              the root torchvision's class reads (torchvision: its download=True layout);
              ${VAR} and ${VAR:-default} are expanded from the environment
  split       recorded with results; for imagefolder, a sub-folder of path if it exists;
              torchvision: test (default) or train
  dataset     (torchvision) the class: CIFAR10, CIFAR100, MNIST or STL10
  class_order (imagefolder) numeric (default: numeric folder names sort as numbers, as
              ImageNetV2's) or name (torchvision's ImageFolder order: "10" before "2")
  classnames  (zero-shot) a list, a file (one per line, relative to the catalog),
              "clip_benchmark:<key>" (llip/evaluation/zeroshot_metadata.json), "open_clip:imagenet",
              or "folder" (imagefolder directory names)
  templates   (zero-shot) a list or a file of prompts with {c} (or {}), "clip_benchmark:<key>",
              or "open_clip:openai_imagenet" / "open_clip:simple_imagenet"
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

A broken entry fails that dataset only: `load_catalogs` keeps its one-line error, raised when
the dataset is asked for. The Llip release's catalogs (its dataset_catalog_full.json, with
labels.json and templates.json beside it) are read as they are: see `release_entry`.
"""
import json
import os
import re

import braceexpand

from llip.data.stream import expand_sources
from llip.errors import ConfigError
from llip.evaluation import prompts
from llip.evaluation.datasets import ALLOW_PIPE, TORCHVISION, refuse_pipe
from llip.evaluation.evaluators import EVALUATORS
from llip.evaluation.zeroshot import fill_template
from llip.io import read_json, read_text

FORMATS = ("wds", "imagefolder", "filelist", "json", "torchvision")
OPTIONAL = ("image_root", "image_key", "label_key", "caption_key", "separator", "split",
            "dataset", "class_order")
CLASS_ORDERS = ("numeric", "name")
PATHS = ("path", "image_root", "train_path")  # ${VAR} expanded
DEFAULT_CATALOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dataset_catalog.json")
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand(text: str) -> str:
    """${VAR} and ${VAR:-default} from the environment (unset without default: left as is),
    then a leading ~ or ~user, as a shell would expand them in a path."""
    text = _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) if m.group(2) is not None
                                             else m.group(0)), text)
    return os.path.expanduser(text) if text.startswith("~") else text


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
    if entry["format"] == "torchvision":
        if entry.get("dataset") not in TORCHVISION:
            raise ConfigError(f"{where}: format torchvision needs field 'dataset', one of "
                              f"{', '.join(TORCHVISION)}")
        if entry.get("split", "test") not in ("test", "train"):
            raise ConfigError(f"{where}: split {entry['split']!r} must be test or train")
    if entry.get("class_order", "numeric") not in CLASS_ORDERS:
        raise ConfigError(f"{where}: class_order {entry['class_order']!r} must be one of "
                          f"{', '.join(CLASS_ORDERS)}")
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
        for template in out["templates"]:  # parsed as they will be filled, before any work
            try:
                fill_template(template, "x")
            except ConfigError as exn:
                raise ConfigError(f"{where}: {exn}") from None
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


class Catalog(dict):
    """name -> validated entry, and `broken`: name -> the one-line error of an entry that did
    not validate. Such a name is in the catalog (`in` says so) but looking it up raises its
    error, so a broken entry fails whoever asks for that dataset and no one else."""

    def __init__(self):
        super().__init__()
        self.broken: dict[str, ConfigError] = {}
        self.order: list[str] = []

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self.broken

    def __missing__(self, name):
        if name in self.broken:
            raise self.broken[name]
        raise KeyError(name)

    def add(self, name: str, entry=None, error: ConfigError = None) -> None:
        """A valid entry, or the error of a broken one (a later catalog's entry replaces an
        earlier one of the same name, broken or not)."""
        self.pop(name, None)
        self.broken.pop(name, None)
        if error is None:
            self[name] = entry
        else:
            self.broken[name] = error
        self.order = [n for n in self.order if n != name] + [name]

    def names(self) -> list[str]:
        """Every dataset name, broken ones included, in catalog order."""
        return list(self.order)


def load_catalogs(paths, allow_pipe: bool = False) -> Catalog:
    """Merge catalogs in order (later ones override earlier names); validate every entry, each
    on its own: see Catalog."""
    merged = Catalog()
    for path in paths:
        path, raw = _read(path)
        base = os.path.dirname(os.path.abspath(path))
        side = _SideFiles(base)
        for name, entry in raw.items():
            if name.startswith("_"):  # comments
                continue
            try:
                if is_release_entry(entry):
                    entry = release_entry(name, entry, f"catalog {path}: dataset '{name}'", side)
                merged.add(name, validate_entry(name, entry, path, base, allow_pipe))
            except ConfigError as exn:
                merged.add(name, error=exn)
    return merged


# ------------------------------------------------------------ the Llip release's catalogs
# The Llip authors' release (facebookresearch/Llip): llip/clipeval/dataset_catalog_full.json maps
# a dataset name to {"path", "type": "imagefolder", "train", "test"} (sub-folders of path read
# by torchvision's ImageFolder: classes in folder-name order, imagenet_v2's numeric folders in
# numeric order; llip/clipeval/datasets.py) or {"path", "type": "special"} (torchvision's CIFAR10,
# CIFAR100, STL10, MNIST classes on path; MITStates their own). Class names and prompts sit
# beside the catalog in labels.json and templates.json (dataset name -> list; templates written
# with "{}"; llip/clipeval/eval_zeroshot.py load_metadata). Their eval reports mean per-class
# recall for FGVCAircraft, OxfordPets, Caltech101 and Flowers102 and top-1 elsewhere.
RELEASE_SIDE_FILES = {"classnames": "labels.json", "templates": "templates.json"}
RELEASE_PER_CLASS = ("FGVCAircraft", "OxfordPets", "Caltech101", "Flowers102")


def is_release_entry(entry) -> bool:
    return isinstance(entry, dict) and "type" in entry and "task" not in entry


class _SideFiles:
    """labels.json / templates.json beside a release catalog, read once when first needed."""

    def __init__(self, base_dir: str):
        self.base_dir, self.read = base_dir, {}

    def __call__(self, file: str, where: str) -> dict:
        if file not in self.read:
            path = os.path.join(self.base_dir, file)
            try:
                self.read[file] = read_json(path) if os.path.isfile(path) else None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
                self.read[file] = ConfigError(f"{path} is not readable JSON ({exn})")
        found = self.read[file]
        if isinstance(found, ConfigError):
            raise ConfigError(f"{where}: {found}")
        if not isinstance(found, dict):
            raise ConfigError(f"{where}: a release-style entry takes its {file} from beside the "
                              f"catalog, and {os.path.join(self.base_dir, file)} does not exist "
                              "(or is not a JSON object): put the release's file there")
        return found


def release_entry(name: str, entry: dict, where: str, side) -> dict:
    """An entry of the Llip release's catalog -> ours, validated afterwards like any other."""
    if not isinstance(entry.get("path"), str):
        raise ConfigError(f"{where}: missing field 'path' (a string)")
    out = {"task": "zeroshot_classification",
           "metric": "mean_per_class_recall" if name in RELEASE_PER_CLASS else "acc1"}
    for field, file in RELEASE_SIDE_FILES.items():
        table = side(file, where)
        if name not in table:
            raise ConfigError(f"{where}: {file} beside the catalog has no '{name}': add its "
                              f"{field} there")
        if any(isinstance(v, list) for v in table[name]):
            raise ConfigError(f"{where}: {file} gives several names per class (synonyms), which "
                              "llip does not read: give one name per class")
        out[field] = table[name]
    kind = entry["type"]
    if kind == "imagefolder":
        if not isinstance(entry.get("test"), str):
            raise ConfigError(f"{where}: type imagefolder needs field 'test', the sub-folder of "
                              "path with the test images")
        return {**out, "format": "imagefolder", "path": os.path.join(entry["path"], entry["test"]),
                "split": entry["test"],
                "class_order": "numeric" if name == "imagenet_v2" else "name"}
    if kind == "special":
        if name not in TORCHVISION:
            raise ConfigError(f"{where}: type special is read through torchvision's dataset "
                              f"classes, here {', '.join(TORCHVISION)}; give '{name}' as an "
                              "imagefolder entry (type imagefolder, train, test)")
        return {**out, "format": "torchvision", "dataset": name, "path": entry["path"],
                "split": "test"}
    raise ConfigError(f"{where}: type {kind!r} is not read (the release's imagefolder and "
                      "special are): convert the dataset to an imagefolder, or to one of "
                      f"{', '.join(FORMATS)} in an entry of this catalog's own form")
