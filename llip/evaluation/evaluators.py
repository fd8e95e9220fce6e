"""One evaluator per catalog task: the interface every eval goes through, in training
(llip.training.evaluate) and in sweeps (evals.runner) alike.

An evaluator says what its task needs from a catalog entry (`metrics`, `fields`,
`needs_prompts`, `check`) and scores a model on one entry:

    evaluate(model, entry, ctx, taus) -> ({tau: metrics}, images encoded)

`taus` are Llip's eval-time softmax temperatures (None: the trained one), all scored from one
pass over the images where the task allows; `ctx` is how to read and where to run, including the
`Shard` of the images this process scores (`sharded` evaluators merge the shares themselves;
the others run in one process). A new task is one class here, registered in EVALUATORS: the
catalog, the sweep and the trainer all follow the registry.
"""
from __future__ import annotations

import dataclasses

from llip.errors import ConfigError
from llip.evaluation.datasets import classification_batches, retrieval_data
from llip.evaluation.multilabel import evaluate_per_image
from llip.evaluation.probe import run_probe
from llip.evaluation.sharding import LOCAL, Shard
from llip.evaluation.zeroshot import (
    Classification,
    Retrieval,
    class_embeddings,
    encode_texts,
    score_images,
)

CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
RETRIEVAL_METRICS = tuple(f"{d}_retrieval_recall@{k}"
                          for d in ("image", "text") for k in (1, 5, 10))


@dataclasses.dataclass(frozen=True)
class Context:
    """How to read an eval set and where to score it."""
    transform: object
    tokenizer: object
    batch_size: int
    workers: int
    device: object = "cpu"
    shard: Shard = LOCAL
    image_size: int = 224  # of the dummy image a share that ran out scores (lockstep)
    # called with (entry, class embeddings) by zero-shot classification, e.g. for training's
    # collapse metric (llip.training.evaluate): the embeddings the images were scored against,
    # at no extra encoding
    on_class_embeddings: object = None


class Evaluator:
    task = ""
    metrics: tuple = ()  # the metrics an entry may name as its main one
    fields: tuple = ()  # catalog fields of this task beyond the common ones
    needs_prompts = False  # classnames + templates
    uses_tau = True  # scored through the model's logits, so Llip's eval tau applies
    version = 1  # raise when a change alters this task's numbers: stored results are redone
    sharded = False  # can score a share of the images and merge (inside training)

    def check(self, entry: dict, where: str) -> None:
        """Task-specific validation of a catalog entry (fills defaults in place)."""

    def evaluate(self, model, entry: dict, ctx: Context, taus) -> tuple[dict, int]:
        raise NotImplementedError


class ZeroShotClassification(Evaluator):
    task, metrics, needs_prompts, sharded = ("zeroshot_classification", CLASSIFICATION_METRICS,
                                             True, True)

    def evaluate(self, model, entry, ctx, taus):
        batches, classnames = classification_batches(entry, ctx.transform, ctx.batch_size,
                                                     ctx.workers, ctx.shard.rank, ctx.shard.size)
        text_emb = class_embeddings(model, ctx.tokenizer, classnames, entry["templates"],
                                    ctx.device, ctx.batch_size)
        if ctx.on_class_embeddings is not None:
            ctx.on_class_embeddings(entry, text_emb)
        scorers = {tau: Classification(len(classnames), ctx.device) for tau in taus}
        encoded = score_images(model, batches, text_emb, scorers, ctx.device, ctx.shard,
                               ctx.image_size)
        return {tau: scorer.result() for tau, scorer in scorers.items()}, encoded


class ZeroShotRetrieval(Evaluator):
    task, metrics, sharded = "retrieval", RETRIEVAL_METRICS, True

    def evaluate(self, model, entry, ctx, taus):
        captions, owner, batches = retrieval_data(entry, ctx.transform, ctx.batch_size,
                                                  ctx.workers, ctx.shard.rank, ctx.shard.size)
        text_emb = encode_texts(model, ctx.tokenizer, captions, ctx.batch_size, ctx.device)
        scorers = {tau: Retrieval(owner, device=ctx.device) for tau in taus}
        encoded = score_images(model, batches, text_emb, scorers, ctx.device, ctx.shard,
                               ctx.image_size)
        return {tau: scorer.result() for tau, scorer in scorers.items()}, encoded


class Probe(Evaluator):
    """Linear probe or kNN on frozen image features (llip.evaluation.probe): no text, no tau."""
    metrics, uses_tau = CLASSIFICATION_METRICS, False

    def __init__(self, task: str, fields: tuple):
        self.task, self.fields = task, fields

    def check(self, entry, where):
        entry["train_path"] = entry.get("train_path", entry["path"])
        entry.setdefault("train_split", "train")
        if entry["train_path"] == entry["path"] and (entry["format"] != "imagefolder" or
                                                     entry["train_split"] == entry.get("split")):
            raise ConfigError(f"{where}: a probe needs a training set apart from the test set: "
                              "give train_path (or, for imagefolder, a train_split sub-folder)")
        if self.task == "linear_probe":
            v = entry.setdefault("val_proportion", 0.2)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(f"{where}: val_proportion must be a number in (0, 1), got "
                                  f"{v!r}")
        else:
            k = entry.setdefault("k", 20)
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(f"{where}: k must be a positive integer, got {k!r}")

    def evaluate(self, model, entry, ctx, taus):
        metrics = run_probe(model, entry, ctx.transform, ctx.batch_size, ctx.workers, ctx.device)
        return {None: metrics}, metrics["n"] + metrics["n_train"]


class PerImage(Evaluator):
    """Prompts or answers that differ per image (llip.evaluation.multilabel): one pass per tau."""

    def __init__(self, task: str, metrics: tuple, needs_prompts: bool):
        self.task, self.metrics, self.needs_prompts = task, metrics, needs_prompts

    def check(self, entry, where):
        if "label_key" not in entry:
            raise ConfigError(f"{where}: missing field 'label_key' (the member holding each "
                              f"image's labels, needed for {self.task})")

    def evaluate(self, model, entry, ctx, taus):
        scored, encoded = {}, 0
        for tau in taus:
            scored[tau] = evaluate_per_image(model, entry, ctx.transform, ctx.tokenizer,
                                             ctx.batch_size, ctx.workers, ctx.device, tau)
            encoded += scored[tau]["n"]
        return scored, encoded


EVALUATORS = {e.task: e for e in (
    ZeroShotClassification(),
    ZeroShotRetrieval(),
    Probe("linear_probe", ("train_path", "train_split", "val_proportion")),
    Probe("knn", ("train_path", "train_split", "k")),
    PerImage("multiple_choice", ("acc1",), needs_prompts=False),
    PerImage("multilabel", ("mAP", "image_mAP"), needs_prompts=True),
)}
