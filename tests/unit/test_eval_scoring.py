"""Eval scoring in milliseconds: retrieval recall on a hand-made case, accumulators of image
shares that merge to the whole, template filling, inference precision."""
import pytest
import torch

from llip.evaluation.zeroshot import retrieve


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


# ------------------------------------------------------------ scoring accumulators
def test_accumulators_of_image_shares_merge_to_the_whole():
    """What the distributed eval relies on: summed counts and merged running top-k of two
    shares of the images equal one pass over all of them."""
    from llip.evaluation.sharding import Shard
    from llip.evaluation.zeroshot import Classification, Retrieval
    torch.manual_seed(0)
    logits, labels = torch.randn(12, 4), torch.randint(0, 4, (12,))
    whole, parts = Classification(4), [Classification(4), Classification(4)]
    whole.add(logits, labels)
    parts[0].add(logits[:5], labels[:5])
    parts[1].add(logits[5:], labels[5:])
    parts[0].merge(Shard(0, 2, sum=lambda t: t + parts[1].sums))  # rank 0's view of the merge
    assert parts[0].result() == whole.result()
    assert whole.result()["acc1"] == (logits.argmax(1) == labels).sum().item() / 12

    owner = [0, 0, 1, 2, 3, 4, 5, 5, 6, 7]
    scores, index = torch.randn(8, 10), torch.arange(8)
    whole, a, b = (Retrieval(owner, ks=(1, 2, 5)) for _ in range(3))
    whole.add(scores, index)
    a.add(scores[::2], index[::2])  # rank 0's share
    b.add(scores[1::2], index[1::2])  # rank 1's share
    theirs = {torch.float32: b.best_scores, torch.int64: b.best_images}
    a.merge(Shard(0, 2, sum=lambda t: t + b.sums,
                  gather=lambda t: torch.stack([t, theirs[t.dtype]])))
    assert a.result() == whole.result()


def test_lockstep_keeps_every_share_calling_the_model_until_all_are_done():
    """A share with fewer batches scores dummies until the others are done (a sharded model's
    forward is a collective); in one process the batches pass through as they are."""
    from llip.evaluation.sharding import LOCAL, Shard, lockstep
    batches = [(torch.ones(2, 3, 4, 4), torch.tensor([0, 1]))]
    assert list(lockstep(batches, LOCAL, None, "cpu")) == batches
    others = iter([1.0, 1.0, 1.0, 0.0])  # the other share has 3 batches
    shard = Shard(0, 2, sum=lambda flag: flag + next(others))
    seen = list(lockstep(batches, shard, lambda: torch.zeros(1, 3, 4, 4), "cpu"))
    assert len(seen) == 3 and seen[0] is batches[0]
    assert [targets for _, targets in seen[1:]] == [None, None]  # dummies carry no targets


def test_templates_fill_only_c_and_labels_stay_within_class_names():
    from llip.errors import ConfigError
    from llip.evaluation.zeroshot import Classification, fill_template
    assert fill_template("a photo of a {c}.", "cat") == "a photo of a cat."
    # {} as the Llip release's templates.json (and CLIP's prompts) write it
    assert fill_template('a photo of the number: "{}".', "7") == 'a photo of the number: "7".'
    assert fill_template("a {} or {c}, {{braces}}", "cat") == "a cat or cat, {braces}"
    for bad, needle in (("a {cls} photo", "{cls}"), ("a {0} photo", "{0}"), ("a {c", "valid")):
        with pytest.raises(ConfigError, match="template") as info:
            fill_template(bad, "cat")
        assert needle in str(info.value) and bad in str(info.value)
    with pytest.raises(ConfigError, match="label 7 is outside the 5 class names"):
        Classification(5).add(torch.randn(3, 5), torch.tensor([1, 7, 2]))


def test_inference_runs_fp32_on_cpu():
    from llip.evaluation.zeroshot import inference_precision
    with inference_precision("cpu"):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float32


def test_training_evals_log_the_benchmarks_collapse_diagnostic_of_the_class_prompts(
        monkeypatch):
    """In-training zero-shot classification logs text_collapse of the class embeddings the images
    were scored against: identical class prompts have cosine 1 (collapsed), distinct ones less;
    Llip's queries too. Random-init tiny models (seeded), no data: the images are one batch."""
    from llip.data import tokenizer_for
    from llip.evaluation import evaluators
    from llip.evaluation.attention import COLLAPSED_COSINE
    from llip.evaluation.zeroshot import class_embeddings
    from llip.models import build_model
    from llip.run_configs import resolve
    from llip.training.evaluate import collapse_metrics
    torch.manual_seed(0)
    for name in ("clip_tiny", "llip_tiny"):
        cfg = resolve(name)
        model, tokenizer = build_model(cfg).eval(), tokenizer_for(cfg)
        templates = ["a photo of {c}", "{c}"]
        same = collapse_metrics("d", class_embeddings(model, tokenizer, ["seven"] * 3, templates))
        assert same["eval/d/text_collapse"] == pytest.approx(1.0) and 1.0 > COLLAPSED_COSINE
        assert same["eval/d/text_collapsed"] == 1.0
        distinct = collapse_metrics("d", class_embeddings(model, tokenizer,
                                                          ["zero", "one", "two"], templates))
        assert -1 <= distinct["eval/d/text_collapse"] < COLLAPSED_COSINE
        assert distinct["eval/d/text_collapsed"] == 0.0
        if name == "llip_tiny":
            assert same["eval/d/text_collapse_query"] == pytest.approx(1.0)
            assert -1 <= distinct["eval/d/text_collapse_query"] < COLLAPSED_COSINE
        else:
            assert "eval/d/text_collapse_query" not in distinct
        assert collapse_metrics("d", class_embeddings(model, tokenizer, ["one"], templates)) == {}

        # the evaluator hands over the class embeddings it scored the images against
        images = torch.randn(4, 3, cfg.image_size, cfg.image_size)
        monkeypatch.setattr(evaluators, "classification_batches", lambda entry, *a, **k: (
            [(images, torch.tensor([0, 1, 2, 0]))], entry["classnames"]))
        seen = {}
        ctx = evaluators.Context(None, tokenizer, 4, 0, on_class_embeddings=lambda e, emb:
                                 seen.update({e["name"]: emb}))
        entry = {"name": "d", "classnames": ["zero", "one", "two"], "templates": templates}
        evaluators.EVALUATORS["zeroshot_classification"].evaluate(model, entry, ctx, [None])
        assert collapse_metrics("d", seen["d"]) == pytest.approx(distinct)
