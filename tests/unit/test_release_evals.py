"""The Llip release's eval files read as they are: its eval YAML (a sweep), its dataset catalog
(imagefolder and torchvision "special" entries, labels.json and templates.json beside it,
"{}" templates), each broken entry failing only its own dataset. The files are written here
in the release's layout (facebookresearch/Llip: configs_evals/*.yaml, llip/clipeval/)."""
import hashlib
import os

import pytest
import torch
import yaml

from helpers import (
    RELEASE_TEMPLATES,
    release_digits_catalog,
    write_release_catalog,
)
from llip.data import transform_for
from llip.data.synthetic.digits import CLASSNAMES
from llip.errors import ConfigError
from llip.evaluation.catalog import load_catalogs
from llip.evaluation.datasets import classification_batches
from llip.run_configs import get_config

# The release's own file (configs_evals/llip_b16_k32.yaml), verbatim.
RELEASE_YAML = """eval_name: metaclip_evals
mc_config_name: llip_b16_k32_12_node
checkpoint_path: /path/to/logs/llip/llip_b16_k32_12_node/checkpoints/epoch_latest.pt
output_dir: ./logs/llip_b16_k32_12_node
catalog_name: dataset_catalog_full.json
"""
def test_release_catalog_reads_its_datasets_and_fails_broken_ones_alone(tmp_path, digits):
    catalog = load_catalogs([release_digits_catalog(tmp_path, digits)])
    assert list(catalog) == ["MNIST", "Digits", "CIFAR10"]  # the entries that validate
    assert catalog.names() == ["MNIST", "Digits", "CIFAR10", "Food101", "MITStates",
                               "CLEVRCounts"] and "Food101" in catalog  # known, and broken
    assert catalog["MNIST"]["templates"] == RELEASE_TEMPLATES
    assert catalog["Digits"]["classnames"] == sorted(CLASSNAMES)
    broken = {
        "Food101": "type imagefolder needs field 'test'",
        "MITStates": "type special is read through torchvision's dataset classes, here CIFAR10, "
                     "CIFAR100, MNIST, STL10",
        "CLEVRCounts": "type 'filelist' is not read",
    }
    for name, needle in broken.items():
        with pytest.raises(ConfigError) as exn:
            catalog[name]
        assert f"dataset '{name}': {needle}" in str(exn.value) and "\n" not in str(exn.value)

    # The same images, read three ways, are the same tensors under the same class names: the
    # digits' own shards (our format), MNIST through torchvision's class, the release's
    # ImageFolder layout (labels by folder-name order, names from labels.json).
    transform = transform_for(get_config("clip_tiny"), False)

    def decoded(entry):
        batches, names = classification_batches(entry, transform, 512, 0)
        images, labels = map(torch.cat, zip(*batches))
        return [(names[label], hashlib.sha256(image.numpy().tobytes()).hexdigest())
                for image, label in zip(images, labels.tolist())]
    native = {"name": "digits", "format": "wds", "path": digits["test"], "label_key": "cls",
              "classnames": CLASSNAMES}
    ours = decoded(native)
    assert len(ours) == 360 and len({h for _, h in ours}) > 300
    assert decoded(catalog["MNIST"]) == ours  # in the shard's order
    assert sorted(decoded(catalog["Digits"])) == sorted(ours)

    with pytest.raises(ConfigError) as exn:  # CIFAR10: its files absent, named in one line
        classification_batches(catalog["CIFAR10"], transform, 4, 0)
    assert f"dataset 'CIFAR10': torchvision's CIFAR10 finds no data under {tmp_path}/cifar10: " \
           "it reads cifar-10-batches-py/data_batch_1" in str(exn.value)
    assert "cifar-10-batches-py/test_batch" in str(exn.value)


def test_release_catalog_without_its_side_files_fails_each_dataset(tmp_path):
    path = write_release_catalog(tmp_path, {"Pets": {"path": "/p", "type": "imagefolder",
                                                     "train": "train", "test": "test"}},
                                 {}, {"Pets": ["a photo of a {}, a type of pet."]})
    os.remove(tmp_path / "labels.json")
    catalog = load_catalogs([path])
    with pytest.raises(ConfigError, match="dataset 'Pets': a release-style entry takes its "
                                          "labels.json from beside the catalog"):
        catalog["Pets"]


def test_class_order_name_is_imagefolders(tmp_path):
    from PIL import Image

    from llip.evaluation.catalog import validate_entry
    from llip.evaluation.datasets import classification_items
    for label in (0, 2, 10):
        (tmp_path / str(label)).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / str(label) / "a.png")
    entry = {"task": "zeroshot_classification", "format": "imagefolder", "path": str(tmp_path),
             "metric": "acc1", "classnames": "folder", "templates": ["a {}"]}
    assert classification_items(validate_entry("x", entry, "c", "."))[1] == ["0", "2", "10"]
    named = validate_entry("x", {**entry, "class_order": "name"}, "c", ".")
    assert classification_items(named)[1] == ["0", "10", "2"]
    with pytest.raises(ConfigError, match="class_order 'size' must be one of numeric, name"):
        validate_entry("x", {**entry, "class_order": "size"}, "c", ".")


def test_release_eval_yaml_is_a_sweep(tmp_path, monkeypatch):
    from evals.sweep_file import load_sweep
    (tmp_path / "llip" / "clipeval").mkdir(parents=True)  # where a release checkout keeps it
    (tmp_path / "llip" / "clipeval" / "dataset_catalog_full.json").write_text("{}")
    (tmp_path / "llip_b16_k32.yaml").write_text(RELEASE_YAML)
    monkeypatch.chdir(tmp_path)
    said = []
    sweep = load_sweep("llip_b16_k32.yaml", announce=said.append)
    catalog = str(tmp_path / "llip" / "clipeval" / "dataset_catalog_full.json")
    assert sweep.checkpoints == [{"path": "/path/to/logs/llip/llip_b16_k32_12_node/checkpoints/"
                                          "epoch_latest.pt", "config": "llip_b16_k32",
                                  "all": False}]
    assert (sweep.catalogs, sweep.datasets, sweep.output_dir, sweep.eval_tau) == (
        [catalog], "all", "./logs/llip_b16_k32_12_node", [1, 3, 5, 8, 10])
    assert len(said) == 1 and said[0].startswith("# llip_b16_k32.yaml is the Llip release's")
    (tmp_path / "native.yaml").write_text(said[0])  # the printed file is a sweep of ours ...
    assert load_sweep("native.yaml", announce=said.append) == sweep  # ... that says the same
    assert len(said) == 1

    from llip.run_configs.released import RELEASE_NAMES
    assert RELEASE_NAMES["llip_b32_k64"] == "llip_b16_k64"  # theirs is a B/16 despite its name
    cases = [
        ({"eval_name": "linear_probe"}, "eval_name 'linear_probe': the release's eval is "
                                        "metaclip_evals"),
        ({"mc_config_name": "llip_b16_k33"}, "mc_config_name 'llip_b16_k33' is neither a config "
                                             "of the release"),
        ({"catalog_name": "nowhere.json"}, "catalog_name nowhere.json is neither a file"),
        ({"batch_size": 4}, "unknown key 'batch_size' in a release-style eval config"),
    ]
    for change, needle in cases:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**yaml.safe_load(RELEASE_YAML),
                                                           **change}))
        with pytest.raises(ConfigError) as exn:
            load_sweep("bad.yaml")
        assert needle in str(exn.value), str(exn.value)
