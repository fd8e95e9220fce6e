"""Linear probe and kNN on the demo digits through the eval sweep, and the catalog's ImageNet
prompts against open_clip's."""
import pandas as pd
import pytest
import yaml

from helpers import run_cli, write_catalog
from llip.evaluation.probe import LAMBDAS
from llip.io import read_json


def test_probes_on_the_digits_through_a_sweep_with_a_group(trained_clip, digits, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", digits)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "checkpoints": [trained_clip], "catalogs": [catalog], "datasets": ["digits_probes"],
        "batch_size": 256, "workers": 0, "output_dir": str(tmp_path / "out")}))
    result = run_cli("-m", "evals.main_mc", "--fname", str(sweep))
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "out"
    probe, knn = ((r, r["by_tau"][0]) for r in (
        read_json(next((out / "results").glob(f"clip_demo__step00000110__digits_{task}__*.json")))
        for task in ("linear_probe", "knn")))
    for r, scored in (probe, knn):  # 1,437 training scans, 360 held out; chance is 0.10
        assert r["n"] == 360 and scored["metrics"]["n_train"] == 1437 and r["metric"] == "acc1"
        assert len(r["by_tau"]) == 1 and scored["value"] > 0.8, scored["metrics"]
    probe, knn = probe[1], knn[1]
    assert probe["metrics"]["lambda"] in LAMBDAS
    assert knn["metrics"]["k"] == 20
    wide = pd.read_csv(out / "results_wide.csv")
    assert wide["average_digits_probes"].iloc[0] == pytest.approx(
        (probe["value"] + knn["value"]) / 2)
    assert "average_digits_probes: mean over all 2 datasets" in result.stdout


def test_imagenet_prompts_agree_with_open_clip():
    from open_clip import zero_shot_metadata

    from llip.evaluation.catalog import DEFAULT_CATALOG, load_catalogs
    imagenet = load_catalogs([DEFAULT_CATALOG])["imagenet1k"]
    assert imagenet["classnames"] == list(zero_shot_metadata.IMAGENET_CLASSNAMES)
    assert imagenet["templates"] == [t("{c}") for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]
