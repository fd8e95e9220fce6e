"""Train locally: python -m llip.main <config> [key=value ...] [--print | --list]

One process, or every process of torchrun / srun. Bad input ends in one line on stderr and
exit code 2, never a traceback.
"""
import argparse
import dataclasses
import logging
import os
import sys

import yaml

from llip.cli import cli
from llip.config import RunConfig, to_dict
from llip.run_configs import list_configs, resolve


def program() -> str:
    """The command as the user typed it: the console script or the module form."""
    return "llip-train" if os.path.basename(sys.argv[0]) == "llip-train" else \
        "python -m llip.main"


def fields_help() -> str:
    """Every config field with its type and default, for --help (a config sets its own values:
    `CONFIG --print` shows them)."""
    rows = [(f.name, f.type if isinstance(f.type, str) else f.type.__name__, repr(f.default))
            for f in dataclasses.fields(RunConfig)]
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"  {name:{width}s}  {kind:5s}  {default}" for name, kind, default in rows)


def parse_args(argv):
    prog = program()
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0].replace("python -m llip.main", prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{prog} --list shows the configs; {prog} CONFIG --print every field of one "
        "with its value.\nConfig fields (override any as key=value), with their types and the "
        f"defaults that configs start from:\n{fields_help()}")
    parser.add_argument("config", nargs="?", help="a registered config name (see --list)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config fields "
                        "(listed below)")
    parser.add_argument("--list", action="store_true", help="list configs and exit")
    parser.add_argument("--print", action="store_true",
                        help="print the resolved config, no training")
    return parser.parse_args(argv)


@cli
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name, description in list_configs():
            print(f"{name:14s} {description}")
        return 0
    if not args.config:
        print(f"error: give a config name ({program()} --list shows them)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("llip").setLevel(logging.INFO)
    cfg = resolve(args.config, args.overrides)
    if args.print:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from llip.training.trainer import Trainer  # heavy imports only when training
    Trainer(cfg)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
