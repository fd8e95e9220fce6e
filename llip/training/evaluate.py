"""Zero-shot evals inside training: `eval_every=N eval_datasets=a::b [eval_catalog=x.json]`
scores the model being trained on catalog datasets every N steps (and at the last step); the
trainer logs the numbers as `eval/<dataset>/<metric>` rows of metrics.jsonl and to wandb.

The scoring is llip.evaluation's, through the same evaluators as `evals.main_mc` (the same
numbers on the same checkpoint, at the trained Llip temperature). What is training's own: all
ranks take part, each scoring its own share of the images, and the evaluators merge the shares
through the `Shard` built here from the process group. Why not rank 0 alone while the others
wait: with FSDP2 every forward needs all ranks (each block's weights are all-gathered from every
rank), so rank 0 could only run on a gathered full copy of the weights - a second model in its
memory - while N-1 accelerators idle for the length of the eval and the waiting ranks risk the
collective timeout on a large eval set. Sharing the images costs nothing extra and makes the
eval N times faster. Only tasks whose evaluator can merge shares (zero-shot classification and
retrieval) may run inside training; the others are refused before training starts.

Each zero-shot classification eval also logs the collapse diagnostic of its class prompts, with
the benchmark's function (llip.evaluation.attention.text_collapse) on the class embeddings the
images were just scored against (no extra encoding, no images):
`eval/<dataset>/text_collapse` (mean pairwise cosine of the class targets),
`eval/<dataset>/text_collapse_query` (the same for Llip's queries; Llip only) and
`eval/<dataset>/text_collapsed` (1 where both are above COLLAPSED_COSINE, else 0).
"""
import re
import time

import torch
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

from llip.data import tokenizer_for, transform_for
from llip.errors import ConfigError, closest
from llip.evaluation.attention import text_collapse
from llip.evaluation.catalog import DEFAULT_CATALOG, load_catalogs
from llip.evaluation.datasets import require_data
from llip.evaluation.evaluators import EVALUATORS, Context
from llip.evaluation.sharding import Shard
from llip.evaluation.zeroshot import fill_template, inference_precision
from llip.training import dist
from llip.training.parallel import use_bf16


def eval_entries(cfg) -> list[dict]:
    """The catalog entries named by eval_datasets, checked before training starts: known names,
    tasks that can run inside training, data where the catalog says, templates that fill."""
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
        if not EVALUATORS[entry["task"]].sharded:
            inside = [t for t, e in EVALUATORS.items() if e.sharded]
            raise ConfigError(f"eval_datasets: '{name}' is a {entry['task']} task, which runs in "
                              f"eval sweeps (evals.main_mc), not inside training (there: "
                              f"{', '.join(inside)})")
        require_data(entry)
        for template in entry.get("templates", []):
            fill_template(template, "x")
        entries.append(entry)
    return entries


def collapse_metrics(name: str, class_emb: torch.Tensor) -> dict:
    """The collapse diagnostic of one zero-shot classification eval as metrics.jsonl keys:
    class_emb is its class embeddings, (C, D) or Llip's (C, 2, D) [query, target]; nothing for
    fewer than 2 classes (no pair to compare)."""
    if len(class_emb) < 2:
        return {}
    c = text_collapse(class_emb)
    out = {f"eval/{name}/text_collapse": c["target_cosine"],
           f"eval/{name}/text_collapsed": float(c["collapsed"])}
    if c["query_cosine"] is not None:
        out[f"eval/{name}/text_collapse_query"] = c["query_cosine"]
    return out


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


class TrainingEvals:
    def __init__(self, cfg, world):
        self.cfg, self.world = cfg, world
        self.entries = eval_entries(cfg)
        self.class_emb = {}  # dataset -> the class embeddings of its last eval
        if self.entries:
            self.context = Context(
                transform_for(cfg, train=False), tokenizer_for(cfg),
                batch_size=max(1, cfg.batch_size // world.size),  # fits: training's per rank
                workers=cfg.workers, device=world.device, image_size=cfg.image_size,
                shard=Shard(world.rank, world.size, dist.all_reduce_sum, dist.all_gather),
                on_class_embeddings=self._keep_class_embeddings)

    def _keep_class_embeddings(self, entry: dict, class_emb: torch.Tensor) -> None:
        self.class_emb[entry["name"]] = class_emb

    def due(self, step: int) -> bool:
        return bool(self.entries) and (step % self.cfg.eval_every == 0
                                       or step == self.cfg.total_steps)

    def _precision(self):
        """bf16 where training runs in bf16 (FSDP2's bf16 weights need bf16 inputs), else
        the evals' own choice (bf16 autocast on CUDA, fp32 elsewhere)."""
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
                    by_tau, _ = EVALUATORS[entry["task"]].evaluate(scoring, entry, self.context,
                                                                    [None])
                    name, metrics = entry["name"], by_tau[None]
                    values.update({f"eval/{name}/{k}": v for k, v in metrics.items()})
                    line = f"{name} {entry['metric']} {metrics[entry['metric']]:.4f}"
                    collapse = collapse_metrics(name, self.class_emb.pop(name)) \
                        if name in self.class_emb else {}
                    values.update(collapse)
                    if collapse:
                        line += f" text_collapse {collapse[f'eval/{name}/text_collapse']:.3f}"
                    summary.append(line)
        finally:
            model.train(was_training)
        values["eval/seconds"] = time.time() - start
        return values, " | ".join(summary)
