"""Training runs on real shards: a resumed run equals a straight one, checkpoints are atomic and
pruned, a crash or SIGTERM during a save never loses the previous checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import REPO, run_cli
from llip.io import read_text
from llip.loading import load_model
from llip.run_dir import checkpoint_dir, complete_checkpoints, is_complete, latest

STEPS, CKPT_EVERY = 20, 10


def _args(digits, logs, name):
    return ["-m", "llip.main", "llip_tiny", f"train_data={digits['train']}", f"logs={logs}",
            f"name={name}", "batch_size=16", f"train_num_samples={16 * STEPS}",
            f"checkpoint_every={CKPT_EVERY}", "log_every=1", "workers=2", "keep_last=5"]


def _metrics(run_dir):
    return [json.loads(line) for line in read_text(os.path.join(run_dir, "metrics.jsonl"))
            .splitlines()]


def _weights(run_dir, step):
    return load_model(checkpoint_dir(str(run_dir), step))[0].state_dict()


def _run_and_kill_after_checkpoint(args, marker, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not os.path.exists(marker):
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: trainer and its data workers
    proc.wait()


def test_resume_after_kill_equals_straight_run(digits, tmp_path):
    straight = run_cli(*_args(digits, tmp_path, "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]

    args = _args(digits, tmp_path, "resumed")
    run_dir = tmp_path / "resumed"
    _run_and_kill_after_checkpoint(args, run_dir / "checkpoints" / "step_00000010" / "COMPLETE")
    assert not (run_dir / "checkpoints" / f"step_{STEPS:08d}").exists(), "kill came too late"
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "at step 10" in resumed.stdout

    a, b = _metrics(tmp_path / "straight"), _metrics(run_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert len({r["data_checksum"] for r in a}) == STEPS  # a fingerprint of each step's samples
    for ra, rb in zip(a, b):  # the same batches, the same losses, step by step
        assert ra["data_checksum"] == rb["data_checksum"], ra["step"]
        assert abs(ra["loss"] - rb["loss"]) < 1e-6, ra["step"]
    wa, wb = _weights(tmp_path / "straight", STEPS), _weights(run_dir, STEPS)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-6, rtol=0, msg=name)


def test_checkpoints_are_atomic_kept_last_n_and_run_dir_is_complete(digits, tmp_path):
    run_dir = tmp_path / "run"
    stale = run_dir / "checkpoints" / "step_00000099.tmp"  # a save that crashed mid-write
    stale.mkdir(parents=True)
    (stale / "__0_0.distcp").write_bytes(b"half a checkpoint")
    result = run_cli("-m", "llip.main", "siglip_tiny", f"train_data={digits['train']}",
                     f"logs={tmp_path}", "name=run", "train_num_samples=96", "batch_size=16",
                     "checkpoint_every=2", "keep_last=2", "log_every=2", "workers=1")
    assert result.returncode == 0, result.stderr[-2000:]
    done = complete_checkpoints(str(run_dir))
    assert [os.path.basename(d) for d in done] == ["step_00000004", "step_00000006"]
    assert not stale.exists()
    assert latest(str(run_dir)).endswith("step_00000006")
    assert (run_dir / "config.yaml").exists()
    assert all(os.path.exists(os.path.join(d, "config.yaml")) for d in done)  # self-describing
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(r["skipped_shards"] == 0 and r["samples_per_s"] > 0 for r in rows)
    for r in rows:  # throughput accounting: one process on CPU, so no MFU
        assert r["samples_per_s_per_rank"] == r["samples_per_s"] and r["tflops_per_rank"] > 0
        assert r["mfu"] is None and 0 <= r["data_wait"] <= 1 and r["peak_mem_gib"] > 0
    assert "step 6/6 (100%)" in result.stdout and "ETA" in result.stdout
    assert "TFLOP/s/rank" in result.stdout and "data wait" in result.stdout
    offline_runs = list((run_dir / "wandb").rglob("offline-run-*"))
    assert offline_runs, "wandb did not write an offline run inside the run dir"


CRASH_DURING_SAVE = """
import os, signal, sys
import torch.distributed.checkpoint as dcp
real_save, real_async_save = dcp.save, dcp.async_save
def die_if_step_4(checkpoint_id):
    if checkpoint_id.endswith("step_00000004.tmp"):  # files written, not yet marked complete
        os.kill(os.getpid(), signal.SIGKILL)
