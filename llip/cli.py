"""User errors and command-line text: the one place that turns bad input into one line.

`ConfigError` is any problem the user can fix (a bad value, a missing file); `cli` wraps a
command's main so that it prints `error: ...` and exits 2 instead of a traceback.
`apply_overrides` types `key=value` text by the dataclass field it names; CLI text is never
evaluated.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
from typing import Callable


class ConfigError(ValueError):
    """A user-facing problem; the CLI prints it as one line and exits 2."""


def cli(main: Callable) -> Callable:
    """A command's main(argv): a ConfigError ends it with one line on stderr and exit code 2."""
    @functools.wraps(main)
    def run(argv=None) -> int:
        try:
            return main(argv) or 0
        except ConfigError as exn:
            print(f"error: {exn}", file=sys.stderr)
            return 2
    return run


def closest(word: str, candidates, n: int = 3) -> str:
    """The candidates nearest to a misspelt word, for 'did you mean' messages."""
    found = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.4)
    return ", ".join(found) if found else ", ".join(sorted(candidates)[:n])


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
            # Accept 2e9 for sample counts, but never silently truncate 2.5.
            value = float(text) if "e" in text.lower() else int(text)
            if value != int(value):
                raise ValueError
            return int(value)
        return kind(text)
    except ValueError:
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
