"""The status board's states, from SLURM's own text (`scontrol show job -o` recorded on the test
suite's real cluster during a sweep: tests/fixtures/slurm/) joined with what run dirs know."""
import json
import os

import pytest

from llip.io import atomic_write, write_json
from llip.run_configs import resolve
from llip.run_dir import (
    cancelled_path,
    checkpoint_dir,
    job_id_path,
    lock_path,
    metrics_path,
    submitit_dir,
    write_config,
    write_marker,
)
from llip.status import find_runs, run_status, table
from llip.training.slurm import JobState, parse_sacct, parse_scontrol

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "slurm")


def _recorded(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return parse_scontrol(f.read())


def test_scontrol_text_of_the_real_cluster_parses():
    running = _recorded("scontrol_sweep_running.txt")
    assert {k: (v.state, v.restarts, v.reason) for k, v in running.items()} == {
        "1": ("PENDING", 1, "BeginTime"),  # requeued after a preemption, waiting to restart
        "2": ("RUNNING", 0, "None"),
        "3": ("FAILED", 0, "NonZeroExitCode"), "4": ("FAILED", 0, "NonZeroExitCode"),
        "5": ("RUNNING", 0, "None"), "6": ("COMPLETED", 0, "None"),
        "7": ("RUNNING", 0, "None")}
    ended = _recorded("scontrol_cancelled_failed_held.txt")
    assert {k: (v.state, v.exit_code) for k, v in ended.items()} == {
        "1": ("CANCELLED", "0:15"), "2": ("FAILED", "3:0"), "3": ("PENDING", "0:0")}
    assert ended["3"].reason == "JobHeldUser"
    done = _recorded("scontrol_sweep_done.txt")
    assert done["1"] == JobState("COMPLETED", 1, "0:0", "None")


def test_sacct_lines_parse():
    # sacct -n -P -X -o JobID,State,ExitCode, in its documented format (the test cluster runs
    # no accounting daemon, so this text is written here, not recorded)
    text = "12|COMPLETED|0:0\n13|CANCELLED by 0|0:15\n14_2|FAILED|1:0\n"
    assert parse_sacct(text) == {"12": JobState("COMPLETED", 0, "0:0"),
                                 "13": JobState("CANCELLED", 0, "0:15"),
                                 "14_2": JobState("FAILED", 0, "1:0")}


def _run(root, name, job="", steps=(), checkpoint=None, total=8, log=""):
    run = str(root / name)
    cfg = resolve("llip_tiny", [f"logs={root}", f"name={name}",
                                f"train_num_samples={16 * total}", "batch_size=16"])
    os.makedirs(run, exist_ok=True)
    write_config(run, cfg)
    for step in steps:
        with open(metrics_path(run), "a") as f:
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "samples_per_s": 160.0}) + "\n")
    if checkpoint is not None:
        path = checkpoint_dir(run, checkpoint)
        os.makedirs(path)
        write_marker(path, {"step": checkpoint})
    if job:
        os.makedirs(submitit_dir(run), exist_ok=True)
        atomic_write(job_id_path(run), job)
        if log:
            atomic_write(os.path.join(submitit_dir(run), f"{job}_0_log.err"), log)
    return run


@pytest.mark.parametrize("job,steps,checkpoint,log,state,note", [
    ("2", (2, 4), 4, "", "running", ""),
    ("1", (2, 4), 4, "", "requeued", "requeued 1x"),
    ("7", (), None, "", "running", ""),
    ("3", (2,), None, "Traceback (most recent call last):\n  ...\nllip.errors.DataError: "
     "x.tar yielded no samples from 20 shard reads", "failed",
     "x.tar yielded no samples from 20 shard reads"),  # the line, not the class
    ("4", (2, 4), 4, "error: training diverged: the mean loss of the last steps is nan at step "
     "6 (lr=0.1, warmup_steps=2); the newest checkpoint is the last good one (step 4)",
     "diverged", "training diverged: the mean loss of the last steps is nan at step 6"),
    ("6", (2, 4, 6, 8), 8, "", "completed", ""),  # the run dir knows it is complete
    ("99", (2,), None, "", "failed", "its SLURM job is gone"),  # forgotten by the controller
])
def test_states_join_the_recorded_cluster_with_the_run_dir(tmp_path, job, steps, checkpoint,
                                                           log, state, note):
    jobs = _recorded("scontrol_sweep_running.txt")
    row = run_status(_run(tmp_path, "r", job, steps, checkpoint, log=log), jobs)
    assert row.state == state and row.note.startswith(note), row
    if steps:
        assert row.step == steps[-1] and row.total == 8 and row.loss == pytest.approx(1 / steps[-1])
    if state == "running" and steps:
        assert row.eta_s == pytest.approx((8 - steps[-1]) * 16 / 160.0)


def test_cancelled_held_unknown_and_local_runs(tmp_path):
    ended = _recorded("scontrol_cancelled_failed_held.txt")
    assert run_status(_run(tmp_path, "a", "1", (2,), None), ended).state == "cancelled"
    failed = run_status(_run(tmp_path, "b", "2", (2,), None), ended)
    assert failed.state == "failed" and "exit 3:0" in failed.note
    assert run_status(_run(tmp_path, "c", "3"), ended).state == "pending"  # held
    down = run_status(_run(tmp_path, "d", "2", (2,)), None)  # the controller does not answer
    assert (down.state, down.note, down.step) == ("unknown", "SLURM controller not reachable", 2)
    local = _run(tmp_path, "e", steps=(2,))
    assert run_status(local).state == "failed"  # stopped, no process, no error line
    from llip.training.claim import RunLock
    me = RunLock(local).me
    write_json(lock_path(local), me)  # this process holds it: running
    assert run_status(local).state == "running"
    # a holder on another host: judged by its SLURM job (here: the recorded cluster's)
    write_json(lock_path(local), {**me, "host": "n2", "slurm_job_id": "2"})
    assert run_status(local, _recorded("scontrol_sweep_running.txt")).state == "running"
    os.remove(lock_path(local))
    atomic_write(cancelled_path(local), "1\n")
    assert run_status(local).state == "cancelled"
    assert run_status(str(tmp_path / "not-started")).state == "not started"


def test_find_runs_and_the_table(tmp_path):
    _run(tmp_path / "a", "x", steps=(2, 4, 6, 8), checkpoint=8)
    _run(tmp_path / "b" / "deeper", "y", steps=(2,))
    runs = find_runs(str(tmp_path))
    assert [os.path.basename(r) for r, _ in runs] == ["x", "y"]
    text = table([run_status(r) for r, _ in runs])
    assert text.splitlines()[0].split() == ["run", "state", "step", "loss", "samples/s", "ETA",
                                            "checkpoint", "eval", "job", "note"]
    assert text.splitlines()[1].split()[:3] == ["x", "completed", "8/8"]
    assert text.splitlines()[-1] == "1 completed, 1 failed"