def save_then_die(state, checkpoint_id, **kwargs):
    metadata = real_save(state, checkpoint_id=checkpoint_id, **kwargs)
    die_if_step_4(checkpoint_id)
    return metadata
def async_save_then_die(state, checkpoint_id, **kwargs):
    future = real_async_save(state, checkpoint_id=checkpoint_id, **kwargs)
    future.result()  # the background write is done: every file of the step is on disk
    die_if_step_4(checkpoint_id)
    return future
dcp.save, dcp.async_save = save_then_die, async_save_then_die
from llip.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("checkpoint_async", [True, False])
def test_kill_during_save_keeps_previous_checkpoint(digits, tmp_path, checkpoint_async):
    """A process killed in the middle of writing a checkpoint (a fault provoked by wrapping
    DCP's save, since a real kill cannot be timed into that window) leaves the previous
    checkpoint as `latest`; the next launch resumes from it and finishes; the export loads
    weights_only. Asynchronous saves (the default) and blocking ones alike."""
    args = ["llip_tiny", f"train_data={digits['train']}", f"logs={tmp_path}", "name=run",
            "train_num_samples=96", "batch_size=16", "checkpoint_every=2", "workers=1",
            f"checkpoint_async={checkpoint_async}"]
    crashed = run_cli("-c", CRASH_DURING_SAVE, *args)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "step_00000004.tmp").exists()
    assert latest(str(run_dir)).endswith("step_00000002")
    assert load_model(latest(str(run_dir)))[2] == 2

    resumed = run_cli("-m", "llip.main", *args)
    assert resumed.returncode == 0 and "at step 2" in resumed.stdout, resumed.stderr[-2000:]
    assert latest(str(run_dir)).endswith("step_00000006")
    if not checkpoint_async:
        return  # the export is the same for both
    exported = run_cli("-m", "llip.training.export", str(run_dir), str(tmp_path / "m.pt"))
    assert exported.returncode == 0, exported.stderr
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert blob["step"] == 6 and blob["config"]["name"] == "run"
    model, cfg, step = load_model(str(tmp_path / "m.pt"))
    assert step == 6 and cfg.name == "run"
    for name, value in load_model(str(run_dir))[0].state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=0, rtol=0)


SIGTERM_DURING_SAVE = """
import os, signal, sys, threading, time
from concurrent.futures import Future
import torch.distributed.checkpoint as dcp
real_async_save = dcp.async_save
def slow_async_save_then_sigterm(state, checkpoint_id, **kwargs):
    inner = real_async_save(state, checkpoint_id=checkpoint_id, **kwargs)
    if not checkpoint_id.endswith("step_00000004.tmp"):
        return inner
    slow = Future()  # SIGTERM 0.5 s after the save began, the write ends 1 s later
    def sigterm_then_finish():
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
        slow.set_result(inner.result())
    threading.Thread(target=sigterm_then_finish).start()
    return slow
dcp.async_save = slow_async_save_then_sigterm
from llip.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_async_save_completes_it(digits, tmp_path):
    """SIGTERM while a background save is in flight: the run stops, but only after that
    checkpoint is written and marked complete."""
    args = ["llip_tiny", f"train_data={digits['train']}", f"logs={tmp_path}", "name=run",
            "train_num_samples=160", "batch_size=16", "checkpoint_every=2", "workers=1"]
    stopped = run_cli("-c", SIGTERM_DURING_SAVE, *args)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    run_dir = tmp_path / "run"
    assert latest(str(run_dir)).endswith("step_00000004")
    assert not (run_dir / "checkpoints" / "step_00000004.tmp").exists()
    assert not is_complete(checkpoint_dir(str(run_dir), 6))  # it stopped there
