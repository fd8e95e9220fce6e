"""Results -> pandas tables and a plot. python -m evals.aggregate <output_dir>

long:  one row per (model, step, dataset, eval tau, metric), with the checkpoint path and id
wide:  rows = checkpoints (model, step[, tau]), columns = datasets (main metric) + average
The model column is the run name, extended by a path tail where two checkpoints share it.
Written as CSV and Markdown next to the results, plus a PNG of each main metric vs step.
"""
import argparse
import glob
import os
import sys

import pandas as pd

from evals.results import long_rows, read_result
from llip.cli import ConfigError, cli
from llip.io import atomic_write


def read_results(output_dir: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(output_dir, "results", "*.json")))
    found = [r for r in map(read_result, files) if r is not None]
    if len(found) < len(files):
        print(f"skipped {len(files) - len(found)} incomplete result file(s) in "
              f"{output_dir}/results (re-run the sweep to redo them)")
    if not found:
        raise ConfigError(f"no results in {output_dir}/results: run evals.main_mc first")
    return found


def tables(results: list[dict]):
    long = pd.DataFrame(long_rows(results)).sort_values(["model", "step", "eval_tau",
                                                         "dataset", "metric"])
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
