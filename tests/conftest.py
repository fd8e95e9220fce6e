import os
import socket
import subprocess
import sys

import pytest
import torch.multiprocessing as mp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Real WebDataset shards of sklearn's digits (train + held-out test)."""
    from llip.data.digits import build
    return build(str(tmp_path_factory.mktemp("digits")))


def run_cli(*args, env=None, timeout=600, cwd=REPO):
    """Run a module of this repo in a fresh interpreter, the way a user would."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


@pytest.fixture(scope="session")
def trained_clip(digits, tmp_path_factory):
    """A clip_demo run trained for 110 steps on the digits, with checkpoints at 55 and 110 and
    zero-shot evals on the held-out digits at both (eval rows in metrics.jsonl)."""
    logs = tmp_path_factory.mktemp("clip_run")
    catalog = write_catalog(logs / "catalog.json", digits)
    result = run_cli("-m", "llip.main", "clip_demo", f"train_data={digits['train']}",
                     f"logs={logs}", "epochs=10", "checkpoint_every=55", "keep_last=5",
                     "log_every=50", "eval_every=55", "eval_datasets=digits",
                     f"eval_catalog={catalog}")
    assert result.returncode == 0, result.stderr[-2000:]
    return os.path.join(logs, "clip_demo")


def write_catalog(path, digits, changes=None):
    """The demo catalog pointed at test shards; `changes` (name -> entry) edit or break it."""
    from llip.io import read_json, write_json
    catalog = read_json(os.path.join(REPO, "config_evals", "demo_catalog.json"))
    for name, entry in catalog.items():
        if not name.startswith("_"):
            entry["path"] = digits["test"]
            if "train_path" in entry:
                entry["train_path"] = digits["train"]
    for name, entry in (changes or {}).items():
        catalog[name] = entry
    write_json(str(path), catalog)
    return str(path)


def run_ranks(worker, *args, world: int = 2, results: int = 1, timeout: float = 300) -> list:
    """Run `worker(rank, port, *args, queue)` in `world` spawned processes that form a real gloo
    group on a free local port; return the first `results` items they put on the queue, once
    every process has exited cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(rank, port, *args, queue)) for rank in range(world)]
    for p in procs:
        p.start()
    out = [queue.get(timeout=timeout) for _ in range(results)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def assert_one_error(result, *needles):
    """A command that failed the way bad input must: exit 2, no traceback, and a last line
    `error: ...` that holds every needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines and lines[-1].startswith("error:"), result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]


class Touch:
    """A pickle payload that runs `touch path` when unpickled: the marker file that proves
    whether a loader ran code from data."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))
