"""Eval building blocks in milliseconds: retrieval recall on a hand-made case, the shipped
catalog and sweep configs, file-based dataset readers."""
import json
import os

import pytest
import torch

from evals.zeroshot import retrieve
from llip.data import transform_for
from llip.run_configs import resolve

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TableModel:
    """Scores read from a fixed image x caption table; 'images' are row indices."""

    def __init__(self, table):
        self.table = torch.tensor(table, dtype=torch.float32)

    def encode_image(self, rows):
        return rows

    def logits(self, rows, captions, tau=None):
        return self.table[rows][:, captions]


def test_retrieval_recall_on_hand_made_case():
    # 5 images, 7 captions; caption owners: 0 0 1 2 3 4 4.
    owner = [0, 0, 1, 2, 3, 4, 4]
    table = [  # rows: images, columns: captions
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # image 0: its caption 0 first      -> i2t hit @1
        [0.0, 0.0, 0.2, 0.0, 0.0, 0.9, 0.0],  # image 1: its caption 2 second     -> hit @5
        [0.0, 0.0, 0.0, 0.1, 0.5, 0.6, 0.7],  # image 2: caption 3 is 4th         -> hit @5
        [0.0, 0.0, 0.0, 0.0, 0.8, 0.0, 0.0],  # image 3: caption 4 first          -> hit @1
        [0.5, 0.0, 0.0, 0.0, 0.0, 0.1, 0.3],  # image 4: caption 6 second         -> hit @2
    ]
    batches = [(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])),
               (torch.tensor([3, 4]), torch.tensor([3, 4]))]  # two batches: the merge matters
    r = retrieve(TableModel(table), batches, torch.arange(7), owner, ks=(1, 2, 5))
    # image -> text: ranks of the best own caption: 1, 2, 4, 1, 2
    assert r["text_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert r["text_retrieval_recall@2"] == pytest.approx(4 / 5)
    assert r["text_retrieval_recall@5"] == pytest.approx(5 / 5)
    # text -> image: rank of the owner in each column
    # c0: [0.9,0,0,0,0.5] -> 1; c1: [0.1,0,0,0,0] -> 1; c2: [0,0.2,0,0,0] -> 1;
    # c3: [0,0,0.1,0,0] -> 1; c4: [0,0,0.5,0.8,0] -> 1; c5: [0,0.9,0.6,0,0.1] -> 3;
    # c6: [0,0,0.7,0,0.3] -> 2
    assert r["image_retrieval_recall@1"] == pytest.approx(5 / 7)
    assert r["image_retrieval_recall@2"] == pytest.approx(6 / 7)
    assert r["image_retrieval_recall@5"] == pytest.approx(7 / 7)
    assert r["n"] == 5 and r["n_captions"] == 7


def test_shipped_catalog_and_sweep_configs_are_valid(tmp_path):
    from evals.catalog import DEFAULT_CATALOG, load_catalogs
    from evals.main_mc import load_sweep
    catalog = load_catalogs([DEFAULT_CATALOG])
    expected = {"imagenet1k": 1000, "cifar10": 10, "cifar100": 100, "food101": 101,
                "fgvc_aircraft": 100, "dtd": 47, "pets": 37, "caltech101": 102,
                "flowers102": 102, "gtsrb": 43, "resisc45": 45, "voc2007": 20}
    for name, n in expected.items():
        assert len(catalog[name]["classnames"]) == n, name
    assert catalog["coco_retrieval"]["task"] == "retrieval"
    for name in ("demo.yaml", "llip_b16_k32.yaml"):
        sweep = load_sweep(os.path.join(REPO, "config_evals", name))
        assert sweep.checkpoints and sweep.output_dir
    assert load_sweep(os.path.join(REPO, "config_evals",
                                   "llip_b16_k32.yaml")).eval_tau == [1, 3, 5, 8, 10]


def test_imagefolder_and_karpathy_json_readers(tmp_path):
    """File-based formats on real image files: numeric class folders sort as numbers."""
    from PIL import Image

    from evals.catalog import validate_entry
    from evals.datasets import classification_items, retrieval_data
    for label in (0, 2, 10):
        folder = tmp_path / "val" / str(label)
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "a.png")
    entry = validate_entry("x", {"task": "zeroshot_classification", "format": "imagefolder",
                                 "path": str(tmp_path), "split": "val", "metric": "acc1",
                                 "classnames": "folder", "templates": ["{c}"]}, "t", str(tmp_path))
    items, names = classification_items(entry)
    assert names == ["0", "2", "10"] and [label for _, label in items] == [0, 1, 2]
    (tmp_path / "k.json").write_text(json.dumps([
        {"image": "val/0/a.png", "caption": ["one", "two"]}, {"image": "val/2/a.png",
                                                               "caption": "three"}]))
    entry = validate_entry("r", {"task": "retrieval", "format": "json", "path":
                                 str(tmp_path / "k.json"), "image_root": str(tmp_path),
                                 "metric": "image_retrieval_recall@1"}, "t", str(tmp_path))
    cfg = resolve("clip_tiny")
    captions, owner, batches = retrieval_data(entry, transform_for(cfg, False), 4, 0)
    assert captions == ["one", "two", "three"] and owner == [0, 0, 1]
    images, index = next(batches)
    assert images.shape == (2, 3, 32, 32) and index.tolist() == [0, 1]


