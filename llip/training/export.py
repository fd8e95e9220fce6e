"""Export a checkpoint to one file for evals and sharing:

    python -m llip.training.export <run dir | checkpoints/step_X dir | .pt> model.pt
    python -m llip.training.export <...> model.safetensors            # no pickle at all
    python -m llip.training.export <...> clip.pt --format open_clip   # CLIP / SigLIP only
    python -m llip.training.export llip_b16_k32.pt model.pt           # a released Llip file

llip format: llip.models.formats.ours; LoRA adapters are merged into their base weights.
open_clip format: open_clip's CLIP state dict plus <stem>.json, its model config, so that
    open_clip.add_model_config("clip.json")
    open_clip.create_model_and_transforms("clip", pretrained="clip.pt")
gives the same embeddings (and CLIP_benchmark can evaluate it). Llip stays in the llip format:
open_clip has no Llip model. The source checkpoint is left untouched. The writing is
llip.loading's; this is its command line.
"""
import argparse
import json
import os
import sys

from llip.cli import cli
from llip.loading import export
from llip.models.formats import openclip


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
            builtin = openclip.builtin_name(json.load(f))
        name = builtin or os.path.splitext(os.path.basename(args.out))[0]
        register = "" if builtin else f"open_clip.add_model_config({files[1]!r}); "
        print(f"open_clip: {register}open_clip.create_model_and_transforms({name!r}, "
              f"pretrained={args.out!r})")


if __name__ == "__main__":
    sys.exit(main())
