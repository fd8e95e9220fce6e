"""The SLURM path on a real two-node SLURM cluster started by the tests on this machine (a
preempted job that requeues and resumes each step once is tested on a sweep's point, in
test_sweep_slurm.py).

Bounded waits everywhere: without an accounting daemon a job that dies early would leave
submitit's `result()` waiting forever, so the tests poll squeue and files with deadlines.
"""
import json
import os
import subprocess
import time

import pytest

from helpers import queued, run_cli, wait_for
from llip.io import read_text
from llip.loading import load_model


def _submit(digits, logs, *overrides):
    result = run_cli("submitit_openclip.py", "llip_tiny", f"train_data={digits['train']}",
                     f"logs={logs}", "batch_size=16", "workers=1", *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    job_id = result.stdout.split("submitted job ")[1].split()[0]
    return job_id


def _steps(run_dir):
    return [json.loads(line)["step"] for line in
            read_text(os.path.join(run_dir, "metrics.jsonl")).splitlines()]


@pytest.mark.parametrize("nodes,tasks", [(2, 1), (1, 2)])
def test_multi_process_training_on_slurm(slurm, digits, tmp_path, nodes, tasks):
    steps = 12
    job_id = _submit(digits, tmp_path, f"nodes={nodes}", f"gpus_per_node={tasks}",
                     f"train_num_samples={16 * steps}", "checkpoint_every=6", "log_every=2")
    run_dir = tmp_path / "llip_tiny"
    folder = run_dir / "submitit"
    wait_for(lambda: not queued(job_id), 300, f"job {job_id} to finish", folder)
    rank0 = read_text(folder / f"{job_id}_0_log.out")
    assert "on 2 process(es)" in rank0
    for task in range(2):  # both ranks ran the job to the end
        assert "Job completed successfully" in read_text(folder / f"{job_id}_{task}_log.err") \
            + read_text(folder / f"{job_id}_{task}_log.out")
    assert _steps(run_dir) == list(range(2, steps + 1, 2))
    model, cfg, step = load_model(str(run_dir))  # sharded at 2 ranks, loaded at world size 1
    assert step == steps and cfg.nodes == nodes


def test_eval_sweep_runs_as_a_slurm_job_array(slurm, trained_clip, digits, tmp_path):
    import yaml

    from helpers import write_catalog
    sweep = {"checkpoints": [{"path": trained_clip, "all": True}],
             "catalogs": [write_catalog(tmp_path / "catalog.json", digits)],
             "datasets": ["digits", "digits_retrieval"], "batch_size": 128, "workers": 0,
             "output_dir": str(tmp_path / "out"), "launcher": "slurm",
             "slurm": {"timeout_min": 20, "cpus_per_task": 1, "array_parallelism": 4,
                       "max_wait_min": 8}}
    fname = tmp_path / "sweep.yaml"
    fname.write_text(yaml.safe_dump(sweep))
    result = run_cli("-m", "evals.main_mc", "--fname", str(fname), timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "submitted array" in result.stdout and "with 4 tasks" in result.stdout
    assert len(os.listdir(tmp_path / "out" / "results")) == 4
    import pandas as pd
    wide = pd.read_csv(tmp_path / "out" / "results_wide.csv")
    assert list(wide["step"]) == [55, 110] and wide["digits"].iloc[-1] > 0.5


def test_a_lock_held_by_a_slurm_job_elsewhere_is_kept_while_queued_then_taken_over(slurm,
                                                                                   tmp_path):
    """A holder on another host is judged by squeue: kept while its job is queued or running,
    taken over once SLURM no longer lists it (or never knew the id)."""
    from llip.errors import ConfigError
    from llip.run_dir import LOCK
    from llip.training.claim import RunLock
    out = subprocess.run(["sbatch", "--parsable", "--wrap", "sleep 300",
                          f"--output={tmp_path}/sleep.out"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = {"host": "a-node-elsewhere", "pid": 4242, "started": 1, "slurm_job_id": job,
              "time": time.time()}
    (run_dir / LOCK).write_text(json.dumps(holder))
    try:
        with pytest.raises(ConfigError, match=f"in use by pid 4242 on host a-node-elsewhere, "
                                              f"SLURM job {job}"):
            RunLock(str(run_dir)).acquire()
    finally:
        subprocess.run(["scancel", job], timeout=60)
    wait_for(lambda: not queued(job), 120, f"job {job} to leave the queue")
    lock = RunLock(str(run_dir)).acquire()  # the job is gone: taken over
    assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    (run_dir / LOCK).write_text(json.dumps({**holder, "slurm_job_id": "99999999"}))
    RunLock(str(run_dir)).acquire().release()  # an id SLURM never had
