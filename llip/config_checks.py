"""Value checks of a RunConfig that every field gets: finite numbers in range, strings that are
safe to put in a path or an sbatch script, shard specs that parse. Called by
RunConfig.validate; each failure is one ConfigError naming the field and the fix.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re

import braceexpand

from llip.cli import ConfigError

# Lower bounds of integer fields (fields not named here must be >= 1).
INT_MIN = {"train_num_samples": 0, "workers": 0, "shuffle_buffer": 0, "warmup_steps": 0,
           "seed": 0, "slurm_mem_gb": 0, "slurm_signal_delay_s": 0, "unlock_last_n": 0,
           "lora_rank": 0, "keep_every": 0, "eval_every": 0}
# (low, high, low inclusive) of float fields; all floats must also be finite.
FLOAT_RANGE = {
    "mlp_ratio": (0, None, False), "cross_attn_tau": (0, None, False),
    "lr": (0, None, True), "wd": (0, None, True), "eps": (0, None, False),
    "beta1": (0, 1, True), "beta2": (0, 1, True), "grad_clip": (0, None, True),
    "max_corrupt_fraction": (0, 1, False), "text_mlp_ratio": (0, None, True),
    "peak_tflops": (0, None, True),
}
# A run name becomes a directory under `logs` and the SLURM job name: no '/', no '..'.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_values(cfg) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if not isinstance(value, _TYPES[kind]) or (kind != "bool" and isinstance(value, bool)):
            raise ConfigError(f"{f.name}={value!r} must be of type {kind}")
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            _check_string(f.name, value)
        elif kind == "int":
            low = INT_MIN.get(f.name, 1)
            if value < low:
                raise ConfigError(f"{f.name}={value} must be >= {low}")
        if kind == "float":
            _check_float(f.name, float(value))
    if not NAME.match(cfg.name):
        raise ConfigError(f"name={cfg.name!r} must be 1-200 letters, digits or ._+=@- (not "
                          "starting with . or -): it names the run dir under logs=")
    for tower in ("vision", "text"):
        width, heads = getattr(cfg, f"{tower}_width"), getattr(cfg, f"{tower}_heads")
        if width % heads:
            raise ConfigError(f"{tower}_width={width} must be divisible by {tower}_heads={heads}")
    if cfg.train_data:
        _check_spec(cfg.train_data)
    if cfg.train_data_weights:
        for w in cfg.train_data_weights.split("::"):
            try:
                ok = math.isfinite(float(w))
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"train_data_weights={cfg.train_data_weights!r} must be finite "
                                  "non-negative numbers joined by '::', e.g. 0.7::0.3")


def _check_string(name: str, value: str) -> None:
    # A newline in e.g. slurm_partition would add a shell line to the sbatch script.
    bad = _CONTROL.search(value)
    if bad:
        raise ConfigError(f"{name} contains the control character {bad.group()!r}: give it on "
                          "one line without tabs or newlines")


def _check_float(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value} must be a finite number")
    low, high, low_inclusive = FLOAT_RANGE.get(name, (None, None, True))
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ConfigError(f"{name}={value} must be {'>=' if low_inclusive else '>'} {low}")
    if high is not None and value >= high:
        raise ConfigError(f"{name}={value} must be < {high}")


def _check_spec(spec: str) -> None:
    """Every '::' source is non-empty and brace-expands (checked on the first name only: a
    spec may stand for millions of shards)."""
    for i, source in enumerate(spec.split("::")):
        if not source.strip():
            raise ConfigError(f"train_data={spec!r} has an empty source (#{i + 1}): remove the "
                              "extra '::'")
        try:
            list(itertools.islice(braceexpand.braceexpand(source.strip()), 1))
        except braceexpand.UnbalancedBracesError:
            raise ConfigError(f"train_data source {source.strip()!r} has unbalanced braces: "
                              "write ranges as {000000..000099}") from None
