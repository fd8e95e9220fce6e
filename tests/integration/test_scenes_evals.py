"""The binding scenes end to end: the zero-query control trains through the CLI and logs its
sigmoid bias; main_mc's multiple-choice and presence tasks agree with a direct computation."""
import json
import math
import os

import pytest
import torch
import webdataset as wds
import yaml

from helpers import run_cli
from llip.data import IMAGE_KEYS, tokenizer_for, transform_for
from llip.data.stream import expand_sources
from llip.data.synthetic.scenes import CLASSNAMES, build
from llip.evaluation.multilabel import mean_average_precision
from llip.io import read_json, read_text
from llip.loading import load_model


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("scenes")), n_train=256, n_validation=16,
                 n_test=48)


def test_zero_query_control_trains_and_logs_scale_and_bias(scenes, tmp_path):
    r = run_cli("-m", "llip.main", "llip_scenes_zero_query", f"train_data={scenes['train']}",
                f"logs={tmp_path}", "name=control", "batch_size=16", "train_num_samples=64",
                "checkpoint_every=4", "log_every=2", "warmup_steps=1", "workers=1")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in read_text(tmp_path / "control" / "metrics.jsonl").splitlines()]
    assert [row["step"] for row in rows] == [2, 4]
    assert all(abs(row["logit_bias"] + math.log(15)) < 0.05 for row in rows)  # auto: -ln(B-1)
    assert all(abs(row["logit_scale"] - math.log(1 / 0.07)) < 0.05 for row in rows)


def _test_items(scenes, transform):
    urls = [u for s in expand_sources(scenes["test"]) for u in s]
    return [(transform(x), q_c, q_s, p) for x, q_c, q_s, p in wds.WebDataset(
        urls, shardshuffle=False).decode("pilrgb").to_tuple(
        IMAGE_KEYS, "bind_colour.json", "bind_shape.json", "presence.json")]


def test_main_mc_binding_tasks_equal_a_direct_computation(scenes, trained_clip, tmp_path):
    sweep = {"checkpoints": [trained_clip], "catalogs": [scenes["catalog_test"]],
             "output_dir": str(tmp_path / "evals"), "batch_size": 20, "workers": 0}
    fname = tmp_path / "sweep.yaml"
    fname.write_text(yaml.safe_dump(sweep))
    r = run_cli("-m", "evals.main_mc", "--fname", str(fname))
    assert r.returncode == 0, r.stderr[-2000:]
    results = {x["dataset"]: x for x in (read_json(os.path.join(tmp_path, "evals", "results", f))
                                         for f in os.listdir(tmp_path / "evals" / "results"))}
    assert set(results) == {"bind_colour", "bind_shape", "presence"}

    model, cfg, _ = load_model(trained_clip)
    tokenizer = tokenizer_for(cfg)
    items = _test_items(scenes, transform_for(cfg, False))
    with torch.no_grad():
        def score(image, captions):  # one image against its own candidates, no batching
            return model.logits(model.encode_image(image[None]),
                                model.encode_text(tokenizer(captions)))[0]
        for name, column in (("bind_colour", 1), ("bind_shape", 2)):
            answers = [score(item[0], q["choices"]).argmax().item() == q["answer"]
                       for item in items for q in item[column]]
            assert results[name]["n"] == len(answers) == 3 * 48
            assert results[name]["by_tau"][0]["value"] == pytest.approx(sum(answers) / len(answers))
        prompts = model.encode_text(tokenizer([f"a {c}" for c in CLASSNAMES]))
        scores = torch.cat([model.logits(model.encode_image(item[0][None]), prompts)
                            for item in items])
    targets = torch.zeros(len(items), len(CLASSNAMES), dtype=torch.bool)
    for row, item in enumerate(items):
        targets[row, item[3]] = True
    assert results["presence"]["metric"] == "mAP" and results["presence"]["n"] == 48
    assert results["presence"]["by_tau"][0]["value"] == pytest.approx(
        mean_average_precision(scores, targets), abs=1e-5)
