"""Train on SLURM: python submitit_openclip.py <config> [key=value ...] [--dry-run | --local]

Builds a submitit executor from the config (nodes x tasks, GPUs, CPUs, memory, time, partition,
account, qos, constraint, signal delay), submits the same Trainer as `python -m llip.main`, and
requeues it on preemption or time limit; the requeued job resumes from the latest checkpoint.
The command lives in llip.submit (also installed as `llip-submit`).
"""
import sys

from llip.submit import main

if __name__ == "__main__":
    sys.exit(main())
