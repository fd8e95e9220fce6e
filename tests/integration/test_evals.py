"""Zero-shot evals: agreement with open_clip's own classifier utilities, the Llip/CLIP
equivalence, retrieval metrics on a hand-made case, sweeps, tables, and bad input."""
import dataclasses
import os

import torch
import yaml

from conftest import run_cli, write_catalog
from evals.datasets import classification_batches
from evals.probe import image_features
from evals.zeroshot import class_embeddings, classify
from llip.data import tokenizer_for, transform_for
from llip.data.digits import CLASSNAMES, EVAL_TEMPLATES
from llip.io import read_json
from llip.models import DualEncoder, LlipModel
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


def _sweep(tmp_path, checkpoints, catalog, datasets=("digits", "digits_retrieval"), **extra):
    cfg = {"checkpoints": checkpoints, "catalogs": [catalog], "datasets": list(datasets),
           "batch_size": 128, "workers": 0, "output_dir": str(tmp_path / "out"), **extra}
    path = tmp_path / f"sweep_{len(list(tmp_path.glob('sweep_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_sweep_over_every_checkpoint_writes_tables_and_plot_and_resumes(trained_clip, digits,
                                                                       tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", digits)
    fname = _sweep(tmp_path, [{"path": trained_clip, "all": True}], catalog)
    first = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "out"
    results = sorted(os.listdir(out / "results"))
    assert len(results) == 4  # 2 checkpoints x 2 datasets
    import pandas as pd
    wide = pd.read_csv(out / "results_wide.csv")
    assert list(wide["step"]) == [55, 110] and set(wide.columns) >= {"digits", "average"}
    row = read_json(out / "results" / "clip_demo__step00000110__digits.json")
    assert row["metric"] == "acc1" and row["n"] == 360 and row["value"] == wide["digits"].iloc[1]
    assert (out / "results_wide.md").read_text().startswith("| model")
    assert (out / "results_vs_step.png").stat().st_size > 1000
    assert "| clip_demo" in first.stdout

    again = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert again.returncode == 0 and "4 already done, 0 to run" in again.stdout


def test_failures_and_bad_input_never_lose_results(trained_clip, digits, tmp_path):
    broken = {"task": "zeroshot_classification", "format": "wds", "metric": "acc1",
              "path": str(tmp_path / "missing-{0..1}.tar"), "classnames": ["a", "b"],
              "templates": ["{c}"]}
    catalog = write_catalog(tmp_path / "catalog.json", digits, {"broken": broken})
    fname = _sweep(tmp_path, [trained_clip], catalog, datasets=("digits", "broken"))
    result = run_cli("-m", "evals.main_mc", "--fname", fname)
    assert result.returncode == 1  # one task failed, named in one line; the other was kept
    assert "broken: FAILED: dataset 'broken':" in result.stdout
    assert "does not exist" in result.stdout
    kept = tmp_path / "out" / "results" / "clip_demo__step00000110__digits.json"
    assert kept.exists()

    bad_yaml = _sweep(tmp_path, [trained_clip], catalog, datasets=("digitz",))
    cases = [
        (bad_yaml, "unknown dataset 'digitz'; closest: digits"),
        (_sweep(tmp_path, [str(tmp_path / "nope")], catalog), "matches nothing"),
        (_sweep(tmp_path, [trained_clip], catalog, batch_sise=3), "unknown key 'batch_sise'; "
                                                                   "closest: batch_size"),
        (_sweep(tmp_path, [trained_clip], catalog, batch_size="big"), "'batch_size' must be an"),
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
