"""Stop requests: a signal is a flag, checked by the loop at a safe point, never an exception.

SIGTERM (a kill, scancel, a preemption, torchrun's shutdown) and SIGUSR2 (a time limit's warning
under plain srun) only set a flag here, where nothing else acts on them. A handler that raised
would raise from whatever frame runs at that moment: in a DataLoader iterator's `__del__` Python
prints "Exception ignored ... SystemExit" and the run goes on, so a preemption would be
swallowed. The loop asks `requested()` after each step; the stop then finishes the save in
flight and exits 128 + signum, as the default action would have. A second signal of the same
kind kills at once.

Under submitit, its SIGUSR2 handler (checkpoint and requeue) is left alone; its SIGTERM handler
only logs ("bypass"), so a cancelled or preempted job would train on until SLURM's SIGKILL,
which can land in the middle of a save: there the flag replaces it.

With several ranks the flag is agreed (the maximum over ranks) by an all-reduce on a gloo group
of its own, started after one step and read after the next, so every rank stops after the same
step without a step ever waiting for it; before a checkpoint it is agreed at once, so that a
stop signalled while the previous save completed starts no new one.
"""
import os
import signal
import threading

import torch
import torch.distributed as torch_dist

from llip.training import dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopRequest:
    def __init__(self, world_size: int):
        self.signum = 0  # the first stop signal this rank received
        self._previous: dict = {}
        self._group = dist.new_cpu_group() if world_size > 1 else None
        self._flag, self._pending = torch.zeros(1, dtype=torch.int64), None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if _unhandled(signal.getsignal(sig)):
                    self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if self._pending is not None:  # every rank started it: it completes
            self._pending.wait()
            self._pending = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _on_signal(self, signum, frame) -> None:
        if self.signum == signum:  # asked twice: the default action, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = self.signum or signum

    def requested(self, now: bool = False) -> int:
        """The stop signal (0: none) that every rank agrees on; call once per step on all
        ranks. Alone, this rank's own flag; with several, any rank's, one step later, or at
        once with `now` (a collective that waits: before a save, which a stop would not
        start)."""
        if self._group is None:
            return self.signum
        agreed = 0
        if self._pending is not None:
            self._pending.wait()
            agreed, self._pending = int(self._flag.item()), None
        self._flag = torch.tensor([self.signum], dtype=torch.int64)
        work = torch_dist.all_reduce(self._flag, op=torch_dist.ReduceOp.MAX, group=self._group,
                                     async_op=True)
        if now:
            work.wait()
            return max(agreed, int(self._flag.item()))
        self._pending = work
        return agreed


def _unhandled(handler) -> bool:
    """Nothing acts on the signal: the default action, or submitit's handler that only logs."""
    return handler == signal.SIG_DFL or \
        getattr(handler, "__qualname__", "") == "SignalHandler.bypass"
