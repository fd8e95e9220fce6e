"""The paper's claim in miniature: when each image holds several objects and each caption names
only one or two of them, does Llip's caption-contextualised image embedding beat the single
embedding of CLIP and SigLIP at binding colour to shape?

Two tasks. scenes (llip.data.synthetic.scenes): 3 objects per image, captions naming 1 or 2;
evals bind_colour, bind_shape (6-way per object) and presence (mAP over the 36 single-object
prompts). attributes (llip.data.synthetic.attributes): one object per image, each caption names
one of its attributes; one 4-way zero-shot task per attribute: the negative control, where parity
is expected. Every variant trains for equal steps through the normal CLI (`python -m llip.main`)
and is evaluated through `python -m evals.main_mc`.

Variants (VARIANTS): clip, siglip, llip (the configs' Llip recipe), control (that Llip with the
query zeroed: uniform attention, same parameters and compute), and Llip recipes as options:
llip_ours (init=ours), llip_ref (init=reference: the release's head scale and PyTorch-default
vision blocks), llip_ref_decay (init=reference and decay_tokens=true, the release's recipe).

    # lr sweep: every variant on the same grid, 3 validation seeds (100+) per cell, validation
    # split; each variant's lr is the best MEAN over its seeds (table: mean +- std per cell)
    python benchmarks/caption_diversity.py --task scenes --sweep 2.5e-4,5e-4,1e-3,2e-3,4e-3
    # test table: 8 seeds (0..7) at the chosen lrs (CHOSEN_LR), test split, per-seed rows with
    # the collapse diagnostic, the learning curves and the acceptance verdict
    python benchmarks/caption_diversity.py --task scenes --seeds 8

Collapse diagnostic (llip.evaluation.attention.text_collapse, the function the in-training
evals log as <dataset>/text_collapse) on every evaluated checkpoint: the mean pairwise cosine of
the targets (and Llip's queries) of prompts that should differ (scenes: the 6 colours of each
shape, the 6 shapes of each colour; attributes: the 4 values of each attribute); a run whose
targets and queries are both above llip.evaluation.attention.COLLAPSED_COSINE on a group is named
collapsed on it.

Everything goes to results/<task>[_sweep]/ (runs, eval JSON, summary.md, summary.json) and is
reused: a run's directory name holds its config's hash, so an interrupted benchmark continues
where it stopped and a changed config (steps, init, ...) is a new run, never a stale one.
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import pandas as pd
import torch
import webdataset as wds
import yaml

from evals.aggregate import read_results
from llip.config import to_dict
from llip.data import IMAGE_KEYS, tokenizer_for, transform_for
from llip.data.stream import expand_sources
from llip.evaluation.attention import COLLAPSED_COSINE, attention_stats, text_collapse
from llip.evaluation.catalog import load_catalogs
from llip.evaluation.zeroshot import encode_texts
from llip.io import atomic_write, read_json, read_text, write_json
from llip.loading import load_model
from llip.run_configs import get_config, resolve
from llip.run_dir import complete_checkpoints, latest, metrics_path, step_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {  # family -> registered config, per task
    "scenes": {"clip": "clip_scenes", "siglip": "siglip_scenes", "llip": "llip_scenes",
               "control": "llip_scenes_zero_query"},
    "attributes": {"clip": "clip_attributes", "siglip": "siglip_attributes",
                   "llip": "llip_attributes", "control": "llip_attributes_zero_query"},
}
VARIANTS = {  # variant -> (family, overrides of the family's config)
    "clip": ("clip", ()), "siglip": ("siglip", ()),
    "llip": ("llip", ()), "control": ("control", ()),
    "llip_ours": ("llip", ("init=ours",)),
    "llip_ref": ("llip", ("init=reference",)),
    "llip_ref_decay": ("llip", ("init=reference", "decay_tokens=true")),
}
# The init of the Llip configs, a rule fixed before the sweep's results were seen: init=reference
# becomes the default of every Llip config if llip_ref at its chosen lr beats llip_ours at its
# chosen lr on the scenes validation sweep (the average) by more than MIN_Z standard errors of
# the difference of the two means (3 seeds each); otherwise init=ours stays the default.
RECIPE_PAIRS = (("llip_ref", "llip_ours"), ("llip_ref_decay", "llip_ref"),
                ("llip_ref_decay", "llip_ours"))
# The lr of each variant on each task: the best mean over 3 validation seeds of the sweep
# (benchmarks/RESULTS.md has the sweep tables). The configs of clip, siglip, llip and control
# carry the same values (tests/unit/test_scenes.py checks it).
CHOSEN_LR = {
    "scenes": {"clip": 2e-3, "siglip": 1e-3, "llip": 2e-3, "control": 5e-4,
               "llip_ours": 2e-3, "llip_ref": 1e-3},
    "attributes": {"clip": 5e-4, "siglip": 5e-4, "llip": 5e-4, "control": 2.5e-4},
}
SWEEP_VARIANTS = "clip,siglip,control,llip_ours,llip_ref,llip_ref_decay"
TEST_VARIANTS = "clip,siglip,llip,control"
# The Llip recipe (init, decay_tokens) is chosen on the scenes sweep; the attributes sweep only
# chooses the lr of each variant of its test table.
SWEEP_VARIANTS_OF = {"scenes": SWEEP_VARIANTS, "attributes": TEST_VARIANTS}
BASELINES = ("clip", "siglip")
# Acceptance on scenes, fixed before any run: Llip vs each baseline on bind_shape and presence,
# paired by seed: mean gain >= 2 points and > 2 standard errors; bind_colour: mean loss <= 1
# point; the control >= 10 points below Llip on the average of the three tasks; attention
# "selective".
MIN_GAIN, MIN_Z, MAX_COLOUR_LOSS, MIN_CONTROL_GAP = 0.02, 2.0, 0.01, 0.10
GAIN_TASKS = ("bind_shape", "presence")
# Parity on attributes (the negative control), fixed before its 8-seed run: the paired mean
# difference Llip - baseline on the average of the three attribute tasks is within 2 points
# (the margin of the scenes criterion) of zero, for each baseline.
PARITY = 0.02
KEYS = ("name", "description", "logs", "seed", "lr", "train_data")  # not part of a run's key
# Sweep budget rule, fixed before any sweep result was seen: the first seed (100) runs every cell
# of the grid; an lr where EVERY variant's average on that seed is below PRUNE_FRACTION of the
# variant's own best on that seed is not run on the further seeds (no variant can be chosen
# there without a 3-seed mean gain of over a third of its best; its cell keeps 1 seed).
PRUNE_FRACTION = 0.75


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=tuple(CONFIGS), default="scenes")
    p.add_argument("--seeds", type=int, default=0,
                   help="seeds per cell (0: 3 for a sweep, 8 for the test table)")
    p.add_argument("--steps", type=int, default=0, help="0: the configs' steps")
    p.add_argument("--variants", default="",
                   help="comma-separated (default for a sweep: " + "; ".join(
                       f"{t}: {v}" for t, v in SWEEP_VARIANTS_OF.items()) + "; "
                   f"{TEST_VARIANTS} for the test table); any of {', '.join(VARIANTS)}")
    p.add_argument("--sweep", default="", help="comma-separated lrs: runs every variant at each "
                   "(seeds 100+), evaluates the final checkpoints on the validation split")
    p.add_argument("--parallel", type=int, default=2, help="runs (and eval groups) at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    args.seeds = args.seeds or (3 if args.sweep else 8)
    args.variants = args.variants or (SWEEP_VARIANTS_OF[args.task] if args.sweep
                                      else TEST_VARIANTS)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    return args


# ------------------------------------------------------------------ data, runs, evals
def build_data(task: str, out: str) -> dict:
    module = __import__(f"llip.data.synthetic.{task}", fromlist=["build"])
    specs = module.build(os.path.join(out, "data"))
    return {"train": specs["train"], "test": specs["catalog_test"],
            "validation": specs["catalog_validation"]}


def run_key(cfg) -> str:
    """A short hash of everything that makes a run what it is, except what its name already
    says (lr, seed) and where it lives: two variants with the same recipe share their runs."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in KEYS}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def lr_of(task: str, variant: str, lr) -> float:
    if lr is not None:
        return lr
    if variant not in CHOSEN_LR[task]:
        raise SystemExit(f"no lr chosen for {variant} on {task}: run its sweep (--sweep) and "
                         "record the choice in CHOSEN_LR")
    return CHOSEN_LR[task][variant]


