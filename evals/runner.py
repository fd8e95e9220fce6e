"""One eval task: (checkpoint, dataset, eval taus) -> one JSON result, written atomically.
Runs the same way in the local loop and inside a SLURM array task; the scoring is the catalog
task's evaluator (llip.evaluation.evaluators).

The images are encoded once per task: every eval tau is scored from the same image embeddings
(tau is an argument of the model's scoring, never written into the model). A result that already
holds some of the taus keeps them; only the missing ones are computed.
"""
import time

import torch

from evals import checkpoints
from llip.data import tokenizer_for, transform_for
from llip.errors import CheckpointError
from llip.evaluation import results
from llip.evaluation.evaluators import EVALUATORS, Context
from llip.io import write_json


def task_name(task) -> str:
    """A task in progress and failure lines: its result file's name."""
    ckpt = task["checkpoint"]
    return f"{ckpt.label}__{task['dataset']['name']}__{ckpt.id}"


def identity_of(task) -> dict:
    """What the task's result is of (llip.evaluation.results.identity)."""
    entry = task["dataset"]
    return results.identity(entry, task["checkpoint"].fingerprint,
                            EVALUATORS[entry["task"]].version)


def run_task(task: dict) -> dict:
    # another catalog entry, checkpoint or evaluator than the stored result's: all taus again
    identity = identity_of(task)
    existing = results.reusable(results.read_result(task["output"]), identity)
    todo = results.missing_taus(existing, task["taus"])
    if not todo:
        return existing
    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt, entry = task["checkpoint"], task["dataset"]
    model, cfg, step = checkpoints.load(ckpt, device)
    if step != ckpt.step:
        raise CheckpointError(f"checkpoint {ckpt.path} now holds step {step}, not {ckpt.step}: "
                              "it was overwritten; run the sweep again")
    evaluator = EVALUATORS[entry["task"]]
    taus = todo if cfg.loss == "llip" and evaluator.uses_tau else [None]
    # an open_clip subject brings its own preprocessing and tokenizer
    ctx = Context(getattr(model, "preprocess", None) or transform_for(cfg, train=False),
                  getattr(model, "tokenizer", None) or tokenizer_for(cfg),
                  task["batch_size"], task["workers"], device, image_size=cfg.image_size)
    by_tau, encoded = evaluator.evaluate(model, entry, ctx, taus)
    scored = [{"eval_tau": results.tau_key(tau), "metrics": metrics}
              for tau, metrics in by_tau.items()]
    kept = existing["by_tau"] if existing else []
    by_tau = sorted(kept + [{**s, "value": s["metrics"][entry["metric"]]} for s in scored],
                    key=lambda e: (e["eval_tau"] is not None, e["eval_tau"] or 0))
    result = {"version": results.VERSION, "id": ckpt.id, "label": ckpt.label,
              "model": cfg.name, "loss": cfg.loss, "step": step, "checkpoint": ckpt.path,
              "dataset": entry["name"], "task": entry["task"], "split": entry.get("split", ""),
              "metric": entry["metric"], "n": scored[0]["metrics"]["n"], "images_encoded": encoded,
              "seconds": round(time.time() - start, 2), "identity": identity,
              "by_tau": by_tau}
    write_json(task["output"], result, indent=1)
    return result
