"""The training commands as a user meets them: bad input is one line with exit code 2, --list
and --print, the SLURM command's dry run and its refusal without SLURM, a bad batch split that
fails before anything is written."""
import shlex

import pytest

from helpers import run_cli

STEPS, CKPT_EVERY = 20, 10


def _args(digits, logs, name):
    return ["-m", "llip.main", "llip_tiny", f"train_data={digits['train']}", f"logs={logs}",
            f"name={name}", "batch_size=16", f"train_num_samples={16 * STEPS}",
            f"checkpoint_every={CKPT_EVERY}", "log_every=1", "workers=2", "keep_last=5"]


@pytest.mark.parametrize("argv,needle", [
    (["llip_tni"], "closest: llip_tiny"),
    (["llip_tiny", "batchsize=4"], "closest: batch_size"),
    (["llip_tiny", "batch_size=four"], "bad value for batch_size: 'four' is not a valid int"),
    (["llip_tiny", "loss=infonce"], "loss='infonce' is not one of clip, siglip, llip"),
    (["llip_tiny", "train_data=/nowhere/s-{0..3}.tar", "train_num_samples=10"],
     "missing shard /nowhere/s-0.tar (4 of 4"),
    (["llip_b16"], "train_data is empty"),
    (["llip_tiny", "train_data=/tmp", "train_num_samples=10"],
     "train_data names the directory /tmp, not its shards"),
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


def test_submit_cli_dry_run_and_no_slurm_errors(digits, tmp_path, monkeypatch):
    dry = run_cli("submitit_openclip.py", "llip_b16", f"train_data={digits['train']}",
                  f"logs={tmp_path}", "slurm_partition=learn", "slurm_mem_gb=480", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for line in ("#SBATCH --nodes=16", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=learn", "#SBATCH --mem=480GB", "#SBATCH --signal=USR2@120",
                 "#SBATCH --job-name=llip_b16"):
        assert line in dry.stdout, line
    # a printed script is run as printed: a path with a space or "$(...)" stays one word
    odd = tmp_path / "my runs $(touch pwned)"
    dry = run_cli("submitit_openclip.py", "llip_b16", f"train_data={digits['train']}",
                  f"logs={odd}", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    command = shlex.split(dry.stdout.strip().splitlines()[-1])
    assert command[-1] == str(odd / "llip_b16" / "submitit"), command
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