def plan(args, data: dict, logs: str) -> list[dict]:
    """One entry per (variant, seed, lr); entries of variants with the same recipe share a run
    (same `name`)."""
    lrs = [float(x) for x in args.sweep.split(",")] if args.sweep else [None]
    seeds = range(100, 100 + args.seeds) if args.sweep else range(args.seeds)
    entries = []
    for seed in seeds:
        for variant in args.variants.split(","):
            family, changes = VARIANTS[variant]
            config = CONFIGS[args.task][family]
            base = resolve(config, changes)
            steps = args.steps or base.total_steps
            fixed = [*changes, f"train_data={data['train']}", f"train_num_samples="
                     f"{steps * base.batch_size}", "epochs=1",
                     f"checkpoint_every={max(1, steps // 4)}", "keep_last=4"]
            for lr in lrs:
                lr = lr_of(args.task, variant, lr)
                cfg = resolve(config, [*fixed, f"lr={lr}", f"seed={seed}"])
                name = f"{config}_{run_key(cfg)}_lr{lr:g}_s{seed}"
                entries.append({"name": name, "variant": variant, "seed": seed, "lr": lr,
                                "steps": steps, "config": config, "loss": cfg.loss,
                                "overrides": [*fixed, f"lr={lr}", f"seed={seed}",
                                              f"logs={logs}", f"name={name}"],
                                "dir": os.path.join(logs, name)})
    return entries


