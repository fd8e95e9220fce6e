"""Zero-shot evals inside training: `eval_every=N eval_datasets=a::b [eval_catalog=x.json]`
scores the model being trained on the catalog's classification and retrieval sets every N steps
(and at the last step); the trainer logs the numbers as `eval/<dataset>/<metric>` rows of
metrics.jsonl and to wandb.

All ranks take part, each scoring its own share of the images (the readers split samples by
rank and DataLoader worker), and the scores are summed and merged across ranks. Why not rank 0
alone while the others wait: with FSDP2 every forward needs all ranks (each block's weights are
all-gathered from every rank), so rank 0 could only run on a gathered full copy of the weights -
a second model in its memory - while N-1 accelerators idle for the length of the eval and the
waiting ranks risk the collective timeout on a large eval set. Sharing the images costs nothing
extra and makes the eval N times faster. The ranks step in lockstep: a rank whose share has run
out scores a dummy image until every rank is done, so each calls the model equally often.

The scoring itself is evals' (readers, class embeddings, accumulators): the same numbers as
`evals.main_mc` on the same checkpoint, at the trained Llip temperature.
"""
import re
import time

import torch
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

from evals.catalog import DEFAULT_CATALOG, load_catalogs
from evals.datasets import classification_batches, require_data, retrieval_data
from evals.zeroshot import (
    Classification,
    Retrieval,
    class_embeddings,
    encode_texts,
    fill_template,
    inference_precision,
)
from llip.cli import ConfigError, closest
from llip.data import tokenizer_for, transform_for
from llip.training import dist
from llip.training.parallel import use_bf16


def eval_entries(cfg) -> list[dict]:
    """The catalog entries named by eval_datasets, checked before training starts: known names,
    data where the catalog says, templates that fill."""
    if not cfg.eval_every:
        return []
    catalog_path = cfg.eval_catalog or DEFAULT_CATALOG
    catalog = load_catalogs([catalog_path])
    names = [n.strip() for n in re.split(r"::|,", cfg.eval_datasets) if n.strip()]
    entries = []
    for name in names:
        if name not in catalog:
            raise ConfigError(f"eval_datasets: no dataset '{name}' in catalog {catalog_path}; "
                              f"closest: {closest(name, catalog)}")
        entry = catalog[name]
        require_data(entry)
        if entry["task"] == "zeroshot_classification":
            for template in entry["templates"]:
                fill_template(template, "x")
        entries.append(entry)
    return entries


class _ShardedScoring:
    """The scoring methods of an FSDP2 model, each run as an FSDP forward (the root's weights
    all-gathered, inputs cast to the mixed-precision dtype). Registered under new names: the
    model's own forward calls encode_image/encode_text, and must not re-enter FSDP's hooks."""

    def __init__(self, model):
        for name in ("encode_image", "encode_text"):
            alias = f"_scoring_{name}"
            if not hasattr(model, alias):
                setattr(model, alias, getattr(model, name))
                register_fsdp_forward_method(model, alias)
        self.encode_image, self.encode_text = model._scoring_encode_image, \
            model._scoring_encode_text
        self.logits, self.mean_text = model.logits, model.mean_text  # logits: registered


class Evaluator:
    def __init__(self, cfg, world):
        self.cfg, self.world = cfg, world
        self.entries = eval_entries(cfg)
        if self.entries:
            self.transform, self.tokenizer = transform_for(cfg, train=False), tokenizer_for(cfg)
        self.batch_size = max(1, cfg.batch_size // world.size)  # fits: training's per rank

    def due(self, step: int) -> bool:
        return bool(self.entries) and (step % self.cfg.eval_every == 0
                                       or step == self.cfg.total_steps)

    def _precision(self):
        """bf16 where training runs in bf16 (FSDP2's bf16 weights need bf16 inputs), else
        evals' own choice (bf16 autocast on CUDA, fp32 elsewhere)."""
        if use_bf16(self.cfg, self.world.device):
            return torch.autocast(self.world.device.type, dtype=torch.bfloat16)
        return inference_precision(self.world.device)

    @torch.no_grad()
    def __call__(self, model) -> tuple[dict, str]:
        """-> ({"eval/<dataset>/<metric>": value, ...}, a one-line summary). A collective: every
        rank calls it at the same step."""
        start, values, summary = time.time(), {}, []
        scoring = _ShardedScoring(model) if isinstance(model, FSDPModule) else model
        was_training = model.training
        model.eval()
        cuda = [self.world.device.index or 0] if self.world.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda), self._precision():  # training's RNG
                for entry in self.entries:                                 # stream is untouched
                    score = self._classify if entry["task"] == "zeroshot_classification" \
                        else self._retrieve
                    metrics = score(scoring, entry)
                    values.update({f"eval/{entry['name']}/{k}": v for k, v in metrics.items()})
                    summary.append(f"{entry['name']} {entry['metric']} "
                                   f"{metrics[entry['metric']]:.4f}")
        finally:
            model.train(was_training)
        values["eval/seconds"] = time.time() - start
        return values, " | ".join(summary)

    def _images(self, model, batches, text_emb, scorer) -> None:
        """Score this rank's batches; in lockstep with the other ranks (see module doc)."""
        device, size = self.world.device, self.cfg.image_size
        dummy = torch.zeros(1, 3, size, size)
        batches = iter(batches)
        while True:
            item = next(batches, None)
            flag = torch.tensor([float(item is not None)], device=device)
            if dist.all_reduce_sum(flag).item() == 0:
                return
            images = item[0] if item is not None else dummy
            logits = model.logits(model.encode_image(images.to(device)), text_emb).float()
            if item is not None:
                scorer.add(logits, item[1])

    def _classify(self, model, entry) -> dict:
        world, device = self.world, self.world.device
        batches, classnames = classification_batches(entry, self.transform, self.batch_size,
                                                     self.cfg.workers, world.rank, world.size)
        class_emb = class_embeddings(model, self.tokenizer, classnames, entry["templates"],
                                     device, self.batch_size)
        scorer = Classification(len(classnames), device)
        self._images(model, batches, class_emb, scorer)
        scorer.sums = dist.all_reduce_sum(scorer.sums)
        return scorer.result()

    def _retrieve(self, model, entry) -> dict:
        world, device = self.world, self.world.device
        captions, owner, batches = retrieval_data(entry, self.transform, self.batch_size,
                                                  self.cfg.workers, world.rank, world.size)
        text_emb = encode_texts(model, self.tokenizer, captions, self.batch_size, device)
        scorer = Retrieval(owner, device=device)
        self._images(model, batches, text_emb, scorer)
        scorer.sums = dist.all_reduce_sum(scorer.sums)
        if world.size > 1:  # every rank's running top-k per caption -> the global top-k
            n_text = len(owner)
            scores = dist.all_gather(scorer.best_scores).permute(1, 0, 2).reshape(n_text, -1)
            images = dist.all_gather(scorer.best_images).permute(1, 0, 2).reshape(n_text, -1)
            scorer.best_scores.fill_(float("-inf"))
            scorer.best_images.fill_(-1)
            scorer.keep_best(scores, images)
        return scorer.result()
