"""Results -> pandas tables and a plot. python -m evals.aggregate <output_dir | sweep dir>

long:  one row per (model, step, dataset, eval tau, metric), with the checkpoint path and id
wide:  rows = checkpoints (model, step[, tau]), columns = datasets (one metric each: the
       catalog's main metric; a row that lacks it, e.g. a CLIP_benchmark recall@5 where the
       catalog says recall@10, gets its own column "<dataset> [<metric>]"; the Markdown names
       every column's metric), then
       average            the mean over the datasets that row has results for (so it changes
                          meaning with the datasets evaluated), and for each dataset group of the
       average_<group>    catalogs: the mean over exactly the group's datasets, empty unless the
                          row has all of them (e.g. average_llip_paper, the paper's suite)
The model column is the run name, extended by a path tail where two checkpoints share it.
Written as CSV and Markdown next to the results, plus a PNG of each main metric vs step.
CLIP_benchmark result JSON files (in <output_dir>/external/ or given with --clip-benchmark) join
the tables as rows labelled "<model> <pretrained>" with no step.
The catalogs (main metrics, groups) are the sweep's: evals.main_mc records them in
<output_dir>/catalogs.json, so a re-aggregation writes the same tables (--catalog overrides).
A sweep dir (llip.sweep) gives its result store's tables plus the sweep's own, with each axis in
its own column (evals.sweep_table).
"""
import argparse
import os
import sys

import pandas as pd

from evals import sweep_table
from evals.interop import read_clip_benchmark
from llip.cli import cli
from llip.errors import ConfigError
from llip.evaluation.catalog import DEFAULT_CATALOG, load_catalogs, load_groups
from llip.evaluation.results import long_rows, read_result, recorded_catalogs, result_files
from llip.io import atomic_write
from llip.run_dir import eval_store, is_sweep_dir, read_sweep_record

INDEX = ["model", "step", "eval_tau"]


def read_results(output_dir: str, external=(), catalog=None) -> list[dict]:
    """Our result files, plus CLIP_benchmark's from <output_dir>/external/ and `external`."""
    files = result_files(output_dir)
    found = [r for r in map(read_result, files) if r is not None]
    if len(found) < len(files):
        print(f"skipped {len(files) - len(found)} incomplete result file(s) in "
              f"{output_dir}/results (re-run the sweep to redo them)")
    extra = list(external)
    if os.path.isdir(os.path.join(output_dir, "external")):
        extra.insert(0, os.path.join(output_dir, "external"))
    found += read_clip_benchmark(extra, catalog)
    if not found:
        raise ConfigError(f"no results in {output_dir}/results: run evals.main_mc first")
    return found


def column_metrics(results: list[dict], catalog=None) -> dict:
    """dataset -> the metric of its column: the catalog's main metric, else the one most of
    the results have (ours before CLIP_benchmark's)."""
    found = {}
    for r in sorted(results, key=lambda r: r.get("source") == "clip_benchmark"):
        found.setdefault(r["dataset"], []).append(r["metric"])
    return {dataset: (catalog or {}).get(dataset, {}).get("metric") or
            max(metrics, key=metrics.count) for dataset, metrics in found.items()}


def column_of(dataset: str, metric: str, metrics: dict) -> str:
    return dataset if metric == metrics[dataset] else f"{dataset} [{metric}]"


def tables(results: list[dict], groups=None, catalog=None):
    """(long, wide) tables; `catalog` gives each dataset column its metric (column_metrics)."""
    long = pd.DataFrame(long_rows(results))
    long["step"] = long["step"].astype("Int64")  # public models' results have no step
    long = long.sort_values(["model", "step", "eval_tau", "dataset", "metric"])
    main = long[long["main"]].copy()
    metrics = column_metrics(results, catalog)
    main["column"] = [column_of(d, m, metrics) for d, m in zip(main["dataset"], main["metric"])]
    wide = main.groupby([*INDEX, "column"], dropna=False)["value"].first().unstack("column")
    wide.columns.name = None
    datasets = list(wide.columns)
    wide["average"] = wide[datasets].mean(axis=1)
    for name, members in (groups or {}).items():
        if any(m in datasets for m in members):  # NaN unless the row has every member
            wide[f"average_{name}"] = wide.reindex(columns=members).mean(axis=1, skipna=False)
    wide = wide.reset_index()
    wide.attrs["metrics"] = {c: metrics[c] if c in metrics else c.split(" [")[1][:-1]
                             for c in datasets}  # column -> its metric, for the legend
    return long.reset_index(drop=True), wide


