"""Zero-shot evals: agreement with open_clip's own classifier utilities, the Llip/CLIP
equivalence, sweeps (one image pass for all eval taus, results that cannot collide, failing tasks
that stay one line), tables, evals logged during training, readers with workers, and bad input."""
import dataclasses
import glob
import json
import os

import pytest
import torch
import yaml

from conftest import REPO, run_cli, write_catalog
from evals.datasets import classification_batches
from evals.probe import image_features
from evals.results import checkpoint_id
from evals.zeroshot import class_embeddings, classify
from llip import run_dir as rd
from llip.data import tokenizer_for, transform_for
from llip.data.digits import CLASSNAMES, EVAL_TEMPLATES
from llip.io import read_json, read_text
from llip.models import DualEncoder, LlipModel, build_model
from llip.run_configs import resolve
from llip.run_dir import load_model

DIGITS = {"name": "digits", "format": "wds", "label_key": "cls", "classnames": CLASSNAMES}


def _digits_batches(digits, cfg):
    return classification_batches({**DIGITS, "path": digits["test"]},
                                  transform_for(cfg, False), 128, 0)[0]


def test_clip_top1_equals_open_clip_zero_shot_classifier(trained_clip, digits):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    model, cfg, _ = load_model(trained_clip)
    tokenizer = tokenizer_for(cfg)
    ours = classify(model, _digits_batches(digits, cfg),
                    class_embeddings(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES))

    class OpenClipView(torch.nn.Module):  # the interface open_clip's utility expects
        def encode_text(self, tokens, normalize=False):
            return model.encode_text(tokens)

    weights = build_zero_shot_classifier(OpenClipView(), tokenizer, CLASSNAMES,
                                         [lambda c, t=t: t.format(c=c) for t in EVAL_TEMPLATES],
                                         num_classes_per_batch=4, device="cpu", use_tqdm=False)
    correct = n = 0
    with torch.no_grad():
        for images, labels in _digits_batches(digits, cfg):
            pred = (model.encode_image(images) @ weights).argmax(dim=1)
            correct += (pred == labels).sum().item()
            n += len(labels)
    assert n == 360 and ours["n"] == 360
    assert ours["acc1"] == correct / n
    assert ours["acc1"] > 0.5  # trained on real data: far above the 0.10 chance level


class RepeatTokens(torch.nn.Module):
    """A 1-prefix ViT whose output token is repeated K times: identical mixture tokens."""

    def __init__(self, visual, k):
        super().__init__()
        self.visual, self.k = visual, k

    def forward(self, images):
        return self.visual(images).expand(-1, self.k, -1)


def test_llip_with_identical_mixture_tokens_scores_like_clip(digits):
    llip_cfg = resolve("llip_demo")
    torch.manual_seed(0)
    llip = LlipModel(llip_cfg).eval()
    clip = DualEncoder(dataclasses.replace(llip_cfg, loss="siglip")).eval()
    llip.visual = RepeatTokens(clip.visual, llip_cfg.mixture_tokens)
    llip.text = clip.text
    head = llip.head
    with torch.no_grad():  # identical per-token projections: uniform attention, x = W_o W_v z
        head.key_proj.copy_(head.key_proj[:1].expand_as(head.key_proj))
        head.value_proj.copy_(head.value_proj[:1].expand_as(head.value_proj))
        clip.image_proj.copy_(head.value_proj[0] @ head.out_proj.weight.T)
        clip.text_proj.copy_(head.target_proj.weight.T)
        clip.logit_scale.copy_(head.logit_scale)
        clip.logit_bias.copy_(head.logit_bias)
    tokenizer = tokenizer_for(llip_cfg)
    images, _ = next(iter(_digits_batches(digits, llip_cfg)))
    tokens = tokenizer([t.format(c=c) for c in CLASSNAMES for t in EVAL_TEMPLATES])
    with torch.no_grad():
        torch.testing.assert_close(llip.logits(*llip(images, tokens)),
                                   clip.logits(*clip(images, tokens)), atol=1e-5, rtol=1e-5)
    # the probes' Llip feature (uniform mixture W_o mean_k v_k) is then CLIP's image embedding
    torch.testing.assert_close(image_features(llip, images), image_features(clip, images),
                               atol=1e-5, rtol=1e-5)
    results = [classify(m, _digits_batches(digits, llip_cfg),
                        class_embeddings(m, tokenizer, CLASSNAMES, EVAL_TEMPLATES))
               for m in (llip, clip)]
    assert results[0] == results[1]


