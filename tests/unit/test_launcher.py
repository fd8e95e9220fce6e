"""The requeue of a preempted or timed-out SLURM job: submitit calls the trainer's
`checkpoint()`, then runs `scontrol requeue` from the same process; the requeue cancels the job
step, whose SIGTERM reaches `scontrol` too. Here a real child process signals itself as the
step's SIGTERM would reach it."""
import signal
import subprocess

import submitit

from llip.run_configs import resolve
from llip.training.launcher import SlurmTrainer

# what `scontrol requeue` meets: the step's SIGTERM while it is still running
TERMINATED_WHILE_RUNNING = ["sh", "-c", "kill -TERM $$; echo survived"]


def test_checkpoint_resubmits_the_config_and_the_requeue_command_survives_the_steps_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    try:
        killed = subprocess.run(TERMINATED_WHILE_RUNNING, capture_output=True, text=True,
                                timeout=60)
        assert killed.returncode == -signal.SIGTERM and killed.stdout == ""  # as in the failure

        cfg = resolve("llip_tiny")
        resubmitted = SlurmTrainer(cfg).checkpoint()
        assert isinstance(resubmitted, submitit.helpers.DelayedSubmission)
        assert isinstance(resubmitted.function, SlurmTrainer) and resubmitted.function.cfg == cfg

        requeue = subprocess.run(TERMINATED_WHILE_RUNNING, capture_output=True, text=True,
                                 timeout=60)
        assert requeue.returncode == 0 and requeue.stdout == "survived\n"
    finally:
        signal.signal(signal.SIGTERM, before)
