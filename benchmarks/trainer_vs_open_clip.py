"""Training throughput side by side: this project's trainer vs open_clip_train (the reference
trainer shipped in open_clip_torch), same model, shards, global batch and precision.

    python benchmarks/trainer_vs_open_clip.py [--runs 3] [--steps 200]           # tiny, CPU
    python benchmarks/trainer_vs_open_clip.py --model compute --steps 40 --log-every 10 --also ''
    python benchmarks/trainer_vs_open_clip.py --model b16 --device cuda --batch 256 --workers 12

open_clip_train 3.3 needs webdataset <= 0.2.86 (its tar grouping breaks on newer ones), so it
runs from its own venv, benchmarks/.venv-open-clip-train (created here on first use), which
takes webdataset from itself and everything else (the same torch and open_clip builds) from
ours. Models: `tiny` is clip_tiny's (ViT 32px/8, width 64, 2+2 layers, embed 64; ~3.4M params:
at this size the data loader, not the model, sets the pace); `compute` is a ViT 64px/8 of width
256 with 6+6 layers (embed 256), big enough that the model's compute dominates on CPU; `b16` is
clip_b16 (for GPUs). The model is registered with open_clip as a model config. Runs alternate;
each reports its steady-state samples/s (median over log windows after the first); the table
gives the median and the range of the runs. `--also` adds our SigLIP and Llip at the same size.
"""
import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile

from llip.data.synthetic.digits import build
from llip.io import read_text
from llip.run_configs import resolve
from llip.run_dir import metrics_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIDE_VENV = os.path.join(REPO, "benchmarks", ".venv-open-clip-train")
SIDE_PACKAGES = ["webdataset==0.2.86", "braceexpand==0.1.7"]
MODELS = {  # name -> (size of our registered configs, overrides)
    "tiny": ("tiny", []),
    "compute": ("tiny", ["image_size=64", "patch_size=8", "vision_width=256", "vision_layers=6",
                         "vision_heads=4", "text_width=256", "text_layers=6", "text_heads=4",
                         "embed_dim=256"]),
    "b16": ("b16", []),  # ViT-B/16, text 12 x 512, context 77: for GPUs
}


def resolved(model: str, loss: str = "clip"):
    size, overrides = MODELS[model]
    return resolve(f"{loss}_{size}", overrides)


def model_name(model: str) -> str:
    return f"llip-bench-clip-{model}"


