"""Eval sweeps (evals.main_mc): every checkpoint of a run to tables and a plot, one image pass
for all eval taus, results that cannot collide, failing tasks that stay one line, bad input that
never loses a result."""
import dataclasses
import glob
import json
import os
import time

import torch
import yaml

from helpers import REPO, digits_batches, run_cli, write_catalog
from llip.data import tokenizer_for
from llip.data.synthetic.digits import CLASSNAMES, EVAL_TEMPLATES
from llip.evaluation.results import checkpoint_id
from llip.evaluation.zeroshot import class_embeddings, classify
from llip.io import read_json, read_text
from llip.loading import load_model, save_export
from llip.models import build_model
from llip.run_configs import resolve
from llip.run_dir import checkpoint_dir, metrics_path


def _ckpt_id(run_dir, step):
    return checkpoint_id(checkpoint_dir(run_dir, step), step)


def _sweep(tmp_path, checkpoints, catalog, datasets=("digits", "digits_retrieval"), **extra):
    cfg = {"checkpoints": checkpoints, "catalogs": [catalog], "datasets": list(datasets),
           "batch_size": 128, "workers": 0, "output_dir": str(tmp_path / "out"), **extra}
    path = tmp_path / f"sweep_{len(list(tmp_path.glob('sweep_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _result_file(out, label, dataset):
    files = glob.glob(str(out / "results" / f"{label}__{dataset}__*.json"))
    assert len(files) == 1, files
    return read_json(files[0])


