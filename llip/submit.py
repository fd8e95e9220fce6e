"""Train on SLURM: python submitit_openclip.py <config> [key=value ...] [--dry-run | --local]
[--evals EVAL.yaml] (also `llip-submit`).

Builds a submitit executor from the config (llip.training.launcher), submits the same Trainer as
`python -m llip.main`, requeued and resumed on preemption or time limit; with --evals, a light
follower job evaluates every kept checkpoint as it appears (llip.follow).
"""
import argparse
import os
import sys

from llip import code_snapshot
from llip.cli import cli
from llip.errors import ConfigError
from llip.follow import adopt_eval_file, check_eval_file, submit_follower
from llip.run_configs import resolve
from llip.run_dir import path_of
from llip.training.launcher import (
    live_job,
    make_executor,
    sbatch_script,
    submit_run,
    submitit_folder,
)
from llip.training.trainer import checked_for_training


@cli
def main(argv=None) -> int:
    """python submitit_openclip.py <config> [key=value ...] [--dry-run | --local]
    [--evals EVAL.yaml]"""
    parser = argparse.ArgumentParser(
        prog="submitit_openclip.py",
        description="Train on SLURM through submitit; requeued and resumed on preemption")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script only")
    parser.add_argument("--local", action="store_true", help="submitit's local executor, no SLURM")
    parser.add_argument("--evals", default="", metavar="EVAL.yaml",
                        help="evaluate every kept checkpoint (keep_every, and the last) with "
                        "this evals.main_mc file, as it appears (llip.follow)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = checked_for_training(resolve(args.config, args.overrides))
    live = None if args.dry_run else live_job(cfg)
    if live:
        raise ConfigError(f"run dir {path_of(cfg)} already has live job {live}: "
                          f"wait for it, `scancel {live}`, or pick another name=")
    if args.dry_run:
        print(sbatch_script(cfg))
        return 0
    if args.evals and args.local:
        raise ConfigError("--evals follows the checkpoints with SLURM jobs, which --local has "
                          "none of: evaluate afterwards with `llip-eval`")
    if args.evals:
        check_eval_file(args.evals)
        adopt_eval_file(path_of(cfg), args.evals)
    executor = make_executor(cfg, local=args.local)
    os.makedirs(submitit_folder(cfg), exist_ok=True)
    job = submit_run(executor, cfg)
    print(f"submitted job {job.job_id} ({cfg.nodes} node(s) x {cfg.gpus_per_node} task(s)), "
          f"run dir {path_of(cfg)}\n"
          f"  log:    {job.paths.stdout}\n  errors: {job.paths.stderr}\n"
          f"  follow: tail -f {job.paths.stdout}\n"
          f"  cancel: {'scancel ' + job.job_id if not args.local else 'kill the local process'}")
    if args.evals:
        follower = submit_follower(path_of(cfg), cfg, code_snapshot.python())
        print(f"submitted job {follower}: evals following the checkpoints into "
              f"{path_of(cfg)}/evals")
    if args.local:
        job.results()  # the local executor's job dies with this process: wait for it
        print(f"job {job.job_id} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
