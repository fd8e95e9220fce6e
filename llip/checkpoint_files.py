"""Reading a checkpoint directory safely: file digests recorded at save time, the one
verification of them before anything is loaded (resume on every rank, inference in one process),
and a DCP reader that never runs code.

* Digests: COMPLETE carries {"files": {name: {"sha256", "bytes"}}} for every file of the step
  dir. A flipped byte, a truncated copy or a missing shard is found before the weights are
  used: resume falls back to the previous good checkpoint, inference refuses with one line.
  Cost: sha256 runs at about 2 GB/s per core; at save every rank hashes the files it wrote
  (its share of the checkpoint), at resume every rank hashes the same share, in threads; only
  a lone process (load_model for evals/export) reads the whole checkpoint.
* No code: DCP's `.metadata` is a pickle and its non-tensor entries (optimizer hyperparameters)
  are loaded with torch.load(weights_only=False). SafeReader unpickles `.metadata` with an
  allow-list of DCP's own metadata classes and SafePlanner loads entries with
  weights_only=True, so even a hand-crafted directory cannot run code on load; digests add the
  guarantee that the numbers are the ones that were saved.
* A directory without digests (written by an older llip, or by hand) is refused unless the
  user sets LLIP_TRUST_CHECKPOINT=1; it is then loaded (still without running code).
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import pathlib
import pickle
import re
import warnings

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader

from llip.errors import CheckpointError
from llip.io import sha256_file
from llip.run_dir import read_marker

TRUST_ENV = "LLIP_TRUST_CHECKPOINT"
METADATA = ".metadata"
HASH_THREADS = 8
_RANK_FILE = re.compile(r"^__(\d+)_\d+\.distcp$")
# DCP without a process group is our intended single-process mode, not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


# ---------------------------------------------------------------- digests
def owner(name: str, world_size: int) -> int:
    """The rank that hashes a file: the rank that wrote it (DCP's __<rank>_<i>.distcp), modulo
    the world size at hand; everything else is rank 0's."""
    found = _RANK_FILE.match(name)
    return int(found.group(1)) % world_size if found else 0


def digests(directory: str, names) -> dict:
    """{name: {"sha256", "bytes"}} of files in `directory`, hashed in threads."""
    names = sorted(names)

    def one(name):
        path = os.path.join(directory, name)
        return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    with concurrent.futures.ThreadPoolExecutor(min(HASH_THREADS, max(1, len(names)))) as pool:
        return dict(zip(names, pool.map(one, names)))


def problems(directory: str, recorded: dict) -> list[str]:
    """What differs between the files and their recorded digests (sizes first: cheap)."""
    found = []
    for name, want in sorted(recorded.items()):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            found.append(f"{name} is missing")
        elif os.path.getsize(path) != want["bytes"]:
            found.append(f"{name} has {os.path.getsize(path)} bytes, {want['bytes']} were saved")
    if found:
        return found
    actual = digests(directory, recorded)
    return [f"{name} does not match its sha256 digest" for name in sorted(recorded)
            if actual[name]["sha256"] != recorded[name]["sha256"]]


def verify(path: str, rank: int = 0, world_size: int = 1, gather=None):
    """(one line saying why checkpoint `path` cannot be loaded, or None; whether it is corrupt,
    not just unverifiable). A lone process hashes every file; in a job each of `world_size`
    ranks hashes its share and `gather` (a list from every rank -> the lists of all ranks)
    gives every rank the same verdict."""
    try:
        recorded = read_marker(path).get("files")
    except CheckpointError as exn:
        return str(exn), True
    if not recorded:
        if os.environ.get(TRUST_ENV, "") == "1":
            return None, False
        return (f"checkpoint {path} has no file digests in its COMPLETE marker (written by an "
                f"older llip or by hand), so corruption cannot be ruled out: set {TRUST_ENV}=1 "
                "to load it anyway"), False
    found = problems(path, {n: d for n, d in recorded.items() if owner(n, world_size) == rank})
    if gather is not None:
        found = [p for share in gather(found) for p in share]
    if not found:
        return None, False
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"checkpoint {path} is corrupt: {found[0]}{more}", True


# ---------------------------------------------------------------- loading without code
_ALLOWED = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"),
}
_METADATA_CLASSES = {"Metadata", "BytesStorageMetadata", "ChunkStorageMetadata", "MetadataIndex",
                     "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                     "_MEM_FORMAT_ENCODING"}


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's metadata classes, torch dtypes and sizes, paths: nothing that can run code."""

    def find_class(self, module: str, name: str):
        if module == "torch.distributed.checkpoint.metadata" and name in _METADATA_CLASSES:
            return getattr(dcp_metadata, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED:
            if module == "pathlib":
                return getattr(pathlib, name)
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which a "
                                     "DCP checkpoint never contains: refusing to load it")


def read_metadata(path: str):
    """A checkpoint's DCP metadata through the allow-list (UnpicklingError otherwise)."""
    with open(path, "rb") as f:
        try:
            metadata = _MetadataUnpickler(f).load()
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exn:
            raise pickle.UnpicklingError(f"{os.path.basename(path)} is not readable DCP "
                                         f"metadata ({type(exn).__name__})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise pickle.UnpicklingError(f"{os.path.basename(path)} does not hold DCP metadata")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's reader, with the metadata read through the allow-list (`metadata`: read already)."""

    def __init__(self, path: str, metadata=None):
        super().__init__(path)
        self.preread = metadata

    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")
        name = METADATA if rank is None else f"__{rank}{METADATA}"
        metadata = self.preread if rank is None and self.preread is not None else \
            read_metadata(os.path.join(self.path, name))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """Non-tensor entries (e.g. optimizer hyperparameters) with weights_only=True."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load_dcp(state: dict, path: str) -> None:
    """dcp.load in place, through the reader and planner above. The metadata is read first, so
    that a bad one fails here with our message (DCP would log tracebacks, then try per-rank
    metadata files that do not exist), and only once: it holds a chunk per tensor per rank of
    the save (95 MB for llip_G14 at 256 ranks), and every rank reads it."""
    metadata = read_metadata(os.path.join(path, METADATA))
    dcp.load(state, storage_reader=SafeReader(path, metadata), planner=SafePlanner())


def load_failure(exn: BaseException) -> str:
    """The root failure inside DCP's wrapped exceptions, as one line."""
    found = exn
    for e in [exn, *getattr(exn, "failures", {}).values()]:
        while isinstance(e, BaseException) and (e.__cause__ or e.__context__):
            e = e.__cause__ or e.__context__
        if isinstance(e, pickle.UnpicklingError):
            return " ".join(str(e).split())
        found = e if isinstance(e, BaseException) else found
    return f"{type(found).__name__}: {' '.join(str(found).split())[:200]}"
