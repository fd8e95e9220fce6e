"""A sweep's code snapshot: a copy of the packages with the commit and the uncommitted diff, and
the environment that makes a process started inside the checkout import the copy instead."""
import os
import subprocess
import sys

from helpers import REPO
from llip import code_snapshot
from llip.io import read_json


def test_a_frozen_copy_is_what_a_job_started_in_the_checkout_imports(tmp_path):
    code = str(tmp_path / "code")
    record = code_snapshot.freeze(code)
    assert os.path.isfile(os.path.join(code, "llip", "sweep.py"))
    assert os.path.isfile(os.path.join(code, "evals", "main_mc.py"))
    assert not [d for d, _, _ in os.walk(code) if d.endswith("__pycache__")]
    assert read_json(os.path.join(code, "code.json")) == record
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    assert record["commit"] == head
    changes = subprocess.run(["git", "status", "--porcelain", "--", "llip", "evals"], cwd=REPO,
                             capture_output=True, text=True).stdout
    assert record["dirty"] == bool(changes.strip())  # CI's clean clone: False, no diff file
    if record["diff"]:
        assert os.path.getsize(os.path.join(code, record["diff"])) > 0
    assert code_snapshot.freeze(code) == record  # an existing snapshot is kept as it is
    assert code_snapshot.changed_files(code) == []

    # the job's view: started in the checkout (cwd first on sys.path by default), it imports
    # the snapshot, and edits to the checkout do not reach it
    probe = "import llip, evals; print(llip.__file__); print(evals.__file__)"
    env = code_snapshot.env(code)
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert out.stdout.split() == [os.path.join(code, "llip", "__init__.py"),
                                  os.path.join(code, "evals", "__init__.py")], out.stderr
    slurm_python = code_snapshot.python(code).split()
    out = subprocess.run([*slurm_python, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.split()[0] == os.path.join(code, "llip", "__init__.py"), out.stderr

    commit = "from llip import code_snapshot; print(code_snapshot.commit())"
    out = subprocess.run([sys.executable, "-c", commit], cwd=REPO, env=env, capture_output=True,
                         text=True)  # what a run from the snapshot records in its config.yaml
    assert out.stdout.strip() == record["commit"], out.stderr

    with open(os.path.join(code, "llip", "losses.py"), "a") as f:
        f.write("\n# edited\n")
    assert code_snapshot.changed_files(code) == [os.path.join("llip", "losses.py")]