def unique_runs(entries) -> list[dict]:
    return list({e["name"]: e for e in entries}.values())


def trained(run: dict) -> bool:
    """The run's last checkpoint is its final step (the benchmark is resumable: kept, not rerun)."""
    path = latest(run["dir"])
    return path is not None and step_of(path) == run["steps"]


def train(run: dict, threads: int) -> float:
    """One run through the normal CLI."""
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
    # a run's group is a function of its name: a later call with more runs reuses its results
    by_group = [[r for r in runs if int(hashlib.sha256(r["name"].encode()).hexdigest(), 16)
                 % parallel == i] for i in range(parallel)]
    groups = [g for g in by_group if g]

    def one(group):
        i = by_group.index(group)
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
        list(pool.map(one, groups))


def results_frame(entries, out: str) -> pd.DataFrame:
    """One row per (variant, seed, lr, step, dataset) from the eval results of `out`."""
    by_name = {}
    for e in entries:
        by_name.setdefault(e["name"], []).append(e)
    rows = []
    for group in sorted(os.listdir(out)):
        if group.startswith("group"):
            for r in read_results(os.path.join(out, group)):
                for e in by_name.get(r["model"], ()):
                    rows.append({"variant": e["variant"], "seed": e["seed"], "lr": e["lr"],
                                 "step": r["step"], "dataset": r["dataset"],
                                 "value": r["by_tau"][0]["value"]})
    return pd.DataFrame(rows).drop_duplicates(["variant", "seed", "lr", "step", "dataset"])


# ------------------------------------------------------------------ diagnostics
def collapse_groups(task: str) -> dict:
    """Group name -> lists of prompts that should differ (each list: one text_collapse call)."""
    if task == "scenes":
        from llip.data.synthetic.scenes import COLORS, PROMPT, SHAPES
        return {"colour": [[PROMPT.format(c=c, s=s) for c in COLORS] for s in SHAPES],
                "shape": [[PROMPT.format(c=c, s=s) for s in SHAPES] for c in COLORS]}
    from llip.data.synthetic.attributes import TASKS
    return {attr: [[t.format(c=n) for n in names] for t in templates]
            for attr, (names, templates) in TASKS.items()}


def summarise_collapse(per_list: list[dict]) -> dict:
    """text_collapse of each prompt list of a group -> the group's means and verdict (the same
    rule as text_collapse, on the means)."""
    target = sum(x["target_cosine"] for x in per_list) / len(per_list)
    queries = [x["query_cosine"] for x in per_list if x["query_cosine"] is not None]
    query = sum(queries) / len(queries) if queries else None
    collapsed = target > COLLAPSED_COSINE and (query is None or query > COLLAPSED_COSINE)
    return {"target_cosine": target, "query_cosine": query, "collapsed": collapsed}


@torch.no_grad()
def collapse_of(model, tokenizer, groups: dict) -> dict:
    return {g: summarise_collapse([text_collapse(encode_texts(model, tokenizer, prompts))
                                   for prompts in lists]) for g, lists in groups.items()}


