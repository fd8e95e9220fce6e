"""The run directory's bookkeeping without training: which checkpoints count, pruning, crash
leftovers, self-describing checkpoint dirs, exports, atomic writes, metric windows."""
import os

import pytest
import torch

from llip.errors import CheckpointError
from llip.io import atomic_path, atomic_write, read_text
from llip.loading import load_model, save_export
from llip.models import build_model
from llip.run_configs import resolve
from llip.run_dir import (
    checkpoint_dir,
    checkpoints_dir,
    clean_partial,
    complete_checkpoints,
    latest,
    prune,
    read_config,
    resolve_checkpoint,
    step_of,
    write_config,
    write_marker,
)
from llip.training.metrics import Window


def _fake_checkpoint(run_dir, step, complete=True, suffix=""):
    path = checkpoint_dir(str(run_dir), step) + suffix
    os.makedirs(path)
    if complete:
        write_marker(path, {"step": step})
    return path


def test_only_complete_step_dirs_count_and_latest_is_newest(tmp_path):
    for step in (10, 30, 20):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 40, complete=False)  # DCP files written, marker missing
    _fake_checkpoint(tmp_path, 50, suffix=".tmp")  # a save that crashed
    os.makedirs(os.path.join(checkpoints_dir(str(tmp_path)), "notes"))
    done = complete_checkpoints(str(tmp_path))
    assert [os.path.basename(d) for d in done] == ["step_00000010", "step_00000020",
                                                  "step_00000030"]
    assert latest(str(tmp_path)) == done[-1] and step_of(done[-1]) == 30
    assert resolve_checkpoint(str(tmp_path)) == done[-1]
    assert resolve_checkpoint(done[0]) == done[0]
    clean_partial(str(tmp_path))
    assert not os.path.exists(checkpoint_dir(str(tmp_path), 50) + ".tmp")
    prune(str(tmp_path), keep_last=2)
    assert [step_of(d) for d in complete_checkpoints(str(tmp_path))] == [20, 30]


def test_no_checkpoint_is_a_checkpoint_error(tmp_path):
    assert latest(str(tmp_path)) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_config_round_trip_and_export_load(tmp_path):
    cfg = resolve("clip_tiny", ["name=exp"])
    write_config(str(tmp_path), cfg, git_commit="abc")
    assert read_config(str(tmp_path)) == cfg
    torch.manual_seed(0)
    model = build_model(cfg)
    path = save_export(str(tmp_path / "m.pt"), model, cfg, 7)
    loaded, loaded_cfg, step = load_model(path)
    assert step == 7 and loaded_cfg == cfg and not loaded.training
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, atol=0, rtol=0)


def test_atomic_write_never_leaves_a_torn_file(tmp_path):
    path = str(tmp_path / "a.txt")
    atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert read_text(path) == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_metric_window_means_and_totals():
    window = Window(torch.device("cpu"), mean=("loss",), total=("skipped",))
    for loss, skipped in ((1.0, 2), (3.0, 0), (5.0, 1)):
        window.add(loss=torch.tensor(loss), skipped=torch.tensor(skipped))
    assert window.steps == 3
    assert window.reduce() == {"loss": 3.0, "skipped": 3.0}
    assert window.steps == 0 and window.sums.abs().sum() == 0


def test_keep_every_survives_pruning(tmp_path):
    for step in (10, 20, 30, 40, 50, 60):
        _fake_checkpoint(tmp_path, step)
    prune(str(tmp_path), keep_last=2, keep_every=20)
    assert [step_of(d) for d in complete_checkpoints(str(tmp_path))] == [20, 40, 50, 60]
    prune(str(tmp_path), keep_last=1)
    assert [step_of(d) for d in complete_checkpoints(str(tmp_path))] == [60]
