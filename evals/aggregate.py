"""Results -> pandas tables and a plot. python -m evals.aggregate <output_dir>

long:  one row per (model, step, dataset, eval tau, metric)
wide:  rows = checkpoints (model, step[, tau]), columns = datasets (main metric) + average
Written as CSV and Markdown next to the results, plus a PNG of each main metric vs step.
"""
import argparse
import glob
import os
import sys

import pandas as pd

from llip.cli import ConfigError, cli
from llip.io import atomic_write, read_json


def read_results(output_dir: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(output_dir, "results", "*.json")))
    if not files:
        raise ConfigError(f"no results in {output_dir}/results: run evals.main_mc first")
    return [read_json(f) for f in files]


def tables(results: list[dict]):
    rows = []
    for r in results:
        tau = "" if r.get("eval_tau") is None else f"{r['eval_tau']:g}"
        for metric, value in r["metrics"].items():
            if metric != "n" and not metric.startswith("n_"):  # counts, not metrics
                rows.append({"model": r["model"], "step": r["step"], "eval_tau": tau,
                             "dataset": r["dataset"], "task": r["task"], "metric": metric,
                             "value": value, "main": metric == r["metric"], "n": r["n"]})
    long = pd.DataFrame(rows).sort_values(["model", "step", "eval_tau", "dataset", "metric"])
    main = long[long["main"]]
    wide = main.pivot_table(index=["model", "step", "eval_tau"], columns="dataset",
                            values="value", aggfunc="first")
    wide["average"] = wide.mean(axis=1)
    return long.reset_index(drop=True), wide.reset_index()


def plot(long: pd.DataFrame, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    main = long[long["main"]]
    datasets = sorted(main["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = main[main["dataset"] == dataset]
        for (model, tau), curve in part.groupby(["model", "eval_tau"]):
            curve = curve.sort_values("step")
            ax.plot(curve["step"], curve["value"], marker="o",
                    label=model + (f" tau={tau}" if tau else ""))
        ax.set_title(f"{dataset} ({part['metric'].iloc[0]})", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def aggregate(output_dir: str) -> pd.DataFrame:
    long, wide = tables(read_results(output_dir))
    long.to_csv(os.path.join(output_dir, "results_long.csv"), index=False)
    wide.to_csv(os.path.join(output_dir, "results_wide.csv"), index=False)
    markdown = wide.to_markdown(index=False, floatfmt=".4f")
    atomic_write(os.path.join(output_dir, "results_wide.md"), markdown + "\n")
    plot(long, os.path.join(output_dir, "results_vs_step.png"))
    print(markdown)
    print(f"\ntables: {output_dir}/results_wide.csv, results_wide.md, results_long.csv"
          f"\nplot:   {output_dir}/results_vs_step.png")
    return wide


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    aggregate(parser.parse_args(argv).output_dir)


if __name__ == "__main__":
    sys.exit(main())
