import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Real WebDataset shards of sklearn's digits (train + held-out test)."""
    from llip.data.digits import build
    return build(str(tmp_path_factory.mktemp("digits")))


def run_cli(*args, env=None, timeout=600, cwd=REPO):
    """Run a module of this repo in a fresh interpreter, the way a user would."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)
