"""One eval task: (checkpoint, dataset, eval taus) -> one JSON result, written atomically.
Runs the same way in the local loop and inside a SLURM array task.

The images are encoded once per task: every eval tau is scored from the same image embeddings
(tau is an argument of the model's scoring, never written into the model). A result that already
holds some of the taus keeps them; only the missing ones are computed.
"""
import time

import torch

from evals import checkpoints, results
from evals.catalog import PROBE_TASKS
from evals.datasets import classification_batches, retrieval_data
from evals.multilabel import PER_IMAGE_TASKS, evaluate_per_image
from evals.probe import run_probe
from evals.zeroshot import (
    Classification,
    Retrieval,
    class_embeddings,
    encode_texts,
    score_images,
)
from llip.cli import ConfigError
from llip.data import tokenizer_for, transform_for
from llip.io import write_json


def describe(task) -> str:
    """The task in progress and failure lines: its result file's name."""
    ckpt = task["checkpoint"]
    return f"{ckpt.label}__{task['dataset']['name']}__{ckpt.id}"


def run_task(task: dict) -> dict:
    existing = results.read_result(task["output"])
    todo = results.missing_taus(existing, task["taus"])
    if not todo:
        return existing
    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt, entry = task["checkpoint"], task["dataset"]
    model, cfg, step = checkpoints.load(ckpt, device)
    if step != ckpt.step:
        raise ConfigError(f"checkpoint {ckpt.path} now holds step {step}, not {ckpt.step}: it "
                          "was overwritten; run the sweep again")
    taus = todo if cfg.loss == "llip" else [None]
    # an open_clip subject brings its own preprocessing and tokenizer
    transform = getattr(model, "preprocess", None) or transform_for(cfg, train=False)
    tokenizer = getattr(model, "tokenizer", None) or tokenizer_for(cfg)
    batch_size, workers = task["batch_size"], task["workers"]
    if entry["task"] in PROBE_TASKS:  # image features only: eval tau plays no part
        metrics = run_probe(model, entry, transform, batch_size, workers, device)
        scorers, encoded = None, metrics["n"] + metrics["n_train"]
        scored = [{"eval_tau": None, "metrics": metrics}]
    elif entry["task"] == "zeroshot_classification":
        batches, classnames = classification_batches(entry, transform, batch_size, workers)
        text_emb = class_embeddings(model, tokenizer, classnames, entry["templates"], device,
                                    batch_size)
        scorers = {tau: Classification(len(classnames), device) for tau in taus}
    elif entry["task"] in PER_IMAGE_TASKS:  # per-image prompts: one pass per tau
        scorers, encoded = None, 0
        scored = []
        for tau in taus:
            metrics = evaluate_per_image(model, entry, transform, tokenizer, batch_size, workers,
                                         device, tau)
            scored.append({"eval_tau": results.tau_key(tau), "metrics": metrics})
            encoded += metrics["n"]
    else:
        captions, owner, batches = retrieval_data(entry, transform, batch_size, workers)
        text_emb = encode_texts(model, tokenizer, captions, batch_size, device)
        scorers = {tau: Retrieval(owner, device=device) for tau in taus}
    if scorers is not None:
        encoded = score_images(model, batches, text_emb, scorers, device)
        scored = [{"eval_tau": results.tau_key(tau), "metrics": scorer.result()}
                  for tau, scorer in scorers.items()]
    kept = existing["by_tau"] if existing else []
    by_tau = sorted(kept + [{**s, "value": s["metrics"][entry["metric"]]} for s in scored],
                    key=lambda e: (e["eval_tau"] is not None, e["eval_tau"] or 0))
    result = {"id": ckpt.id, "label": ckpt.label, "model": cfg.name, "loss": cfg.loss,
              "step": step, "checkpoint": ckpt.path, "dataset": entry["name"],
              "task": entry["task"], "split": entry.get("split", ""), "metric": entry["metric"],
              "n": scored[0]["metrics"]["n"], "images_encoded": encoded,
              "seconds": round(time.time() - start, 2), "by_tau": by_tau}
    write_json(task["output"], result, indent=1)
    return result