def collapse(run: dict, task: str, every_checkpoint: bool) -> dict:
    """{step: {group: ...}} for the run's final (or every) checkpoint, cached in the run dir."""
    torch.set_num_threads(1)
    cache = os.path.join(run["dir"], "collapse.json")
    known = read_json(cache) if os.path.exists(cache) else {}
    paths = complete_checkpoints(run["dir"])
    paths = paths if every_checkpoint else paths[-1:]
    groups = collapse_groups(task)
    for path in paths:
        step = str(step_of(path))
        if step not in known or set(known[step]) != set(groups):
            model, cfg, _ = load_model(path)
            known[step] = collapse_of(model, tokenizer_for(cfg), groups)
    write_json(cache, known, indent=1)
    return {step_of(p): known[str(step_of(p))] for p in paths}


def collapse_columns(by_group: dict) -> dict:
    """Flat per-seed columns: tcos_<group>, qcos_<group> and `collapsed` (the groups, or -)."""
    out = {}
    for g, c in by_group.items():
        out[f"tcos_{g}"] = c["target_cosine"]
        out[f"qcos_{g}"] = float("nan") if c["query_cosine"] is None else c["query_cosine"]
    out["collapsed"] = ",".join(g for g, c in by_group.items() if c["collapsed"]) or "-"
    return out


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


# ------------------------------------------------------------------ tables and verdicts
def mean_std(table: pd.DataFrame, columns) -> pd.DataFrame:
    g = table.groupby("variant", sort=False)
    return pd.DataFrame({c: [f"{m:.3f} +- {s:.3f}" for m, s in zip(g[c].mean(), g[c].std())]
                         for c in columns}, index=g[columns[0]].mean().index)


def paired(per_seed: pd.DataFrame, a: str, b: str, column: str) -> tuple[float, float, int]:
    """Mean of a - b over the seeds both have, its standard error, and the number of pairs."""
    x = per_seed[per_seed.variant == a].set_index("seed")[column]
    y = per_seed[per_seed.variant == b].set_index("seed")[column]
    d = (x - y).dropna()
    se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
    return float(d.mean()), se, len(d)


def verdict(per_seed: pd.DataFrame, attn: dict, llip: str = "llip") -> tuple[list[str], bool]:
    """The scenes acceptance for one Llip variant (the committed one is "llip")."""
    lines, ok = [], True
    for base in BASELINES:
        for task in GAIN_TASKS:
            m, se, n = paired(per_seed, llip, base, task)
            passed = m >= MIN_GAIN and m > MIN_Z * se
            ok &= passed
            lines.append(f"{llip} - {base} on {task}: {100 * m:+.1f} points, SE {100 * se:.1f} "
                         f"({n} seeds): {'PASS' if passed else 'FAIL'} (need >= "
                         f"{100 * MIN_GAIN:.0f} and > {MIN_Z:g} SE)")
        m, se, n = paired(per_seed, llip, base, "bind_colour")
        passed = m >= -MAX_COLOUR_LOSS
        ok &= passed
        lines.append(f"{llip} - {base} on bind_colour: {100 * m:+.1f} points, SE {100 * se:.1f}: "
                     f"{'PASS' if passed else 'FAIL'} (need >= -{100 * MAX_COLOUR_LOSS:.0f})")
    m, se, n = paired(per_seed, llip, "control", "average")
    passed = m >= MIN_CONTROL_GAP
    ok &= passed
    lines.append(f"{llip} - control (query zeroed) on the average: {100 * m:+.1f} points, SE "
                 f"{100 * se:.1f}: {'PASS' if passed else 'FAIL'} (need >= "
                 f"{100 * MIN_CONTROL_GAP:.0f})")
    kinds = [a["verdict"] for (variant, _), a in sorted(attn.items()) if variant == llip]
    passed = bool(kinds) and all(k == "selective" for k in kinds)
    ok &= passed
    lines.append(f"{llip} attention per seed: {', '.join(kinds)}: "
                 f"{'PASS' if passed else 'FAIL'} (need selective: neither uniform nor "
                 "collapsed)")
    lines.append(f"ACCEPTANCE: {'MET' if ok else 'NOT MET'}")
    return lines, ok


