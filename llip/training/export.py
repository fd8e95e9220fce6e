"""Export a checkpoint to one file for evals and sharing:

    python -m llip.training.export <run dir | checkpoints/step_X dir> model.pt

The file format belongs to llip.run_dir (save_export); the DCP checkpoint is left untouched.
"""
import argparse
import sys

from llip.cli import cli
from llip.run_dir import load_model, save_export


def export(path: str, out: str) -> str:
    model, cfg, step = load_model(path)
    return save_export(out, model, cfg, step)


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    print(f"exported {export(args.checkpoint, args.out)}")


if __name__ == "__main__":
    sys.exit(main())
