"""End-to-end training on real digit shards: exact resume after a kill, checkpoint hygiene,
metrics, offline wandb."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, run_cli
from llip import run_dir as rd
from llip.io import read_text

STEPS, CKPT_EVERY = 20, 10


def _args(digits, logs, name):
    return ["-m", "llip.main", "llip_tiny", f"train_data={digits['train']}", f"logs={logs}",
            f"name={name}", "batch_size=16", f"train_num_samples={16 * STEPS}",
            f"checkpoint_every={CKPT_EVERY}", "log_every=1", "workers=2", "keep_last=5"]


def _metrics(run_dir):
    return [json.loads(line) for line in read_text(os.path.join(run_dir, "metrics.jsonl"))
            .splitlines()]


def _weights(run_dir, step):
    return rd.load_model(rd.checkpoint_dir(str(run_dir), step))[0].state_dict()


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
    done = rd.complete_checkpoints(str(run_dir))
    assert [os.path.basename(d) for d in done] == ["step_00000004", "step_00000006"]
    assert not stale.exists()
    assert rd.latest(str(run_dir)).endswith("step_00000006")
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


@pytest.mark.parametrize("argv,needle", [
    (["llip_tni"], "closest: llip_tiny"),
    (["llip_tiny", "batchsize=4"], "closest: batch_size"),
    (["llip_tiny", "batch_size=four"], "bad value for batch_size: 'four' is not a valid int"),
    (["llip_tiny", "loss=infonce"], "loss='infonce' is not one of clip, siglip, llip"),
    (["llip_tiny", "train_data=/nowhere/s-{0..3}.tar", "train_num_samples=10"],
     "missing shard /nowhere/s-0.tar (4 of 4"),
    (["llip_b16"], "train_data is empty"),
])
def test_bad_input_is_one_line_exit_2(argv, needle):
    result = run_cli("-m", "llip.main", *argv)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_list_and_print():
    listed = run_cli("-m", "llip.main", "--list")
    assert listed.returncode == 0
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    for name in ("llip_b16", "llip_l14", "llip_h14", "llip_G14", "clip_b16", "siglip_b16",
                 "llip_tiny", "clip_tiny", "siglip_tiny", "llip_demo", "clip_demo", "siglip_demo"):
        assert name in names
    printed = run_cli("-m", "llip.main", "llip_b16", "lr=3e-4", "mixture_tokens=16", "--print")
    assert printed.returncode == 0
    assert "lr: 0.0003" in printed.stdout and "mixture_tokens: 16" in printed.stdout


CRASH_DURING_SAVE = """
import os, signal, sys
import torch.distributed.checkpoint as dcp
real_save, real_async_save = dcp.save, dcp.async_save
def die_if_step_4(checkpoint_id):
    if checkpoint_id.endswith("step_00000004.tmp"):  # files written, not yet marked complete
        os.kill(os.getpid(), signal.SIGKILL)
def save_then_die(state, checkpoint_id, **kwargs):
    real_save(state, checkpoint_id=checkpoint_id, **kwargs)
    die_if_step_4(checkpoint_id)
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
    assert rd.latest(str(run_dir)).endswith("step_00000002")
    assert rd.load_model(rd.latest(str(run_dir)))[2] == 2

    resumed = run_cli("-m", "llip.main", *args)
    assert resumed.returncode == 0 and "at step 2" in resumed.stdout, resumed.stderr[-2000:]
    assert rd.latest(str(run_dir)).endswith("step_00000006")
    if not checkpoint_async:
        return  # the export is the same for both
    exported = run_cli("-m", "llip.training.export", str(run_dir), str(tmp_path / "m.pt"))
    assert exported.returncode == 0, exported.stderr
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert blob["step"] == 6 and blob["config"]["name"] == "run"
    model, cfg, step = rd.load_model(str(tmp_path / "m.pt"))
    assert step == 6 and cfg.name == "run"
    for name, value in rd.load_model(str(run_dir))[0].state_dict().items():
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
    assert rd.latest(str(run_dir)).endswith("step_00000004")
    assert not (run_dir / "checkpoints" / "step_00000004.tmp").exists()
    assert not rd.is_complete(rd.checkpoint_dir(str(run_dir), 6))  # it stopped there


def test_submit_cli_dry_run_and_no_slurm_errors(digits, tmp_path, monkeypatch):
    dry = run_cli("submitit_openclip.py", "llip_b16", f"train_data={digits['train']}",
                  f"logs={tmp_path}", "slurm_partition=learn", "slurm_mem_gb=480", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for line in ("#SBATCH --nodes=16", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=learn", "#SBATCH --mem=480GB", "#SBATCH --signal=USR2@120",
                 "#SBATCH --job-name=llip_b16"):
        assert line in dry.stdout, line
    args = ["submitit_openclip.py", "llip_tiny", f"train_data={digits['train']}",
            f"logs={tmp_path}"]
    no_slurm = run_cli(*args, env={"PATH": str(tmp_path)})  # no sbatch/srun on PATH
    assert no_slurm.returncode == 2
    assert "no SLURM on this machine" in no_slurm.stderr and "--local" in no_slurm.stderr
    fake = tmp_path / "bin"  # SLURM clients present, but the controller refuses
    fake.mkdir()
    for tool in ("srun", "squeue"):
        (fake / tool).write_text("#!/bin/sh\nexit 0\n")
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Unable to contact slurm "
                                 "controller' >&2\nexit 1\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    refused = run_cli(*args, env={"PATH": f"{fake}:/usr/bin:/bin"})
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    # sbatch's own line may pass through first; ours closes it, and there is no traceback
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert lines[-1].startswith("error: sbatch failed: sbatch: error: Unable to contact slurm")


def test_bad_batch_split_fails_before_writing_anything(digits, tmp_path):
    result = run_cli("-m", "llip.main", "llip_tiny", f"train_data={digits['train']}",
                     f"logs={tmp_path}", "name=run", "batch_size=16", "accum_steps=3")
    assert result.returncode == 2 and "not divisible by accum_steps=3" in result.stderr
    assert not (tmp_path / "run").exists()
