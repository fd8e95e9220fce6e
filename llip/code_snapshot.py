"""The code a sweep's jobs run, frozen when the sweep is launched.

A queued or requeued job must run the code as it was at launch, not whatever the checkout holds
days later. So the launch copies the packages (llip, evals) into <sweep dir>/code/ and every job
of the sweep runs from that copy: PYTHONPATH=<code> with PYTHONSAFEPATH=1, so that a job started
inside a checkout does not import the checkout instead (Python otherwise puts the current
directory first on the import path).

The copy is of the working tree as it is, uncommitted changes included, and code.json records
the git commit and the uncommitted diff (uncommitted.diff) for provenance. Refusing a dirty tree
was the alternative: it would push researchers to commit half-done work just to launch a sweep,
while a copy is exact either way, and the diff says what differs from the commit.
"""
from __future__ import annotations

import filecmp
import os
import shlex
import shutil
import subprocess
import sys
import time

import llip
from llip.errors import ConfigError
from llip.io import atomic_write, read_json, write_json
from llip.run_dir import CODE_DIFF, CODE_RECORD

PACKAGES = ("llip", "evals")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def source_root() -> str:
    """Where the running llip (and evals beside it) were imported from."""
    return os.path.dirname(os.path.dirname(os.path.abspath(llip.__file__)))


def _git(root: str, *args) -> str:
    try:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def freeze(code_dir: str) -> dict:
    """Copy the packages into `code_dir` (once: an existing snapshot is kept) and return its
    record {commit, dirty, diff, untracked, source, time}."""
    record_path = os.path.join(code_dir, CODE_RECORD)
    if os.path.exists(record_path):
        return read_json(record_path)
    if os.path.exists(code_dir):
        raise ConfigError(f"{code_dir} exists but is no code snapshot (no {CODE_RECORD}): "
                          "remove it, or launch the sweep under another --name")
    root = source_root()
    tmp = code_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for package in PACKAGES:
        if os.path.isdir(os.path.join(root, package)):
            shutil.copytree(os.path.join(root, package), os.path.join(tmp, package), ignore=_SKIP)
    diff = _git(root, "diff", "HEAD", "--", *PACKAGES)
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", *PACKAGES)
    record = {"commit": _git(root, "rev-parse", "HEAD").strip(), "dirty": bool(diff or untracked),
              "diff": CODE_DIFF if diff else "", "untracked": untracked.split(),
              "source": root, "time": time.time()}
    if diff:
        atomic_write(os.path.join(tmp, CODE_DIFF), diff)
    write_json(os.path.join(tmp, CODE_RECORD), record, indent=1)
    os.rename(tmp, code_dir)
    return record


def commit() -> str:
    """The git commit of the running code: a snapshot's recorded one (a copy is no checkout),
    else the checkout's HEAD ("" outside git)."""
    root = source_root()
    record = os.path.join(root, CODE_RECORD)
    if os.path.exists(record):
        return read_json(record).get("commit", "")
    return _git(root, "rev-parse", "HEAD").strip()


def changed_files(code_dir: str) -> list[str]:
    """The package files that differ between the running code and the snapshot."""
    root, changed = source_root(), []
    for package in PACKAGES:
        a, b = os.path.join(root, package), os.path.join(code_dir, package)
        if not os.path.isdir(a):
            continue
        stack = [filecmp.dircmp(a, b, ignore=["__pycache__"])]
        while stack:
            cmp = stack.pop()
            rel = os.path.relpath(cmp.left, root)
            changed += [os.path.join(rel, n) for n in
                        cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files
                        if not n.endswith((".pyc", ".egg-info"))]
            stack += cmp.subdirs.values()
    return sorted(changed)


def env(code_dir: str) -> dict:
    """The environment of a process that must run the snapshot: the snapshot first on the
    import path, the current directory not on it."""
    paths = [code_dir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONSAFEPATH": "1"}


def python(code_dir: str = "") -> str:
    """The interpreter command of a SLURM job (submitit's `python`) that imports what this
    process imports, the snapshot `code_dir` first: said on the command line, so that it holds
    whatever environment the cluster exports to jobs."""
    path = env(code_dir)["PYTHONPATH"] if code_dir else os.environ.get("PYTHONPATH", "")
    if not path:
        return sys.executable
    safe = "1" if code_dir else os.environ.get("PYTHONSAFEPATH", "")
    return (f"env PYTHONSAFEPATH={shlex.quote(safe)} PYTHONPATH={shlex.quote(path)} "
            f"{shlex.quote(sys.executable)}")