# ------------------------------------------------------------ scoring accumulators
def test_accumulators_of_image_shares_merge_to_the_whole():
    """What the distributed eval relies on: summed counts and merged running top-k of two
    shares of the images equal one pass over all of them."""
    from evals.zeroshot import Classification, Retrieval
    torch.manual_seed(0)
    logits, labels = torch.randn(12, 4), torch.randint(0, 4, (12,))
    whole, parts = Classification(4), [Classification(4), Classification(4)]
    whole.add(logits, labels)
    parts[0].add(logits[:5], labels[:5])
    parts[1].add(logits[5:], labels[5:])
    parts[0].sums += parts[1].sums
    assert parts[0].result() == whole.result()
    assert whole.result()["acc1"] == (logits.argmax(1) == labels).sum().item() / 12

    owner = [0, 0, 1, 2, 3, 4, 5, 5, 6, 7]
    scores, index = torch.randn(8, 10), torch.arange(8)
    whole, a, b = (Retrieval(owner, ks=(1, 2, 5)) for _ in range(3))
    whole.add(scores, index)
    a.add(scores[::2], index[::2])  # rank 0's share
    b.add(scores[1::2], index[1::2])  # rank 1's share
    a.sums += b.sums
    a.keep_best(b.best_scores, b.best_images)
    assert a.result() == whole.result()


def test_templates_fill_only_c_and_labels_stay_within_class_names():
    from evals.zeroshot import Classification, fill_template
    from llip.cli import ConfigError
    assert fill_template("a photo of a {c}.", "cat") == "a photo of a cat."
    for bad, needle in (("a {cls} photo", "{cls}"), ("a {} photo", "{}"), ("a {c", "valid")):
        with pytest.raises(ConfigError, match="template") as info:
            fill_template(bad, "cat")
        assert needle in str(info.value) and bad in str(info.value)
    with pytest.raises(ConfigError, match="label 7 is outside the 5 class names"):
        Classification(5).add(torch.randn(3, 5), torch.tensor([1, 7, 2]))


def test_inference_runs_fp32_on_cpu():
    from evals.zeroshot import inference_precision
    with inference_precision("cpu"):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float32


# ------------------------------------------------------------ result files
def _result(path, model="clip_demo", step=110, checkpoint="/r/a/clip_demo/checkpoints/"
            "step_00000110", loss="clip", taus=(None,)):
    from evals.results import checkpoint_id
    return {"id": checkpoint_id(checkpoint, step), "model": model, "loss": loss, "step": step,
            "checkpoint": checkpoint, "dataset": "digits", "task": "zeroshot_classification",
            "metric": "acc1", "n": 3, "by_tau": [{"eval_tau": t, "value": 0.5, "metrics":
                                                  {"acc1": 0.5, "n": 3}} for t in taus]}


