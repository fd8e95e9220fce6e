"""One eval task: (checkpoint, dataset[, eval tau]) -> one JSON result, written atomically.
Runs the same way in the local loop and inside a SLURM array task."""
import os
import re
import time

import torch

from evals.datasets import classification_batches, retrieval_data
from evals.multilabel import PER_IMAGE_TASKS, evaluate_per_image
from evals.zeroshot import class_embeddings, classify, encode_texts, retrieve
from llip.data import tokenizer_for, transform_for
from llip.io import read_json, write_json
from llip.run_dir import load_model


def result_path(output_dir: str, checkpoint_tag: str, dataset: str, tau) -> str:
    name = f"{checkpoint_tag}__{dataset}" + (f"__tau{tau:g}" if tau is not None else "")
    return os.path.join(output_dir, "results", re.sub(r"[^\w.@=-]", "_", name) + ".json")


def run_task(task: dict) -> dict:
    if os.path.exists(task["output"]):
        return read_json(task["output"])
    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg, step = load_model(task["checkpoint"], device)
    tau = task["eval_tau"]  # Llip: softmax temperature over mixture tokens (None: trained one)
    entry = task["dataset"]
    transform, tokenizer = transform_for(cfg, train=False), tokenizer_for(cfg)
    if entry["task"] == "zeroshot_classification":
        batches, classnames = classification_batches(entry, transform, task["batch_size"],
                                                     task["workers"])
        metrics = classify(model, batches, class_embeddings(
            model, tokenizer, classnames, entry["templates"], device), device, tau)
    elif entry["task"] in PER_IMAGE_TASKS:
        metrics = evaluate_per_image(model, entry, transform, tokenizer, task["batch_size"],
                                     task["workers"], device, tau)
    else:
        captions, owner, batches = retrieval_data(entry, transform, task["batch_size"],
                                                  task["workers"])
        text_emb = encode_texts(model, tokenizer, captions, task["batch_size"], device)
        metrics = retrieve(model, batches, text_emb, owner, device=device, tau=tau)
    result = {"model": cfg.name, "loss": cfg.loss, "step": step,
              "checkpoint": task["checkpoint"], "dataset": entry["name"], "task": entry["task"],
              "split": entry.get("split", ""), "metric": entry["metric"],
              "value": metrics[entry["metric"]], "metrics": metrics, "n": metrics["n"],
              "eval_tau": task["eval_tau"], "seconds": round(time.time() - start, 2)}
    write_json(task["output"], result, indent=1)
    return result
