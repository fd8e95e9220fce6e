"""Zero-shot top-1 of a run's latest checkpoint on the held-out digits (the demo's last step).

    python -m evals.digits_demo logs/llip_demo
"""
import argparse
import json
import os
import time

import pandas as pd
import torch
import webdataset as wds

from evals.checkpoints import load_model, resolve_checkpoint
from evals.zeroshot import class_embeddings, classify
from llip.data import tokenizer_for, transform_for
from llip.data.digits import CLASSNAMES, EVAL_TEMPLATES, build


def held_out_batches(spec: str, cfg, batch_size: int = 256):
    pipeline = (wds.WebDataset(spec, shardshuffle=False).decode("pilrgb")
                .to_tuple("png", "cls").map_tuple(transform_for(cfg, train=False), int)
                .batched(batch_size))
    return ((images, torch.as_tensor(labels)) for images, labels in pipeline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data", default="data/digits")
    args = parser.parse_args()
    start = time.time()
    model, cfg, step = load_model(args.run_dir)
    specs = build(args.data)
    classes = class_embeddings(model, tokenizer_for(cfg), CLASSNAMES, EVAL_TEMPLATES)
    metrics = classify(model, held_out_batches(specs["test"], cfg), classes)
    row = {"model": cfg.name, "loss": cfg.loss, "step": step, "top1": metrics["acc1"],
           "top5": metrics["acc5"], "n": metrics["n"], "chance": 1 / len(CLASSNAMES)}
    out = os.path.join(args.run_dir, "eval_digits.json")
    with open(out, "w") as f:
        json.dump({**row, **metrics, "seconds": time.time() - start}, f)
    print("\nzero-shot classification of the held-out digits:\n")
    print(pd.DataFrame([row]).to_markdown(index=False, floatfmt=".3f"))
    print(f"\nrun dir:    {args.run_dir}\ncheckpoint: {resolve_checkpoint(args.run_dir)}"
          f"\nmetrics:    {os.path.join(args.run_dir, 'metrics.jsonl')}\nresult:     {out}")


if __name__ == "__main__":
    main()
