"""The binding scenes: generator, its shards through the training stream, the per-image evals
(multiple choice, presence mAP), the zero-query control and the fair-settings options."""
import dataclasses
import math
import random

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from llip.config import from_dict, to_dict
from llip.data.stream import SkipCounter, decode_samples, expand_sources
from llip.data.synthetic import scenes
from llip.errors import ConfigError
from llip.evaluation.attention import attention_weights, summarise
from llip.evaluation.multilabel import average_precision, mean_average_precision, multiple_choice
from llip.io import read_json
from llip.models import build_model
from llip.run_configs import get_config, resolve
from llip.training.optim import param_groups


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    return scenes.build(str(out), n_train=60, n_validation=20, n_test=20, seed=3)


def _samples(spec):
    urls = [u for s in expand_sources(spec) for u in s]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pilrgb"))


def _objects(sample):
    return [(o["shape"], o["colour"], o["quadrant"]) for o in sample["scene.json"]["objects"]]


def test_scenes_have_three_objects_bound_without_replacement_in_distinct_quadrants(built):
    for split in ("train", "validation", "test"):
        for sample in _samples(built[split]):
            objects = _objects(sample)
            shapes, colours, quadrants = zip(*objects)
            assert len(objects) == 3
            assert len(set(shapes)) == len(set(colours)) == len(set(quadrants)) == 3
            image = np.asarray(sample["png"], dtype=np.int32)
            for shape, colour, quadrant in objects:  # the object is drawn in its quadrant
                y = slice(0, 16) if "top" in quadrant else slice(16, 32)
                x = slice(0, 16) if "left" in quadrant else slice(16, 32)
                near = np.abs(image[y, x] - np.array(scenes.COLORS[colour])).max(-1) <= 20
                assert near.sum() >= 15, (shape, colour, quadrant)
            empty = set(scenes.QUADRANTS) - set(quadrants)
            for quadrant in empty:
                y = slice(0, 16) if "top" in quadrant else slice(16, 32)
                x = slice(0, 16) if "left" in quadrant else slice(16, 32)
                assert image[y, x].max() == 0


def test_captions_and_questions_name_the_objects_present(built):
    for sample in _samples(built["test"]):
        objects = _objects(sample)
        named = {f"a {c} {s}" for s, c, _ in objects}
        caps = sample["json"]["captions"]
        assert len(caps) == 3 + 6 and len(set(caps)) == len(caps)
        for caption in caps:
            parts = caption.split(" and ")
            assert len(parts) in (1, 2) and set(parts) <= named
        for q, (shape, colour, _) in zip(sample["bind_colour.json"], objects):
            assert q["choices"][q["answer"]] == f"a {colour} {shape}"
            assert all(c.endswith(f" {shape}") for c in q["choices"]) and len(q["choices"]) == 6
        for q, (shape, colour, _) in zip(sample["bind_shape.json"], objects):
            assert q["choices"][q["answer"]] == f"a {colour} {shape}"
            assert all(c.startswith(f"a {colour} ") for c in q["choices"])
        assert sorted(scenes.CLASSNAMES[i] for i in sample["presence.json"]) == \
            sorted(f"{c} {s}" for s, c, _ in objects)


def test_splits_are_disjoint_in_their_object_sets(built):
    sets = {split: {frozenset((c, s) for s, c, _ in _objects(x)) for x in _samples(built[split])}
            for split in ("train", "validation", "test")}
    assert not sets["train"] & sets["test"] and not sets["train"] & sets["validation"]
    assert not sets["validation"] & sets["test"]
    assert "bind_colour.json" not in _samples(built["train"])[0]  # training shards stay small


def test_training_stream_draws_a_caption_of_the_sample_at_each_use(built):
    urls = [u for s in expand_sources(built["train"]) for u in s]
    pixels = lambda image: np.asarray(image).tobytes()  # noqa: E731 - the sample's identity
    truth = {pixels(x["png"]): x["json"]["captions"] for x in _samples(built["train"])}
    drawn, rng = {}, random.Random(0)
    for _ in range(3):  # three epochs over the same samples, one stream RNG
        for key, caption, _ in decode_samples(({"url": u} for u in urls), pixels, 0,
                                           rng, SkipCounter("shard"),
                                           SkipCounter("sample")):
            assert caption in truth[key]
            drawn.setdefault(key, set()).add(caption)
    assert len(drawn) == 60 and sum(len(c) > 1 for c in drawn.values()) > 40


