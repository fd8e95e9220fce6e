"""Users of the Llip release, open_clip and CLIP_benchmark arrive with their own files and use
them as they are, through the commands: the release's eval YAML and catalog run as a sweep;
our open_clip export is evaluated by CLIP_benchmark's own command line (the one the export
prints), with the top-1 of our evals, and its result lands in our tables."""
import glob
import json
import os
import shlex

import braceexpand
import pandas as pd
import torch
import yaml

from helpers import release_digits_catalog, run_cli, write_catalog, write_released
from llip.data.synthetic.digits import CLASSNAMES, EVAL_TEMPLATES
from llip.io import read_json
from llip.models import build_model
from llip.run_configs import get_config


def _results(out, dataset):
    return [read_json(f) for f in glob.glob(str(out / "results" / f"*__{dataset}__*.json"))]


def test_release_eval_yaml_and_catalog_run_as_a_sweep(digits, tmp_path):
    """configs_evals/llip_b16_k32.yaml's form (facebookresearch/Llip) on a checkpoint saved as
    the release's training saves one, with the release's catalog layout: every dataset it can
    read is scored at the release's five eval temperatures, the others fail one line each."""
    torch.manual_seed(0)
    checkpoint = write_released(build_model(get_config("llip_tiny")).eval(),
                                tmp_path / "epoch_latest.pt")
    catalog = release_digits_catalog(tmp_path, digits)
    release_yaml = tmp_path / "llip_tiny.yaml"
    release_yaml.write_text(f"eval_name: metaclip_evals\nmc_config_name: llip_tiny\n"
                            f"checkpoint_path: {checkpoint}\noutput_dir: ./logs/eval_tiny\n"
                            f"catalog_name: {os.path.basename(catalog)}\n")
    (tmp_path / "llip").mkdir()  # where the release's code finds catalog_name: llip/clipeval/
    os.symlink(os.path.dirname(catalog), tmp_path / "llip" / "clipeval")
    result = run_cli("-m", "evals.main_mc", "--fname", str(release_yaml), cwd=tmp_path)
    out = tmp_path / "logs" / "eval_tiny"
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, \
        result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("is the Llip release's eval config") == 1
    failed = {line.split(":")[0][len("FAILED "):] for line in result.stdout.splitlines()
              if line.startswith("FAILED")}  # broken entries, then tasks (<label>__<dataset>__)
    assert {name.split("__")[-2] if "__" in name else name for name in failed} == {
        "CIFAR10", "CLEVRCounts", "Food101", "MITStates"}
    assert "dataset 'CIFAR10': torchvision's CIFAR10 finds no data under" in result.stdout
    (mnist,), (folder,) = _results(out, "MNIST"), _results(out, "Digits")
    assert [e["eval_tau"] for e in mnist["by_tau"]] == [1, 3, 5, 8, 10]
    assert mnist["by_tau"] == folder["by_tau"] and mnist["n"] == 360  # same images, same scores
    assert mnist["model"] == "llip_tiny" and mnist["checkpoint"] == checkpoint

    # The printed sweep of our form is the same sweep: everything is already done.
    native = result.stdout.split("is the Llip release's eval config")[1].split("\n\n")[0]
    (tmp_path / "native.yaml").write_text(native.split("\n", 1)[1])
    again = run_cli("-m", "evals.main_mc", "--fname", "native.yaml", "--no-aggregate",
                    cwd=tmp_path)
    assert "3 eval tasks, 2 already done, 1 to run" in again.stdout, again.stdout[-2000:]  # CIFAR10


def test_clip_benchmark_scores_our_open_clip_export_like_our_evals(trained_clip, digits,
                                                                   tmp_path):
    """The export's printed CLIP_benchmark command, run on the digits laid out as CLIP_benchmark
    reads a WebDataset (clip_benchmark/datasets/builder.py build_wds_dataset: test/0.tar,
    test/nshards.txt, classnames.txt, zeroshot_classification_templates.txt), gives the top-1 of
    our eval of the run and of the export; its result joins our table under its folder's name."""
    exported = run_cli("-m", "llip.training.export", trained_clip,
                       str(tmp_path / "clip_demo.safetensors"), "--format", "open_clip")
    assert exported.returncode == 0, exported.stderr[-2000:]
    collides = run_cli("-m", "llip.training.export", trained_clip, str(tmp_path / "clip.json"),
                       "--format", "open_clip")  # the config would overwrite the weights
    assert collides.returncode == 2 and "would be overwritten" in collides.stderr, \
        collides.stderr[-2000:]
    assert not (tmp_path / "clip.json").exists()
    lines = dict(line.split(":", 1) for line in exported.stdout.splitlines()[1:]
                 if not line.startswith(" "))
    command = shlex.split(lines["CLIP_benchmark"])
    sweep_entry = yaml.safe_load(lines["eval sweep"])

    root = tmp_path / "cb_digits"
    (root / "test").mkdir(parents=True)
    (shard,) = braceexpand.braceexpand(digits["test"])
    os.symlink(shard, root / "test" / "0.tar")
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(EVAL_TEMPLATES) + "\n")
    out = tmp_path / "out"
    (out / "external").mkdir(parents=True)
    assert command[:2] == ["clip_benchmark", "eval"]
    command = [arg.replace("DATASET", "wds/digits").replace("ROOT", str(root))
               for arg in command[2:]]
    cb = run_cli("-m", "clip_benchmark.cli", "eval", *command, "--no_amp", "--num_workers", "0",
                 "--batch_size", "128", cwd=out / "external")
    assert cb.returncode == 0, cb.stdout[-2000:] + cb.stderr[-3000:]
    (cb_file,) = glob.glob(str(out / "external" / "*.json"))
    assert json.loads(open(cb_file).read())["model"].startswith("local-dir:")

    catalog = write_catalog(tmp_path / "catalog.json", digits)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "checkpoints": [trained_clip, sweep_entry], "catalogs": [catalog],
        "datasets": ["digits"], "workers": 0, "output_dir": str(out)}))
    result = run_cli("-m", "evals.main_mc", "--fname", str(sweep))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wide = pd.read_csv(out / "results_wide.csv").set_index("model")
    top1 = wide["digits"].to_dict()
    assert set(top1) == {"clip_demo", "openclip_clip_demo_clip_demo", "clip_demo.open_clip"}
    assert len(set(top1.values())) == 1 and top1["clip_demo"] > 0.5, top1
