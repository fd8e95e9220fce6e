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
