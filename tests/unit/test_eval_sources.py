"""Where zero-shot prompts come from (CLIP_benchmark), dataset groups and what `average` means,
and CLIP_benchmark's result files in our tables."""
import hashlib
import importlib.metadata
import json
import os

import pandas as pd
import pytest

from evals.aggregate import aggregate, tables
from llip.errors import ConfigError
from llip.evaluation import prompts
from llip.evaluation.catalog import (
    DEFAULT_CATALOG,
    expand_names,
    load_catalogs,
    load_groups,
    validate_entry,
)
from llip.evaluation.results import checkpoint_id


def test_metadata_is_a_verbatim_copy_of_clip_benchmarks_package_data():
    files = prompts.package_files() if importlib.util.find_spec("clip_benchmark") else None
    if files is None:
        pytest.skip("clip_benchmark not installed: pip install --no-deps -r "
                    "requirements-nodeps.txt")
    meta = prompts.load()
    assert meta["source"] == f"clip_benchmark=={importlib.metadata.version('clip_benchmark')}"
    for kind, path in files.items():
        raw = open(path, "rb").read()
        assert meta[kind] == json.loads(raw), kind
        assert meta["files"][kind]["sha256"] == hashlib.sha256(raw).hexdigest()


def test_shipped_catalog_takes_prompts_from_clip_benchmark():
    meta = prompts.load()
    raw = json.load(open(DEFAULT_CATALOG))
    catalog = load_catalogs([DEFAULT_CATALOG])
    zero_shot = [n for n, e in catalog.items() if e["task"] == "zeroshot_classification"]
    for name in zero_shot:  # no hand-copied templates left
        assert raw[name]["templates"].startswith("clip_benchmark:"), name
    assert catalog["cifar10"]["templates"] == meta["templates"]["cifar10"]
    assert len(catalog["cifar10"]["templates"]) == len(catalog["cifar100"]["templates"]) == 18
    assert len(catalog["caltech101"]["templates"]) == 34
    assert len(catalog["caltech101"]["classnames"]) == 102
    assert catalog["caltech101"]["classnames"][:3] == ["background", "off-center face",
                                                       "centered face"]
    assert catalog["fer2013"]["classnames"] == meta["classnames"]["fer2013"]
    assert len(catalog["imagenet1k"]["templates"]) == 80
    with pytest.raises(ConfigError, match="'clip_benchmark:cifar1000' is not in clip_benchmark=="):
        validate_entry("x", {**raw["cifar10"], "templates": "clip_benchmark:cifar1000"}, "c",
                       os.path.dirname(DEFAULT_CATALOG))


def test_groups_expand_in_order_and_name_what_is_missing():
    groups = load_groups([DEFAULT_CATALOG])
    suite = groups["llip_paper"]
    assert len(suite) == len(set(suite)) == 26 and "imagenet1k" in suite
    catalog = {"a": {}, "b": {}, "c": {}}
    assert expand_names(["c", "g", "a"], catalog, {"g": ["a", "b"]}) == ["c", "a", "b"]
    with pytest.raises(ConfigError, match="group 'g' names datasets missing from the catalogs: "
                                          "x, y"):
        expand_names(["g"], catalog, {"g": ["a", "x", "y"]})
    assert expand_names(["zz"], catalog, {}) == ["zz"]  # unknown names: the sweep reports them


def _result(model, step, dataset, value, task="zeroshot_classification", metric="acc1"):
    """A result in evals.runner's format (one checkpoint of a run dir named `model`)."""
    checkpoint = f"/runs/{model}/checkpoints/step_{step:08d}"
    return {"id": checkpoint_id(checkpoint, step), "label": f"{model}__step{step:08d}",
            "model": model, "loss": "clip", "step": step, "checkpoint": checkpoint,
            "dataset": dataset, "task": task, "split": "", "metric": metric, "n": 10,
            "images_encoded": 10, "seconds": 0.1,
            "by_tau": [{"eval_tau": None, "metrics": {metric: value, "n": 10}, "value": value}]}


def test_group_average_needs_every_member():
    results = [_result("m", 1, "a", 0.2), _result("m", 1, "b", 0.4), _result("m", 1, "c", 0.9),
               _result("m", 2, "a", 0.5), _result("m", 2, "c", 0.7)]
    _, wide = tables(results, {"g": ["a", "b"], "unused": ["q"]})
    assert list(wide.columns) == ["model", "step", "eval_tau", "a", "b", "c", "average",
                                  "average_g"]
    assert wide["average"].tolist() == pytest.approx([0.5, 0.6])  # what each row has
    assert wide["average_g"].iloc[0] == pytest.approx(0.3)
    assert pd.isna(wide["average_g"].iloc[1])  # b missing: no partial mean passes as the suite


CB_RESULTS = [  # the shape clip_benchmark/cli.py dumps, one object per file
    {"dataset": "wds/vtab/cifar10", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
     "task": "zeroshot_classification", "metrics": {"acc1": 0.9, "acc5": 0.99,
                                                    "mean_per_class_recall": 0.89},
     "language": "en"},
    {"dataset": "flowers", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
     "task": "zeroshot_classification", "metrics": {"acc1": 0.6, "acc5": 0.8,
                                                    "mean_per_class_recall": 0.7},
     "language": "en"},
    {"dataset": "mscoco_captions", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
     "task": "zeroshot_retrieval", "metrics": {"image_retrieval_recall@5": 0.65,
                                               "text_retrieval_recall@5": 0.8},
     "language": "en"},
    {"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
     "task": "linear_probe", "metrics": {"lp_acc1": 0.95, "lp_acc5": 0.999,
                                         "lp_mean_per_class_recall": 0.95, "weight_decay": 1e-4,
                                         "epochs": 10, "seed": 0, "fewshot_k": -1,
                                         "normalized": True},
     "language": "en"},
]


