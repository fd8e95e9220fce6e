"""What an eval sweep reads, in milliseconds: the shipped catalog and sweep configs, file-based
dataset readers, the sweep YAML's types."""
import json
import os
import re

import pytest

from helpers import REPO
from llip.data import transform_for
from llip.run_configs import resolve


def test_shipped_catalog_and_sweep_configs_are_valid(tmp_path):
    from evals.sweep_file import load_sweep
    from llip.evaluation.catalog import DEFAULT_CATALOG, load_catalogs
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

    from llip.evaluation.catalog import validate_entry
    from llip.evaluation.datasets import classification_items, retrieval_data
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


# ------------------------------------------------------------ sweep YAML
def test_sweep_yaml_types_are_checked(tmp_path):
    import yaml

    from evals.sweep_file import load_sweep
    from llip.errors import ConfigError
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
    # paths are expanded as a shell would: ~ (not a literal ./~ directory) and ${VAR}
    path.write_text(yaml.safe_dump({"checkpoints": ["~/runs/a"], "output_dir": "~/evals"}))
    sweep = load_sweep(str(path))
    home = os.path.expanduser("~")
    assert sweep.output_dir == os.path.join(home, "evals") and home != "~"
    assert sweep.checkpoints[0]["path"] == os.path.join(home, "runs", "a")


@pytest.mark.parametrize("template, needle", [
    ("a handwritten digit {{c}}", "no placeholder for the class name"),  # literal braces
    ("a photo of {label}", "has the placeholder {label}"),
    ("a photo of {c", "not a valid format string"),
    ("a photo", "no placeholder for the class name"),
])
def test_templates_are_parsed_when_the_catalog_is_read(template, needle):
    """A template is refused with the catalog entry, before any work, as it would be filled:
    "{{c}}" holds the substring "{c}" but fills in no class name (every prompt alike)."""
    from llip.errors import ConfigError
    from llip.evaluation.catalog import validate_entry
    entry = {"task": "zeroshot_classification", "format": "wds", "path": "/nowhere/{0..1}.tar",
             "metric": "acc1", "classnames": ["a", "b"],
             "templates": ["a photo of a {c}.", template]}
    with pytest.raises(ConfigError, match="^catalog t: dataset 't'.*" + re.escape(needle)):
        validate_entry("t", entry, "t", "/")
