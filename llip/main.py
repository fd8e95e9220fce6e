"""Train locally: python -m llip.main <config> [key=value ...] [--print | --list]

One process, or every process of torchrun / srun. Bad input ends in one line on stderr and
exit code 2, never a traceback.
"""
import argparse
import logging
import sys

import yaml

from llip.cli import cli
from llip.config import to_dict
from llip.run_configs import list_configs, resolve


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m llip.main",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="a registered config name (see --list)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
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
        print("error: give a config name (python -m llip.main --list shows them)", file=sys.stderr)
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
