"""A run that diverges stops: a non-finite loss or weight ends it with one line, and no
checkpoint is ever written from non-finite weights.

The training loop never waits for the host between steps, so the loss is not looked at every
step. Instead every step's loss goes into the metric window, and the window is checked (1) at
each log step, where it is read anyway, and (2) before each checkpoint save, together with
every weight (one fused check and one host sync per save, negligible next to the save). A NaN
in any step since the last check therefore stops the run before the next save: the newest
checkpoint is always the last good one, and a relaunch resumes from it.
"""
import math

import torch

from llip.errors import Diverged
from llip.training import dist


def _message(what: str, step: int, cfg, last_saved: int) -> str:
    if last_saved:
        after = (f"the newest checkpoint is the last good one (step {last_saved}): lower lr or "
                 "raise warmup_steps in a new run (another name=)")
    else:
        after = "no checkpoint was written: lower lr or raise warmup_steps and relaunch"
    return (f"training diverged: {what} at step {step} (lr={cfg.lr:g}, warmup_steps="
            f"{cfg.warmup_steps}); {after}")


def check_logged_loss(loss: float, step: int, cfg, last_saved: int) -> None:
    """At a log step: `loss` is the window's mean, already on the host and equal on all ranks."""
    if not math.isfinite(loss):
        raise Diverged(_message(f"the mean loss of the last steps is {loss}", step, cfg,
                                last_saved))


def check_before_save(window, model, step: int, cfg, last_saved: int) -> None:
    """Every rank: its window sums and its shard of every weight are finite; all ranks agree."""
    flags = [torch.isfinite(window.sums).all()]
    for param in model.parameters():
        local = param.detach()
        local = local.to_local() if hasattr(local, "to_local") else local
        flags.append(torch.isfinite(local).all())
    bad = dist.all_reduce_sum((~torch.stack(flags)).sum().to(torch.float64).reshape(1))
    if bad.item():
        raise Diverged(_message("a non-finite loss or weight", step, cfg, last_saved))
