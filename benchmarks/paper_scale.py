"""Paper shape on CPU: what a 32-node x 8-GPU job does before and around training, simulated
at three sizes each, to see how every step grows.

    python benchmarks/paper_scale.py                        # the whole table (minutes, 2 cores)
    python benchmarks/paper_scale.py --only check,commit --repeats 5
    python benchmarks/paper_scale.py --sleep                # sleep the latency, not just count it

Every (operation, size) runs in a fresh subprocess: `--repeats` timed runs (median, min-max),
then one run under tracemalloc: "peak MiB" is the peak of the Python (and numpy) allocations
made by the operation, on top of what the process held before. "growth" is k in
seconds ~ size^k between the smallest and the largest size (1: linear; small sizes carry a
constant start-up, so k < 1 there means "linear or better").

File systems: the shards and result files are real files on local disk, and every metadata call
the operation makes is counted: os.stat, open, one per os.scandir plus one per 1,000 names it
lists (a directory read returns names in batches). "at 2 ms" adds --latency-ms per counted call
to the measured seconds, the cost on a parallel file system that answers each metadata call in
~2 ms; with --sleep the calls really sleep that long and the seconds are measured.

Simulated ranks and readers run one after another in this process; for them "seconds" and
"fs calls" are one rank's (the slowest; for the commit, plus the main rank's marker), as in
the job where they run in parallel. The commit's one collective, the digest gather, is
measured apart ("gather": real gloo processes on this machine).

Simulated job: 256 ranks x 8 DataLoader workers (2,048 readers), global batch 32,768 (128 per
rank), shards of 10,000 samples (250,000 shards = 2.5B samples), a resume at 60% of a pass; the
checkpoint is llip_G14's model and AdamW moments sharded over the ranks by FSDP2.
"""
from __future__ import annotations

import argparse
import builtins
import collections
import datetime
import io
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
import types

RANKS, WORKERS, RANK_BATCH, SHARD_SAMPLES = 256, 8, 128, 10_000
READERS = RANKS * WORKERS
RESUME_AT = 0.6  # of a pass
BASE_SAMPLES = 10_000  # samples in each real tar behind the shard names
LINKS_PER_BASE = 50_000  # hard links per base tar (ext4 allows 65,000)
MIX_WEIGHTS = (0.5, 0.3, 0.2)
EVAL_DATASETS = 25
CLASSIFICATION = ("acc1", "acc5", "mean_per_class_recall")
RETRIEVAL = tuple(f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in (1, 5, 10))
GATHERS = 20  # timed all_gather_object calls per measurement
G14_TENSORS = 985  # llip_G14's state dict entries (model); x3 with AdamW's two moments

ONCE = {"gather"}  # one run of 20 timed gathers in fresh processes; their memory is not ours
BUDGET_S = 30  # a measurement repeats until --repeats runs or this many seconds, at least once
SHARDS = (2_500, 25_000, 250_000)
OPS = {  # name: (sizes, unit, shape at the largest size)
    "expand": (SHARDS, "shards", "'{000000..249999}.tar' -> names, each rank"),
    "check": (SHARDS, "shards", "up-front shard check, main rank, 1 directory"),
    "start-partitioned": (SHARDS, "shards", "1 worker of 2,048 to its first batch, step at 60%"),
    "start-resampled": (SHARDS, "shards", "1 worker of 2,048 to its first batch (resampled)"),
    "deal-partitioned": (SHARDS, "shards", "2,048 readers: 1 pass dealt + positioned at 60%"),
    "draw-resampled": (SHARDS, "shards", "2,048 readers: 1 pass worth of draws"),
    "mix": ((1_000, 10_000, 100_000), "shards/source",
            "3 sources x 1e5 shards, 0.5/0.3/0.2, 2,048 readers"),
    "commit": ((16, 64, 256), "ranks", "llip_G14 checkpoint commit (digests, marker)"),
    "metadata-read": ((16, 64, 256), "ranks", "read .metadata once (each rank, per read)"),
    "verify": ((16, 64, 256), "ranks", "resume: verify each rank's share of the digests"),
    "gather": ((2, 4, 8), "gloo processes", "commit's digest gather, real gloo, this machine"),
    "eval-list": ((100, 1_000, 10_000), "results", "list the result store"),
    "eval-skip": ((100, 1_000, 10_000), "results", "plan a re-run: tasks, skip the done ones"),
    "eval-aggregate": ((100, 1_000, 10_000), "results", "tables (CSV, Markdown) + plot"),
    "eval-status": ((100, 1_000, 10_000), "results", "llip-status: newest eval average per run"),
}


