"""Fault injection, fast part: bad shards, catalogs, config values and metrics files, injected
for real (files on disk) and checked for the promised behaviour: nothing executes (a marker file
is never created), one-line errors, nothing lost."""
import io
import json
import pickle
import random

import pytest
import torch
import webdataset as wds
from PIL import Image

from helpers import Touch
from llip.data.health import SkipCounter
from llip.data.stream import decode_samples
from llip.errors import ConfigError, DataError
from llip.run_configs import resolve


def _png(i=0):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 40 % 255, 10, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _evil_shard(path, marker):
    with wds.TarWriter(str(path)) as sink:
        for i in range(4):
            sink.write({"__key__": f"k{i}", "png": _png(i), "txt": f"caption {i}", "cls": b"1",
                        "pyd": pickle.dumps(Touch(marker)), "pth": pickle.dumps(Touch(marker))})
    return str(path)


def test_shard_members_never_execute(tmp_path):
    marker = tmp_path / "executed"
    shard = _evil_shard(tmp_path / "evil.tar", marker)
    out = list(decode_samples(({"url": shard} for _ in range(2)), lambda im: im.size, 0,
                              random.Random(0), SkipCounter("shard"), SkipCounter("sample")))
    assert len(out) == 8 and not marker.exists()
    # The payload is live: webdataset's default decoders do run it.
    list(wds.WebDataset(shard, shardshuffle=False, empty_check=False)
         .decode("pilrgb", handler=wds.ignore_and_continue))
    assert marker.exists()


def test_eval_shards_never_execute_and_catalog_pipe_needs_opt_in(tmp_path):
    from llip.evaluation.catalog import load_catalogs
    from llip.evaluation.datasets import classification_batches
    marker, piped = tmp_path / "executed", tmp_path / "piped"
    shard = _evil_shard(tmp_path / "evil.tar", marker)
    entry = {"task": "zeroshot_classification", "format": "wds", "metric": "acc1",
             "classnames": ["a", "b"], "templates": ["{c}"]}
    catalog = tmp_path / "cat.json"
    catalog.write_text(json.dumps({"ok": {**entry, "path": shard}}))
    batches, _ = classification_batches(load_catalogs([str(catalog)])["ok"],
                                        lambda im: torch.zeros(1), 4, 0)
    assert torch.cat([y for _, y in batches]).tolist() == [1, 1, 1, 1]
    assert not marker.exists()
    for path in (f"pipe:touch {piped}; cat {shard}", f"{{pipe:touch {piped}; cat ,}}{shard}"):
        catalog.write_text(json.dumps({"bad": {**entry, "path": path}, "ok": {**entry,
                                                                           "path": shard}}))
        refused = load_catalogs([str(catalog)])  # refused for that dataset only
        with pytest.raises(ConfigError, match="shell command"):
            refused["bad"]
        assert refused["ok"]["path"] == shard and not piped.exists()
    allowed = load_catalogs([str(catalog)], allow_pipe=True)["bad"]
    list(classification_batches(allowed, lambda im: torch.zeros(1), 4, 0)[0])
    assert piped.exists()  # the user opted in: the command ran


@pytest.mark.parametrize("override,needle", [
    ("batch_size=1e999", "not a valid int"), ("patch_size=0", "patch_size=0 must be >= 1"),
    ("lr=nan", "lr=nan must be a finite"), ("workers=-1", "workers=-1 must be >= 0"),
    ("shuffle_buffer=-5", ">= 0"), ("warmup_steps=-1", ">= 0"),
    ("train_data=a.tar::", "empty source"), ("train_data=a{0..3.tar", "unbalanced braces"),
    ("name=", "name=''"), ("name=../escape", "name='../escape'"), ("name=a/b", "name='a/b'"),
    ("slurm_partition=x\n#SBATCH --qos=high", "control character"),
    ("beta2=1", "beta2=1.0 must be < 1"), ("max_corrupt_fraction=0", "> 0"),
])
def test_bad_config_values_are_one_line(override, needle, capsys):
    from llip.main import main
    assert main(["clip_tiny", override, "--print"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


@pytest.mark.parametrize("weights", ["nan::1", "1::inf"])
def test_bad_weights_are_errors(weights):
    with pytest.raises(ConfigError, match="finite"):
        resolve("clip_tiny", ["train_data=a.tar::b.tar", f"train_data_weights={weights}"])


def test_corruption_is_a_rate_not_a_streak():
    counter = SkipCounter("sample", max_fraction=0.5, window=1000)
    rng = random.Random(0)
    for _ in range(20000):  # 10% corrupt, any batch size: never fails
        counter(ValueError("bad")) if rng.random() < 0.1 else counter.ok()
    with pytest.raises(DataError, match="max_corrupt_fraction=0.5"):
        for _ in range(2000):  # 70% corrupt: fails within a window or two
            counter(ValueError("bad")) if rng.random() < 0.7 else counter.ok()


def test_empty_shard_fails_fast_naming_it(tmp_path):
    empty = tmp_path / "empty.tar"
    with wds.TarWriter(str(empty)):
        pass
    with pytest.raises(DataError, match=f"no samples from 20 shard reads \\(last: {empty}"):
        list(decode_samples(({"url": str(empty)} for _ in range(10 ** 9)), lambda im: 0, 0,
                            random.Random(0), SkipCounter("shard"), SkipCounter("sample")))


def test_metrics_torn_last_line_is_dropped(tmp_path):
    from llip.training.metrics import MetricsLogger
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    cfg = resolve("clip_tiny", ["wandb_mode=disabled"])
    MetricsLogger(str(tmp_path), cfg, 2, enabled=True).close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
