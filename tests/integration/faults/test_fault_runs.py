"""Fault injection on real runs: corrupt and hostile checkpoints, a held run dir, a changed
config, divergence. One short training run is shared; each test works on its own copy."""
import json
import os
import pickle
import shutil

import pytest

from helpers import Touch, assert_one_error, run_cli
from llip.io import sha256_file
from llip.loading import load_model
from llip.run_dir import checkpoint_dir, complete_checkpoints, latest


def _args(digits, logs, *extra):
    return ["-m", "llip.main", "clip_tiny", f"train_data={digits['train']}", f"logs={logs}",
            "name=run", "train_num_samples=160", "checkpoint_every=5", "log_every=5",
            "keep_last=5", *extra]


@pytest.fixture(scope="module")
def base_run(digits, tmp_path_factory):
    logs = tmp_path_factory.mktemp("fault_base")
    done = run_cli(*_args(digits, logs))
    assert done.returncode == 0, done.stderr[-2000:]
    return logs


@pytest.fixture
def run(base_run, tmp_path):
    shutil.copytree(base_run, tmp_path / "logs")
    return tmp_path / "logs"


def test_flipped_byte_is_refused_and_resume_falls_back(digits, run, tmp_path):
    newest = checkpoint_dir(str(run / "run"), 10)
    data = os.path.join(newest, "__0_0.distcp")
    blob = bytearray(open(data, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(data, "wb").write(bytes(blob))
    assert_one_error(run_cli("-m", "llip.training.export", newest, str(tmp_path / "m.pt")),
               "does not match its sha256 digest")
    resumed = run_cli(*_args(digits, run, "epochs=2"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "falling back" in resumed.stderr and "at step 5" in resumed.stdout
    assert os.path.isdir(newest + ".corrupt")  # kept for inspection, never listed
    assert latest(str(run / "run")).endswith("step_00000020")


def test_hostile_metadata_never_runs_even_with_valid_digests(run, tmp_path):
    marker = tmp_path / "executed"
    ckpt = checkpoint_dir(str(run / "run"), 10)
    meta = os.path.join(ckpt, ".metadata")
    open(meta, "wb").write(pickle.dumps(Touch(marker)))
    marker_json = json.load(open(os.path.join(ckpt, "COMPLETE")))
    marker_json["files"][".metadata"] = {"sha256": sha256_file(meta),
                                         "bytes": os.path.getsize(meta)}
    json.dump(marker_json, open(os.path.join(ckpt, "COMPLETE"), "w"))
    assert_one_error(run_cli("-m", "llip.training.export", ckpt, str(tmp_path / "m.pt")),
               "refusing to load it")
    assert not marker.exists()
    del marker_json["files"]  # a foreign dir without digests: refused unless trusted
    json.dump(marker_json, open(os.path.join(ckpt, "COMPLETE"), "w"))
    assert_one_error(run_cli("-m", "llip.training.export", ckpt, str(tmp_path / "m.pt")),
               "LLIP_TRUST_CHECKPOINT=1")
    trusted = run_cli("-m", "llip.training.export", ckpt, str(tmp_path / "m.pt"),
                      env={"LLIP_TRUST_CHECKPOINT": "1"})
    assert_one_error(trusted, "refusing to load it")
    assert not marker.exists()


def test_held_run_dir_and_changed_config_are_refused(digits, run):
    run_dir = run / "run"
    before = sorted(os.listdir(run_dir / "checkpoints"))
    config = (run_dir / "config.yaml").read_text()
    from llip.training.claim import RunLock
    lock = RunLock(str(run_dir)).acquire()  # this test process holds it, alive
    try:
        assert_one_error(run_cli(*_args(digits, run, "epochs=2")), f"pid {os.getpid()}")
    finally:
        lock.release()
    assert_one_error(run_cli(*_args(digits, run, "lr=0.01")), "lr 0.001 -> 0.01")
    assert_one_error(run_cli(*_args(digits, run, "vision_width=128")), "vision_width 64 -> 128")
    assert sorted(os.listdir(run_dir / "checkpoints")) == before
    assert (run_dir / "config.yaml").read_text() == config


def test_divergence_stops_without_a_nonfinite_checkpoint(digits, tmp_path):
    result = run_cli("-m", "llip.main", "clip_tiny", f"train_data={digits['train']}",
                     f"logs={tmp_path}", "name=div", "lr=1e10", "train_num_samples=160",
                     "checkpoint_every=1", "log_every=100")
    assert_one_error(result, "training diverged")
    import torch
    for ckpt in complete_checkpoints(str(tmp_path / "div")):
        model = load_model(ckpt)[0]
        assert all(torch.isfinite(p).all() for p in model.parameters()), ckpt
