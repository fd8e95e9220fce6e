"""Training throughput side by side: this project's trainer vs open_clip_train (the reference
trainer shipped in open_clip_torch), same model, shards, global batch and precision, on CPU.

    python benchmarks/trainer_vs_open_clip.py [--runs 3] [--steps 200]

open_clip_train 3.3 needs webdataset <= 0.2.86 (its tar grouping breaks on newer ones), so it
runs from its own venv, benchmarks/.venv-open-clip-train (created here on first use). The model
is clip_tiny's (ViT 32px/8, width 64, 2+2 layers, embed 64; ~3.4M params), registered with
open_clip as a model config in that venv. Runs alternate; each reports its steady-state
samples/s (median over log windows after the first); the table gives the median of the runs.
Also measured: llip_tiny and siglip_tiny with our trainer (Llip's slowdown vs our CLIP).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

from llip.data.digits import build
from llip.io import read_text
from llip.run_configs import resolve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIDE_VENV = os.path.join(REPO, "benchmarks", ".venv-open-clip-train")
SIDE_PACKAGES = ["torch==2.12.1", "torchvision==0.27.1", "open_clip_torch==3.3.0",
                 "webdataset==0.2.86", "braceexpand", "pandas"]
MODEL_NAME = "llip-bench-clip-tiny"


def side_python() -> str:
    python = os.path.join(SIDE_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", SIDE_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *SIDE_PACKAGES], check=True)
    cfg = resolve("clip_tiny")
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
    with open(os.path.join(config_dir, MODEL_NAME + ".json"), "w") as f:
        json.dump(model_cfg, f)
    return python


def ours(config: str, shards: str, steps: int, batch: int, logs: str) -> float:
    name = f"{config}_{len(os.listdir(logs))}"
    subprocess.run([sys.executable, "-m", "llip.main", config, f"train_data={shards}",
                    f"logs={logs}", f"name={name}", f"batch_size={batch}",
                    f"train_num_samples={steps * batch}", "workers=2", "log_every=20",
                    f"checkpoint_every={steps}", "wandb_mode=disabled", "precision=fp32"],
                   cwd=REPO, check=True, capture_output=True,
                   env=os.environ)
    rows = [json.loads(line) for line in
            read_text(os.path.join(logs, name, "metrics.jsonl")).splitlines()]
    return statistics.median(r["samples_per_s"] for r in rows[1:])


def open_clip_train(python: str, shards: str, steps: int, batch: int, logs: str) -> float:
    cfg = resolve("clip_tiny")
    out = subprocess.run(
        [python, "-m", "open_clip_train.main", "--train-data", shards, "--dataset-type",
         "webdataset", "--dataset-resampled", "--train-num-samples", str(steps * batch),
         "--batch-size", str(batch), "--epochs", "1", "--model", MODEL_NAME, "--device", "cpu",
         "--precision", "fp32", "--workers", "2", "--lr", str(cfg.lr), "--wd", str(cfg.wd),
         "--beta2", str(cfg.beta2), "--warmup", str(cfg.warmup_steps), "--grad-clip-norm",
         str(cfg.grad_clip), "--log-every-n-steps", "20", "--save-frequency", "0",
         "--logs", logs, "--name", f"oc_{len(os.listdir(logs))}", "--report-to", ""],
        cwd=logs, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    rates = [float(m) for m in re.findall(r"([\d.]+)/s/gpu", out.stdout + out.stderr)]
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    python = side_python()
    results = {"ours clip_tiny": [], "open_clip_train clip_tiny": [], "ours siglip_tiny": [],
               "ours llip_tiny": []}
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(os.path.join(tmp, "digits"))["train"]
        logs = os.path.join(tmp, "logs")
        os.makedirs(logs)
        for _ in range(args.runs):  # alternate, so that drifts of the machine hit all alike
            results["open_clip_train clip_tiny"].append(
                open_clip_train(python, shards, args.steps, args.batch, logs))
            results["ours clip_tiny"].append(ours("clip_tiny", shards, args.steps, args.batch,
                                                  logs))
            results["ours siglip_tiny"].append(ours("siglip_tiny", shards, args.steps,
                                                    args.batch, logs))
            results["ours llip_tiny"].append(ours("llip_tiny", shards, args.steps, args.batch,
                                                  logs))
    base = statistics.median(results["open_clip_train clip_tiny"])
    clip = statistics.median(results["ours clip_tiny"])
    print(f"CPU fp32, {os.cpu_count()} cores, batch {args.batch}, {args.steps} steps, "
          f"2 loader workers, sklearn-digits shards, median of {args.runs} alternating runs\n")
    print("| trainer / model | samples/s (median) | runs | vs open_clip_train | vs our CLIP |")
    print("|---|---|---|---|---|")
    for name, rates in results.items():
        median = statistics.median(rates)
        print(f"| {name} | {median:,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} | "
              f"{median / base:.2f}x | {median / clip:.2f}x |")


if __name__ == "__main__":
    main()
