"""Fault injection on storage: outputs under a file, and on read-only and full file systems
made for real with tmpfs mounts (root only; skipped otherwise). Every command ends with one line
that names the output and says what is wrong; a full disk mid-run keeps the checkpoints already
written, and the run resumes from them once there is space."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from helpers import REPO, assert_one_error, run_cli, write_catalog
from llip.loading import load_model
from llip.run_dir import checkpoint_dir, latest, step_of


@pytest.fixture
def mount(tmp_path):
    """mount(name, options) -> a fresh tmpfs at tmp_path/name, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("tmpfs mounts need root")
    mounted = []

    def make(name, options):
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _train(digits, logs, *extra):
    return run_cli("-m", "llip.main", "clip_tiny", f"train_data={digits['train']}",
                   f"logs={logs}", "name=run", "train_num_samples=160", "checkpoint_every=5",
                   "log_every=5", "keep_last=5", "wandb_mode=disabled", *extra,
                   env={"OMP_NUM_THREADS": "1"})


def test_training_on_read_only_storage_is_one_line(digits, mount):
    read_only = mount("ro", "ro,size=1m")
    assert_one_error(_train(digits, read_only), f"cannot write {read_only}/run",
               "read-only file system")


def test_training_under_a_file_is_one_line(digits, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    assert_one_error(_train(digits, tmp_path / "afile"), f"cannot write {tmp_path}/afile/run",
                     "not a directory")
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_disk_full_mid_run_keeps_the_checkpoints_written_and_resumes(digits, tmp_path, mount):
    probe = _train(digits, tmp_path / "probe", "train_num_samples=80")  # one checkpoint: size
    assert probe.returncode == 0, probe.stderr[-2000:]
    ckpt = checkpoint_dir(str(tmp_path / "probe" / "run"), 5)
    size = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt))
    logs = mount("full", f"size={size * 3 // 2 + (1 << 20)}")  # room for one, not two

    full = _train(digits, logs)
    assert_one_error(full, f"cannot write checkpoint {logs}/run/checkpoints/step_00000010",
               "full")
    run_dir = str(logs / "run")
    assert step_of(latest(run_dir)) == 5
    model = load_model(latest(run_dir))[0]  # verified: the digests still match
    assert model is not None
    tiny = mount("tiny", "size=64k")  # an export onto a full disk: one line, nothing left
    for name in ("m.pt", "m.safetensors"):
        assert_one_error(run_cli("-m", "llip.training.export", latest(run_dir), str(tiny / name)),
                         f"cannot write {tiny / name}", "full")
    assert os.listdir(tiny) == []

    subprocess.run(["mount", "-o", f"remount,size={4 * size + (1 << 20)}", str(logs)],
                   check=True)  # space freed
    resumed = _train(digits, logs)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 5" in resumed.stdout and step_of(latest(run_dir)) == 10
    assert not [d for d in os.listdir(os.path.join(run_dir, "checkpoints")) if "tmp" in d]


def test_conversion_into_read_only_or_full_storage_is_one_line(tmp_path, mount):
    images = tmp_path / "img"
    images.mkdir()
    records = []
    for i in range(8):  # noise does not compress: 8 x ~200 KB of JPEG
        Image.effect_noise((400, 400), 100).convert("RGB").save(images / f"im{i}.png")
        records.append({"image": f"im{i}.png", "caption": f"noise {i}"})
    source = tmp_path / "pairs.json"
    source.write_text(json.dumps(records))
    for out, needle in ((mount("ro", "ro,size=1m") / "shards", "read-only file system"),
                        (mount("full", "size=256k"), "no space left on device")):
        result = run_cli("-m", "llip.data.convert", "json", str(source), "--out", str(out),
                         "--image-root", str(images), "--per-shard", "2", "--workers", "1")
        assert_one_error(result, f"cannot write {out}", needle)


def test_eval_results_on_read_only_storage_are_one_line(trained_clip, digits, tmp_path, mount):
    read_only = mount("ro", "ro,size=1m")
    catalog = write_catalog(tmp_path / "catalog.json", digits)
    fname = tmp_path / "sweep.yaml"
    fname.write_text(yaml.safe_dump({"checkpoints": [trained_clip], "catalogs": [catalog],
                                     "datasets": ["digits"], "workers": 0,
                                     "output_dir": str(read_only / "evals")}))
    assert_one_error(run_cli("-m", "evals.main_mc", "--fname", str(fname)),
               f"cannot write {read_only}/evals", "read-only file system")


def test_small_shared_memory_is_refused_up_front_not_waited_on(digits, tmp_path):
    """Docker's 64 MB /dev/shm, for real: the trainer runs in a mount namespace whose /dev/shm
    is a 4 MiB tmpfs. Batches that cannot fit there are refused in one line with the sizes and
    the fixes (before, the workers failed to hand them over and training waited for ever);
    batches that fit train."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a private /dev/shm needs root and unshare")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4m tmpfs "
                            "/dev/shm"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private /dev/shm here: {probe.stderr.strip()}")

    def train(*extra):
        command = " ".join(shlex.quote(a) for a in [
            sys.executable, "-m", "llip.main", "llip_tiny", f"train_data={digits['train']}",
            f"logs={tmp_path}", "train_num_samples=64", "wandb_mode=disabled", *extra])
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4m tmpfs "
                               f"/dev/shm && exec {command}"], capture_output=True, text=True,
                              timeout=300, cwd=REPO)
    refused = train("name=big", "batch_size=256", "workers=2")
    assert_one_error(refused, "MiB of shared memory (/dev/shm)", "--shm-size=1g", "workers=0")
    assert not (tmp_path / "big").exists()
    fits = train("name=small", "batch_size=16", "workers=1")
    assert fits.returncode == 0, fits.stderr[-2000:]
