"""CLIP_benchmark results -> our result records, so public models' numbers sit in the same table.

CLIP_benchmark's `clip_benchmark eval` writes one JSON file per (model, dataset, task):
    {"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
     "task": "zeroshot_classification", "metrics": {"acc1": .., "acc5": ..,
     "mean_per_class_recall": ..}, "language": "en"}
(.jsonl files with one such object per line are read too). The model label is
"<model> <pretrained>" (a local-dir:FOLDER model by its folder name); dataset names are mapped
to this catalog's (wds/ and vtab/ prefixes dropped, "flowers" -> "flowers102", ...);
zeroshot_retrieval becomes retrieval; a linear_probe result on X becomes dataset
"X_linear_probe" with its lp_ prefix dropped from the metric names. The main metric is the
catalog's when the result has it (else the task's default: evals.aggregate then shows it in a
column of its own, never under another metric's).
"""
import glob
import json
import os

from llip.errors import ConfigError
from llip.io import read_text
from llip.models.formats import openclip

ALIASES = {"flowers": "flowers102", "kitti_closest_vehicle_distance": "kitti_distance",
           "clevr_count_all": "clevr_counts", "mscoco_captions": "coco_retrieval",
           "flickr30k": "flickr30k_retrieval", "imagenet-r": "imagenet_r",
           "imagenet-a": "imagenet_a", "imagenet-o": "imagenet_o"}
TASKS = {"zeroshot_retrieval": "retrieval"}
DEFAULT_METRIC = {"zeroshot_classification": "acc1", "linear_probe": "acc1",
                  "retrieval": "image_retrieval_recall@5"}
REQUIRED = ("dataset", "model", "task", "metrics")
SETTINGS = ("weight_decay", "epochs", "seed", "fewshot_k", "normalized")  # linear-probe settings


def _files(path: str) -> list:
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "*.json")) +
                      glob.glob(os.path.join(path, "*.jsonl")))
    if not os.path.exists(path):
        raise ConfigError(f"CLIP_benchmark results {path} do not exist: give a result file or "
                          "a folder of them")
    return [path]


def _objects(file: str) -> list:
    try:
        text = read_text(file)
        if file.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return [json.loads(text)]
    except json.JSONDecodeError as exn:
        raise ConfigError(f"{file} is not valid JSON: {exn}") from None


def dataset_name(raw: str, task: str, language) -> str:
    name = raw
    for prefix in ("wds/", "vtab/", "tfds/"):
        name = name[len(prefix):] if name.startswith(prefix) else name
    name = ALIASES.get(name, name).replace("/", "_")
    if task == "linear_probe":
        name += "_linear_probe"
    return name if language in (None, "", "en") else f"{name}_{language}"


def model_label(model: str, pretrained: str) -> str:
    """"<model> <pretrained>"; an open_clip local-dir model (e.g. our export's folder) by its
    folder name, its pretrained left out when it only repeats the folder's stem (open_clip
    ignores pretrained there)."""
    if model.startswith(openclip.LOCAL_DIR):
        model = os.path.basename(model[len(openclip.LOCAL_DIR):].rstrip("/"))
        if pretrained == os.path.splitext(model)[0]:
            pretrained = ""
    return f"{model} {pretrained}".strip()


def to_record(obj, source: str, catalog=None) -> dict:
    """One CLIP_benchmark result object -> one record in evals.runner's result format."""
    if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED) or \
            not isinstance(obj["metrics"], dict):
        raise ConfigError(f"{source}: not a CLIP_benchmark result (needs "
                          f"{', '.join(REQUIRED)}, metrics an object)")
    task = TASKS.get(obj["task"], obj["task"])
    metrics = {}
    for key, value in obj["metrics"].items():
        if key in SETTINGS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metrics[key[3:] if task == "linear_probe" and key.startswith("lp_") else key] = value
    name = dataset_name(obj["dataset"], task, obj.get("language"))
    main = (catalog or {}).get(name, {}).get("metric")
    if main not in metrics:
        main = DEFAULT_METRIC.get(task) if DEFAULT_METRIC.get(task) in metrics else \
            next(iter(metrics), None)
    if main is None:
        raise ConfigError(f"{source}: result for {obj['dataset']} has no numeric metric")
    model = model_label(obj["model"], obj.get("pretrained") or "")
    return {"id": f"clip_benchmark:{model}", "checkpoint": f"clip_benchmark:{model}",
            "model": model, "step": None, "dataset": name, "task": task, "metric": main,
            "n": None, "by_tau": [{"eval_tau": None, "metrics": metrics,
                                   "value": metrics[main]}],
            "source": "clip_benchmark", "file": source}


def read_clip_benchmark(paths, catalog=None) -> list:
    """Result files or folders of them -> records (see module docstring)."""
    return [to_record(obj, file, catalog) for path in paths for file in _files(path)
            for obj in _objects(file)]