def _ckpt_id(run_dir, step):
    return checkpoint_id(rd.checkpoint_dir(run_dir, step), step)


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
    assert row["checkpoint"] == os.path.abspath(rd.checkpoint_dir(trained_clip, 110))
    assert (out / "results_wide.md").read_text().startswith("| model")
    assert (out / "results_vs_step.png").stat().st_size > 1000
    assert "| clip_demo" in first.stdout

    # The evals logged during training scored the same weights on the same images.
    rows = [json.loads(line) for line in
            read_text(rd.metrics_path(trained_clip)).splitlines()]
    during = {r["step"]: r["eval/digits/acc1"] for r in rows if "eval/digits/acc1" in r}
    assert list(during) == [55, 110]
    assert during[110] == row["by_tau"][0]["value"]
    assert 0.1 < during[55] < during[110]  # above chance, and rising

    again = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert again.returncode == 0 and "4 already done, 0 to run" in again.stdout


def _export(path, config, seed, step=3):
    """A model of `config` with random weights (seeded), exported like llip-export does."""
    cfg = resolve(config)
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return rd.save_export(str(path), build_model(cfg), cfg, step)


def test_one_sweep_with_two_eval_taus_encodes_each_image_once(digits, tmp_path, monkeypatch):
    from evals import checkpoints
    from evals.main_mc import main
    llip_pt = _export(tmp_path / "llip.pt", "llip_demo", 0)
    clip_pt = _export(tmp_path / "clip.pt", "clip_demo", 0)
    encoded = {}  # checkpoint -> images through encode_image

    def observed_load(path, device):  # the real loader; the model's encode_image is counted
        model, cfg, step = rd.load_model(path, device)
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
    model, cfg, _ = rd.load_model(llip_pt)
    class_emb = class_embeddings(model, tokenizer_for(cfg), CLASSNAMES, EVAL_TEMPLATES)
    images, _ = next(iter(_digits_batches(digits, cfg)))
    with torch.no_grad():  # the two taus really score differently
        image_emb = model.encode_image(images)
        assert not torch.allclose(model.logits(image_emb, class_emb, 1.0),
                                  model.logits(image_emb, class_emb, 5.0))
    for entry in llip["by_tau"]:  # each tau's numbers are those of a pass at that tau alone
        alone = classify(model, _digits_batches(digits, cfg), class_emb, tau=entry["eval_tau"])
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
    rd.save_export(str(tmp_path / "a" / "model.pt"), load_model(str(trained))[0], cfg, 110)
    rd.save_export(str(tmp_path / "b" / "model.pt"), untrained, cfg, 110)
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
        ("clip_demo__step00000110__bad_template__", "template 'a {cls} digit {c}'"),
        ("clip_demo__step00000110__few_names__", "is outside the 5 class names"),
    ]
    assert len(summary) == len(expected)
    for line, (what, why) in zip(summary, expected):
        assert line.startswith(f"FAILED {what}") and why in line, (line, what, why)
    assert "4 eval tasks, 0 already done, 4 to run" in result.stdout
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

    bad_yaml = _sweep(tmp_path, [trained_clip], catalog, datasets=("digitz",))
    cases = [
        (bad_yaml, "unknown dataset 'digitz'; closest: digits"),
        (_sweep(tmp_path, [str(tmp_path / "nope")], catalog), "matches nothing"),
        (_sweep(tmp_path, [trained_clip], catalog, batch_sise=3), "unknown key 'batch_sise'; "
                                                                   "closest: batch_size"),
        (_sweep(tmp_path, [trained_clip], catalog, batch_size="big"), "'batch_size' must be an"),
        (_sweep(tmp_path, [trained_clip], catalog, eval_tau=[0]), "'eval_tau' must be a number"),
        (_sweep(tmp_path, [trained_clip], write_catalog(
            tmp_path / "c2.json", digits, {"digits": {"task": "zeroshot_classification",
                                                    "format": "wds", "path": "x"}})),
         "dataset 'digits': missing field 'metric'"),
        (_sweep(tmp_path, [trained_clip], write_catalog(
            tmp_path / "c3.json", digits, {"digits": {"task": "classify", "format": "wds",
                                                    "path": "x", "metric": "acc1"}})),
         "task 'classify' must be one of"),
        (_sweep(tmp_path, [trained_clip], write_catalog(
            tmp_path / "c4.json", digits, {"digits": {**broken, "templates": "no_such_file.txt"}})),
         "templates file"),
        (str(tmp_path / "absent.yaml"), "does not exist"),
    ]
    for fname, needle in cases:
        result = run_cli("-m", "evals.main_mc", "--fname", fname)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], \
            (needle, result.stderr)
    assert kept.exists()  # no bad input removed a finished result


