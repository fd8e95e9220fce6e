"""The result store of eval tasks (`<output_dir>/results/*.json`, the store of evals.main_mc,
of a sweep's follower and of the status board): names that cannot collide, validation on read,
readable labels.

One JSON per (checkpoint, dataset) task, written atomically:
    {"version": 2, "id", "label", "model", "loss", "step", "checkpoint", "dataset", "task",
     "split", "metric", "n", "images_encoded", "seconds",
     "identity": {"digest", "catalog_entry", "checkpoint", "evaluator_version"},
     "by_tau": [{"eval_tau": null | number, "value": <main metric>, "metrics": {...}}, ...]}
`identity` (version 2) records everything a result is of besides the eval taus: the sha256 of
its catalog entry as validated (class names, templates, path, split, metric, ...), the
checkpoint's fingerprint (a checkpoint dir: the file digests of its COMPLETE marker; a file:
its size and modification time) and the evaluator's version; `digest` hashes the three. A result
is reused only when its digest is the task's: an edited catalog entry or a checkpoint replaced
at the same path is evaluated again, never served stale. Version-1 results (no identity) are
still read by the tables, and evaluated again when a sweep asks for them.
`id` is a short hash of the checkpoint's absolute path and step: two checkpoints that share a
run name, a file name or a step never share a result. `by_tau` holds one entry per Llip eval
temperature, all scored from the same image embeddings; CLIP/SigLIP have one entry with
eval_tau null. A file that does not parse or lacks a key (a torn write, a foreign file) is not a
result: the task counts as not done and runs again. Beside the results, catalogs.json names the
catalogs of the sweep (their main metrics and groups make its tables; evals.aggregate reads it).
"""
import glob
import hashlib
import json
import os
import re

from llip.evaluation.catalog import expand
from llip.io import read_json, write_json
from llip.run_dir import run_dir_of

REQUIRED = ("id", "model", "step", "checkpoint", "dataset", "task", "metric", "by_tau")
VERSION = 2


def identity(entry: dict, checkpoint_fingerprint: str, evaluator_version: int) -> dict:
    """What a result is of, besides the taus (see the module doc); JSON-ready."""
    content = {k: v for k, v in entry.items() if not k.startswith("_")}  # not the user's flags
    parts = {"catalog_entry": hashlib.sha256(json.dumps(
                 content, sort_keys=True, default=str).encode()).hexdigest(),
             "checkpoint": checkpoint_fingerprint, "evaluator_version": evaluator_version}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, **parts}


def reusable(result, task_identity: dict):
    """`result` if it was computed from exactly the task's inputs, else None (run again)."""
    if result is None or not isinstance(result.get("identity"), dict):
        return None
    return result if result["identity"].get("digest") == task_identity["digest"] else None


def checkpoint_id(path: str, step) -> str:
    """`path`: absolute (or an open_clip spec), as the checkpoint's description gives it."""
    return hashlib.sha256(f"{path}\n{step}".encode()).hexdigest()[:10]


RESULTS = "results"


def result_path(output_dir: str, label: str, dataset: str, ckpt_id: str) -> str:
    name = re.sub(r"[^\w.@=-]", "_", f"{label}__{dataset}__{ckpt_id}")
    return os.path.join(output_dir, RESULTS, name + ".json")


def result_files(output_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(output_dir, RESULTS, "*.json")))


def tau_key(tau):
    return None if tau is None else float(tau)


def read_result(path: str):
    """The result in `path`, or None when it is missing or not a complete result (one open:
    no stat first, a metadata call fewer per result on a parallel file system)."""
    try:
        result = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict) or any(k not in result for k in REQUIRED):
        return None
    if not (all(isinstance(result[k], str) for k in ("id", "model", "dataset", "metric"))
            and (result["step"] is None or _is_int(result["step"]))):
        return None  # e.g. "step": "final" from another tool: not ours to sort and plot
    entries = result["by_tau"]
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and isinstance(e.get("metrics"), dict)
            and result["metric"] in e["metrics"] and "eval_tau" in e
            and all(v is None or _is_number(v) for v in e["metrics"].values())
            for e in entries):
        return None
    return result


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def missing_taus(result, taus) -> list:
    """Which of `taus` a result still lacks (a model without eval taus lacks none once done)."""
    if result is None:
        return list(taus)
    have = {tau_key(e["eval_tau"]) for e in result["by_tau"]}
    if have == {None} and result.get("loss") != "llip":
        return []
    return [t for t in taus if tau_key(t) not in have]


def display_labels(results) -> dict:
    """id -> the model column of the tables: the run name, or, where two sources (run dirs,
    exported files) share a run name, the name plus the shortest path tail that tells them
    apart, e.g. "clip_demo (a/clip_demo)"."""
    sources = {}
    for r in results:
        sources.setdefault(r["model"], set()).add(run_dir_of(r["checkpoint"]))
    tails = {}
    for name, group in sources.items():
        if len(group) == 1:
            tails[name] = {s: "" for s in group}
            continue
        parts = {s: s.strip(os.sep).split(os.sep) for s in group}
        depth = 1
        while depth < max(map(len, parts.values())) and len(
                {tuple(p[-depth:]) for p in parts.values()}) < len(group):
            depth += 1
        tails[name] = {s: "/".join(p[-depth:]) for s, p in parts.items()}
    labels = {}
    for r in results:
        tail = tails[r["model"]][run_dir_of(r["checkpoint"])]
        labels[r["id"]] = f"{r['model']} ({tail})" if tail else r["model"]
    return labels


NOT_METRICS = ("n", "n_captions", "n_train", "k", "lambda", "val_acc1")  # counts and settings


def long_rows(results) -> list[dict]:
    """One row per (checkpoint, dataset, eval tau, metric) for the long table."""
    labels = display_labels(results)
    rows = []
    for r in results:
        for entry in r["by_tau"]:
            tau = "" if entry["eval_tau"] is None else f"{entry['eval_tau']:g}"
            for metric, value in entry["metrics"].items():
                if metric not in NOT_METRICS:
                    rows.append({"model": labels[r["id"]], "step": r["step"], "eval_tau": tau,
                                 "dataset": r["dataset"], "task": r["task"], "metric": metric,
                                 "value": value, "main": metric == r["metric"], "n": r["n"],
                                 "checkpoint": r["checkpoint"], "id": r["id"]})
    return rows


CATALOGS_FILE = "catalogs.json"  # in an output dir: the catalogs of the sweep that wrote it


def record_catalogs(output_dir: str, catalogs) -> None:
    """Keep the sweep's catalogs beside its results, for re-aggregations."""
    write_json(os.path.join(output_dir, CATALOGS_FILE),
               {"catalogs": [os.path.abspath(expand(c)) for c in catalogs]}, indent=1)


def recorded_catalogs(output_dir: str):
    path = os.path.join(output_dir, CATALOGS_FILE)
    return read_json(path)["catalogs"] if os.path.isfile(path) else None
