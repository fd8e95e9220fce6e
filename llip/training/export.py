"""Export a checkpoint to one file for evals and sharing:

    python -m llip.training.export <run dir | checkpoints/step_X dir> model.pt

The file holds {"state_dict", "config", "step"} of plain tensors and Python values, loadable
anywhere with torch.load(path, weights_only=True). The DCP checkpoint is left untouched.
"""
import argparse
import os
import sys

import torch

from llip.config import cli, to_dict
from llip.training.checkpoint import load_model


def export(path: str, out: str) -> str:
    model, cfg, step = load_model(path)
    tmp = out + ".tmp"
    torch.save({"state_dict": model.state_dict(), "config": to_dict(cfg), "step": step}, tmp)
    os.replace(tmp, out)
    return out


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    print(f"exported {export(args.checkpoint, args.out)}")


if __name__ == "__main__":
    sys.exit(main())