def side_python(model: str) -> str:
    """The side venv's python: its own webdataset, and everything else (the same torch and
    open_clip_torch builds as ours) from this venv through a .pth file."""
    python = os.path.join(SIDE_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", SIDE_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *SIDE_PACKAGES], check=True)
        side_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig."
                                    "get_paths()['purelib'])"], capture_output=True, text=True,
                                   check=True).stdout.strip()
        with open(os.path.join(side_site, "zz_main_venv.pth"), "w") as f:  # after its own
            f.write(sysconfig.get_paths()["purelib"] + "\n")
    cfg = resolved(model)
    model_cfg = {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.quick_gelu,
                 "vision_cfg": {"image_size": cfg.image_size, "layers": cfg.vision_layers,
                                "width": cfg.vision_width, "patch_size": cfg.patch_size,
                                "head_width": cfg.vision_width // cfg.vision_heads},
                 "text_cfg": {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size,
                              "width": cfg.text_width, "heads": cfg.text_heads,
                              "layers": cfg.text_layers}}
    config_dir = subprocess.run(
        [python, "-c", "import open_clip, os; print(os.path.join(os.path.dirname("
         "open_clip.__file__), 'model_configs'))"], capture_output=True, text=True,
        check=True).stdout.strip().splitlines()[-1]
    with open(os.path.join(config_dir, model_name(model) + ".json"), "w") as f:
        json.dump(model_cfg, f)
    return python


def ours(loss: str, model: str, shards: str, steps: int, batch: int, log_every: int,
         logs: str, device: str = "cpu", workers: int = 2) -> float:
    size, overrides = MODELS[model]
    name = f"{loss}_{len(os.listdir(logs))}"
    subprocess.run([sys.executable, "-m", "llip.main", f"{loss}_{size}", *overrides,
                    f"train_data={shards}", f"logs={logs}", f"name={name}",
                    f"batch_size={batch}", f"train_num_samples={steps * batch}",
                    f"workers={workers}", f"log_every={log_every}", f"checkpoint_every={steps}",
                    "wandb_mode=disabled", f"precision={'bf16' if device == 'cuda' else 'fp32'}"],
                   cwd=REPO, check=True, capture_output=True,
                   env=os.environ)
    rows = [json.loads(line) for line in
            read_text(metrics_path(os.path.join(logs, name))).splitlines()]
    return statistics.median(r["samples_per_s"] for r in rows[1:])


def open_clip_train(python: str, model: str, shards: str, steps: int, batch: int,
                    log_every: int, logs: str, device: str = "cpu", workers: int = 2) -> float:
    cfg = resolved(model)
    out = subprocess.run(
        [python, "-m", "open_clip_train.main", "--train-data", shards, "--dataset-type",
         "webdataset", "--dataset-resampled", "--train-num-samples", str(steps * batch),
         "--batch-size", str(batch), "--epochs", "1", "--model", model_name(model), "--device",
         device, "--precision", "amp_bf16" if device == "cuda" else "fp32", "--workers",
         str(workers), "--lr", str(cfg.lr), "--wd",
         str(cfg.wd),
         "--beta2", str(cfg.beta2), "--warmup", str(cfg.warmup_steps), "--grad-clip-norm",
         str(cfg.grad_clip), "--log-every-n-steps", str(log_every), "--save-frequency", "0",
         "--logs", logs, "--name", f"oc_{len(os.listdir(logs))}", "--report-to", ""],
        cwd=logs, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    rates = [float(m) for m in re.findall(r"([\d.]+)/s/gpu", out.stdout + out.stderr)]
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--also", default="siglip,llip", help="our other losses to measure")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    python = side_python(args.model)
    m = args.model
    common = dict(steps=args.steps, batch=args.batch, log_every=args.log_every,
                  device=args.device, workers=args.workers)
    runs = {"open_clip_train clip": functools.partial(open_clip_train, python, m, **common)}
    for loss in ["clip", *[x for x in args.also.split(",") if x]]:
        runs[f"ours {loss}"] = functools.partial(ours, loss, m, **common)
    results = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(os.path.join(tmp, "digits"))["train"]
        logs = os.path.join(tmp, "logs")
        os.makedirs(logs)
        for _ in range(args.runs):  # alternate, so that drifts of the machine hit all alike
            for name, run in runs.items():
                rate = run(shards=shards, logs=logs)
                results[name].append(rate)
                print(f"{name}: {rate:,.1f} samples/s", file=sys.stderr, flush=True)
    base = statistics.median(results["open_clip_train clip"])
    clip = statistics.median(results["ours clip"])
    where = "CPU fp32" if args.device == "cpu" else f"{args.device} bf16 autocast"
    print(f"{where}, {os.cpu_count()} cores, model {m}, batch {args.batch}, {args.steps} "
          f"steps, {args.workers} loader workers, sklearn-digits shards, {args.runs} "
          "alternating runs\n")
    print("| trainer / loss | samples/s (median) | runs (min-max) | vs open_clip_train "
          "| vs our CLIP |")
    print("|---|---|---|---|---|")
    for name, rates in results.items():
        median = statistics.median(rates)
        print(f"| {name} | {median:,.1f} | {', '.join(f'{r:,.1f}' for r in rates)} "
              f"({min(rates):,.1f}-{max(rates):,.1f}) | {median / base:.2f}x | "
              f"{median / clip:.2f}x |")


if __name__ == "__main__":
    main()