PANELS_PER_ROW = 5


def plot(long: pd.DataFrame, path: str) -> None:
    """One panel per dataset (rows of PANELS_PER_ROW), one curve per (model, eval tau) with the
    same colour in every panel, and one legend for the figure: per-panel legends of every curve
    took most of the time of a large store (40 of 44 s at 10,000 results x 120 curves)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    main = long[long["main"] & long["step"].notna()]  # public models have no step to plot
    main = main.astype({"step": "int64"})
    datasets = sorted(main["dataset"].unique())
    if not datasets:
        return
    cols = min(len(datasets), PANELS_PER_ROW)
    rows = -(-len(datasets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    curves = {key: f"C{i % 10}" for i, key in enumerate(
        main.groupby(["model", "eval_tau"]).groups)}
    lines = {}
    for ax, dataset in zip(axes.flat, datasets):
        part = main[main["dataset"] == dataset]
        for (model, tau), curve in part.groupby(["model", "eval_tau"]):
            curve = curve.sort_values("step")
            label = model + (f" tau={tau}" if tau else "")
            lines[label], = ax.plot(curve["step"], curve["value"], marker="o",
                                    color=curves[model, tau], label=label)
        ax.set_title(f"{dataset} ({part['metric'].iloc[0]})", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.legend(lines.values(), lines.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0),
               fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def legend(wide: pd.DataFrame, groups: dict) -> str:
    """What every column of `wide` holds, in words, for under the table."""
    lines = ["columns (one metric each): " + ", ".join(
        f"{column} = {metric}" for column, metric in wide.attrs.get("metrics", {}).items()),
             "average: mean main metric over the datasets each row has results for"]
    for name, members in groups.items():
        if f"average_{name}" in wide.columns:
            lines.append(f"average_{name}: mean over all {len(members)} datasets of group "
                         f"'{name}' ({', '.join(members)}); empty where any is missing")
    return "\n".join(lines)


def aggregate(output_dir: str, groups=None, external=(), catalog=None) -> pd.DataFrame:
    """groups: name -> datasets (default: the default catalog's); external: CLIP_benchmark
    result files or folders; catalog: gives their main metric (default: the default catalog)."""
    if groups is None:
        groups = load_groups([DEFAULT_CATALOG])
    if catalog is None:
        catalog = load_catalogs([DEFAULT_CATALOG])
    results = read_results(output_dir, external, catalog)
    long, wide = tables(results, groups, catalog)
    metrics = column_metrics(results, catalog)
    for column, metric in wide.attrs["metrics"].items():
        if " [" in column:
            dataset = column.split(" [")[0]
            print(f"note: {dataset}: some rows have {metric}, not the column's "
                  f"{metrics[dataset]}: they are in column '{column}' (CLIP_benchmark's "
                  "--recall_k 1 5 10 gives every k)")
    os.makedirs(output_dir, exist_ok=True)
    long.to_csv(os.path.join(output_dir, "results_long.csv"), index=False)
    wide.to_csv(os.path.join(output_dir, "results_wide.csv"), index=False)
    shown = wide.astype({"step": object}).fillna({"step": ""})
    markdown = shown.to_markdown(index=False, floatfmt=".4f") + "\n\n" + legend(wide, groups)
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
    parser.add_argument("--catalog", action="append", default=None,
                        help="catalog(s) whose dataset groups get an average_<group> column and "
                        "whose main metrics name the columns (default: the sweep's, recorded "
                        "in OUTPUT_DIR/catalogs.json, else llip/evaluation/dataset_catalog.json)")
    parser.add_argument("--clip-benchmark", action="append", default=[], metavar="PATH",
                        help="CLIP_benchmark result JSON file or folder (repeatable)")
    args = parser.parse_args(argv)
    sweep_dir, record = None, None
    if is_sweep_dir(args.output_dir):  # its result store, and its own table after
        sweep_dir, record = args.output_dir, read_sweep_record(args.output_dir)
        args.output_dir = eval_store(sweep_dir)
    catalogs = args.catalog or recorded_catalogs(args.output_dir) or [DEFAULT_CATALOG]
    aggregate(args.output_dir, groups=load_groups(catalogs), external=args.clip_benchmark,
              catalog=load_catalogs(catalogs))
    if sweep_dir:
        print()
        sweep_table.write(read_results(args.output_dir, args.clip_benchmark,
                                       load_catalogs(catalogs)), record, sweep_dir,
                          args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
