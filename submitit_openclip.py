"""Train on SLURM: python submitit_openclip.py <config> [key=value ...] [--dry-run | --local]

Builds a submitit executor from the config (nodes x tasks, GPUs, CPUs, memory, time, partition,
account, qos, constraint, signal delay), submits the same Trainer as `python -m llip.main`, and
requeues it on preemption or time limit; the requeued job resumes from the latest checkpoint.
"""
import argparse
import os
import sys

from llip.config import ConfigError, cli, resolve
from llip.training.trainer import checked_for_training


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script only")
    parser.add_argument("--local", action="store_true", help="submitit's local executor, no SLURM")
    args = parser.parse_args(argv)
    from llip.training import launcher
    cfg = checked_for_training(resolve(args.config, args.overrides))
    live = None if args.dry_run else launcher.live_job(cfg)
    if live:
        raise ConfigError(f"run dir {launcher.run_dir_of(cfg)} already has live job {live}: "
                          f"wait for it, `scancel {live}`, or pick another name=")
    if args.dry_run:
        print(launcher.sbatch_script(cfg))
        return 0
    executor = launcher.make_executor(cfg, local=args.local)
    os.makedirs(launcher.submitit_folder(cfg), exist_ok=True)
    job = launcher.submit(executor, cfg)
    print(f"submitted job {job.job_id} ({cfg.nodes} node(s) x {cfg.gpus_per_node} task(s)), "
          f"run dir {launcher.run_dir_of(cfg)}\n"
          f"  log:    {job.paths.stdout}\n  errors: {job.paths.stderr}\n"
          f"  follow: tail -f {job.paths.stdout}\n"
          f"  cancel: {'scancel ' + job.job_id if not args.local else 'kill the local process'}")
    if args.local:
        job.results()  # the local executor's job dies with this process: wait for it
        print(f"job {job.job_id} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