def test_average_precision_matches_sklearn_with_ties():
    from sklearn.metrics import average_precision_score
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.4], [0.8, 0.4], [0.3, 0.7], [0.3, 0.2],
                           [0.1, 0.4], [0.05, 0.9]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 0], [1, 1], [0, 0], [1, 1], [0, 0]]).bool()
    for c in range(2):
        expected = average_precision_score(targets[:, c].numpy(), scores[:, c].numpy())
        assert average_precision(scores[:, c], targets[:, c]) == pytest.approx(expected,
                                                                                abs=1e-6)
    expected = average_precision_score(targets.numpy(), scores.numpy(), average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-6)
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 0, 1]).bool()) \
        == pytest.approx((1 + 2 / 3) / 2)


class CaptionTableModel:
    """Scores read from a table: rows are images, columns are caption ids."""

    def __init__(self, table, vocabulary):
        self.table, self.vocabulary = torch.tensor(table, dtype=torch.float32), vocabulary

    def tokenizer(self, texts):
        return torch.tensor([self.vocabulary.index(t) for t in texts])

    def encode_image(self, rows):
        return rows

    def encode_text(self, ids):
        return ids

    def logits(self, rows, ids, tau=None):
        return self.table[rows][:, ids.long()]


def test_multiple_choice_answers_with_the_best_scored_choice_of_each_question():
    vocab = ["a red circle", "a blue circle", "a red square", "a blue square"]
    model = CaptionTableModel([[0.9, 0.1, 0.2, 0.8], [0.1, 0.3, 0.7, 0.2]], vocab)
    questions = [
        [{"choices": ["a red circle", "a blue circle"], "answer": 0},  # right (0.9 > 0.1)
         {"choices": ["a red square", "a blue square"], "answer": 0}],  # wrong (0.2 < 0.8)
        [{"choices": ["a blue circle", "a red circle", "a red square"], "answer": 2}],  # right
    ]
    batches = [(torch.tensor([0]), questions[:1]), (torch.tensor([1]), questions[1:])]
    r = multiple_choice(model, model.tokenizer, batches)
    assert r == {"acc1": pytest.approx(2 / 3), "n": 3, "n_images": 2}
    with pytest.raises(ValueError, match="choices"):
        multiple_choice(model, model.tokenizer, [(torch.tensor([0]), [{"answer": 0}])])


def test_zero_query_control_attends_uniformly_with_the_same_parameters():
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    tokens = torch.randint(1, 1000, (5, 16))
    tokens[:, -1] = 49407  # end-of-text
    llip, control = build_model(resolve("llip_tiny")), \
        build_model(resolve("llip_tiny", ["llip_query=zero"]))
    assert [n for n, _ in llip.named_parameters()] == [n for n, _ in control.named_parameters()]
    control.load_state_dict(llip.state_dict())
    uniform = attention_weights(control, images, control.encode_text(tokens))
    assert torch.allclose(uniform, torch.full_like(uniform, 1 / 4))
    assert summarise(uniform)["verdict"] == "uniform"
    learned = attention_weights(llip, images, llip.encode_text(tokens))
    assert not torch.allclose(learned, uniform, atol=1e-3)
    # uniform weights: the image embedding no longer depends on the caption
    logits = control.logits(*control(images, tokens))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    one_token = torch.zeros(2, 4, 1, 4)
    one_token[0, :, :, 0] = one_token[1, :, :, 0] = 1.0  # every prompt picks token 0
    assert summarise(one_token)["verdict"] == "collapsed"


def test_init_logit_bias_auto_is_minus_log_of_batch_minus_one():
    cfg = resolve("siglip_tiny", ["init_logit_bias=auto", "batch_size=128"])
    assert cfg.logit_bias_init == pytest.approx(-math.log(127))
    assert build_model(cfg).logit_bias.item() == pytest.approx(-math.log(127), abs=1e-6)
    llip = build_model(resolve("llip_tiny", ["init_logit_bias=-3.5"]))
    assert llip.logit_bias.item() == -3.5
    with pytest.raises(ConfigError, match="init_logit_bias='big' must be a number or 'auto'"):
        resolve("llip_tiny", ["init_logit_bias=big"])
    saved = {**to_dict(resolve("llip_tiny")), "init_logit_bias": -10.0}  # an older config.yaml
    assert from_dict(saved).logit_bias_init == -10.0


