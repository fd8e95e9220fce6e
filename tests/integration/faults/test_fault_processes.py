"""Fault injection with real processes: launches racing for one run dir, a trainer killed with
SIGKILL (its DataLoader workers must die with it, its lock must be taken over, the run must
resume), a mix with a source that yields nothing, and a 2-rank torchrun resume that finds the
newest checkpoint corrupt in a file only rank 1 verifies."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import webdataset as wds

from helpers import REPO, assert_one_error, run_cli, run_ranks
from llip.checkpoint_files import owner
from llip.run_dir import checkpoint_dir, latest, read_marker, step_of


def _wait(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


# ---------------------------------------------------------------- the run-dir lock
def _acquire(rank, port, run_dir, start_at, queue):
    from llip.errors import ConfigError
    from llip.training.claim import RunLock
    time.sleep(max(0.0, start_at - time.time()))  # every process tries at the same moment
    try:
        RunLock(run_dir).acquire()
        queue.put(("held", os.getpid()))
        time.sleep(2)  # still alive while the losers read the lock
    except ConfigError as exn:
        queue.put(("refused", str(exn)))


def test_racing_launches_get_exactly_one_lock(tmp_path):
    run_dir = str(tmp_path / "run")
    got = run_ranks(_acquire, run_dir, time.time() + 8, world=4, results=4, timeout=120)
    held = [pid for kind, pid in got if kind == "held"]
    refused = [message for kind, message in got if kind == "refused"]
    assert len(held) == 1 and len(refused) == 3, got
    assert all(f"in use by pid {held[0]} " in message for message in refused), refused


def _children(pid: int) -> list[int]:
    """Child processes of `pid` that run its own command line (forked DataLoader workers)."""
    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return b""
    cmdline = read(f"/proc/{pid}/cmdline")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read(f"/proc/{entry}/stat").decode(errors="replace")
            if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid \
                    and read(f"/proc/{entry}/cmdline") == cmdline:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def test_killed_trainer_takes_its_workers_along_and_its_lock_is_taken_over(digits, tmp_path):
    args = ["-m", "llip.main", "clip_tiny", f"train_data={digits['train']}",
            f"logs={tmp_path}", "name=run", "train_num_samples=160", "checkpoint_every=5",
            "log_every=5", "keep_last=3", "workers=2", "wandb_mode=disabled"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen([sys.executable, *args, "epochs=1000"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir, workers = str(tmp_path / "run"), set()
    try:
        _wait(lambda: latest(run_dir) is not None or trainer.poll() is not None, 300,
              "the first checkpoint")
        assert trainer.poll() is None, trainer.stderr.read()[-2000:]
        # 2 workers, more while a restarted stream's workers replace the old ones
        workers = set(_children(trainer.pid))
        assert len(workers) >= 2, workers
        # SLURM signals every process of a job before a time limit or a preemption: the
        # workers leave those signals to the trainer (one dying of them would make torch
        # raise in the trainer, in the middle of its requeue)
        for worker in workers:
            for sig in (signal.SIGUSR1, signal.SIGUSR2):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, sig)
        time.sleep(2)
        assert trainer.poll() is None, trainer.stderr.read()[-2000:]

        second = run_cli(*args, "epochs=1000")  # the same run, launched again meanwhile
        assert_one_error(second, f"in use by pid {trainer.pid} on host")
    finally:
        workers |= set(_children(trainer.pid))
        trainer.kill()
        trainer.wait()
    trainer.stderr.close()
    _wait(lambda: not any(_alive(w) for w in workers), 20, "the orphaned workers to exit")

    step = step_of(latest(run_dir))  # the LOCK of the killed trainer is still there
    assert os.path.exists(os.path.join(run_dir, "LOCK"))
    resumed = run_cli(*args, f"epochs={step // 10 + 1}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "taking over the lock" in resumed.stderr and "no longer running" in resumed.stderr
    assert f"at step {step}" in resumed.stdout
    assert step_of(latest(run_dir)) == (step // 10 + 1) * 10
    assert not os.path.exists(os.path.join(run_dir, "LOCK"))  # released at the end


# ---------------------------------------------------------------- a mix with a dead source
@pytest.mark.parametrize("kind", ["empty", "undecodable"])
def test_a_source_that_yields_nothing_stops_a_mix_naming_it(digits, tmp_path, kind):
    bad = tmp_path / f"{kind}-0.tar"
    with wds.TarWriter(str(bad)) as sink:
        for i in range(150 if kind == "undecodable" else 0):
            sink.write({"__key__": f"k{i:04d}", "png": b"not an image", "txt": "a caption"})
    result = run_cli("-m", "llip.main", "clip_tiny", f"train_data={digits['train']}::{bad}",
                     "train_data_weights=1::1", f"logs={tmp_path}", "name=mix",
                     "train_num_samples=2000", "workers=1", "wandb_mode=disabled",
                     env={"OMP_NUM_THREADS": "1"}, timeout=300)
    needle = "holds no samples" if kind == "empty" else "none of the first"  # before, during
    assert_one_error(result, needle)
    assert f"train_data source 2 ({bad})" in result.stderr.splitlines()[-1]
    if kind == "empty":  # found before training; undecodable images once the source is drawn
        assert latest(str(tmp_path / "mix")) is None


# ---------------------------------------------------------------- 2-rank resume fallback
def test_two_rank_resume_falls_back_when_rank1s_share_is_corrupt(digits, tmp_path):
    args = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "llip.main",
            "clip_tiny", f"train_data={digits['train']}", f"logs={tmp_path}", "name=run",
            "train_num_samples=96", "batch_size=16", "checkpoint_every=2", "keep_last=3",
            "log_every=2", "wandb_mode=disabled"]
    env = {"OMP_NUM_THREADS": "1"}
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = str(tmp_path / "run")
    newest = checkpoint_dir(run_dir, 6)
    rank1 = [n for n in read_marker(newest)["files"]
             if n.endswith(".distcp") and owner(n, 2) == 1]
    assert rank1, "rank 1 wrote no shard file"
    path = os.path.join(newest, rank1[0])
    blob = bytearray(open(path, "rb").read())
    blob[-100] ^= 0x01
    open(path, "wb").write(bytes(blob))

    resumed = run_cli(*args, "epochs=2", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "falling back to the previous checkpoint" in resumed.stderr
    assert f"{rank1[0]} does not match its sha256 digest" in resumed.stderr
    assert f"resumed from {checkpoint_dir(run_dir, 4)} at step 4" in resumed.stdout
    assert os.path.isdir(newest + ".corrupt")
    assert step_of(latest(run_dir)) == 12

