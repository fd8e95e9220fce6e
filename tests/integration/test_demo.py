"""The demo end to end, as `make demo` runs it: real digits -> shards -> train -> main_mc."""
import glob
import os
import subprocess
import sys

from helpers import REPO
from llip.io import read_json


def test_demo_reaches_90_percent_top1_on_held_out_digits(tmp_path):
    env = {**os.environ, "PY": sys.executable, "DATA_DIR": str(tmp_path / "digits"),
           "LOGS_DIR": str(tmp_path / "logs")}
    env.pop("CONFIG", None)
    result = subprocess.run(["bash", "launch/demo.sh"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| llip_demo" in result.stdout and "run dir:" in result.stdout
    results = tmp_path / "logs" / "llip_demo" / "evals" / "results"
    final = read_json(*glob.glob(str(results / "llip_demo__step00000440__digits__*.json")))
    assert final["n"] == 360 and final["metric"] == "acc1"
    assert final["by_tau"][0]["value"] >= 0.90, final  # chance is 0.10
    assert glob.glob(str(results / "llip_demo__step00000440__digits_retrieval__*.json"))