def test_paper_configs_follow_the_reference_recipe_and_ours_are_options():
    for name in ("llip_b16", "llip_G14", "clip_b16", "siglip_b16"):
        cfg = get_config(name)
        assert (cfg.grad_clip, cfg.decay_tokens, cfg.init) == (0.0, True, "reference"), name
        assert cfg.logit_bias_init == -10.0
        assert cfg.init_logit_scale == pytest.approx(math.log(1 / 0.07))
    tiny = resolve("llip_tiny")
    assert (tiny.grad_clip, tiny.decay_tokens, tiny.init) == (1.0, False, "ours")
    model = build_model(resolve("llip_tiny", ["decay_tokens=true"]))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, _ = param_groups(model, 0.2, decay_tokens=True)
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"visual.prefix_tokens", "visual.patch_pos", "text.positional_embedding"} <= decayed


def test_reference_init_of_the_head_and_vision_blocks():
    torch.manual_seed(0)
    wide = ["embed_dim=128", "vision_width=128"]
    ours, ref = build_model(resolve("llip_tiny", wide)), \
        build_model(resolve("llip_tiny", [*wide, "init=reference"]))
    for proj in ("query_proj", "target_proj", "out_proj"):
        fan_in = getattr(ref.head, proj).in_features
        assert getattr(ref.head, proj).weight.std().item() == pytest.approx(
            fan_in ** -0.5, rel=0.05)  # normal(0, fan_in^-1/2)
        assert getattr(ours.head, proj).weight.std().item() == pytest.approx(
            (3 * fan_in) ** -0.5, rel=0.05)  # nn.Linear's default: uniform(+-fan_in^-1/2)
    # vision blocks: PyTorch's default (xavier uniform in_proj, bounded) instead of CLIP's normal
    bound = math.sqrt(6 / (128 + 3 * 128))
    ref_in = ref.visual.transformer.resblocks[0].attn.in_proj_weight
    ours_in = ours.visual.transformer.resblocks[0].attn.in_proj_weight
    assert ref_in.abs().max().item() <= bound < ours_in.abs().max().item()
    # the text tower keeps CLIP's init in both (as the reference): normal(0, width^-1/2)
    for model in (ours, ref):
        assert model.text.transformer.resblocks[0].attn.in_proj_weight.std().item() == \
            pytest.approx(64 ** -0.5, rel=0.05)


def test_images_are_32px_pngs(built):
    sample = _samples(built["validation"])[0]
    assert isinstance(sample["png"], Image.Image) and sample["png"].size == (32, 32)


def test_text_collapse_is_the_mean_pairwise_cosine_of_targets_and_queries():
    from llip.evaluation.attention import COLLAPSED_COSINE, text_collapse
    e = torch.eye(3)
    r = text_collapse(e)  # CLIP/SigLIP: (N, D) unit embeddings, orthogonal
    assert r == {"target_cosine": pytest.approx(0.0), "query_cosine": None, "collapsed": False}
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # pairs: 1, 0, 0
    assert text_collapse(same)["target_cosine"] == pytest.approx(1 / 3)
    # Llip: (N, 2, D) = [query, target]; queries need not be unit vectors
    near = torch.nn.functional.normalize(torch.tensor([[1.0, 0.01], [1.0, -0.01]]), dim=-1)
    llip = torch.stack([torch.stack([3 * near[0], near[0]]), torch.stack([near[1], near[1]])])
    r = text_collapse(llip)
    assert r["target_cosine"] == pytest.approx(float(near[0] @ near[1]))
    assert r["query_cosine"] == pytest.approx(r["target_cosine"])  # scale-free
    assert r["target_cosine"] > COLLAPSED_COSINE and r["collapsed"]
    # distinct queries keep the attention route open: not collapsed
    llip[1, 0] = torch.tensor([0.0, 1.0])
    assert not text_collapse(llip)["collapsed"]
    # the zero-query control: zero queries count as identical
    llip[:, 0] = 0.0
    assert text_collapse(llip)["query_cosine"] == 1.0 and text_collapse(llip)["collapsed"]
    with pytest.raises(ValueError, match="at least 2"):
        text_collapse(e[:1])
    with pytest.raises(ValueError, match="expected"):
        text_collapse(torch.zeros(2, 3, 4))