# ---------------------------------------------------------------- file-system calls
class Calls:
    """Counts (and with `sleep` > 0, delays) the metadata calls: os.stat, open, os.scandir
    (one call plus one per 1,000 names listed)."""

    def __init__(self, sleep: float = 0.0):
        self.count, self.sleep = 0, sleep

    def hit(self, n: int = 1) -> None:
        self.count += n
        if self.sleep:
            time.sleep(self.sleep * n)

    def install(self) -> None:
        real_stat, real_open, real_scandir = os.stat, builtins.open, os.scandir
        self.real = real_stat, real_open, real_open, real_scandir

        def stat(*args, **kwargs):
            self.hit()
            return real_stat(*args, **kwargs)

        def opened(*args, **kwargs):
            self.hit()
            return real_open(*args, **kwargs)

        calls = self

        class Listing:
            def __init__(self, *args):
                calls.hit()
                self.inner = real_scandir(*args)

            def __iter__(self):
                entries = list(self.inner)
                calls.hit(len(entries) // 1000)
                return iter(entries)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.inner.close()

            def close(self):
                self.inner.close()

        os.stat, builtins.open, io.open, os.scandir = stat, opened, opened, Listing

    def uninstall(self) -> None:
        os.stat, builtins.open, io.open, os.scandir = self.real


# ---------------------------------------------------------------- fixtures (not timed)
def _tiny_png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _base_tar(path: str) -> None:
    png = _tiny_png()
    with tarfile.open(path + ".part", "w") as tar:
        for i in range(BASE_SAMPLES):
            for ext, data in (("png", png), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    os.rename(path + ".part", path)


def shard_spec(root: str, n: int) -> str:
    """n shard names in one directory, hard links to real tars of 10,000 tiny samples."""
    folder = os.path.join(root, "shards", f"n{n}")
    if not os.path.exists(os.path.join(folder, "DONE")):
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            base = os.path.join(root, "shards", f"base-{n}-{i // LINKS_PER_BASE}.tar")
            if not os.path.exists(base):
                _base_tar(base)
            name = os.path.join(folder, f"{i:06d}.tar")
            if not os.path.exists(name):
                os.link(base, name)
        open(os.path.join(folder, "DONE"), "w").close()
    return os.path.join(folder, f"{{000000..{n - 1:06d}}}.tar")


def names(n: int, source: str = "laion") -> list[str]:
    return [f"/data/{source}/{i:06d}.tar" for i in range(n)]


def eval_store(root: str, n: int) -> tuple[str, str]:
    """(sweep yaml, output dir): 25 catalog datasets x n/25 checkpoints (runs of 10 kept steps,
    half Llip with 5 eval taus, half CLIP), every result written."""
    import yaml

    from evals.main_mc import build_tasks
    from evals.runner import identity_of
    from evals.sweep_file import load_sweep
    from llip.evaluation.catalog import DEFAULT_CATALOG, load_catalogs
    from llip.evaluation.results import VERSION
    from llip.run_configs import resolve
    from llip.run_dir import checkpoint_dir, write_config, write_marker
    folder = os.path.join(root, "evals", f"v2-n{n}")  # v2: results that record their identity
    sweep_file, out = os.path.join(folder, "sweep.yaml"), os.path.join(folder, "store")
    if os.path.exists(os.path.join(folder, "DONE")):
        return sweep_file, out
    checkpoints = n // EVAL_DATASETS
    steps = min(10, checkpoints)
    entries = []
    for r in range(checkpoints // steps):
        loss = "llip" if r % 2 else "clip"
        cfg = resolve(f"{loss}_tiny", [f"name=run{r:03d}"])
        run = os.path.join(folder, "runs", cfg.name)
        for s in range(1, steps + 1):
            step_dir = checkpoint_dir(run, 1000 * s)
            os.makedirs(step_dir, exist_ok=True)
            write_config(step_dir, cfg)
            write_marker(step_dir, {"step": 1000 * s, "files": {}})
        entries.append({"path": run, "all": True})
    datasets = list(load_catalogs([DEFAULT_CATALOG]))[:EVAL_DATASETS]
    with open(sweep_file, "w") as f:
        yaml.safe_dump({"checkpoints": entries, "datasets": datasets, "output_dir": out,
                        "eval_tau": [1, 3, 5, 8, 10], "launcher": "local"}, f)
    tasks, failures = build_tasks(load_sweep(sweep_file))
    assert not failures and len(tasks) == n, (len(tasks), failures)
    rng = random.Random(0)
    for t in tasks:
        ckpt, entry = t["checkpoint"], t["dataset"]
        metrics = RETRIEVAL if entry["task"] == "retrieval" else CLASSIFICATION
        by_tau = []
        for tau in t["taus"]:
            values = {k: rng.random() for k in metrics}
            by_tau.append({"eval_tau": tau, "value": values[entry["metric"]],
                           "metrics": {**values, "n": 10_000}})
        os.makedirs(os.path.dirname(t["output"]), exist_ok=True)
        with open(t["output"], "w") as f:
            json.dump({
            "version": VERSION, "identity": identity_of(t), "id": ckpt.id,
            "label": ckpt.label, "model": ckpt.name, "loss": ckpt.loss,
            "step": ckpt.step, "checkpoint": ckpt.path, "dataset": entry["name"],
            "task": entry["task"], "split": "test", "metric": entry["metric"], "n": 10_000,
            "images_encoded": 10_000, "seconds": 60.0, "by_tau": by_tau}, f, indent=1)
    open(os.path.join(folder, "DONE"), "w").close()
    return sweep_file, out


def g14_checkpoint(root: str, ranks: int):
    """(the step dir being committed, a function giving its DCP metadata): llip_G14 + AdamW
    sharded over `ranks`, one chunk per tensor per rank as FSDP2 saves it, in .metadata as DCP
    writes it; one 64 KiB file per rank (the bytes hashed per rank do not change with ranks)."""
    import pickle
    folder = os.path.join(root, "checkpoint", f"w{ranks}", "checkpoints", "step_00001000.tmp")
    final = folder[:-len(".tmp")]
    path = os.path.join(final if os.path.exists(final) else folder, ".metadata")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        for r in range(ranks):
            with open(os.path.join(folder, f"__{r}_0.distcp"), "wb") as f:
                f.write(os.urandom(64 << 10))
        with open(path + ".part", "wb") as f:
            pickle.dump(_g14_metadata(ranks), f)
        os.rename(path + ".part", path)

    def metadata():
        with open(os.path.join(final if os.path.exists(final) else folder, ".metadata"),
                  "rb") as f:
            return pickle.load(f)  # our own fixture: the code measured reads it safely
    return folder, metadata


def _g14_metadata(ranks: int):
    import torch
    from torch.distributed.checkpoint import metadata as m
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    state, storage, shape = {}, {}, (1664, 1664)
    rows = -(-shape[0] // ranks)
    for kind in ("model", "optim.exp_avg", "optim.exp_avg_sq"):
        for t in range(G14_TENSORS):
            fqn, chunks = f"{kind}.blocks.{t}.weight", []
            for r in range(ranks):
                offset = min(r * rows, shape[0])
                chunk = m.ChunkStorageMetadata(
                    offsets=torch.Size([offset, 0]),
                    sizes=torch.Size([max(0, min(rows, shape[0] - offset)), shape[1]]))
                chunks.append(chunk)
                storage[m.MetadataIndex(fqn, chunk.offsets, r)] = _StorageInfo(
                    f"__{r}_0.distcp", r, 1)
            state[fqn] = m.TensorStorageMetadata(m.TensorProperties(dtype=torch.float32),
                                                 torch.Size(shape), chunks)
    return m.Metadata(state_dict_metadata=state, storage_data=storage)


def fixture(op: str, size: int, root: str):
    if op in ("check", "start-partitioned", "start-resampled"):
        return shard_spec(root, size)
    if op.startswith("eval-"):
        return eval_store(root, size)
    if op in ("commit", "metadata-read", "verify"):
        return g14_checkpoint(root, size)
    return None


# ---------------------------------------------------------------- operations
def _resume_step(n_shards: int) -> int:
    return int(RESUME_AT * n_shards * SHARD_SAMPLES / (RANKS * RANK_BATCH))


def op_expand(size, _fixture):
    from llip.data.stream import expand_sources
    spec = f"/data/laion/{{000000..{size - 1:06d}}}.tar"
    return lambda: {"names": len(expand_sources(spec)[0])}


def op_check(size, spec):
    from llip.data.stream import check_shards, expand_sources
    return lambda: check_shards(expand_sources(spec))


def _first_batch(spec, size, resampled):
    """One worker (the last of the last rank) of the simulated job, started at the resume step
    in this process: the stream's own code, told by torch which worker it is."""
    import torch

    from llip.data.stream import ShardStream, consumed_samples, expand_sources
    step = _resume_step(size)
    torch.utils.data.get_worker_info = lambda: types.SimpleNamespace(id=WORKERS - 1,
                                                                     num_workers=WORKERS)
    zero = torch.zeros(1)

    def run():
        stream = ShardStream(expand_sources(spec), [1.0], lambda image: zero, list, RANK_BATCH,
                             shuffle_buffer=0, seed=0, rank=RANKS - 1, world_size=RANKS,
                             start_step=step, resampled=resampled,
                             pass_samples=size * SHARD_SAMPLES)
        next(iter(stream))
        if resampled:
            return {"step": step}
        start = consumed_samples(step, RANK_BATCH, WORKERS - 1, WORKERS)
        return {"step": step, "samples_skipped": start % SHARD_SAMPLES}
    return run


def op_start_partitioned(size, spec):
    return _first_batch(spec, size, resampled=False)


def op_start_resampled(size, spec):
    return _first_batch(spec, size, resampled=True)


def op_deal_partitioned(size, _fixture):
    """Every reader's slice of one pass (disjoint? covering?), and every reader positioned at
    the resume step: its first shard is the one the uninterrupted reader is on there."""
    from llip.data.stream import _partitioned_shards, consumed_samples
    sources = [names(size)]
    per_pass, step = size // READERS, _resume_step(size)

    def run():
        seen, dealt, positioned, began = set(), 0, 0, time.perf_counter()
        for reader in range(READERS):
            start = consumed_samples(step, RANK_BATCH, reader % WORKERS, WORKERS)
            at = start // SHARD_SAMPLES  # the shard the uninterrupted reader is on
            straight = list(itertools.islice(_partitioned_shards(sources, 0, reader, READERS),
                                             max(per_pass, at + 1)))
            seen.update(shard["url"] for shard in straight[:per_pass])
            dealt += per_pass
            resumed = next(_partitioned_shards(sources, 0, reader, READERS, start,
                                               size * SHARD_SAMPLES))
            positioned += resumed["url"] == straight[at]["url"]
        return {"_seconds": (time.perf_counter() - began) / READERS,
                "disjoint": len(seen) == dealt, "covered": round(len(seen) / size, 4),
                "positioned": f"{positioned}/{READERS}"}
    return run


def op_draw_resampled(size, _fixture):
    from llip.data.stream import _resampled_shards, stream_seed
    sources = [names(size)]

    def run():
        seen, draws, began = set(), 0, time.perf_counter()
        for rank, worker in itertools.product(range(RANKS), range(WORKERS)):
            rng = random.Random(stream_seed(0, rank, worker, 0))
            for shard in itertools.islice(_resampled_shards(sources, [1.0], rng),
                                          -(-size // READERS)):
                seen.add(shard["url"])
                draws += 1
        return {"_seconds": (time.perf_counter() - began) / READERS,
                "distinct": round(len(seen) / size, 4), "draws": draws}
    return run


def op_mix(size, _fixture):
    from llip.data.stream import _resampled_shards, stream_seed
    sources = [names(size, s) for s in ("a", "b", "c")]

    def run():
        drawn, began = collections.Counter(), time.perf_counter()
        for rank, worker in itertools.product(range(RANKS), range(WORKERS)):
            rng = random.Random(stream_seed(0, rank, worker, 0))
            drawn.update(d["source"] for d in itertools.islice(
                _resampled_shards(sources, list(MIX_WEIGHTS), rng), -(-3 * size // READERS)))
        total = sum(drawn.values())
        shares = [drawn[s] / total for s in range(3)]
        return {"_seconds": (time.perf_counter() - began) / READERS,
                "shares": "/".join(f"{x:.4f}" for x in shares),
                "max_dev_pts": round(100 * max(abs(x - w) for x, w in zip(shares, MIX_WEIGHTS)),
                                     3)}
    return run


def op_commit(ranks, fixture_):
    """Each rank's share (its digests, its files found in the metadata in memory), then the
    main rank's marker: the commit's code without the gather (measured apart with gloo). Every
    rank does the same work, so ranks 0, 1, W/2 and W-1 run _hash_share (timed) and the others'
    shares are their files' digests, computed alike, so that the marker is the job's."""
    import shutil

    from llip.checkpoint_files import digests, owner
    from llip.run_configs import resolve
    from llip.training.checkpoint import _commit, _hash_share
    tmp, load = fixture_
    metadata, final = load(), tmp[:-len(".tmp")]
    cfg = resolve("llip_tiny", ["keep_last=1000"])
    run_dir = os.path.dirname(os.path.dirname(tmp))

    def run():
        if os.path.exists(final):  # the previous repeat's commit
            shutil.rmtree(tmp, ignore_errors=True)
            os.rename(final, tmp)
        shares, slowest = [], 0.0
        sampled = {0, 1, ranks // 2, ranks - 1}
        for r in range(ranks):
            if r not in sampled:
                shares.append(digests(tmp, [f"__{r}_0.distcp"]))
                assert owner(f"__{r}_0.distcp", ranks) == r
                continue
            start = time.perf_counter()
            shares.append(_hash_share(tmp, cfg, metadata, r, ranks))
            slowest = max(slowest, time.perf_counter() - start)
        assert not any(isinstance(s, BaseException) for s in shares), shares
        start = time.perf_counter()
        with open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet
            try:
                _commit(run_dir, cfg, tmp, final, {"step": 1000}, shares)
            finally:
                sys.stdout = stdout
        marker_s = time.perf_counter() - start
        return {"_seconds": slowest + marker_s, "_per": ranks, "slowest_share_s": round(slowest, 4),
                "marker_s": round(marker_s, 4),
                "marker_kb": round(os.path.getsize(os.path.join(final, "COMPLETE")) / 1024, 1)}
    return run


def op_metadata_read(ranks, fixture_):
    """What every rank did at each commit before (and twice at each load): read .metadata."""
    from llip.checkpoint_files import read_metadata
    tmp = fixture_[0]
    folder = tmp[:-len(".tmp")] if os.path.exists(tmp[:-len(".tmp")]) else tmp
    path = os.path.join(folder, ".metadata")
    return lambda: {"metadata_mb": round(os.path.getsize(path) / 2 ** 20, 1),
                    "chunks": len(read_metadata(path).storage_data)}


def op_verify(ranks, fixture_):
    """Resume: each rank checks its share of the recorded digests (marker read, stat, hash)."""
    from llip.checkpoint_files import verify
    final = fixture_[0][:-len(".tmp")]
    if not os.path.exists(final):
        op_commit(ranks, fixture_)()

    def run():
        slowest = 0.0
        for r in range(ranks):
            start = time.perf_counter()
            assert verify(final, r, ranks) == (None, False)
            slowest = max(slowest, time.perf_counter() - start)
        return {"_seconds": slowest, "_per": ranks, "ranks_verified": ranks}
    return run


def _gather_rank(rank: int, world: int, port: int, share, out) -> None:
    import torch.distributed

    from llip.training import dist
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world)
    try:
        times = []
        for i in range(GATHERS + 3):
            dist.barrier()
            start = time.perf_counter()
            shares = dist.all_gather_object(share)
            if i >= 3:  # after warm-up
                times.append(time.perf_counter() - start)
        assert len(shares) == world
        out.put((rank, statistics.median(times)))
    finally:
        torch.distributed.destroy_process_group()


def op_gather(world, _fixture):
    """The commit's one collective for real: gloo all_gather_object of a rank's digest share
    (one file's sha256 and size), `world` processes on this machine."""
    import multiprocessing
    import socket
    share = {"__0_0.distcp": {"sha256": "0" * 64, "bytes": 1 << 30}}
    context = multiprocessing.get_context("fork")

    def run():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = context.Queue()
        procs = [context.Process(target=_gather_rank, args=(r, world, port, share, out))
                 for r in range(world)]
        for p in procs:
            p.start()
        times = dict(out.get(timeout=300) for _ in procs)
        for p in procs:
            p.join()
        return {"_seconds": max(times.values()),  # the slowest rank's median gather
                "per_ring_step_ms": round(1000 * max(times.values()) / (world - 1), 2)}
    return run


def op_eval_list(size, fixture_):
    import glob
    out = fixture_[1]
    return lambda: {"files": len(glob.glob(os.path.join(out, "results", "*.json")))}


def op_eval_skip(size, fixture_):
    from evals.main_mc import build_tasks, is_done
    from evals.sweep_file import load_sweep

    def run():
        tasks, _ = build_tasks(load_sweep(fixture_[0]))
        todo = [t for t in tasks if not is_done(t)]
        return {"tasks": len(tasks), "todo": len(todo)}
    return run


def op_eval_aggregate(size, fixture_):
    from evals.aggregate import aggregate
    from llip.evaluation.catalog import DEFAULT_CATALOG, load_catalogs, load_groups
    groups, catalog = load_groups([DEFAULT_CATALOG]), load_catalogs([DEFAULT_CATALOG])

    def run():
        with open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet
            try:
                wide = aggregate(fixture_[1], groups=groups, catalog=catalog)
            finally:
                sys.stdout = stdout
        return {"rows": len(wide)}
    return run


def op_eval_status(size, fixture_):
    from llip.status import _eval_averages
    return lambda: {"runs": len(_eval_averages([fixture_[1]]))}


# ---------------------------------------------------------------- one measurement (child)
def measure(op: str, size: int, root: str, repeats: int, sleep: float) -> dict:
    built = fixture(op, size, root)
    run = globals()["op_" + op.replace("-", "_")](size, built)
    calls = Calls(sleep)
    calls.install()
    seconds, facts, spent = [], {}, 0.0
    repeats = 1 if op in ONCE else repeats
    while len(seconds) < repeats and (not seconds or spent < BUDGET_S):
        calls.count = 0
        start = time.perf_counter()
        facts = run() or {}
        spent += time.perf_counter() - start
        seconds.append(facts.pop("_seconds", time.perf_counter() - start))
    counted = -(-calls.count // facts.pop("_per", 1))  # one rank's, where ranks are simulated
    calls.uninstall()  # the memory run without the counting (its listings hold every name)
    peak = None
    if op not in ONCE:
        tracemalloc.start()
        run()
        peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    return {"seconds": seconds, "peak_mib": peak, "calls": counted, "facts": facts}


# ---------------------------------------------------------------- the table (parent)
def _fmt_s(x: float) -> str:
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.3g} s"
    return f"{x * 1e3:.3g} ms" if x >= 1e-3 else f"{x * 1e6:.3g} us"


def _growth(sizes, values) -> str:
    lo, hi = values[0], values[-1]
    if lo <= 0 or hi <= 0:
        return "-"
    return f"{round(math.log(hi / lo) / math.log(sizes[-1] / sizes[0]), 2) + 0.0:.2f}"


def run_op(op: str, args) -> list[str]:
    sizes, unit, shape = OPS[op]
    rows = []
    for size in sizes:
        fixture(op, size, args.root)  # built once, outside the child's timing
        child = subprocess.run(
            [sys.executable, __file__, "--child", op, str(size), "--root", args.root,
             "--repeats", str(args.repeats), "--latency-ms", str(args.latency_ms)]
            + (["--sleep"] if args.sleep else []),
            capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"{op} at {size}: {child.stderr[-3000:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    med = [statistics.median(r["seconds"]) for r in rows]
    cells = [f"{_fmt_s(m)} ({_fmt_s(min(r['seconds']))}-{_fmt_s(max(r['seconds']))})"
             for m, r in zip(med, rows)]
    latency = [m + (0 if args.sleep else r["calls"] * args.latency_ms / 1000)
               for m, r in zip(med, rows)]
    facts = "; ".join(f"{k} {' / '.join(str(r['facts'][k]) for r in rows)}"
                      if len({str(r["facts"][k]) for r in rows}) > 1 else f"{k} {v}"
                      for k, v in rows[-1]["facts"].items())
    return [op, f"{shape} ({' / '.join(f'{s:,}' for s in sizes)} {unit})",
            " / ".join(cells),
            " / ".join("-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}" for r in rows),
            " / ".join(str(r["calls"]) for r in rows),
            " / ".join(_fmt_s(x) for x in latency),
            f"{_growth(sizes, med)} / {_growth(sizes, [r['peak_mib'] or 0 for r in rows])}",
            facts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(OPS), help="operations, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--sleep", action="store_true",
                        help="sleep the latency in each call instead of adding it afterwards")
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(),
                                                       "llip-paper-scale"),
                        help="fixtures (shard links, eval stores), kept between runs")
    parser.add_argument("--child", nargs=2, metavar=("OP", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        op, size = args.child[0], int(args.child[1])
        print(json.dumps(measure(op, size, args.root, args.repeats,
                                 args.latency_ms / 1000 if args.sleep else 0.0)))
        return
    ops = [o for o in args.only.split(",") if o]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        sys.exit(f"unknown operation(s) {unknown}; known: {', '.join(OPS)}")
    print(f"{datetime.date.today()}: {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}; repeats {args.repeats}; "
          f"latency {args.latency_ms:g} ms per call ({'slept' if args.sleep else 'added'})",
          flush=True)
    head = ["operation", "simulated shape (3 sizes)", "time: median (min-max)", "peak MiB",
            "fs calls", f"time at {args.latency_ms:g} ms/call", "growth k: time / memory",
            "checked at the largest size"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
    for op in ops:
        print("| " + " | ".join(run_op(op, args)) + " |", flush=True)
    print(f"load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