def test_truncated_or_foreign_result_files_are_not_done(tmp_path):
    from evals.results import missing_taus, read_result
    path = tmp_path / "r.json"
    text = json.dumps(_result(path))
    path.write_text(text)
    assert read_result(str(path))["model"] == "clip_demo"
    assert missing_taus(read_result(str(path)), [1.0, 5.0]) == []  # CLIP: taus do not apply
    for broken in (text[: len(text) // 2], "{}", json.dumps({**_result(path), "by_tau": []}),
                   json.dumps([1, 2]), ""):
        path.write_text(broken)
        assert read_result(str(path)) is None, broken
    assert read_result(str(tmp_path / "absent.json")) is None
    llip = _result(path, loss="llip", taus=(1.0,))
    assert missing_taus(llip, [1, 5]) == [5] and missing_taus(llip, [1]) == []
    assert missing_taus(None, [None]) == [None]


def test_same_named_checkpoints_get_distinct_files_and_labels(tmp_path):
    from evals.results import display_labels, result_path
    ckpts = ["/x/a/clip_demo/checkpoints/step_00000110", "/x/b/clip_demo/checkpoints/"
             "step_00000110", "/x/a/model.pt", "/x/b/model.pt"]
    results = [_result(None, checkpoint=c) for c in ckpts]
    results.append(_result(None, checkpoint="/x/a/clip_demo/checkpoints/step_00000055", step=55))
    results.append(_result(None, model="siglip_demo", checkpoint="/y/siglip_demo/checkpoints/"
                           "step_00000110"))
    assert len({r["id"] for r in results}) == 6
    assert len({result_path("out", "clip_demo__step00000110", "digits", r["id"])
                for r in results}) == 6
    labels = display_labels(results)
    assert [labels[r["id"]] for r in results] == [
        "clip_demo (a/clip_demo)", "clip_demo (b/clip_demo)", "clip_demo (a/model.pt)",
        "clip_demo (b/model.pt)", "clip_demo (a/clip_demo)", "siglip_demo"]


# ------------------------------------------------------------ sweep YAML
def test_sweep_yaml_types_are_checked(tmp_path):
    import yaml

    from evals.main_mc import load_sweep
    from llip.cli import ConfigError
    base = {"checkpoints": ["run"], "output_dir": "out"}
    cases = [
        ({"batch_size": 0}, "'batch_size' must be an integer > 0"),
        ({"batch_size": True}, "'batch_size' must be an integer > 0"),
        ({"workers": -1}, "'workers' must be an integer >= 0"),
        ({"checkpoints": "run"}, "'checkpoints' must be a non-empty list"),
        ({"checkpoints": [{"all": True}]}, "needs exactly one of path"),
        ({"checkpoints": [{"path": 3}]}, "'path' must be a str"),
        ({"checkpoints": [{"path": "r", "all": "yes"}]}, "'all' must be a bool"),
        ({"checkpoints": [{"path": "r", "every": True}]}, "unknown key 'every'"),
        ({"checkpoints": [7]}, "must be a path or a mapping"),
        ({"eval_tau": 0}, "'eval_tau' must be a number > 0"),
        ({"eval_tau": ["5"]}, "'eval_tau' must be a number > 0"),
        ({"eval_tau": [1, True]}, "'eval_tau' must be a number > 0"),
        ({"eval_tau": []}, "'eval_tau' must be a number > 0"),
        ({"datasets": "digits"}, "'datasets' must be 'all' or a non-empty list"),
        ({"catalogs": "c.json"}, "'catalogs' must be a non-empty list"),
        ({"output_dir": None}, "'output_dir' must be a path"),
        ({"slurm": ["a"]}, "'slurm' must be a mapping"),
    ]
    for change, needle in cases:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(ConfigError) as info:
            load_sweep(str(path))
        assert needle in str(info.value) and "\n" not in str(info.value), (change, info.value)
    path.write_text(yaml.safe_dump({**base, "eval_tau": [1, 5, 1.0], "checkpoints":
                                    ["a", {"path": "b", "all": True}]}))
    sweep = load_sweep(str(path))
    assert sweep.eval_tau == [1.0, 5.0]
    assert sweep.checkpoints == [{"path": "a", "all": False}, {"path": "b", "all": True}]
