"""The eval sweep file (`python -m evals.main_mc --fname <file>`): its fields, their types and
ranges, checked before anything runs; a bad field is one line naming it (exit code 2)."""
import dataclasses
import numbers
import os

import yaml

from evals import checkpoints
from llip.errors import ConfigError, closest
from llip.evaluation.catalog import DEFAULT_CATALOG, expand


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    checkpoints: list  # paths, run dirs, globs, {"path": run_dir, "all": true}, or
    #                    {"openclip": NAME, "pretrained": PATH_OR_TAG}
    output_dir: str
    datasets: object = "all"  # "all" or a list of names
    catalogs: list = dataclasses.field(default_factory=lambda: [DEFAULT_CATALOG])
    batch_size: int = 256
    workers: int = 4
    eval_tau: list = dataclasses.field(default_factory=lambda: [None])  # Llip only
    launcher: str = "local"  # local | slurm
    slurm: dict = dataclasses.field(default_factory=dict)


SLURM_KEYS = {"partition", "account", "qos", "constraint", "timeout_min", "cpus_per_task",
              "gpus_per_node", "mem_gb", "array_parallelism", "max_wait_min"}


def _expand_values(value):
    if isinstance(value, str):
        return expand(value)
    if isinstance(value, list):
        return [_expand_values(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand_values(v) for k, v in value.items()}
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_types(raw: dict, path: str) -> dict:
    """Every field's type and range; returns the fields normalised (eval_tau always a list)."""
    def fail(key, what):
        raise ConfigError(f"{path}: '{key}' must be {what}, got {raw[key]!r}")

    if not isinstance(raw["checkpoints"], list) or not raw["checkpoints"]:
        fail("checkpoints", "a non-empty list")
    raw["checkpoints"] = [checkpoints.validate_entry(e, path) for e in raw["checkpoints"]]
    if not isinstance(raw["output_dir"], str) or not raw["output_dir"]:
        fail("output_dir", "a path")
    if "datasets" in raw and raw["datasets"] != "all" and not (
            isinstance(raw["datasets"], list) and raw["datasets"]
            and all(isinstance(d, str) for d in raw["datasets"])):
        fail("datasets", "'all' or a non-empty list of dataset names")
    if "catalogs" in raw and not (isinstance(raw["catalogs"], list) and raw["catalogs"]
                                  and all(isinstance(c, str) for c in raw["catalogs"])):
        fail("catalogs", "a non-empty list of catalog paths")
    if "batch_size" in raw and not (_is_int(raw["batch_size"]) and raw["batch_size"] > 0):
        fail("batch_size", "an integer > 0")
    if "workers" in raw and not (_is_int(raw["workers"]) and raw["workers"] >= 0):
        fail("workers", "an integer >= 0")
    if "eval_tau" in raw:
        taus = raw["eval_tau"] if isinstance(raw["eval_tau"], list) else [raw["eval_tau"]]
        if not taus or not all(_is_number(t) and t > 0 for t in taus):
            fail("eval_tau", "a number > 0 or a non-empty list of them (Llip's eval-time "
                             "softmax temperature)")
        raw["eval_tau"] = list(dict.fromkeys(float(t) for t in taus))
    if raw.get("launcher", "local") not in ("local", "slurm"):
        fail("launcher", "local or slurm")
    if not isinstance(raw.get("slurm", {}), dict):
        fail("slurm", "a mapping of SLURM settings")
    unknown = set(raw.get("slurm") or {}) - SLURM_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown slurm key(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(SLURM_KEYS))}")
    return raw


def load_sweep(path: str, required=("checkpoints", "output_dir")) -> SweepConfig:
    if not os.path.exists(path):
        raise ConfigError(f"eval config {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as exn:
        raise ConfigError(f"eval config {path} is not valid YAML: {str(exn).splitlines()[0]}") \
            from None
    if not isinstance(raw, dict):
        raise ConfigError(f"eval config {path} must be a mapping of keys (checkpoints, "
                          "output_dir, ...)")
    fields = {f.name: f for f in dataclasses.fields(SweepConfig)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{path}: unknown key '{key}'; closest: {closest(key, fields)}")
    for key in required:
        if key not in raw:
            raise ConfigError(f"{path}: missing key '{key}'")
    placeholders = {"checkpoints": ["(set by whoever runs it)"], "output_dir": "(set)"}
    raw = {**{k: v for k, v in placeholders.items() if k not in required}, **raw}
    return SweepConfig(**_check_types(_expand_values(raw), path))


