"""Fixtures the tests share: real shards of the digits, one trained CLIP run, a tiny open_clip
architecture registered with open_clip."""
import json
import os
import shutil
import subprocess

import pytest

from helpers import REPO, TINY_OPEN_CLIP, run_cli, write_catalog


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Real WebDataset shards of sklearn's digits (train + held-out test)."""
    from llip.data.synthetic.digits import build
    return build(str(tmp_path_factory.mktemp("digits")))


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


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """Register TINY_OPEN_CLIP (and a SigLIP-style twin with a logit bias) with open_clip."""
    import open_clip
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / "tiny-test-clip.json").write_text(json.dumps(TINY_OPEN_CLIP))
    (folder / "tiny-test-siglip.json").write_text(json.dumps({**TINY_OPEN_CLIP,
                                                               "init_logit_bias": -10.0}))
    open_clip.add_model_config(folder)
    return folder


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real two-node SLURM cluster on this machine (launch/local_slurm.sh), shared by every
    SLURM test of the session; skipped where it cannot run (not root, no packages)."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (apt-get, munge, slurmd)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("no slurmctld and no apt-get to install it")
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", "launch/local_slurm.sh", "start", str(state)], cwd=REPO,
                             capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.skip(f"local SLURM did not start: {started.stderr.strip()[-300:]}")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run(["bash", "launch/local_slurm.sh", "stop", str(state)], cwd=REPO, timeout=60)
    os.environ.pop("SLURM_CONF", None)
