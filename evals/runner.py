"""One eval task: (checkpoint, dataset[, eval tau]) -> one JSON result, written atomically.
Runs the same way in the local loop and inside a SLURM array task."""
import json
import os
import re
import time

import torch

from evals.datasets import classification_batches, retrieval_data
from evals.zeroshot import class_embeddings, classify, encode_texts, retrieve
from llip.data import tokenizer_for, transform_for
from llip.training.checkpoint import load_model


def result_path(output_dir: str, checkpoint_tag: str, dataset: str, tau) -> str:
    name = f"{checkpoint_tag}__{dataset}" + (f"__tau{tau:g}" if tau is not None else "")
    return os.path.join(output_dir, "results", re.sub(r"[^\w.@=-]", "_", name) + ".json")


def run_task(task: dict) -> dict:
    if os.path.exists(task["output"]):
        return json.load(open(task["output"]))
    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg, step = load_model(task["checkpoint"], device)
    if task["eval_tau"] is not None and hasattr(model, "head"):
        model.head.tau = float(task["eval_tau"])  # Llip: softmax temperature over mixture tokens
    entry = task["dataset"]
    transform, tokenizer = transform_for(cfg, train=False), tokenizer_for(cfg)
    if entry["task"] == "zeroshot_classification":
        batches, classnames = classification_batches(entry, transform, task["batch_size"],
                                                     task["workers"])
        metrics = classify(model, batches, class_embeddings(
            model, tokenizer, classnames, entry["templates"], device), device)
    else:
        captions, owner, batches = retrieval_data(entry, transform, task["batch_size"],
                                                  task["workers"])
        text_emb = encode_texts(model, tokenizer, captions, task["batch_size"], device)
        metrics = retrieve(model, batches, text_emb, owner, device=device)
    result = {"model": cfg.name, "loss": cfg.loss, "step": step,
              "checkpoint": task["checkpoint"], "dataset": entry["name"], "task": entry["task"],
              "split": entry.get("split", ""), "metric": entry["metric"],
              "value": metrics[entry["metric"]], "metrics": metrics, "n": metrics["n"],
              "eval_tau": task["eval_tau"], "seconds": round(time.time() - start, 2)}
    os.makedirs(os.path.dirname(task["output"]), exist_ok=True)
    tmp = task["output"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, task["output"])
    return result