def parity(per_seed: pd.DataFrame, llip: str = "llip") -> tuple[list[str], bool]:
    """The attributes verdict: Llip within PARITY of each baseline on the average."""
    lines, ok = [], True
    for base in BASELINES:
        m, se, n = paired(per_seed, llip, base, "average")
        passed = abs(m) < PARITY
        ok &= passed
        lines.append(f"{llip} - {base} on the average: {100 * m:+.1f} points, SE {100 * se:.1f} "
                     f"({n} seeds): {'PASS' if passed else 'FAIL'} (parity: within "
                     f"{100 * PARITY:.0f} points)")
    lines.append(f"PARITY: {'MET' if ok else 'NOT MET'}")
    return lines, ok


def per_seed_table(entries, frame: pd.DataFrame, attn: dict, coll: dict) -> pd.DataFrame:
    final = frame[frame.step == frame.groupby(["variant", "seed"]).step.transform("max")]
    per_seed = final.pivot_table(index=["variant", "seed"], columns="dataset",
                                 values="value").reset_index()
    per_seed["average"] = per_seed.drop(columns=["variant", "seed"]).mean(axis=1)
    extra = pd.DataFrame([{"variant": e["variant"], "seed": e["seed"], "lr": e["lr"],
                           **last_metrics(e), **collapse_columns(coll[e["name"]][max(
                               coll[e["name"]])])} for e in entries])
    per_seed = per_seed.merge(extra, on=["variant", "seed"])
    for (variant, seed), a in attn.items():
        mask = (per_seed.variant == variant) & (per_seed.seed == seed)
        per_seed.loc[mask, "attn_entropy"] = a["entropy"]
        per_seed.loc[mask, "attn_spread"] = a["spread"]
    order = {v: i for i, v in enumerate(dict.fromkeys(e["variant"] for e in entries))}
    return per_seed.sort_values(["variant", "seed"], key=lambda c: c.map(order)
                                if c.name == "variant" else c).reset_index(drop=True)


def report(args, entries, frame: pd.DataFrame, attn: dict, coll: dict, timing: dict) -> str:
    out = []
    per_seed = per_seed_table(entries, frame, attn, coll)
    steps = entries[0]["steps"]
    out.append(f"## {args.task}: {args.seeds} seeds, {steps} steps of batch "
               f"{get_config(entries[0]['config']).batch_size} for every variant "
               f"(test split; mean +- std over seeds)\n")
    tasks = sorted(frame.dataset.unique()) + ["average"]
    out.append(mean_std(per_seed, tasks).assign(
        lr=per_seed.groupby("variant", sort=False).lr.first().map("{:g}".format),
        collapsed=per_seed.groupby("variant", sort=False).collapsed.apply(
            lambda c: f"{(c != '-').sum()}/{len(c)}")).to_markdown())
    out.append(f"\ncollapsed: seeds whose targets (and Llip's queries) of the prompts that "
               f"should differ have a mean pairwise cosine above {COLLAPSED_COSINE:g} on a "
               "group (tcos_/qcos_ columns below)\n")
    out.append("per seed (final checkpoint):\n")
    groups = list(collapse_groups(args.task))
    cols = ["variant", "seed", "lr", *tasks, "logit_scale", "logit_bias",
            *[f"tcos_{g}" for g in groups], *[f"qcos_{g}" for g in groups], "collapsed"] + \
        [c for c in ("attn_entropy", "attn_spread") if c in per_seed]
    out.append(per_seed[cols].to_markdown(  # lr as 0.0005, not rounded to 0.001
        index=False, floatfmt=["g" if c == "lr" else ".3f" for c in cols]))
    out.append("\nlearning curves (mean over seeds), and the collapse diagnostic at each "
               "checkpoint (mean target cosine per group; collapsed: seeds collapsed):\n")
    curve = frame.pivot_table(index=["dataset", "variant"], columns="step", values="value",
                              sort=False)
    rows = []
    for e in entries:
        for step, by_group in coll[e["name"]].items():
            for g, c in by_group.items():
                rows.append({"dataset": f"tcos_{g}", "variant": e["variant"], "step": step,
                             "value": c["target_cosine"]})
            rows.append({"dataset": "collapsed", "variant": e["variant"], "step": step,
                         "value": float(any(c["collapsed"] for c in by_group.values()))})
    rows = pd.DataFrame(rows)
    cos = rows[rows.dataset != "collapsed"].pivot_table(
        index=["dataset", "variant"], columns="step", values="value", aggfunc="mean", sort=False)
    count = rows[rows.dataset == "collapsed"].pivot_table(
        index=["dataset", "variant"], columns="step", values="value", aggfunc="sum", sort=False)
    extra = pd.concat([cos, count])
    out.append(pd.concat([curve, extra]).to_markdown(floatfmt=".3f"))
    ok = None
    llips = [v for v in dict.fromkeys(per_seed.variant) if VARIANTS[v][0] == "llip"]
    if args.task == "scenes" and {"llip", "control", *BASELINES} <= set(per_seed.variant):
        lines, ok = verdict(per_seed, attn)
        out.append("\nacceptance (paired by seed):\n")
        out.extend(f"- {x}" for x in lines)
        for other in (v for v in llips if v != "llip"):
            lines, _ = verdict(per_seed, attn, other)
            out.append(f"\nthe same criteria for {other} (not the acceptance: its recipe is "
                       "not the configs'):\n")
            out.extend(f"- {x}" for x in lines)
    if args.task == "attributes" and {"llip", *BASELINES} <= set(per_seed.variant):
        lines, ok = parity(per_seed)
        out.append("\nparity (paired by seed):\n")
        out.extend(f"- {x}" for x in lines)
        for other in (v for v in llips if v != "llip"):
            lines, _ = parity(per_seed, other)
            out.append(f"\nthe same for {other} (not the verdict):\n")
            out.extend(f"- {x}" for x in lines)
    out.append(f"\ntime: training and evals {timing['train']:.0f}s, diagnostics "
               f"{timing['evals']:.0f}s, total "
               f"{timing['total']:.0f}s; load average {timing['load_start']:.1f} at start, "
               f"{timing['load_end']:.1f} at end ({os.cpu_count()} cores)")
    write_json(os.path.join(args.out, "summary.json"), {
        "per_seed": per_seed.to_dict("records"), "curves": frame.to_dict("records"),
        "attention": {f"{v}_s{s}": a for (v, s), a in attn.items()},
        "collapse": {e["name"]: coll[e["name"]] for e in entries}, "accepted": ok,
        "timing": timing}, indent=1)
    return "\n".join(out)


