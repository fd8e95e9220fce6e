"""A signal is a flag, not an exception: stop signals at random moments of a real training run
(inside a step, a data fetch, a background save, a DataLoader's teardown) all end the run with
128 + signum, after the checkpoint in flight is complete, and the run resumes from it."""
import json
import signal

from helpers import run_cli

ROUNDS = 20

# One interpreter trains the same run ROUNDS times (imports paid once); a thread sends a stop
# signal at a random moment of the round's training loop, to the trainer alone or to its whole
# process group (as SLURM and torchrun do, so the data workers get it too).
STOP_AT_RANDOM = """
import glob, json, os, random, signal, sys, threading, time
from llip.checkpoint_files import verify
from llip.main import main
from llip.run_dir import complete_checkpoints, step_of
os.setsid()  # a process group of its own: a group signal reaches this run, not pytest
rounds, run_dir, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
rng, report = random.Random(0), []
def last_saved():
    done = complete_checkpoints(run_dir)
    return step_of(done[-1]) if done else 0
def stop_later(sig, to_group, after_a_step):
    while signal.getsignal(sig) == signal.SIG_DFL:  # until the training loop takes the signal
        time.sleep(0.005)
    if after_a_step:  # 8 of the rounds: once this round has saved a step, so that the run goes
        began, deadline = last_saved(), time.time() + 300  # on however slow this machine is
        while last_saved() == began and time.time() < deadline:  # (a round that never saves
            time.sleep(0.05)  # is stopped anyway: the report then shows it)
    time.sleep(rng.uniform(0, 1.0))
    if to_group:
        os.killpg(os.getpgid(0), sig)
    else:
        os.kill(os.getpid(), sig)
for i in range(rounds):
    began = time.time()
    sig = (signal.SIGTERM, signal.SIGUSR2)[i % 2]
    threading.Thread(target=stop_later, args=(sig, i % 4 >= 2, i % 8 >= 4), daemon=True).start()
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    done = complete_checkpoints(run_dir)
    report.append({"signal": int(sig), "code": code, "steps": [step_of(p) for p in done],
                   "verified": verify(done[-1])[0] if done else "none",
                   "partial": glob.glob(os.path.join(run_dir, "checkpoints", "*.tmp")),
                   "seconds": round(time.time() - began, 2)})
    while signal.getsignal(sig) != signal.SIG_DFL:
        time.sleep(0.005)
print("REPORT " + json.dumps(report))
"""


def test_stop_signals_at_random_moments_end_each_run_cleanly(digits, tmp_path):
    run_dir = tmp_path / "run"
    args = ["llip_tiny", f"train_data={digits['train']}", f"logs={tmp_path}", "name=run",
            "batch_size=16", f"train_num_samples={16 * 100_000}", "checkpoint_every=1",
            "keep_last=3", "log_every=1", "workers=1", "wandb_mode=disabled"]
    out = run_cli("-c", STOP_AT_RANDOM, str(ROUNDS), str(run_dir), *args, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Exception ignored" not in out.stderr, out.stderr[-3000:]
    report = json.loads(out.stdout.split("REPORT ", 1)[1])
    assert len(report) == ROUNDS
    last_step, resumable = 0, 0
    for i, round_ in enumerate(report):
        assert round_["code"] == 128 + round_["signal"], (i, round_)
        assert not round_["partial"], (i, round_)
        resumable += last_step > 0  # this round began with a checkpoint to resume from
        if round_["steps"]:  # a signal before the first step's save leaves none yet
            assert round_["verified"] is None and round_["steps"][-1] >= last_step, (i, round_)
            last_step = round_["steps"][-1]
    # every round that found a checkpoint resumed from it; the 8 rounds that waited for a save
    # each went on by at least one step
    assert out.stdout.count("resumed from") == resumable, out.stdout[-3000:]
    assert last_step >= 8, report
    assert out.stdout.count("received: stopping after step") == ROUNDS
    assert signal.SIGTERM in {r["signal"] for r in report}
