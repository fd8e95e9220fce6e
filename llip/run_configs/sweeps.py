"""Sweeps kept in the repo: a function returning a `Sweep`, launched by name
(`llip-sweep llip_k_ablation train_data=... logs=...`), exactly as a command-line sweep
(`llip-sweep llip_b16 mixture_tokens=16,32,64 seed=0,1,2`)."""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Sweep:
    config: str  # a registered run config
    axes: dict  # key -> values (each typed and checked as an override of the same name)
    zip: tuple = ()  # groups of axes that vary together, e.g. (("lr", "warmup_steps"),)
    name: str = ""  # the sweep dir under logs= (default: the config and the axes)
    overrides: tuple = ()  # key=value for every point
    evals: str = ""  # an evals.main_mc sweep file: every kept checkpoint is evaluated with it


SWEEPS: dict[str, Callable[[], Sweep]] = {}


def register_sweep(fn: Callable[[], Sweep]) -> Callable[[], Sweep]:
    if fn.__name__ in SWEEPS:
        raise RuntimeError(f"sweep {fn.__name__} registered twice")
    SWEEPS[fn.__name__] = fn
    return fn


@register_sweep
def llip_k_ablation() -> Sweep:
    """The paper's ablation of the number of mixture tokens (B/16, 3 seeds), every kept
    checkpoint evaluated on the paper's suite."""
    return Sweep("llip_b16", {"mixture_tokens": [16, 32, 64], "seed": [0, 1, 2]},
                 overrides=("keep_every=10000",), evals="config_evals/llip_b16_k32.yaml")


@register_sweep
def llip_tau_ablation() -> Sweep:
    """The cross-attention temperature of Llip's head (B/16, K=32, 3 seeds)."""
    return Sweep("llip_b16", {"cross_attn_tau": [1.0, 3.0, 5.0, 8.0], "seed": [0, 1, 2]},
                 overrides=("keep_every=10000",), evals="config_evals/llip_b16_k32.yaml")


@register_sweep
def tiny_lr_seeds() -> Sweep:
    """A CPU-sized sweep for trying the orchestrator: llip_tiny at 2 lrs x 2 seeds."""
    return Sweep("llip_tiny", {"lr": [1e-3, 2e-3], "seed": [0, 1]})
