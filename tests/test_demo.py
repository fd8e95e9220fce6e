"""The demo end to end, as `make demo` runs it: real digits -> shards -> train -> zero-shot."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_demo_reaches_90_percent_top1_on_held_out_digits(tmp_path):
    env = {**os.environ, "PY": sys.executable, "DATA_DIR": str(tmp_path / "digits"),
           "LOGS_DIR": str(tmp_path / "logs")}
    result = subprocess.run(["bash", "launch/demo.sh"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| llip_demo" in result.stdout and "run dir:" in result.stdout
    row = json.load(open(tmp_path / "logs" / "llip_demo" / "eval_digits.json"))
    assert row["n"] == 360 and row["step"] == 440
    assert row["top1"] >= 0.90, row  # chance is 0.10
