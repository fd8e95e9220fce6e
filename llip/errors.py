"""The errors a user sees: what is wrong and the fix, in one line.

Every refusal the program makes to its user is a `UserError`: a command's main (wrapped by
`llip.cli.cli`) prints it as `error: <message>` and exits 2, never with a traceback. The few
kinds that callers tell apart are subclasses:

    ConfigError      a value the user gave: config field, override, sweep YAML, catalog entry, path
    CheckpointError  a checkpoint that cannot be used: missing, incomplete, corrupt, unverifiable
    DataError        data a run cannot train on (too much corruption, a source with no samples)
    StorageError     output that cannot be written: disk full, quota, permissions
    Diverged         training produced a non-finite loss or weight

`one_line` renders any exception, including one rebuilt from a worker's or a SLURM task's
traceback, as the line the user should read.
"""
from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import shutil


class UserError(ValueError):
    """A problem the user can fix; printed as one line, exit code 2."""


class ConfigError(UserError):
    """A value the user gave is wrong (config, override, sweep, catalog, path)."""


class CheckpointError(UserError):
    """A checkpoint cannot be used: missing, incomplete, corrupt or unverifiable."""


class DataError(UserError):
    """Data a run cannot train on. Raised in a DataLoader worker, it reaches the main process
    rebuilt by torch from a message that holds the worker's traceback; only the original line is
    kept, so the command still ends with one line."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class StorageError(UserError):
    """Output that cannot be written (disk full, quota, read-only, permissions)."""


class Diverged(UserError):
    """Training produced a non-finite loss or weight."""


# ---------------------------------------------------------------- one line
# "llip.errors.ConfigError: msg" (a traceback's last line) -> "msg"
_OUR_PREFIX = re.compile(r"^(?:[\w.]+\.)?(?:" + "|".join(
    c.__name__ for c in (UserError, ConfigError, CheckpointError, DataError, StorageError,
                         Diverged)) + r"): ")


def printable(text: str) -> str:
    """`text` safe to print on a terminal: control characters (ESC sequences in a tar member's
    name would recolour or rewrite the screen) shown escaped, as repr shows them."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def one_line(exn: BaseException | str) -> str:
    """An exception (or a command's output) as the one line a user should read: the last
    `error: ...` line of one of our commands; the last line of a traceback (torch's DataLoader
    re-raises a worker's error with it; submitit reports a failed task's); our own error class
    names stripped."""
    text = exn if isinstance(exn, str) else \
        str(exn) if isinstance(exn, UserError) else f"{type(exn).__name__}: {exn}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return text.strip() or type(exn).__name__
    ours = [line for line in lines if line.startswith("error: ")]
    if ours:
        return ours[-1][len("error: "):]
    if len(lines) > 1 and "Traceback" in text:
        return _OUR_PREFIX.sub("", lines[-1])
    return lines[0]


def closest(word: str, candidates, n: int = 3) -> str:
    """The candidates nearest to a misspelt word, for 'closest: ...' messages."""
    found = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.4)
    return ", ".join(found) if found else ", ".join(sorted(candidates)[:n])


# ---------------------------------------------------------------- storage
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


FULL_DISK_BYTES = 64 << 20  # a failed write with less free space than this: the disk is full


@contextlib.contextmanager
def named_write(path: str, what: str):
    """A write into `path` that fails for lack of space or permission ends as StorageError, one
    line naming `what` (not a temporary file inside it); other failures pass through."""
    try:
        yield
    except BaseException as exn:  # (DCP's CheckpointException is a BaseException)
        if isinstance(exn, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        line = write_error(exn, path, what)
        if line is None:
            raise
        raise StorageError(line) from None


def write_error(exn: BaseException, path: str, what: str) -> str | None:
    """storage_error for a write of `what` into `path`, also where the writer lost the errno
    (torch's tensor writer reports a short write as "unexpected pos"): a failed write on a
    disk with almost no space left is a full disk."""
    line = storage_error(exn, what)
    if line is not None:
        return line
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free
    except OSError:
        return None
    if free >= FULL_DISK_BYTES:
        return None
    return (f"cannot write {what}: the disk holding it is full ({free} bytes free): free space "
            "or write elsewhere")


def storage_error(exn: BaseException, where: str | None = None) -> str | None:
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
