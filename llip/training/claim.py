"""Before a run writes anything: the main rank locks the run dir and checks that a relaunch
keeps its config (llip.run_guard); every rank gets the verdict, so a refusal ends all ranks
with the same line instead of leaving the others waiting at a barrier."""
from llip.cli import ConfigError, storage_error
from llip.run_guard import RunLock, check_relaunch
from llip.training import dist


def claim_run_dir(run_dir: str, cfg, world):
    """The held RunLock on the main rank (None elsewhere); raises on every rank if refused."""
    lock, error = None, None
    if world.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            check_relaunch(run_dir, cfg)
        except Exception as exn:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = exn
            if lock is not None:
                lock.release()
    verdict = dist.all_gather_object(
        None if error is None else (storage_error(error) or str(error)))[0]
    if error is not None:
        raise error
    if verdict is not None:
        raise ConfigError(f"rank 0 refused the run dir: {verdict}")
    return lock
