"""Metric windows, progress lines, metrics.jsonl and wandb (offline unless configured).

wandb must never block or kill a run: its files live inside the run dir, and any failure to
start it is a warning, after which the run continues with metrics.jsonl alone.
"""
import dataclasses
import datetime
import json
import logging
import os
import secrets
import time

import torch

from llip.io import atomic_write, read_text
from llip.run_dir import metrics_path, wandb_dir, wandb_id_path
from llip.training import dist
from llip.training.throughput import progress_text

log = logging.getLogger("llip.train")


class Window:
    """Named sums over the steps since the last log, kept on the device so that no training step
    waits for a device-to-host copy. `mean` names are averaged over steps and ranks, `total`
    names summed over both."""

    def __init__(self, device: torch.device, mean: tuple[str, ...], total: tuple[str, ...]):
        self.mean, self.total = mean, total
        self.sums = torch.zeros(len(mean) + len(total), dtype=torch.float64, device=device)
        self.steps = 0

    def add(self, **values: torch.Tensor) -> None:
        self.sums += torch.stack([torch.as_tensor(values[name], device=self.sums.device)
                                  .to(torch.float64).reshape(()) for name in self.mean
                                  + self.total])
        self.steps += 1

    def reduce(self) -> dict:
        """Every rank's window combined (a collective: all ranks call it), then reset."""
        n = len(self.mean)
        means = dist.all_reduce_mean(self.sums[:n]) / max(self.steps, 1)
        totals = dist.all_reduce_sum(self.sums[n:])
        values = torch.cat([means, totals]).tolist()  # the one host sync of the window
        self.sums.zero_()
        self.steps = 0
        return dict(zip(self.mean + self.total, values))


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class MetricsLogger:
    def __init__(self, run_dir: str, cfg, resume_step: int, enabled: bool):
        self.enabled, self.total = enabled, cfg.total_steps
        self.path = metrics_path(run_dir)
        self.wandb = None
        if not enabled:
            return
        self._truncate_after(resume_step)  # rows logged after the checkpoint are re-done
        if cfg.wandb_mode != "disabled":
            self.wandb = _start_wandb(run_dir, cfg)

    def _truncate_after(self, step: int) -> None:
        """Keep the rows up to the resumed step; a row that does not parse (the torn last line
        of a run killed mid-write) is dropped with a warning."""
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            rows = [line for line in f.read().splitlines() if line.strip()]
        kept = []
        for i, row in enumerate(rows, 1):
            try:
                parsed = json.loads(row)
                keep = parsed["step"] <= step
            except (ValueError, TypeError, KeyError):
                log.warning("dropping unreadable line %d of %s (a write cut short): %.80s", i,
                            self.path, row)
                keep = False
            if keep:
                kept.append(row + "\n")
        if len(kept) != len(rows) or not _ends_with_newline(self.path):
            atomic_write(self.path, "".join(kept))

    def log(self, step: int, metrics: dict, samples_per_s: float, eta_s: float) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics, "samples_per_s": samples_per_s, "time": time.time()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        extra = f" | skipped {metrics['skipped_shards']:.0f} shards " \
                f"{metrics['skipped_samples']:.0f} samples" \
            if metrics["skipped_shards"] or metrics["skipped_samples"] else ""
        print(f"step {step}/{self.total} ({100 * step / self.total:.0f}%) | loss "
              f"{metrics['loss']:.4f} | lr {metrics['lr']:.2e} | {samples_per_s:,.0f} samples/s"
              f"{progress_text(metrics)} | ETA {_eta(eta_s)}{extra}", flush=True)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step" and v is not None},
                           step=step)

    def log_eval(self, step: int, values: dict, summary: str) -> None:
        """One metrics.jsonl row of eval numbers (keys eval/<dataset>/<metric>) at `step`."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values, "time": time.time()}) + "\n")
        print(f"eval at step {step} | {summary} | {values['eval/seconds']:.1f}s", flush=True)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except OSError as exn:  # wandb mirrors metrics.jsonl: its failure must not mask
                log.warning("wandb could not finish (%s); metrics.jsonl is the record", exn)


def _start_wandb(run_dir: str, cfg):
    files = wandb_dir(run_dir)
    os.makedirs(files, exist_ok=True)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ.setdefault(var, files)
    id_file = wandb_id_path(run_dir)
    try:
        import wandb
        run_id = read_text(id_file).strip() if os.path.exists(id_file) else secrets.token_hex(4)
        atomic_write(id_file, run_id)
        return wandb.init(project=cfg.wandb_project, name=cfg.name, id=run_id, resume="allow",
                          dir=files, mode=cfg.wandb_mode, config=dataclasses.asdict(cfg),
                          settings=wandb.Settings(init_timeout=60, silent=True))
    except Exception as exn:  # noqa: BLE001 - logging must never stop training
        log.warning("wandb disabled for this run (%s: %s)", type(exn).__name__, exn)
        return None
