"""Our export format: one file of plain tensors and Python values that anyone can load without
running code, the contract of `llip.training.export` (and `init_from=`, evals, sharing).

    .pt           {"state_dict": {name: tensor}, "config": RunConfig as a dict, "step": int}
                  (torch.load(path, weights_only=True))
    .safetensors  the state dict as tensors; metadata {"llip_config": JSON, "llip_step": str}

Names are our model's own (llip.models), so the adapter's to/from are the identity; LoRA
adapters are merged into their base weights before an export is written.
"""
from __future__ import annotations

import json

CONFIG_KEY, STEP_KEY = "llip_config", "llip_step"  # safetensors metadata


def matches(blob) -> bool:
    return isinstance(blob, dict) and "config" in blob and "state_dict" in blob


def pack(state_dict: dict, config: dict, step: int) -> dict:
    """The .pt content."""
    return {"state_dict": state_dict, "config": config, "step": step}


def metadata(config: dict, step: int) -> dict:
    """The .safetensors metadata (strings only)."""
    return {CONFIG_KEY: json.dumps(config), STEP_KEY: str(step)}


def from_safetensors(tensors: dict, meta: dict):
    """A .safetensors file's tensors and metadata -> the .pt content, or the bare tensors of a
    file that is not ours."""
    if CONFIG_KEY not in meta:
        return tensors
    return pack(tensors, json.loads(meta[CONFIG_KEY]), int(meta.get(STEP_KEY, 0)))


def to_ours(sd: dict) -> tuple[dict, list[str]]:
    return dict(sd), []


def from_ours(sd: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in sd.items()}