def _gray_level(image):
    return torch.tensor(image.getpixel((0, 0))[0])


def _numbered_shards(tmp_path, sizes):
    """Sample i: an image of gray level 5 i, captions 'caption i' and 'alt i', class i % 3."""
    import io

    import webdataset as wds
    from PIL import Image
    i = 0
    for shard, n in enumerate(sizes):
        with wds.TarWriter(str(tmp_path / f"n-{shard:06d}.tar")) as sink:
            for _ in range(n):
                buf = io.BytesIO()
                Image.new("RGB", (4, 4), (5 * i,) * 3).save(buf, format="PNG")
                sink.write({"__key__": f"s{i:04d}", "png": buf.getvalue(),
                            "txt": f"caption {i}\nalt {i}", "cls": str(i % 3)})
                i += 1
    return str(tmp_path / f"n-{{000000..{len(sizes) - 1:06d}}}.tar"), i


def test_wds_readers_with_workers_and_ranks_keep_each_sample_identity(tmp_path):
    """Whole shards per (rank, worker) when there are enough, every n-th sample otherwise:
    either way each sample is read once and keeps its label and its retrieval index."""
    from evals.datasets import retrieval_data
    path, n = _numbered_shards(tmp_path, [5, 4, 3])
    entry = {"name": "numbers", "format": "wds", "path": path, "classnames": ["a", "b", "c"],
             "caption_key": "txt"}
    for workers, world in ((0, 1), (2, 1), (1, 2), (2, 2)):  # whole shards, then samples
        seen_labels, seen_index = [], []
        for rank in range(world):
            batches, names = classification_batches(entry, _gray_level, 2, workers, rank, world)
            for images, labels in batches:
                assert (images // 5 % 3).tolist() == labels.tolist()
                seen_labels += (images // 5).tolist()
            captions, owner, batches = retrieval_data(entry, _gray_level, 2, workers, rank,
                                                      world)
            assert len(captions) == 2 * n and owner == [i // 2 for i in range(2 * n)]
            assert captions[:4] == ["caption 0", "alt 0", "caption 1", "alt 1"]
            for images, index in batches:
                assert (images // 5).tolist() == index.tolist(), (workers, world)
                seen_index += index.tolist()
        assert sorted(seen_labels) == sorted(seen_index) == list(range(n)), (workers, world)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_scoring_runs_in_bf16_and_scores_like_fp32_on_cpu(digits):
    from evals.zeroshot import inference_precision
    cfg = resolve("llip_demo")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tokenizer = tokenizer_for(cfg)
    images, _ = next(iter(_digits_batches(digits, cfg)))
    with torch.no_grad():
        cpu = model.logits(model.encode_image(images),
                           class_embeddings(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES))
        model.cuda()
        class_emb = class_embeddings(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES, "cuda")
        with inference_precision("cuda"):
            image_emb = model.encode_image(images.cuda())
            gpu = model.logits(image_emb, class_emb).float().cpu()
    assert image_emb.dtype == torch.bfloat16
    cosine_error = (gpu - cpu).abs().max().item() / model.head.logit_scale.exp().item()
    assert cosine_error < 0.05, cosine_error


def test_a_reader_error_in_a_worker_is_one_line(tmp_path):
    import webdataset as wds

    from evals.main_mc import one_line
    with wds.TarWriter(str(tmp_path / "t-000000.tar")) as sink:
        sink.write({"__key__": "no_image", "txt": "a caption", "cls": "0"})
    entry = {"name": "bad", "format": "wds", "path": str(tmp_path / "t-000000.tar"),
             "classnames": ["a"]}
    batches, _ = classification_batches(entry, _gray_level, 2, 1)
    with pytest.raises(Exception) as info:
        list(batches)
    assert one_line(info.value) == f"dataset 'bad': sample no_image of {entry['path']} has no " \
                                   "image member (jpg;jpeg;png;webp)"
