"""The paper's claim in miniature: when each image holds several objects and each caption names
only one or two of them, does Llip's caption-contextualised image embedding beat the single
embedding of CLIP and SigLIP at binding colour to shape?

Trains clip_scenes, siglip_scenes, llip_scenes and the mechanism control llip_scenes_zero_query
(Llip with the query zeroed: uniform attention, same parameters and compute) for equal steps on
llip.data.synthetic.scenes, several seeds each; evaluates every checkpoint (learning curves) through
evals.main_mc on the test split (bind_colour, bind_shape: 6-way per object; presence: mAP over
the 36 single-object prompts); measures Llip's attention (evals.attention); prints mean +- std
over seeds, the per-seed numbers and the acceptance verdict (paired by seed).

    python benchmarks/caption_diversity.py                  # scenes, 4 variants x 3 seeds
    python benchmarks/caption_diversity.py --sweep 2.5e-4,5e-4,1e-3,2e-3,4e-3 --seeds 1  # lr
    python benchmarks/caption_diversity.py --task attributes  # negative control (parity)

Everything goes to results/<task>/ (runs, eval JSON, summary.md, summary.json) and is reused:
an interrupted benchmark continues where it stopped; change --out when changing --steps.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import pandas as pd
import torch
import webdataset as wds
import yaml

from evals.aggregate import read_results
from llip.data import IMAGE_KEYS, tokenizer_for, transform_for
from llip.data.stream import expand_sources
from llip.evaluation.attention import attention_stats
from llip.evaluation.catalog import load_catalogs
from llip.io import atomic_write, read_text, write_json
from llip.loading import load_model
from llip.run_configs import get_config
from llip.run_dir import latest, metrics_path, step_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {"clip": "clip_scenes", "siglip": "siglip_scenes", "llip": "llip_scenes",
            "control": "llip_scenes_zero_query"}
BASELINES = ("clip", "siglip")
# Acceptance, fixed before any run: Llip vs each baseline on bind_shape and presence, paired by
# seed: mean gain >= 2 points and > 2 standard errors; bind_colour: mean loss <= 1 point; the
# control >= 10 points below Llip on the average of the three tasks; attention "selective".
MIN_GAIN, MIN_Z, MAX_COLOUR_LOSS, MIN_CONTROL_GAP = 0.02, 2.0, 0.01, 0.10
GAIN_TASKS = ("bind_shape", "presence")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("scenes", "attributes"), default="scenes")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="0: the configs' steps")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--sweep", default="", help="comma-separated lrs: runs every variant at each "
                   "(seeds 100+), evaluates the final checkpoints on the validation split")
    p.add_argument("--parallel", type=int, default=2, help="runs (and eval groups) at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


# ------------------------------------------------------------------ data, runs, evals
def build_data(task: str, out: str) -> dict:
    if task == "scenes":
        from llip.data.synthetic.scenes import build
        specs = build(os.path.join(out, "data"))
        return {"train": specs["train"], "test": specs["catalog_test"],
                "validation": specs["catalog_validation"]}
    from llip.data.synthetic.attributes import build
    specs = build(os.path.join(out, "data"))
    return {"train": specs["train"], "test": specs["catalog"], "validation": specs["catalog"]}


def plan(args, data: dict, logs: str) -> list[dict]:
    lrs = [float(x) for x in args.sweep.split(",")] if args.sweep else [None]
    seeds = range(100, 100 + args.seeds) if args.sweep else range(args.seeds)
    runs = []
    for seed in seeds:
        for variant in args.variants.split(","):
            config = get_config(VARIANTS[variant])
            steps = args.steps or config.total_steps
            for lr in lrs:
                lr = config.lr if lr is None else lr
                name = f"{variant}_lr{lr:g}_s{seed}"  # a changed config's lr is a new run
                overrides = [f"train_data={data['train']}", f"seed={seed}", f"logs={logs}",
                             f"name={name}", f"train_num_samples={steps * config.batch_size}",
                             "epochs=1", f"checkpoint_every={max(1, steps // 4)}", "keep_last=4",
                             f"lr={lr}"]
                runs.append({"name": name, "variant": variant, "seed": seed, "steps": steps,
                             "lr": lr, "config": config.name,
                             "overrides": overrides, "dir": os.path.join(logs, name)})
    return runs


def train(run: dict, threads: int) -> float:
    """One run through the normal CLI; a finished run is kept (resumable benchmark)."""
    path = latest(run["dir"])
    if path is not None and step_of(path) == run["steps"]:
        return 0.0
    start = time.time()
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads)}
    log = run["dir"] + ".log"
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "llip.main", run["config"],
                               *run["overrides"]], cwd=REPO, env=env, stdout=f,
                              stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"training {run['name']} failed (exit {code}): see {log}")
    print(f"trained {run['name']} ({run['steps']} steps) in {time.time() - start:.0f}s",
          flush=True)
    return time.time() - start


def evaluate(runs, catalog: str, out: str, every_checkpoint: bool, parallel: int) -> None:
    """evals.main_mc over the runs, split into `parallel` groups (one process each)."""
    groups = [runs[i::parallel] for i in range(parallel) if runs[i::parallel]]

    def one(i_group):
        i, group = i_group
        sweep = {"checkpoints": [{"path": r["dir"], "all": True} if every_checkpoint
                                 else r["dir"] for r in group],
                 "catalogs": [catalog], "datasets": "all", "batch_size": 500, "workers": 0,
                 "output_dir": os.path.join(out, f"group{i}"), "launcher": "local"}
        fname = os.path.join(out, f"sweep{i}.yaml")
        os.makedirs(out, exist_ok=True)
        atomic_write(fname, yaml.safe_dump(sweep))
        with open(os.path.join(out, f"main_mc{i}.log"), "w") as f:
            code = subprocess.run([sys.executable, "-m", "evals.main_mc", "--fname", fname],
                                  cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                  stdout=f, stderr=subprocess.STDOUT).returncode
        if code:
            raise SystemExit(f"evals failed (exit {code}): see {out}/main_mc{i}.log")

    with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
        list(pool.map(one, enumerate(groups)))


def results_frame(runs, out: str) -> pd.DataFrame:
    by_name = {r["name"]: r for r in runs}
    rows = []
    for group in sorted(os.listdir(out)):
        if group.startswith("group"):
            for r in read_results(os.path.join(out, group)):
                if r["model"] in by_name:
                    run = by_name[r["model"]]
                    rows.append({"variant": run["variant"], "seed": run["seed"],
                                 "lr": run["lr"], "step": r["step"], "dataset": r["dataset"],
                                 "value": r["by_tau"][0]["value"]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ diagnostics
def last_metrics(run: dict) -> dict:
    lines = [json.loads(x) for x in read_text(metrics_path(run["dir"])).splitlines() if x]
    return {k: lines[-1].get(k) for k in ("logit_scale", "logit_bias", "loss")}


def prompts_of(catalog: dict) -> list[str]:
    return [e["templates"][0].format(c=c) for e in catalog.values()
            if isinstance(e.get("classnames"), list) for c in e["classnames"]]


def test_images(catalog: dict, transform, n: int = 500):
    entry = next(iter(catalog.values()))
    urls = [u for s in expand_sources(entry["path"]) for u in s]
    images = []
    for (image,) in wds.WebDataset(urls, shardshuffle=False, empty_check=False) \
            .decode("pilrgb").to_tuple(IMAGE_KEYS):
        images.append(transform(image))
        if len(images) == n:
            break
    return [torch.stack(images[i: i + 250]) for i in range(0, len(images), 250)]


def attention(run: dict, catalog_path: str) -> dict:
    torch.set_num_threads(1)
    model, cfg, _ = load_model(latest(run["dir"]))
    catalog = load_catalogs([catalog_path])
    return attention_stats(model, tokenizer_for(cfg), test_images(catalog, transform_for(
        cfg, False)), prompts_of(catalog))


# ------------------------------------------------------------------ tables and verdict
def mean_std(table: pd.DataFrame) -> pd.DataFrame:
    g = table.groupby("variant")
    return pd.DataFrame({c: [f"{m:.3f} +- {s:.3f}" for m, s in zip(g[c].mean(), g[c].std())]
                         for c in table.columns if c not in ("variant", "seed")},
                        index=g[table.columns[2]].mean().index)


def paired(per_seed: pd.DataFrame, a: str, b: str, column: str) -> tuple[float, float, int]:
    """Mean of a - b over the seeds both have, its standard error, and the number of pairs."""
    x = per_seed[per_seed.variant == a].set_index("seed")[column]
    y = per_seed[per_seed.variant == b].set_index("seed")[column]
    d = (x - y).dropna()
    se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
    return float(d.mean()), se, len(d)


def verdict(per_seed: pd.DataFrame, attn: dict) -> tuple[list[str], bool]:
    lines, ok = [], True
    for base in BASELINES:
        for task in GAIN_TASKS:
            m, se, n = paired(per_seed, "llip", base, task)
            passed = m >= MIN_GAIN and m > MIN_Z * se
            ok &= passed
            lines.append(f"llip - {base} on {task}: {100 * m:+.1f} points, SE {100 * se:.1f} "
                         f"({n} seeds): {'PASS' if passed else 'FAIL'} (need >= "
                         f"{100 * MIN_GAIN:.0f} and > {MIN_Z:g} SE)")
        m, se, n = paired(per_seed, "llip", base, "bind_colour")
        passed = m >= -MAX_COLOUR_LOSS
        ok &= passed
        lines.append(f"llip - {base} on bind_colour: {100 * m:+.1f} points, SE {100 * se:.1f}: "
                     f"{'PASS' if passed else 'FAIL'} (need >= -{100 * MAX_COLOUR_LOSS:.0f})")
    m, se, n = paired(per_seed, "llip", "control", "average")
    passed = m >= MIN_CONTROL_GAP
    ok &= passed
    lines.append(f"llip - control (query zeroed) on the average: {100 * m:+.1f} points, SE "
                 f"{100 * se:.1f}: {'PASS' if passed else 'FAIL'} (need >= "
                 f"{100 * MIN_CONTROL_GAP:.0f})")
    kinds = [a["verdict"] for (variant, _), a in attn.items() if variant == "llip"]
    passed = bool(kinds) and all(k == "selective" for k in kinds)
    ok &= passed
    lines.append(f"llip attention per seed: {', '.join(kinds)}: "
                 f"{'PASS' if passed else 'FAIL'} (need selective: neither uniform nor "
                 "collapsed)")
    lines.append(f"ACCEPTANCE: {'MET' if ok else 'NOT MET'}")
    return lines, ok


def report(args, runs, frame: pd.DataFrame, attn: dict, timing: dict) -> str:
    out = []
    final = frame[frame.step == frame.groupby(["variant", "seed"]).step.transform("max")]
    per_seed = final.pivot_table(index=["variant", "seed"], columns="dataset",
                                 values="value").reset_index()
    per_seed["average"] = per_seed.drop(columns=["variant", "seed"]).mean(axis=1)
    extra = pd.DataFrame([{"variant": r["variant"], "seed": r["seed"], "lr": r["lr"],
                           **last_metrics(r)} for r in runs])
    per_seed = per_seed.merge(extra, on=["variant", "seed"])
    for (variant, seed), a in attn.items():
        mask = (per_seed.variant == variant) & (per_seed.seed == seed)
        per_seed.loc[mask, "attn_entropy"] = a["entropy"]
        per_seed.loc[mask, "attn_spread"] = a["spread"]
    steps = runs[0]["steps"]
    out.append(f"## {args.task}: {args.seeds} seeds, {steps} steps of batch "
               f"{get_config(runs[0]['config']).batch_size} for every variant "
               f"(test split; mean +- std over seeds)\n")
    tasks = sorted(frame.dataset.unique()) + ["average"]
    out.append(mean_std(per_seed[["variant", "seed", *tasks]]).to_markdown())
    out.append("\nper seed (final checkpoint):\n")
    cols = ["variant", "seed", "lr", *tasks, "logit_scale", "logit_bias"] + \
        [c for c in ("attn_entropy", "attn_spread") if c in per_seed]
    out.append(per_seed[cols].to_markdown(  # lr as 0.0005, not rounded to 0.001
        index=False, floatfmt=["g" if c == "lr" else ".3f" for c in cols]))
    out.append("\nlearning curves (mean over seeds):\n")
    curve = frame.pivot_table(index=["dataset", "variant"], columns="step", values="value")
    out.append(curve.to_markdown(floatfmt=".3f"))
    ok = None
    if args.task == "scenes" and {"llip", "control", *BASELINES} <= set(per_seed.variant):
        lines, ok = verdict(per_seed, attn)
        out.append("\nacceptance (paired by seed):\n")
        out.extend(f"- {x}" for x in lines)
    out.append(f"\ntime: train {timing['train']:.0f}s, evals {timing['evals']:.0f}s, total "
               f"{timing['total']:.0f}s; load average {timing['load_start']:.1f} at start, "
               f"{timing['load_end']:.1f} at end ({os.cpu_count()} cores)")
    write_json(os.path.join(args.out, "summary.json"), {
        "per_seed": per_seed.to_dict("records"), "curves": frame.to_dict("records"),
        "attention": {f"{v}_s{s}": a for (v, s), a in attn.items()}, "accepted": ok,
        "timing": timing}, indent=1)
    return "\n".join(out)


def sweep_report(frame: pd.DataFrame) -> str:
    table = frame.pivot_table(index=["variant", "lr"], columns="dataset", values="value")
    table["average"] = table.mean(axis=1)
    best = table["average"].groupby("variant").idxmax()
    return (table.to_markdown(floatfmt=".3f") + "\n\nbest lr on validation (average): " +
            ", ".join(f"{v} {lr:g}" for v, (_, lr) in best.items()))


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out = args.out or os.path.join(REPO, "results", args.task + ("_sweep" if args.sweep
                                                                       else ""))
    t0, load0 = time.time(), os.getloadavg()[0]
    data = build_data(args.task, args.out)
    runs = plan(args, data, os.path.join(args.out, "runs"))
    print(f"{len(runs)} runs, {args.parallel} at a time, output in {args.out}", flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(lambda r: train(r, args.threads), runs))
    t_train = time.time()
    split = "validation" if args.sweep else "test"
    evaluate(runs, data[split], os.path.join(args.out, f"evals_{split}"),
             every_checkpoint=not args.sweep, parallel=args.parallel)
    frame = results_frame(runs, os.path.join(args.out, f"evals_{split}"))
    if args.sweep:
        print(sweep_report(frame))
        return
    attn = {(r["variant"], r["seed"]): attention(r, data["test"]) for r in runs
            if get_config(r["config"]).loss == "llip"}
    timing = {"train": t_train - t0, "evals": time.time() - t_train,
              "total": time.time() - t0, "load_start": load0, "load_end": os.getloadavg()[0]}
    text = report(args, runs, frame, attn, timing)
    atomic_write(os.path.join(args.out, "summary.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