def test_sweep_over_every_checkpoint_writes_tables_and_plot_and_resumes(trained_clip, digits,
                                                                       tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", digits)
    fname = _sweep(tmp_path, [{"path": trained_clip, "all": True}], catalog, eval_tau=[1, 5])
    first = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "out"
    results = sorted(os.listdir(out / "results"))
    assert len(results) == 4  # 2 checkpoints x 2 datasets
    import pandas as pd
    wide = pd.read_csv(out / "results_wide.csv")
    # CLIP ignores eval_tau: one row per checkpoint, the tau column empty
    assert list(wide["step"]) == [55, 110] and wide["eval_tau"].isna().all()
    assert set(wide.columns) >= {"digits", "average"}
    row = _result_file(out, "clip_demo__step00000110", "digits")
    assert row["metric"] == "acc1" and row["n"] == 360 and len(row["by_tau"]) == 1
    assert row["by_tau"][0]["eval_tau"] is None
    assert row["by_tau"][0]["value"] == wide["digits"].iloc[1]
    assert row["checkpoint"] == os.path.abspath(checkpoint_dir(trained_clip, 110))
    assert (out / "results_wide.md").read_text().startswith("| model")
    assert (out / "results_vs_step.png").stat().st_size > 1000
    assert "| clip_demo" in first.stdout

    # The evals logged during training scored the same weights on the same images.
    rows = [json.loads(line) for line in
            read_text(metrics_path(trained_clip)).splitlines()]
    during = {r["step"]: r["eval/digits/acc1"] for r in rows if "eval/digits/acc1" in r}
    assert list(during) == [55, 110]
    collapse = [r for r in rows if "eval/digits/acc1" in r]  # CLIP: targets only, no queries
    assert all(-1 <= r["eval/digits/text_collapse"] < 1 and "eval/digits/text_collapse_query"
               not in r for r in collapse)
    assert during[110] == row["by_tau"][0]["value"]
    assert 0.1 < during[55] < during[110]  # above chance, and rising

    again = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert again.returncode == 0 and "4 already done, 0 to run" in again.stdout

    # An edited catalog entry (the class names in another order) is another eval: its results
    # are computed again, not served stale; the untouched dataset's are kept.
    entry = json.loads(read_text(catalog))["digits"]
    write_catalog(catalog, digits, {"digits": {**entry,
                                               "classnames": entry["classnames"][::-1]}})
    edited = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert edited.returncode == 0 and "2 already done, 2 to run" in edited.stdout, edited.stdout
    redone = _result_file(out, "clip_demo__step00000110", "digits")
    assert redone["by_tau"][0]["value"] < 0.5 < row["by_tau"][0]["value"]  # wrong names now
    assert redone["version"] == 2 and redone["identity"]["catalog_entry"] != \
        row["identity"]["catalog_entry"]
    assert redone["identity"]["checkpoint"] == row["identity"]["checkpoint"]


def _export(path, config, seed, step=3):
    """A model of `config` with random weights (seeded), exported like llip-export does."""
    cfg = resolve(config)
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return save_export(str(path), build_model(cfg), cfg, step)


def test_one_sweep_with_two_eval_taus_encodes_each_image_once(digits, tmp_path, monkeypatch):
    from evals import checkpoints
    from evals.main_mc import main
    llip_pt = _export(tmp_path / "llip.pt", "llip_demo", 0)
    clip_pt = _export(tmp_path / "clip.pt", "clip_demo", 0)
    encoded = {}  # checkpoint -> images through encode_image

    def observed_load(path, device):  # the real loader; the model's encode_image is counted
        model, cfg, step = load_model(path, device)
        encode = model.encode_image

        def counting(images):
            encoded[path] = encoded.get(path, 0) + len(images)
            return encode(images)
        model.encode_image = counting
        return model, cfg, step

    monkeypatch.setitem(checkpoints.LOADERS, "llip", observed_load)
    catalog = write_catalog(tmp_path / "catalog.json", digits)
    fname = _sweep(tmp_path, [llip_pt, clip_pt], catalog, datasets=("digits",), eval_tau=[1, 5])
    assert main(["--fname", fname]) == 0
    assert encoded == {os.path.abspath(llip_pt): 360, os.path.abspath(clip_pt): 360}

    out = tmp_path / "out"
    llip = _result_file(out, "llip_demo__step00000003", "digits")
    assert [e["eval_tau"] for e in llip["by_tau"]] == [1.0, 5.0]
    assert llip["images_encoded"] == 360
    model, cfg, _ = load_model(llip_pt)
    class_emb = class_embeddings(model, tokenizer_for(cfg), CLASSNAMES, EVAL_TEMPLATES)
    images, _ = next(iter(digits_batches(digits, cfg)))
    with torch.no_grad():  # the two taus really score differently
        image_emb = model.encode_image(images)
        assert not torch.allclose(model.logits(image_emb, class_emb, 1.0),
                                  model.logits(image_emb, class_emb, 5.0))
    for entry in llip["by_tau"]:  # each tau's numbers are those of a pass at that tau alone
        alone = classify(model, digits_batches(digits, cfg), class_emb, tau=entry["eval_tau"])
        assert entry["metrics"] == alone
    clip = _result_file(out, "clip_demo__step00000003", "digits")
    assert [e["eval_tau"] for e in clip["by_tau"]] == [None]
    import pandas as pd
    long = pd.read_csv(out / "results_long.csv", keep_default_na=False)
    main_rows = long[long["main"]]
    assert sorted(main_rows["eval_tau"].astype(str)) == ["", "1", "5"]

    # A later sweep asking for one more tau computes only that one, from one more pass.
    encoded.clear()
    fname = _sweep(tmp_path, [llip_pt, clip_pt], catalog, datasets=("digits",),
                   eval_tau=[1, 3, 5])
    assert main(["--fname", fname]) == 0
    assert encoded == {os.path.abspath(llip_pt): 360}
    again = _result_file(out, "llip_demo__step00000003", "digits")
    assert [e["eval_tau"] for e in again["by_tau"]] == [1.0, 3.0, 5.0]
    assert again["by_tau"][0] == llip["by_tau"][0]


def test_same_named_checkpoints_and_exports_never_share_a_result(trained_clip, digits,
                                                                tmp_path):
    """Two run dirs with the same name and step in different folders, and two exports with the
    same file name: four results, each with its own model's numbers."""
    import shutil

    from llip.training import checkpoint
    from llip.training.optim import build_optimizer
    trained = tmp_path / "a" / "clip_demo"
    shutil.copytree(trained_clip, trained, ignore=shutil.ignore_patterns("step_00000055"))
    cfg = dataclasses.replace(resolve("clip_demo"), logs=str(tmp_path / "b"))
    torch.manual_seed(1)
    untrained = build_model(cfg)  # same name, same step, random weights
    checkpoint.save(str(tmp_path / "b" / "clip_demo"), cfg, 110, untrained,
                    build_optimizer(untrained, cfg), {"step": 110}, True)
    save_export(str(tmp_path / "a" / "model.pt"), load_model(str(trained))[0], cfg, 110)
    save_export(str(tmp_path / "b" / "model.pt"), untrained, cfg, 110)
    catalog = write_catalog(tmp_path / "catalog.json", digits)
    fname = _sweep(tmp_path, [str(tmp_path / "*" / "clip_demo"), str(tmp_path / "*" / "*.pt")],
                   catalog, datasets=("digits",))
    result = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    files = glob.glob(str(tmp_path / "out" / "results" / "*.json"))
    results = {os.path.relpath(r["checkpoint"], tmp_path): r["by_tau"][0]["value"]
               for r in map(read_json, files)}
    assert len(files) == 4 and set(results) == {
        "a/clip_demo/checkpoints/step_00000110", "b/clip_demo/checkpoints/step_00000110",
        "a/model.pt", "b/model.pt"}
    assert results["a/model.pt"] == results["a/clip_demo/checkpoints/step_00000110"] > 0.5
    assert results["b/model.pt"] == results["b/clip_demo/checkpoints/step_00000110"] < 0.3
    import pandas as pd
    wide = pd.read_csv(tmp_path / "out" / "results_wide.csv")
    assert sorted(wide["model"]) == ["clip_demo (a/clip_demo)", "clip_demo (a/model.pt)",
                                     "clip_demo (b/clip_demo)", "clip_demo (b/model.pt)"]


def test_each_failing_task_is_one_line_and_the_sweep_goes_on(trained_clip, digits, tmp_path):
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "present.png")
    (tmp_path / "list.json").write_text(json.dumps(
        [{"image": "present.png", "label": 0}, {"image": "gone.png", "label": 1}]))
    digits_entry = read_json(os.path.join(REPO, "config_evals", "demo_catalog.json"))["digits"]
    changes = {
        "missing_image": {"task": "zeroshot_classification", "format": "json", "metric": "acc1",
                          "path": str(tmp_path / "list.json"), "image_root": str(tmp_path),
                          "classnames": ["a", "b"], "templates": ["{c}"]},
        "bad_template": {**digits_entry, "path": digits["test"],
                         "templates": ["a digit {c}", "a {cls} digit {c}"]},
        "few_names": {**digits_entry, "path": digits["test"], "classes": 5,
                      "classnames": CLASSNAMES[:5]},
    }
    catalog = write_catalog(tmp_path / "catalog.json", digits, changes)
    foreign = tmp_path / "foreign.pt"
    torch.save(build_model(resolve("clip_demo")).state_dict(), foreign)  # not an llip export
    fname = _sweep(tmp_path, [trained_clip, str(foreign)], catalog,
                   datasets=("digits", "missing_image", "bad_template", "few_names"))
    good = tmp_path / "out" / "results" / \
        f"clip_demo__step00000110__digits__{_ckpt_id(trained_clip, 110)}.json"
    good.parent.mkdir(parents=True)
    good.write_text('{"id": "x", "model": "clip_demo", "by_t')  # a torn write: not done
    result = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    summary = result.stdout.split("4 failed:")[1].strip().splitlines()
    expected = [
        (str(foreign), "is neither an llip export"),
        ("clip_demo__step00000110__missing_image__", "1 of 2 images are missing"),
        # a template is parsed with its catalog entry, before any work: that dataset fails alone
        ("bad_template: catalog ", "template 'a {cls} digit {c}' has the placeholder {cls}"),
        ("clip_demo__step00000110__few_names__", "is outside the 5 class names"),
    ]
    assert len(summary) == len(expected), summary
    for what, why in expected:
        assert any(line.startswith(f"FAILED {what}") and why in line for line in summary), \
            (what, why, summary)
    assert "3 eval tasks, 0 already done, 3 to run" in result.stdout
    assert read_json(good)["by_tau"][0]["value"] > 0.5  # redone, and kept


