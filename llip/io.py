"""Files that must never be seen half-written: write a temporary sibling, fsync, rename.

A reader (a resumed run, an eval sweep, another rank) sees the old file or the new one, never a
torn one, whatever kills the writer; and others can read it as they read any file of the user's
(the umask's mode, whatever mode the writer gave its file).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename.
    For writers that need a file name (torch.save, tar writers)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        if os.path.exists(tmp):  # left by a killed writer of the same pid
            os.remove(tmp)
        with open(tmp, "wb"):  # a new plain file: the mode the umask gives (0644 under 022)
            mode = os.stat(tmp).st_mode & 0o777
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # some writers create their own file 0600 (safetensors does)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str, data: str | bytes) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w", encoding=None if isinstance(
                data, bytes) else "utf-8") as f:
            f.write(data)
    return path


def write_json(path: str, value, indent=None) -> str:
    return atomic_write(path, json.dumps(value, indent=indent) + "\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    """Streaming sha256 (hashlib releases the GIL: threads hash several files in parallel)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
