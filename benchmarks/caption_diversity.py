"""The paper's claim in miniature: with captions that each describe one random aspect of an
image (shape, colour or position), does Llip's caption-contextualised image embedding beat
CLIP and SigLIP's single embedding? Trains clip_tiny, siglip_tiny and llip_tiny for equal steps
on llip.data.attributes, several seeds each, evaluates every run through evals.main_mc (one
zero-shot task per attribute) and prints mean +- std.

    python benchmarks/caption_diversity.py [--seeds 3] [--epochs 2] [--out results/diversity]
    python benchmarks/caption_diversity.py --extra mixture_tokens=16 cross_attn_tau=1  # ablations
    python benchmarks/caption_diversity.py --epochs 6 --tag e6 --seeds 2 --losses siglip,llip
"""
import argparse
import os
import subprocess
import sys

import pandas as pd
import yaml

from evals.aggregate import read_results
from llip.data.attributes import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LOSSES = ("clip", "siglip", "llip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--out", default=os.path.join(REPO, "results", "diversity"))
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for the llip runs")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--tag", default="", help="suffix of every run name (e.g. e6)")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    specs = build(os.path.join(args.out, "data"), args.train)
    logs = os.path.join(args.out, "runs")
    tag = "_".join(x.replace("=", "") for x in args.extra)
    runs = []
    for seed in range(args.seeds):
        for loss in args.losses.split(","):
            name = f"{loss}_s{seed}" + (f"_{tag}" if tag and loss == "llip" else "") + \
                (f"_{args.tag}" if args.tag else "")
            runs.append(os.path.join(logs, name))
            if os.path.exists(os.path.join(logs, name, "checkpoints")):
                continue  # resumable: a finished run resumes at its end and stops at once
            overrides = [f"train_data={specs['train']}", f"logs={logs}", f"name={name}",
                         f"seed={seed}", f"train_num_samples={args.train}",
                         f"epochs={args.epochs}", "batch_size=128", "lr=2e-3",
                         "warmup_steps=30", "workers=2", "log_every=100",
                         "checkpoint_every=100000", "wandb_mode=disabled"]
            if loss == "llip":
                overrides += args.extra
            print(f"training {name}", flush=True)
            subprocess.run([sys.executable, "-m", "llip.main", f"{loss}_tiny", *overrides],
                           cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    sweep = {"checkpoints": runs, "catalogs": [specs["catalog"]], "datasets": "all",
             "batch_size": 250, "workers": 0, "output_dir": os.path.join(args.out, "evals"),
             "launcher": "local"}
    fname = os.path.join(args.out, "sweep.yaml")
    with open(fname, "w") as f:
        yaml.safe_dump(sweep, f)
    subprocess.run([sys.executable, "-m", "evals.main_mc", "--fname", fname], cwd=REPO,
                   env=env, check=True, stdout=subprocess.DEVNULL)
    rows = pd.DataFrame([{"run": r["model"], "loss": r["loss"], "dataset": r["dataset"],
                          "acc1": r["value"]} for r in read_results(sweep["output_dir"])])
    rows["variant"] = rows["run"].str.replace(r"_s\d+", "", regex=True)
    per_run = rows.pivot_table(index=["variant", "run"], columns="dataset", values="acc1")
    per_run["average"] = per_run.mean(axis=1)
    summary = per_run.groupby("variant").agg(["mean", "std"])
    table = pd.DataFrame({col: [f"{m:.3f} +- {s:.3f}" for m, s in
                                zip(summary[(col, "mean")], summary[(col, "std")])]
                          for col in per_run.columns}, index=summary.index)
    print(f"zero-shot top-1 per attribute (chance 0.25), {args.seeds} seeds, "
          f"{args.epochs} epochs of {args.train} samples, batch 128\n")
    print(table.to_markdown())


if __name__ == "__main__":
    main()
