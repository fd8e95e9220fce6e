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

import yaml


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
    """A JSON file; one nested too deeply to parse is malformed (json.JSONDecodeError), like any
    other, not a RecursionError."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:100], 0) from None


# Configs, sweeps and eval files are small: a larger one, or one whose aliases expand to more
# nodes than this (an "alias bomb": kilobytes that become gigabytes when walked), is refused.
MAX_YAML_BYTES = 4 << 20
MAX_YAML_NODES = 200_000


def read_yaml(path: str):
    """yaml.safe_load of a small file (never runs code); an oversized file, nesting too deep to
    parse or aliases that expand beyond MAX_YAML_NODES raise yaml.YAMLError, as bad YAML does."""
    size = os.path.getsize(path)
    if size > MAX_YAML_BYTES:
        raise yaml.YAMLError(f"{size} bytes, more than any config's {MAX_YAML_BYTES}")
    loader = yaml.SafeLoader(read_text(path))
    try:  # yaml.safe_load's steps, with the expansion counted between them
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_NODES} nodes")
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_nodes(root) -> int:
    """Nodes of the document with every alias expanded, counted without expanding (each shared
    node once, times its uses); a recursive alias is refused."""
    sizes, open_nodes, stack = {}, set(), [root]
    while stack:
        node = stack[-1]
        children = [c for pair in node.value for c in (pair if isinstance(pair, tuple)
                                                       else (pair,))] \
            if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) else []
        todo = [c for c in children if id(c) not in sizes]
        if any(id(c) in open_nodes for c in todo):
            raise yaml.YAMLError("an alias refers to a node that contains it")
        if todo:
            open_nodes.add(id(node))
            stack.extend(todo)
            continue
        stack.pop()
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
    return sizes[id(root)]


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
