"""The binding scenes: generator, its shards through the training stream, the per-image evals
(multiple choice, presence mAP), the zero-query control and the fair-settings options."""
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