def choose(cells: pd.DataFrame) -> dict:
    """cells: one row per (variant, lr, seed) with an `average` column -> {variant: lr} with the
    best mean over seeds (ties: the smaller lr)."""
    means = cells.groupby(["variant", "lr"]).average.mean().reset_index()
    best = means.sort_values(["variant", "average", "lr"], ascending=[True, False, True])
    return dict(best.groupby("variant").head(1)[["variant", "lr"]].itertuples(index=False))


def pruned_lrs(frame: pd.DataFrame) -> list[float]:
    """The lrs where every variant's average (first seed) is < PRUNE_FRACTION of its best."""
    first = frame[frame.seed == frame.seed.min()]
    avg = first.pivot_table(index=["variant", "lr"], columns="dataset", values="value") \
        .mean(axis=1).unstack("variant")  # lr x variant
    low = avg < PRUNE_FRACTION * avg.max()
    return [float(lr) for lr in avg.index[low.all(axis=1)]]


def sweep_report(args, entries, frame: pd.DataFrame, coll: dict) -> str:
    cells = frame.pivot_table(index=["variant", "lr", "seed"], columns="dataset",
                              values="value").reset_index()
    tasks = [c for c in cells.columns if c not in ("variant", "lr", "seed")]
    cells["average"] = cells[tasks].mean(axis=1)
    status = pd.DataFrame([{"variant": e["variant"], "lr": e["lr"], "seed": e["seed"],
                            "collapsed": collapse_columns(coll[e["name"]][max(
                                coll[e["name"]])])["collapsed"]} for e in entries])
    cells = cells.merge(status, on=["variant", "lr", "seed"])
    g = cells.groupby(["variant", "lr"], sort=False)
    table = pd.DataFrame({c: [f"{m:.3f} +- {s:.3f}" for m, s in zip(g[c].mean(), g[c].std())]
                          for c in [*tasks, "average"]}, index=g.average.mean().index)
    table.insert(0, "seeds", g.size())
    table["per seed (average)"] = g.average.apply(lambda x: " / ".join(f"{v:.3f}" for v in x))
    table["collapsed"] = g.collapsed.apply(
        lambda c: f"{(c != '-').sum()}/{len(c)}" + (f" ({','.join(sorted(set(c) - {'-'}))})"
                                                    if (c != "-").any() else ""))
    chosen = choose(cells)
    grid = sorted(cells.lr.unique())
    pruned = sorted(set(grid) - {e["lr"] for e in entries if e["seed"] > 100})
    lines = [f"## {args.task} lr sweep: {args.seeds} validation seeds (100+) per cell, "
             f"{entries[0]['steps']} steps (validation split; mean +- std over seeds)\n",
             table.to_markdown()]
    if pruned and args.seeds > 1:
        lines.append(f"\nnot run beyond seed 100 (every variant below {PRUNE_FRACTION:g} of "
                     f"its best on seed 100): lr {', '.join(f'{x:g}' for x in pruned)}")
    lines.append("\nchosen lr (best mean of the average over seeds):\n")
    for variant, lr in chosen.items():
        x = cells[(cells.variant == variant) & (cells.lr == lr)].average
        means = cells[cells.variant == variant].groupby("lr").average.mean().drop(lr)
        runner = means.idxmax() if len(means) else None
        edge = " (AT THE EDGE of the grid)" if lr in (grid[0], grid[-1]) else ""
        lines.append(f"- {variant}: {lr:g}{edge}, {x.mean():.3f} +- {x.std():.3f}"
                     + (f"; next best {runner:g} at {means[runner]:.3f}" if runner else ""))
    pairs = [(a, b) for a, b in RECIPE_PAIRS if a in chosen and b in chosen]
    if pairs:
        lines.append("\nLlip recipes at their chosen lrs (difference of the means, its standard "
                     f"error; more than {MIN_Z:g} SE: not noise):\n")
    for a, b in pairs:
        x = cells[(cells.variant == a) & (cells.lr == chosen[a])].average
        y = cells[(cells.variant == b) & (cells.lr == chosen[b])].average
        d, se = x.mean() - y.mean(), (x.var() / len(x) + y.var() / len(y)) ** 0.5
        lines.append(f"- {a} - {b}: {100 * d:+.1f} points, SE {100 * se:.1f}: "
                     f"{'beyond' if abs(d) > MIN_Z * se else 'within'} noise")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out = args.out or os.path.join(REPO, "results", args.task + ("_sweep" if args.sweep
                                                                       else ""))
    t0, load0 = time.time(), os.getloadavg()[0]
    data = build_data(args.task, args.out)
    entries = plan(args, data, os.path.join(args.out, "runs"))
    split = "validation" if args.sweep else "test"
    evals = os.path.join(args.out, f"evals_{split}")

    def train_and_evaluate(entries):
        runs = unique_runs(entries)
        todo = [r for r in runs if not trained(r)]
        print(f"{len(runs)} runs ({len(runs) - len(todo)} trained before), {args.parallel} at a "
              f"time, output in {args.out}", flush=True)
        start, done, lock = time.time(), [], threading.Lock()

        def one(run):
            train(run, args.threads)
            with lock:
                done.append(run)
                left = (time.time() - start) / len(done) * (len(todo) - len(done))
                print(f"  {len(done)}/{len(todo)} trained, ETA {left / 60:.0f} min", flush=True)
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(one, todo))
        evaluate(runs, data[split], evals, every_checkpoint=not args.sweep,
                 parallel=args.parallel)
        return runs, results_frame(entries, evals)

    if args.sweep and args.seeds > 1:  # the first seed on the whole grid, then PRUNE_FRACTION
        _, first = train_and_evaluate([e for e in entries if e["seed"] == 100])
        pruned = pruned_lrs(first)
        print(f"lrs not run beyond seed 100: {pruned or 'none'}", flush=True)
        entries = [e for e in entries if e["seed"] == 100 or e["lr"] not in pruned]
    runs, frame = train_and_evaluate(entries)
    t_train = time.time()
    coll = {r["name"]: collapse(r, args.task, every_checkpoint=not args.sweep) for r in runs}
    if args.sweep:
        text = sweep_report(args, entries, frame, coll)
        write_json(os.path.join(args.out, "summary.json"), {
            "cells": frame.to_dict("records"), "collapse": coll}, indent=1)
    else:
        attn = {(e["variant"], e["seed"]): attention(e, data["test"]) for e in entries
                if e["loss"] == "llip"}
        timing = {"train": t_train - t0, "evals": time.time() - t_train,
                  "total": time.time() - t0, "load_start": load0,
                  "load_end": os.getloadavg()[0]}
        text = report(args, entries, frame, attn, coll, timing)
    atomic_write(os.path.join(args.out, "summary.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
