"""Load a trained model for evaluation: a DCP checkpoint dir (no process group needed) or an
exported single-file state dict, with the run's resolved config."""
import os

import torch
import yaml

from llip.config import ConfigError, from_dict
from llip.models import build_model
from llip.training import checkpoint


def run_config(run_dir: str):
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        raise ConfigError(f"no config.yaml in {run_dir}: is it a run directory of llip.main?")
    saved = yaml.safe_load(open(path))
    saved.pop("git_commit", None)
    return from_dict(saved)


def resolve_checkpoint(path: str) -> str:
    """A run dir means its latest complete checkpoint; a checkpoint dir must be complete."""
    if os.path.exists(os.path.join(path, checkpoint.MARKER)):
        return path
    latest = checkpoint.latest(path)
    if latest is None:
        raise ConfigError(f"no complete checkpoint at {path}: give a run dir or a "
                          "checkpoints/step_* dir")
    return latest


def load_model(path: str, device="cpu"):
    """A run dir, a DCP checkpoint dir or an exported .pt -> (model in eval mode, config, step)."""
    if os.path.isfile(path):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = from_dict(blob["config"])
        model = build_model(cfg)
        model.load_state_dict(blob["state_dict"])
        return model.to(device).eval(), cfg, int(blob["step"])
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint {path} does not exist: give a run dir, a "
                          "checkpoints/step_* dir or an exported .pt file")
    ckpt = resolve_checkpoint(path)
    cfg = run_config(os.path.dirname(os.path.dirname(ckpt)))
    model = build_model(cfg)
    state = checkpoint.load(ckpt, model)
    return model.to(device).eval(), cfg, int(state["step"])
