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


def test_another_runs_checkpoint_is_refused_not_resumed(digits, run, tmp_path):
    """A checkpoint of another run (another seed and lr; then another model: a Llip run's)
    copied into this run dir as its newest: resume names it, in one line, and loads nothing."""
    other = run_cli("-m", "llip.main", "llip_tiny", f"train_data={digits['train']}",
                    f"logs={tmp_path / 'other'}", "name=run", "train_num_samples=160",
                    "checkpoint_every=5", "log_every=5", "seed=3", "lr=0.002", "epochs=2")
    assert other.returncode == 0, other.stderr[-2000:]
    planted = checkpoint_dir(str(run / "run"), 20)
    shutil.copytree(checkpoint_dir(str(tmp_path / "other" / "run"), 20), planted)
    metrics = (run / "run" / "metrics.jsonl").read_text()
    assert_one_error(run_cli(*_args(digits, run, "epochs=3")), f"checkpoint {planted} was "
                     "written by another run (")
    refused = run_cli(*_args(digits, run, "epochs=3"))
    assert "seed 3 -> 0" in refused.stderr and "loss 'llip' -> 'clip'" in refused.stderr
    assert (run / "run" / "metrics.jsonl").read_text() == metrics  # nothing trained


def test_safe_changes_and_moved_shards_resume(digits, run, tmp_path):
    """Bookkeeping fields (keep_every, checkpoint_async, peak_tflops, in-training evals) may
    change on resume, and shards that moved (same file names, new directory) continue the
    run; other data is refused."""
    moved = tmp_path / "moved"
    moved.mkdir()
    train = digits["train"]
    folder, pattern = os.path.split(train)
    for name in os.listdir(folder):
        if name.startswith("train-"):
            shutil.copy(os.path.join(folder, name), moved / name)
    args = _args(digits, run, "epochs=2", "keep_every=10", "checkpoint_async=false",
                 "peak_tflops=100")
    args[args.index(f"train_data={train}")] = f"train_data={moved / pattern}"
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "at step 10" in resumed.stdout
    other_data = pattern.replace("train-", "test-").split("{")[0] + "{000000..000000}.tar"
    args[args.index(f"train_data={moved / pattern}")] = f"train_data={folder}/{other_data}"
    assert_one_error(run_cli(*args[:-3], "epochs=3"), "train_data ")


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))


def test_planted_files_are_one_items_problem(digits, base_run, run, tmp_path):
    """Files planted where llip reads: an alias bomb as a checkpoint's config.yaml and as a
    sweep file (kilobytes that expand to 10^9 nodes), a COMPLETE marker nested 100k deep, a
    foreign result with "step": "final" in a store, and exports whose metadata is not JSON,
    whose step is not a number, or whose config asks for a model the file does not hold: each
    refused in one line naming it, and the sweep's other checkpoints and tasks go on."""
    run_dir = str(run / "run")
    bombed, deep = checkpoint_dir(run_dir, 5), checkpoint_dir(run_dir, 10)
    good = checkpoint_dir(str(base_run / "run"), 10)  # the untouched original
    with open(os.path.join(bombed, "config.yaml"), "w") as f:
        f.write(ALIAS_BOMB)
    marker = json.load(open(os.path.join(bombed, "COMPLETE")))  # planted with valid digests
    marker["files"]["config.yaml"] = {"sha256": sha256_file(os.path.join(bombed, "config.yaml")),
                                      "bytes": len(ALIAS_BOMB)}
    json.dump(marker, open(os.path.join(bombed, "COMPLETE"), "w"))
    with open(os.path.join(deep, "COMPLETE"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    for path, needle in ((bombed, "aliases expand to more than"), (deep, "not valid JSON")):
        assert_one_error(run_cli("-m", "llip.training.export", path, str(tmp_path / "m.pt")),
                         needle)
    sweep = tmp_path / "bomb.yaml"
    sweep.write_text(ALIAS_BOMB)
    assert_one_error(run_cli("-m", "evals.main_mc", "--fname", str(sweep)),
                     f"eval config {sweep} is not valid YAML: its aliases expand")

    import torch
    from safetensors.torch import load_file, save_file
    exported = tmp_path / "m.safetensors"
    assert run_cli("-m", "llip.training.export", good, str(exported)).returncode == 0
    tensors = load_file(str(exported))
    from safetensors import safe_open
    with safe_open(str(exported), "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["llip_config"])
    bad = {"not_json.safetensors": {**meta, "llip_config": "{not json"},
           "step.safetensors": {**meta, "llip_step": "final"},
           "huge.safetensors": {**meta, "llip_config": json.dumps(
               {**config, "vision_width": 2 ** 20, "vision_layers": 4096})}}
    for name, metadata in bad.items():
        save_file(tensors, str(tmp_path / name), metadata=metadata)
    blob = torch.load(str(tmp_path / "m.pt"), weights_only=True) if (tmp_path / "m.pt").exists() \
        else None
    assert blob is None  # the refused exports above wrote nothing
    assert_one_error(run_cli("-m", "llip.training.export", str(tmp_path / "huge.safetensors"),
                             str(tmp_path / "x.pt")), "its config describes a model of")
    from llip.errors import CheckpointError
    from llip.loading import read_weights  # the same refusal, read in this process
    for name in ("not_json.safetensors", "step.safetensors"):
        with pytest.raises(CheckpointError, match="its llip metadata is malformed"):
            read_weights(str(tmp_path / name))

    # one eval sweep over all of it: the planted checkpoints fail alone, the good one is scored
    from helpers import write_catalog
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "foreign.json").write_text(json.dumps(
        {"id": "f", "model": "other", "step": "final", "checkpoint": "x", "dataset": "digits",
         "task": "zeroshot_classification", "metric": "acc1",
         "by_tau": [{"eval_tau": None, "metrics": {"acc1": 0.5}, "value": 0.5}]}))
    import yaml
    fname = tmp_path / "sweep.yaml"
    fname.write_text(yaml.safe_dump({
        "checkpoints": [bombed, deep, good, str(tmp_path / "huge.safetensors")],
        "catalogs": [write_catalog(tmp_path / "catalog.json", digits)], "datasets": ["digits"],
        "workers": 0, "output_dir": str(out)}))
    result = run_cli("-m", "evals.main_mc", "--fname", str(fname))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, \
        result.stdout[-3000:] + result.stderr[-3000:]
    failed = {line for line in result.stdout.splitlines() if line.startswith("FAILED")}
    assert len(failed) == 3, result.stdout[-3000:]
    assert "3 eval tasks" not in result.stdout and "1 eval tasks" in result.stdout
    wide = (out / "results_wide.csv").read_text()
    assert "other" not in wide and wide.count("\n") == 2  # the header and the good checkpoint
