"""Weights in other layouts <-> ours: one adapter per format, and the one strict accounting of
tensors that every load goes through.

    ours          llip exports: {"state_dict", "config", "step"} (.pt) or safetensors + metadata
    llip_release  the Llip authors' released checkpoints (llip_b16_k32.pt, llip_G14_k64.pt)
    openclip      open_clip's CLIP state dicts and model configs

An adapter is a module with `matches(sd)`, `to_ours(sd) -> (tensors, leftovers)` (our names ->
tensors, and the source names that have no home) and `from_ours(sd)`. Adapters convert names
and layouts only: reading files, choosing a config and building models is llip.loading's.
A load refuses (one line naming the file) unless every tensor of the file found a home in the
model with the right shape and every model tensor was filled (`strict_load`).
"""
from __future__ import annotations

import dataclasses

import torch

from llip.errors import ConfigError

# torch.compile and DDP wrappers, in either order, on the names of saved training checkpoints
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def unwrap(blob, source: str) -> dict:
    """The model tensors of a checkpoint file's content: blob["state_dict"] (training
    checkpoints keep optimizer state and epoch beside it) or the blob itself, wrapper prefixes
    removed."""
    sd = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConfigError(f"{source} holds no state dict of tensors (top-level keys: "
                          f"{list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__})")
    return {strip_wrappers(k): v for k, v in sd.items()}


@dataclasses.dataclass
class Accounting:
    """Where the tensors of a source stand against a model's: shape mismatches, tensors with
    no home in the model, model tensors the source does not fill."""
    wrong: list[str]
    unexpected: list[str]
    missing: list[str]

    @property
    def problems(self) -> list[str]:
        return self.wrong + [f"{k} has no home" for k in self.unexpected] + \
            [f"{k} missing" for k in self.missing]

    def line(self) -> str:
        """The refusal: each kind of problem, counted, with its first names."""
        parts = [f"{len(items)} {what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for what, items in (("shape mismatch(es)", self.wrong),
                                     ("tensor(s) with no home in the model", self.unexpected),
                                     ("model tensor(s) not in the file", self.missing)) if items]
        return "; ".join(parts)


def account(tensors: dict, shapes: dict, leftovers=(), may_keep: tuple = ()) -> Accounting:
    """`tensors` (name -> tensor, already in the target's names) against `shapes` (the
    target's name -> shape); `leftovers`: source names no adapter rule placed; target names
    starting with one of `may_keep` may stay unfilled."""
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(shapes[k])})"
             for k, v in tensors.items() if k in shapes and tuple(v.shape) != tuple(shapes[k])]
    unexpected = list(leftovers) + [k for k in tensors if k not in shapes]
    missing = [k for k in shapes if k not in tensors and not k.startswith(may_keep)]
    return Accounting(wrong, unexpected, missing)


def strict_load(model: torch.nn.Module, tensors: dict, leftovers, source: str,
                may_keep: tuple = ()) -> list[str]:
    """Copy `tensors` into `model` after strict accounting (a partial load is refused with one
    line naming `source`); return the model tensors kept at their initial value (only names
    starting with one of `may_keep` may be)."""
    own = model.state_dict()
    found = account(tensors, {k: v.shape for k, v in own.items()}, leftovers, may_keep)
    if found.problems:
        raise ConfigError(f"{source}: refusing a partial load: {found.line()}")
    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return list(result.missing_keys)
