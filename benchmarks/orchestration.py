"""What the orchestrator itself costs for a 100-point sweep: expansion (every point typed and
checked), submission of 100 SLURM jobs, and one status call over them, on a real SLURM cluster.

    launch/local_slurm.sh start /tmp/slurm && export SLURM_CONF=/tmp/slurm/slurm.conf
    python benchmarks/orchestration.py [--points 100] [--repeats 3]

Jobs are submitted held (`llip-sweep --hold`) and cancelled at the end: nothing trains, so the
numbers are the orchestrator's own (sbatch round trips, the code snapshot, file reads), not
training's. Prints a table: median, min and max seconds over the repeats.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv, env=None) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout[-1000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def one(points: int, out: str, data: str) -> dict:
    seeds = ",".join(str(s) for s in range(points // 4))
    axes = ["lr=1e-3,2e-3", "mixture_tokens=2,4", f"seed={seeds}"]
    base = ["-m", "llip.sweep", "llip_tiny", *axes, f"train_data={data}", f"logs={out}",
            "--name", "bench", "--launcher", "slurm"]
    row = {"expand (dry run)": timed([*base, "--dry-run"])}
    row["expand + snapshot + submit"] = timed([*base, "--hold"])
    row["status (one call)"] = timed(["-m", "llip.status", os.path.join(out, "bench"), "--json"])
    row["re-run (all pending: 0 submitted)"] = timed([*base, "--hold"])
    timed(["-m", "llip.status", os.path.join(out, "bench"), "--cancel"])
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=100, help="a multiple of 4")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not os.environ.get("SLURM_CONF") and not os.path.exists("/etc/slurm/slurm.conf"):
        raise SystemExit("needs a SLURM cluster: launch/local_slurm.sh start DIR, then "
                         "export SLURM_CONF=DIR/slurm.conf")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "llip.data.synthetic.digits", f"{tmp}/digits"],
                       cwd=REPO, check=True, capture_output=True)
        data = f"{tmp}/digits/train-{{000000..000005}}.tar"
        rows = [one(args.points, f"{tmp}/logs{i}", data) for i in range(args.repeats)]
    print(f"{args.points}-point sweep, {args.repeats} repeats, {os.cpu_count()} cores\n")
    print(f"| {'step':36s} | median s | min s | max s |\n|{'-' * 38}|---------:|------:|------:|")
    for step in rows[0]:
        values = [r[step] for r in rows]
        print(f"| {step:36s} | {statistics.median(values):8.2f} | {min(values):5.2f} | "
              f"{max(values):5.2f} |")


if __name__ == "__main__":
    main()