def test_failures_and_bad_input_never_lose_results(trained_clip, digits, tmp_path):
    broken = {"task": "zeroshot_classification", "format": "wds", "metric": "acc1",
              "path": str(tmp_path / "missing-{0..1}.tar"), "classnames": ["a", "b"],
              "templates": ["{c}"]}
    catalog = write_catalog(tmp_path / "catalog.json", digits, {"broken": broken})
    fname = _sweep(tmp_path, [trained_clip], catalog, datasets=("digits", "broken"))
    result = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert result.returncode == 1  # one task failed, named in one line; the other was kept
    assert "FAILED clip_demo__step00000110__broken__" in result.stdout
    assert "dataset 'broken':" in result.stdout and "does not exist" in result.stdout
    kept = tmp_path / "out" / "results" / \
        f"clip_demo__step00000110__digits__{_ckpt_id(trained_clip, 110)}.json"
    assert kept.exists()

    # A broken catalog entry fails its own dataset (one line naming dataset, field and fix),
    # the other datasets asked for still run.
    broken_entries = {
        "no_metric": ({"task": "zeroshot_classification", "format": "wds", "path": "x"},
                      "missing field 'metric'"),
        "bad_task": ({"task": "classify", "format": "wds", "path": "x", "metric": "acc1"},
                     "task 'classify' must be one of"),
        "no_file": ({**broken, "templates": "no_such_file.txt"}, "templates file")}
    result = run_cli("-m", "evals.main_mc", "--fname", _sweep(
        tmp_path, [trained_clip], write_catalog(tmp_path / "c2.json", digits, {
            name: entry for name, (entry, _) in broken_entries.items()}),
        datasets=("digits", *broken_entries)))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    failed = sorted({line for line in result.stdout.splitlines() if line.startswith("FAILED")})
    assert len(failed) == 3, result.stdout
    for line, (name, (_, needle)) in zip(failed, sorted(broken_entries.items())):
        assert line.startswith(f"FAILED {name}: catalog ") and \
            f"dataset '{name}': {needle}" in line, line
    assert "1 eval tasks, 1 already done" in result.stdout  # digits: done before, kept

    bad_yaml = _sweep(tmp_path, [trained_clip], catalog, datasets=("digitz",))
    cases = [
        (bad_yaml, "unknown dataset 'digitz'; closest: digits"),
        (_sweep(tmp_path, [str(tmp_path / "nope")], catalog), "matches nothing"),
        (_sweep(tmp_path, [trained_clip], catalog, batch_sise=3), "unknown key 'batch_sise'; "
                                                                   "closest: batch_size"),
        (_sweep(tmp_path, [trained_clip], catalog, batch_size="big"), "'batch_size' must be an"),
        (_sweep(tmp_path, [trained_clip], catalog, eval_tau=[0]), "'eval_tau' must be a number"),
        (str(tmp_path / "absent.yaml"), "does not exist"),
    ]
    for fname, needle in cases:
        result = run_cli("-m", "evals.main_mc", "--fname", fname)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], \
            (needle, result.stderr)
    assert kept.exists()  # no bad input removed a finished result


def test_a_stuck_task_is_one_failed_line_and_the_sweep_goes_on(trained_clip, digits, tmp_path):
    """A FIFO named like a shard (an open that never returns, in a data worker): that task
    fails after task_timeout_min with one line; the other runs."""
    fifo = tmp_path / "stuck.tar"
    os.mkfifo(fifo)
    entry = json.loads(read_text(write_catalog(tmp_path / "c0.json", digits)))["digits"]
    catalog = write_catalog(tmp_path / "catalog.json", digits,
                            {"stuck": {**entry, "path": str(fifo)}})
    fname = _sweep(tmp_path, [trained_clip], catalog, datasets=("stuck", "digits"),
                   workers=2, task_timeout_min=0.1)
    start = time.time()
    result = run_cli("-m", "evals.main_mc", "--fname", fname, "--no-aggregate", timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    failed = {line for line in result.stdout.splitlines() if line.startswith("FAILED")}
    assert len(failed) == 1 and "timed out after 0.1 min (task_timeout_min)" in failed.pop()
    assert any("__digits__" in line and "acc1" in line for line in result.stdout.splitlines())
    assert _result_file(tmp_path / "out", "clip_demo__step00000110", "digits")
    assert time.time() - start < 120
