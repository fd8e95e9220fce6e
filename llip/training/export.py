"""Export a checkpoint to one file for evals and sharing:

    python -m llip.training.export <run dir | checkpoints/step_X dir | .pt> model.pt
    python -m llip.training.export <...> model.safetensors            # no pickle at all
    python -m llip.training.export <...> clip.pt --format open_clip   # CLIP / SigLIP only
    python -m llip.training.export llip_b16_k32.pt model.pt           # a released Llip file

llip format: llip.models.formats.ours; LoRA adapters are merged into their base weights.
open_clip format: open_clip's CLIP state dict, <stem>.json (its model config) and <stem>.open_clip/
(open_clip's local-dir folder: config and the same weights), so that
    open_clip.add_model_config("clip.json")
    open_clip.create_model_and_transforms("clip", pretrained="clip.pt")
or  open_clip.create_model_and_transforms("local-dir:clip.open_clip")
give the same embeddings; the command prints these lines, the eval sweep entry, the init_from
overrides and the CLIP_benchmark command (its --model takes a name or local-dir:FOLDER).
Llip stays in the llip format: open_clip has no Llip model. The source checkpoint is left
untouched. The writing is llip.loading's; this is its command line.
"""
import argparse
import json
import os
import shlex
import sys

from llip.cli import cli
from llip.loading import export
from llip.models.formats import openclip

# CLIP_benchmark's default output name holds --model, here a path: name results without it.
CLIP_BENCHMARK_OUTPUT = "{dataset}_{pretrained}_{language}_{task}.json"


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
    print(f"exported {', '.join(files)}")
    if args.format == "open_clip":
        print(open_clip_uses(*files))


def open_clip_uses(weights: str, config: str, folder: str) -> str:
    """How each consumer takes an open_clip export: exact lines to copy."""
    with open(config, encoding="utf-8") as f:
        builtin = openclip.builtin_name(json.load(f))
    stem = os.path.splitext(os.path.basename(weights))[0]
    name, register = (builtin, "") if builtin else \
        (stem, f"open_clip.add_model_config({config!r}); ")
    local_dir = f"local-dir:{os.path.abspath(folder)}"
    return "\n".join([
        f"open_clip:      {register}open_clip.create_model_and_transforms({name!r}, "
        f"pretrained={weights!r})",
        f"                or open_clip.create_model_and_transforms({local_dir!r})",
        f"eval sweep:     {{openclip: {builtin or os.path.abspath(config)}, pretrained: "
        f"{os.path.abspath(weights)}}}",
        f"init_from:      init_from={os.path.abspath(weights)} "
        f"init_from_model={builtin or os.path.abspath(config)}",
        f"CLIP_benchmark: clip_benchmark eval --model {shlex.quote(local_dir)} --pretrained "
        f"{shlex.quote(stem)} --output {shlex.quote(CLIP_BENCHMARK_OUTPUT)} "
        "--dataset DATASET --dataset_root ROOT"])

if __name__ == "__main__":
    sys.exit(main())
