"""The eval sweep file (`python -m evals.main_mc --fname <file>`): its fields, their types and
ranges, checked before anything runs; a bad field is one line naming it (exit code 2).

The Llip release's eval YAML (keys eval_name, mc_config_name, checkpoint_path, output_dir,
catalog_name) is read as it is: `from_release` turns it into the sweep it stands for."""
import dataclasses
import numbers
import os

import yaml

from evals import checkpoints
from llip.errors import ConfigError, closest
from llip.evaluation.catalog import DEFAULT_CATALOG, expand
from llip.io import read_yaml


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
    # a local task running longer fails (one FAILED line) and the sweep goes on: a read that
    # never returns (a stalled mount, a FIFO named like a shard) must not stop the sweep. 0: none
    task_timeout_min: float = 120


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
    if "task_timeout_min" in raw and not (_is_number(raw["task_timeout_min"])
                                          and raw["task_timeout_min"] >= 0):
        fail("task_timeout_min", "a number of minutes >= 0 (0: no limit)")
    if raw.get("launcher", "local") not in ("local", "slurm"):
        fail("launcher", "local or slurm")
    if not isinstance(raw.get("slurm", {}), dict):
        fail("slurm", "a mapping of SLURM settings")
    unknown = set(raw.get("slurm") or {}) - SLURM_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown slurm key(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(SLURM_KEYS))}")
    return raw


# ---------------------------------------------------------------- the Llip release's eval YAML
# Its form (facebookresearch/Llip, configs_evals/llip_b16_k32.yaml, evals/main_mc.py,
# evals/metaclip_evals/eval.py): eval_name (the eval module, metaclip_evals), mc_config_name (a
# config of llip/run_configs/llip.py), checkpoint_path (one training checkpoint), output_dir,
# catalog_name (a catalog file of llip/clipeval/, default dataset_catalog.json, read with the
# labels.json and templates.json beside it). It evaluates every dataset of the catalog at the
# eval temperatures 1, 3, 5, 8, 10 (llip/clipeval/eval_zeroshot.py).
RELEASE_KEYS = ("eval_name", "mc_config_name", "checkpoint_path", "output_dir", "catalog_name")
RELEASE_EVALS = ("metaclip_evals",)
RELEASE_TAUS = [1, 3, 5, 8, 10]
RELEASE_CATALOG_DIR = os.path.join("llip", "clipeval")  # in a checkout of the release


def is_release(raw: dict) -> bool:
    return any(key in raw for key in ("eval_name", "mc_config_name", "checkpoint_path"))


def _release_catalog(name: str, path: str) -> str:
    """catalog_name as the release finds it (in llip/clipeval/ of its checkout, here the current
    directory), or as a path, or beside the YAML."""
    for candidate in (name, os.path.join(os.path.dirname(os.path.abspath(path)), name),
                      os.path.join(RELEASE_CATALOG_DIR, name)):
        if os.path.isfile(expand(candidate)):
            return os.path.abspath(expand(candidate))
    raise ConfigError(f"{path}: catalog_name {name} is neither a file, beside the YAML, nor in "
                      f"{RELEASE_CATALOG_DIR}/ (where the release keeps it): give its path")


def from_release(raw: dict, path: str) -> dict:
    """The release's eval YAML -> our sweep fields (checked afterwards like any sweep file)."""
    from llip.run_configs.registry import REGISTRY
    from llip.run_configs.released import RELEASE_NAMES
    for key in raw:
        if key not in RELEASE_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}' in a release-style eval config "
                              f"(its keys: {', '.join(RELEASE_KEYS)}); closest: "
                              f"{closest(key, RELEASE_KEYS)}")
    for key in ("mc_config_name", "checkpoint_path", "output_dir"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{path}: a release-style eval config needs '{key}' (a string)")
    if raw.get("eval_name", RELEASE_EVALS[0]) not in RELEASE_EVALS:
        raise ConfigError(f"{path}: eval_name {raw['eval_name']!r}: the release's eval is "
                          f"{' or '.join(RELEASE_EVALS)} (zero-shot classification)")
    name = raw["mc_config_name"]
    config = RELEASE_NAMES.get(name, name)
    if config not in REGISTRY:
        raise ConfigError(f"{path}: mc_config_name {name!r} is neither a config of the release "
                          f"({', '.join(RELEASE_NAMES)}) nor one of ours; closest: "
                          f"{closest(name, [*RELEASE_NAMES, *REGISTRY])}")
    catalog = raw.get("catalog_name", "dataset_catalog.json")
    return {"checkpoints": [{"path": raw["checkpoint_path"], "config": config}],
            "catalogs": [_release_catalog(catalog, path)], "datasets": "all",
            "eval_tau": list(RELEASE_TAUS), "output_dir": raw["output_dir"]}


def native_yaml(fields: dict, path: str) -> str:
    """The sweep file of our form that says what `fields` say, with a line on where it came
    from (printed once, so that the user can keep it and move on)."""
    body = yaml.safe_dump(fields, sort_keys=False, default_flow_style=None)
    return (f"# {path} is the Llip release's eval config; the same sweep in this project's form "
            "(save it, run it with --fname, add batch_size, workers, launcher, ...):\n" + body)


def load_sweep(path: str, required=("checkpoints", "output_dir"), announce=None) -> SweepConfig:
    """The sweep file at `path`, checked. A release-style file is translated, and `announce`
    (e.g. print) gets the equivalent file of our form."""
    if not os.path.exists(path):
        raise ConfigError(f"eval config {path} does not exist")
    try:
        raw = read_yaml(path) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exn:
        raise ConfigError(f"eval config {path} is not valid YAML: {str(exn).splitlines()[0]}") \
            from None
    if not isinstance(raw, dict):
        raise ConfigError(f"eval config {path} must be a mapping of keys (checkpoints, "
                          "output_dir, ...)")
    if is_release(raw):
        raw = from_release(raw, path)
        if announce is not None:
            announce(native_yaml(raw, path))
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


