"""The command line: `cli` wraps a command's main so that a refusal (llip.errors) is printed as
`error: ...` with exit code 2 instead of a traceback; `apply_overrides` types `key=value` text
by the dataclass field it names (CLI text is never evaluated).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from typing import Callable

from llip.errors import ConfigError, UserError, closest, storage_error


def cli(main: Callable) -> Callable:
    """A command's main(argv): a UserError ends it with one line on stderr and exit code 2."""
    @functools.wraps(main)
    def run(argv=None) -> int:
        # A log handler that cannot write (wandb's console log on a full disk) must not print
        # tracebacks over the one line that says why.
        logging.raiseExceptions = False
        try:
            return main(argv) or 0
        except UserError as exn:
            print(f"error: {exn}", file=sys.stderr)
            return 2
        except BaseException as exn:  # (DCP's CheckpointException is a BaseException)
            if isinstance(exn, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            line = storage_error(exn)  # a full disk or read-only output: one line, not a trace
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            return 2
    return run


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def parse_value(field: dataclasses.Field, text: str):
    """`text` as the type of `field` (bool, int, float or str)."""
    kind = field.type if isinstance(field.type, type) else _TYPES[field.type]
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if kind is int:
            # Accept 2e9 for sample counts, but never silently truncate 2.5 (or take 1e999).
            value = float(text) if "e" in text.lower() else int(text)
            if value != int(value):
                raise ValueError
            return int(value)
        return kind(text)
    except (ValueError, OverflowError):
        raise ConfigError(f"bad value for {field.name}: {text!r} is not a valid "
                          f"{kind.__name__}") from None


def apply_overrides(cfg, overrides):
    """A frozen dataclass with `key=value` overrides applied, then validated."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        if key not in fields:
            raise ConfigError(f"unknown key {key!r}; closest: {closest(key, fields)}")
        changes[key] = parse_value(fields[key], text)
    return dataclasses.replace(cfg, **changes).validate()
