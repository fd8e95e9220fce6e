"""Export a checkpoint to one file for evals and sharing:

    python -m llip.training.export <run dir | checkpoints/step_X dir | .pt> model.pt
    python -m llip.training.export <...> model.safetensors            # no pickle at all
    python -m llip.training.export <...> clip.pt --format open_clip   # CLIP / SigLIP only
    python -m llip.training.export llip_b16_k32.pt model.pt           # a released Llip file

llip format: llip.run_dir's export (save_export); LoRA adapters are merged into their base
weights. open_clip format: open_clip's CLIP state dict plus <stem>.json, its model config, so that
    open_clip.add_model_config("clip.json")
    open_clip.create_model_and_transforms("clip", pretrained="clip.pt")
gives the same embeddings (and CLIP_benchmark can evaluate it). Llip stays in the llip format:
open_clip has no Llip model. The source checkpoint is left untouched.
"""
import argparse
import json
import os
import sys

import torch

from llip.cli import ConfigError, cli
from llip.io import atomic_path, atomic_write
from llip.models import open_clip_format
from llip.run_dir import load_model, save_export


def export(path: str, out: str, fmt: str = "llip", config: str = "") -> list[str]:
    """Write the export; return the files written."""
    model, cfg, step = load_model(path, config=config)
    if fmt == "llip":
        return [save_export(out, model, cfg, step)]
    if cfg.loss == "llip":
        raise ConfigError(f"{path} is a Llip model and open_clip has no Llip: export it with "
                          "--format llip")
    model_cfg = open_clip_format.config_of(cfg)
    state = open_clip_format.from_ours(model.state_dict())
    with atomic_path(out) as tmp:
        if out.endswith(".safetensors"):
            from safetensors.torch import save_file
            save_file(state, tmp)
        else:
            torch.save(state, tmp)
    config_path = os.path.splitext(out)[0] + ".json"
    atomic_write(config_path, json.dumps(model_cfg, indent=2) + "\n")
    return [out, config_path]


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out", help="output file: .pt or .safetensors")
    parser.add_argument("--format", choices=("llip", "open_clip"), default="llip")
    parser.add_argument("--config", default="",
                        help="config of a released Llip checkpoint (default: from its shapes)")
    args = parser.parse_args(argv)
    files = export(args.checkpoint, args.out, args.format, args.config)
    print(f"exported {' and '.join(files)}")
    if args.format == "open_clip":
        with open(files[1], encoding="utf-8") as f:
            builtin = open_clip_format.builtin_name(json.load(f))
        name = builtin or os.path.splitext(os.path.basename(args.out))[0]
        register = "" if builtin else f"open_clip.add_model_config({files[1]!r}); "
        print(f"open_clip: {register}open_clip.create_model_and_transforms({name!r}, "
              f"pretrained={args.out!r})")


if __name__ == "__main__":
    sys.exit(main())
