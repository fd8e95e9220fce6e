"""The orchestrator on the real two-node SLURM cluster: a 2x2 sweep whose kept checkpoints are
evaluated as they appear, to one table with an axis per column; points that fail show their
error line; a point requeued by its SIGUSR2 resumes exactly; re-running does only the missing
work; the status board works with the controller down; cancelling keeps every complete
checkpoint.

One sweep carries every check in sequence: each phase is what a researcher does next, and the
cluster is shared with the other SLURM tests of the session.
"""
import json
import os
import shutil
import subprocess
import time

import pandas as pd
import yaml

from helpers import queued, run_cli, wait_for, write_catalog
from llip.io import read_text
from llip.loading import load_model
from llip.run_dir import complete_checkpoints, job_id_path, metrics_path, step_of

STEPS = 40


def _status(sweep_dir):
    out = run_cli("-m", "llip.status", str(sweep_dir), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    return {r["run"]: r for r in json.loads(out.stdout)}


def _sweep(digits, tmp_path, bad, *extra):
    """The command a researcher types (the same each time: only the data was fixed)."""
    evals = tmp_path / "evals.yaml"
    evals.write_text(yaml.safe_dump({
        "catalogs": [write_catalog(tmp_path / "catalog.json", digits)], "datasets": ["digits"],
        "batch_size": 128, "workers": 0,
        "slurm": {"timeout_min": 20, "cpus_per_task": 1, "array_parallelism": 4}}))
    return run_cli("-m", "llip.sweep", "llip_tiny", "lr=1e-3,2e-3", "seed=0,1",
                   f"train_data={digits['train']},{bad}", "--zip", "lr,train_data",
                   f"logs={tmp_path / 'logs'}", "--name", "s", "batch_size=16", "workers=1",
                   f"train_num_samples={16 * STEPS}", "checkpoint_every=10", "keep_every=20",
                   "keep_last=2", "log_every=1", "wandb_mode=disabled", "slurm_timeout_min=15",
                   "--launcher", "slurm", "--evals", str(evals), "--poll", "2", *extra,
                   timeout=300)


def _follower_done(sweep_dir):
    job = read_text(sweep_dir / "follow" / "job_id").strip()
    return not queued(job)


def test_sweep_on_slurm_from_launch_to_table(slurm, digits, tmp_path):
    bad = tmp_path / "bad" / "{0..1}.tar"  # exists, but no shard is a tar: those runs fail
    os.makedirs(tmp_path / "bad")
    for i in range(2):
        (tmp_path / "bad" / f"{i}.tar").write_bytes(b"not a tar archive" * 64)
    sweep_dir = tmp_path / "logs" / "s"
    launched = _sweep(digits, tmp_path, bad)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-2000:]
    assert "4 point(s): 4 not started; 4 to start (slurm)" in launched.stdout
    points = sorted(n for n in os.listdir(sweep_dir) if n.startswith("llip_tiny-"))
    assert points == ["llip_tiny-lr1e-3-seed0-train_datatrain-_000000..000005_.tar",
                      "llip_tiny-lr1e-3-seed1-train_datatrain-_000000..000005_.tar",
                      "llip_tiny-lr2e-3-seed0-train_data_0..1_.tar",
                      "llip_tiny-lr2e-3-seed1-train_data_0..1_.tar"]
    ok = [p for p in points if "lr1e-3" in p]
    failing = [p for p in points if "lr2e-3" in p]

    # a point warned of its end requeues and resumes exactly (every step once): SLURM's
    # SIGUSR2 (--signal, before a time limit or a preemption) -> submitit's checkpoint() and
    # `scontrol requeue`, whose cancel of the step sends SIGTERM while the requeue command runs
    first = sweep_dir / ok[0]
    wait_for((first / "checkpoints" / "step_00000010" / "COMPLETE").exists, 300,
             "the first checkpoint", first / "submitit")
    again = run_cli("submitit_openclip.py", "llip_tiny", f"train_data={digits['train']}",
                    f"logs={sweep_dir}", f"name={ok[0]}")
    job = read_text(job_id_path(str(first))).strip()
    assert again.returncode == 2 and f"already has live job {job}" in again.stderr
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)

    # the follower ends once training is over and the evals of every kept checkpoint are done
    wait_for(lambda: _follower_done(sweep_dir), 600, "the sweep and its evals",
             sweep_dir / "follow")
    log = read_text(first / "submitit" / f"{job}_0_log.out") + \
        read_text(first / "submitit" / f"{job}_0_log.err")
    assert "resumed from" in log, log[-3000:]
    steps = [json.loads(line)["step"] for line in
             read_text(metrics_path(str(first))).splitlines()]
    assert steps == list(range(1, STEPS + 1))

    board = _status(sweep_dir)
    assert {p: board[p]["state"] for p in ok} == {p: "completed" for p in ok}
    snapshot = json.loads(read_text(sweep_dir / "code" / "code.json"))
    assert f"PYTHONPATH={sweep_dir / 'code'}" in read_text(first / "submitit" /
                                                          f"{job}_submission.sh")
    assert yaml.safe_load(read_text(first / "config.yaml"))["git_commit"] == snapshot["commit"]
    for p in failing:  # each failed point shows the line that says why
        assert board[p]["state"] == "failed", board[p]
        assert "yielded no samples from 20 shard reads" in board[p]["note"], board[p]
        assert board[p]["axes"]["lr"] == "2e-3"
    wide = pd.read_csv(sweep_dir / "evals" / "sweep_wide.csv")
    assert {"lr", "seed", "train_data", "step", "digits", "average"} <= set(wide.columns)
    assert sorted(zip(wide["point"], wide["step"])) == sorted((p, s) for p in ok
                                                              for s in (20, 40))
    followed = [json.loads(line) for line in
                read_text(sweep_dir / "follow.jsonl").splitlines()]
    assert len(followed) == 4 and all(row["jobs"] for row in followed)  # never twice

    # the status board with the controller down: it says so and shows what the run dirs know
    pid = int(read_text(slurm / "slurmctld.pid"))
    os.kill(pid, 15)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 60, "slurmctld to stop")
    try:
        out = run_cli("-m", "llip.status", str(sweep_dir))
        assert out.returncode == 0, out.stderr[-2000:]
        assert "SLURM controller not reachable" in out.stdout
        board = _status(sweep_dir)
        assert [board[p]["state"] for p in ok] == ["completed", "completed"]
        assert [board[p]["state"] for p in failing] == ["unknown", "unknown"]
    finally:
        subprocess.run(["slurmctld", "-f", str(slurm / "slurm.conf")], check=True)
        wait_for(lambda: subprocess.run(["sinfo"], capture_output=True).returncode == 0, 60,
                 "slurmctld to come back")

    # fix the data, run the same command again: only the failed points run, and only their
    # checkpoints are evaluated
    for i in range(2):
        shutil.copy(digits["train"].replace("{000000..000005}", f"{i:06d}"),
                    tmp_path / "bad" / f"{i}.tar")
    rerun = _sweep(digits, tmp_path, bad)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "4 point(s): 2 completed, 2 failed; 2 to start (slurm)" in rerun.stdout
    # cancelled while they train (at their first step: the command takes seconds to reach
    # them, in which the 40 steps of a point could otherwise all be done)
    def stepped(point):  # the failed attempt logged no step
        path = metrics_path(str(sweep_dir / point))
        return os.path.exists(path) and '"step"' in read_text(path)
    wait_for(lambda: all(stepped(p) for p in failing), 300, "the re-run's first steps")

    # cancel: the jobs stop, every complete checkpoint still verifies and loads
    cancel = run_cli("-m", "llip.status", str(sweep_dir), "--cancel")
    assert cancel.returncode == 0 and "cancelled 2 run(s)" in cancel.stdout, cancel.stdout
    wait_for(lambda: not any(queued(read_text(job_id_path(str(sweep_dir / p))).strip())
                             for p in failing), 120, "the cancelled jobs to leave the queue")
    board = _status(sweep_dir)
    assert [board[p]["state"] for p in failing] == ["cancelled", "cancelled"]
    for p in failing:
        for checkpoint in complete_checkpoints(str(sweep_dir / p)):
            assert load_model(checkpoint)[2] == step_of(checkpoint)

    # and once more: the cancelled points resume and finish; the table has all four
    time.sleep(1)
    final = _sweep(digits, tmp_path, bad)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    assert "2 cancelled, 2 completed; 2 to start" in final.stdout
    wait_for(lambda: _follower_done(sweep_dir), 600, "the resumed points and their evals",
             sweep_dir / "follow")
    # the follower is done with a point's last checkpoint a moment before its job ends
    wait_for(lambda: all(r["state"] == "completed" for r in _status(sweep_dir).values()), 120,
             "every point to be completed")
    wide = pd.read_csv(sweep_dir / "evals" / "sweep_wide.csv")
    assert len(wide) == 8 and wide["digits"].notna().all()
    assert len(read_text(sweep_dir / "follow.jsonl").splitlines()) == 8  # each one once
