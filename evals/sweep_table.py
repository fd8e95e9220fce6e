"""One table for a sweep (llip.sweep): its eval results with each axis in its own column.

    llip-aggregate <sweep dir>        (python -m evals.aggregate <sweep dir>)

Written beside the results, in the sweep's result store:
  sweep_wide.csv / .md    one row per (point, step, eval tau): the axes, then each dataset's main
                          metric and their average
  sweep_seeds.csv / .md   where seed is an axis: the rows of the same other axes, step and eval
                          tau averaged over seeds, as "mean +- std (n seeds)"
  sweep_vs_step.png       the average vs training step, one line per point
  sweep_vs_<axis>.png     the average at each point's last evaluated step vs that axis (mean
                          over seeds, the std as error bars), one line per value of the others
"""
from __future__ import annotations

import os

import pandas as pd

from llip.errors import ConfigError
from llip.evaluation.results import long_rows
from llip.io import atomic_write
from llip.run_dir import run_dir_of

SEED = "seed"


def _numeric(values: pd.Series) -> pd.Series:
    converted = pd.to_numeric(values, errors="coerce")
    return converted if converted.notna().all() else values


def sweep_frames(results: list[dict], record: dict, sweep_dir: str):
    """-> (wide, seeds or None): the sweep's rows with axis columns."""
    points = {os.path.join(os.path.abspath(sweep_dir), p["name"]): p for p in record["points"]}
    axes = list(record["axes"])
    mine = [r for r in results if os.path.abspath(run_dir_of(r["checkpoint"])) in points]
    if not mine:
        raise ConfigError(f"no eval results of the points of {sweep_dir} yet: the evals follow "
                          "the checkpoints as they appear (llip-status shows the runs)")
    long = pd.DataFrame(long_rows(mine))
    long = long[long["main"]]
    point_of = {r["id"]: points[os.path.abspath(run_dir_of(r["checkpoint"]))] for r in mine}
    long["point"] = long["id"].map(lambda i: point_of[i]["name"])
    for axis in axes:
        long[axis] = _numeric(long["id"].map(lambda i, a=axis: point_of[i]["values"].get(a)))
    index = ["point", *axes, "step", "eval_tau"]
    wide = long.pivot_table(index=index, columns="dataset", values="value", aggfunc="first")
    wide.columns.name = None
    datasets = list(wide.columns)
    wide["average"] = wide[datasets].mean(axis=1)
    wide = wide.reset_index().sort_values(index)
    if SEED not in axes or len(wide[SEED].unique()) < 2:
        return wide, None
    keys = [a for a in axes if a != SEED] + ["step", "eval_tau"]
    groups = wide.groupby(keys, dropna=False)[[*datasets, "average"]]
    mean, std, n = groups.mean(), groups.std(), groups.count()
    seeds = mean.copy().astype(object)
    for col in seeds.columns:
        seeds[col] = [f"{m:.4f} +- {s:.4f} ({c})" if c > 1 else f"{m:.4f} (1)"
                      for m, s, c in zip(mean[col], std[col].fillna(0), n[col])]
    return wide, seeds.reset_index()


def plot(wide: pd.DataFrame, axes: list, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for point, curve in wide.groupby("point"):
        ax.plot(curve["step"], curve["average"], marker="o", label=point)
    ax.set_xlabel("training step")
    ax.set_ylabel("average main metric")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    files.append(os.path.join(out_dir, "sweep_vs_step.png"))
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    last = wide[wide["step"] == wide.groupby("point")["step"].transform("max")]
    for axis in axes:
        if axis == SEED:
            continue
        others = [a for a in axes if a not in (axis, SEED)]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for key, part in (last.groupby(others) if others else [("", last)]):
            stats = part.groupby(axis)["average"].agg(["mean", "std"]).reset_index()
            ax.errorbar(stats[axis].astype(str) if stats[axis].dtype == object else stats[axis],
                        stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                        label=", ".join(f"{a}={v}" for a, v in zip(others, key if isinstance(
                            key, tuple) else (key,))) if others else None)
        ax.set_xlabel(axis)
        ax.set_ylabel("average main metric (last step)")
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=6)
        fig.tight_layout()
        files.append(os.path.join(out_dir, f"sweep_vs_{axis}.png"))
        fig.savefig(files[-1], dpi=120)
        plt.close(fig)
    return files


def write(results: list[dict], record: dict, sweep_dir: str, out_dir: str) -> pd.DataFrame:
    wide, seeds = sweep_frames(results, record, sweep_dir)
    os.makedirs(out_dir, exist_ok=True)
    shown = wide.fillna({"eval_tau": ""})
    wide.to_csv(os.path.join(out_dir, "sweep_wide.csv"), index=False)
    markdown = shown.to_markdown(index=False, floatfmt=".4f")
    atomic_write(os.path.join(out_dir, "sweep_wide.md"), markdown + "\n")
    print(f"sweep {record['name']}: {len(wide['point'].unique())} point(s)\n{markdown}")
    if seeds is not None:
        seeds.to_csv(os.path.join(out_dir, "sweep_seeds.csv"), index=False)
        text = seeds.to_markdown(index=False)
        atomic_write(os.path.join(out_dir, "sweep_seeds.md"), text + "\n")
        print(f"\nmean over seeds:\n{text}")
    files = plot(wide, list(record["axes"]), out_dir)
    print(f"\ntables: {out_dir}/sweep_wide.csv, sweep_wide.md"
          + (", sweep_seeds.csv, sweep_seeds.md" if seeds is not None else "")
          + f"\nplots:  {', '.join(os.path.basename(f) for f in files)}")
    return wide