def test_clip_benchmark_results_join_our_tables(tmp_path):
    out = tmp_path / "evals"
    (out / "results").mkdir(parents=True)
    ours = _result("clip_demo", 110, "cifar10", 0.5)
    (out / "results" / "clip_demo__cifar10.json").write_text(json.dumps(ours))
    cb = tmp_path / "cb"
    cb.mkdir()
    for i, r in enumerate(CB_RESULTS[:3]):
        (cb / f"{i}.json").write_text(json.dumps(r))
    (out / "external").mkdir()  # picked up without being named
    (out / "external" / "lp.jsonl").write_text(json.dumps(CB_RESULTS[3]) + "\n")
    groups = {"pair": ["cifar10", "flowers102"]}
    wide = aggregate(str(out), groups=groups, external=[str(cb)]).set_index("model")
    public = wide.loc["ViT-B-32 laion2b_s34b_b79k"]
    assert public["cifar10"] == 0.9 and public["cifar10_linear_probe"] == 0.95
    assert public["coco_retrieval"] == 0.65  # the catalog's main metric for coco_retrieval
    assert public["flowers102"] == 0.7  # ... and mean per-class recall for flowers102
    assert public["average_pair"] == pytest.approx(0.8)
    assert pd.isna(public["step"]) and wide.loc["clip_demo", "step"] == 110
    long = pd.read_csv(out / "results_long.csv")
    assert set(long[long["model"] == "ViT-B-32 laion2b_s34b_b79k"]["metric"]) == {
        "acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@5",
        "text_retrieval_recall@5"}  # probe settings (weight_decay, epochs, ...) are no rows
    md = (out / "results_wide.md").read_text()
    assert "average_pair: mean over all 2 datasets of group 'pair'" in md

    (cb / "bad.json").write_text(json.dumps({"dataset": "x", "model": "m"}))
    with pytest.raises(ConfigError, match="bad.json: not a CLIP_benchmark result"):
        aggregate(str(out), groups=groups, external=[str(cb)])
    with pytest.raises(ConfigError, match="do not exist"):
        aggregate(str(out), external=[str(tmp_path / "nowhere")])
    assert os.path.exists(out / "results_vs_step.png")


def test_one_metric_per_column_and_the_same_table_when_aggregated_again(tmp_path, capsys):
    """A CLIP_benchmark retrieval result (recall@5 only, its default --recall_k) beside ours
    (the catalog's recall@10): never in one column; every column names its metric; the table
    the sweep wrote is the table a plain re-aggregation writes (the sweep's catalogs and
    groups recorded beside the results)."""
    from evals.aggregate import main as aggregate_main
    from llip.evaluation.results import record_catalogs
    catalog = tmp_path / "catalog.json"
    entry = {"task": "retrieval", "format": "json", "path": "x.json",
             "metric": "image_retrieval_recall@10"}
    catalog.write_text(json.dumps({
        "mscoco": entry, "flickr": entry, "_groups": {"both": ["mscoco", "flickr"]}}))
    out = tmp_path / "evals"
    (out / "results").mkdir(parents=True)
    for i, dataset in enumerate(("mscoco", "flickr")):
        ours = _result("clip_demo", 110, dataset, 0.3 + i / 10, task="retrieval",
                       metric="image_retrieval_recall@10")
        (out / "results" / f"{dataset}.json").write_text(json.dumps(ours))
    (out / "external").mkdir()
    cb = {**CB_RESULTS[2], "dataset": "mscoco"}  # as clip_benchmark/cli.py dumps it
    (out / "external" / "mscoco_retrieval.json").write_text(json.dumps(cb))

    record_catalogs(str(out), [str(catalog)])  # what evals.main_mc does before aggregating
    wide = aggregate(str(out), groups=load_groups([str(catalog)]),
                     catalog=load_catalogs([str(catalog)]))
    said = capsys.readouterr().out
    first = (out / "results_wide.csv").read_text(), (out / "results_wide.md").read_text()
    assert list(wide.columns) == ["model", "step", "eval_tau", "flickr", "mscoco",
                                  "mscoco [image_retrieval_recall@5]", "average",
                                  "average_both"]
    rows = wide.set_index("model")
    assert pd.isna(rows.loc["ViT-B-32 laion2b_s34b_b79k", "mscoco"])  # not its recall@5
    assert rows.loc["ViT-B-32 laion2b_s34b_b79k", "mscoco [image_retrieval_recall@5]"] == 0.65
    assert rows.loc["clip_demo", "mscoco"] == 0.3
    assert rows.loc["clip_demo", "average_both"] == pytest.approx(0.35)
    assert "columns (one metric each): flickr = image_retrieval_recall@10, mscoco = " \
           "image_retrieval_recall@10, mscoco [image_retrieval_recall@5] = " \
           "image_retrieval_recall@5" in first[1]
    assert "note: mscoco: some rows have image_retrieval_recall@5, not the column's " \
           "image_retrieval_recall@10" in said

    assert aggregate_main([str(out)]) == 0  # no --catalog: the sweep's, recorded
    assert ((out / "results_wide.csv").read_text(), (out / "results_wide.md").read_text()) \
        == first
