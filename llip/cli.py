"""User errors and command-line text: the one place that turns bad input into one line.

`ConfigError` is any problem the user can fix (a bad value, a missing file); `cli` wraps a
command's main so that it prints `error: ...` and exits 2 instead of a traceback.
`apply_overrides` types `key=value` text by the dataclass field it names; CLI text is never
evaluated.
"""
from __future__ import annotations

import dataclasses
import difflib
import errno
import functools
import logging
import sys
from typing import Callable


class ConfigError(ValueError):
    """A user-facing problem; the CLI prints it as one line and exits 2."""


def cli(main: Callable) -> Callable:
    """A command's main(argv): a ConfigError ends it with one line on stderr and exit code 2."""
    @functools.wraps(main)
    def run(argv=None) -> int:
        # A log handler that cannot write (wandb's console log on a full disk) must not print
        # tracebacks over the one line that says why.
        logging.raiseExceptions = False
        try:
            return main(argv) or 0
        except ConfigError as exn:
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


# Storage failures the user fixes outside the program, with the fix to suggest.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device (disk full): free space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded: free space or write elsewhere",
    errno.EROFS: "read-only file system: write elsewhere",
    errno.EACCES: "permission denied: fix the permissions or write elsewhere",
    errno.EPERM: "operation not permitted: fix the permissions or write elsewhere",
    errno.ENOTDIR: "a parent of it is a file, not a directory: give a directory path",
    errno.EISDIR: "it is a directory where a file was expected: give a file path",
    errno.EEXIST: "it exists and is not a directory: give a directory path",
}


def storage_error(exn: BaseException, where: str | None = None):
    """One line for an OSError of storage (wherever it hides in a chain of wrapped exceptions,
    e.g. inside a checkpoint writer's or a worker process's), else None. `where` names the
    output the user gave, when the failing file is a temporary inside it."""
    seen = set()
    stack = [exn]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return f"cannot write {where or e.filename or 'output'}: {_STORAGE_ERRNOS[e.errno]}"
        stack += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint's per-rank errors
        if isinstance(failures, dict):
            stack += [f for f in failures.values() if isinstance(f, BaseException)]
    return None


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