def test_text_collapse_on_a_model_encodes_each_prompt():
    from llip.data import tokenizer_for
    from llip.evaluation.attention import text_collapse
    from llip.evaluation.zeroshot import encode_texts
    torch.manual_seed(0)
    for name in ("llip_tiny", "clip_tiny"):
        cfg = resolve(name)
        model = build_model(cfg).eval()
        emb = encode_texts(model, tokenizer_for(cfg), ["a red circle", "a blue circle",
                                                       "a green circle"])
        r = text_collapse(emb)
        assert -1 <= r["target_cosine"] <= 1
        assert (r["query_cosine"] is None) == (name == "clip_tiny")


def test_attributes_have_a_validation_split_of_their_own(tmp_path):
    from llip.data.synthetic import attributes
    specs = attributes.build(str(tmp_path), n_train=8, n_test=6, n_validation=5)
    test, validation = (read_json(specs[f"catalog_{s}"]) for s in ("test", "validation"))
    assert sorted(test) == sorted(validation) == ["color", "position", "shape"]
    assert test["position"]["path"] == specs["test"] != specs["validation"] == \
        validation["position"]["path"]
    assert specs["catalog"] == specs["catalog_test"]
    images = {s: {np.asarray(x["png"]).tobytes() for x in _samples(specs[s])}
              for s in ("train", "validation", "test")}
    assert [len(images[s]) for s in ("train", "validation", "test")] == [8, 5, 6]
    assert not images["validation"] & images["test"]
    assert attributes.build(str(tmp_path), n_train=8, n_test=6, n_validation=5) == specs


def _benchmark():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                        "caption_diversity.py")
    spec = importlib.util.spec_from_file_location("caption_diversity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_chooses_the_lr_by_the_mean_over_seeds_and_keys_runs_by_recipe():
    import pandas as pd
    cd = _benchmark()
    cells = pd.DataFrame([  # lr 2e-3 wins one seed, 1e-3 wins the mean
        {"variant": "llip", "lr": 1e-3, "seed": s, "average": a} for s, a in
        enumerate([0.57, 0.56, 0.58])] + [
        {"variant": "llip", "lr": 2e-3, "seed": s, "average": a} for s, a in
        enumerate([0.59, 0.30, 0.50])] + [
        {"variant": "clip", "lr": lr, "seed": 0, "average": 0.5} for lr in (5e-4, 1e-3)])
    assert cd.choose(cells) == {"clip": 5e-4, "llip": 1e-3}  # a tie goes to the smaller lr
    a = resolve("llip_scenes")
    assert cd.run_key(a) == cd.run_key(dataclasses.replace(a, lr=1.0, seed=5, name="x"))
    assert cd.run_key(a) != cd.run_key(dataclasses.replace(a, init="reference"))
    groups = cd.collapse_groups("scenes")
    assert [len(x) for x in groups["colour"]] == [6] * 6 and len(groups["shape"]) == 6
    assert groups["colour"][0][:2] == ["a red circle", "a green circle"]
    assert list(cd.collapse_groups("attributes")) == ["shape", "color", "position"]
    s = cd.summarise_collapse([{"target_cosine": 0.995, "query_cosine": 0.999},
                               {"target_cosine": 0.999, "query_cosine": 0.995}])
    assert s["target_cosine"] == pytest.approx(0.997) and s["collapsed"]
    open_query = cd.summarise_collapse([{"target_cosine": 0.999, "query_cosine": 0.9},
                                        {"target_cosine": 0.999, "query_cosine": 0.999}])
    assert not open_query["collapsed"]  # the mean query cosine 0.9495: not collapsed
    assert cd.collapse_columns({"colour": open_query})["collapsed"] == "-"
    assert cd.collapse_columns({"position": s})["collapsed"] == "position"


def test_benchmark_lrs_are_the_configs_lrs():
    cd = _benchmark()
    for task, chosen in cd.CHOSEN_LR.items():
        for family, config in cd.CONFIGS[task].items():
            if family in chosen:
                assert get_config(config).lr == chosen[family], (task, family)


def test_sweep_prunes_an_lr_only_where_every_variant_fails_on_the_first_seed():
    import pandas as pd
    cd = _benchmark()
    rows = []
    for variant, by_lr in {"clip": {1e-3: 0.5, 2e-3: 0.45, 4e-3: 0.2},
                           "llip": {1e-3: 0.6, 2e-3: 0.3, 4e-3: 0.25}}.items():
        for lr, value in by_lr.items():
            rows += [{"variant": variant, "seed": 100, "lr": lr, "step": 8, "dataset": d,
                      "value": value} for d in ("a", "b")]
    assert cd.pruned_lrs(pd.DataFrame(rows)) == [4e-3]  # 2e-3 stays: clip is at 0.9 of best
