"""A sweep trained here (the local launcher, 2 points at once) with its kept checkpoints
evaluated after each run, to the sweep's table; the status board over it; a re-run that has
nothing left to do."""
import json

import pandas as pd
import yaml

from helpers import run_cli, write_catalog
from llip.io import read_text


def test_local_sweep_with_evals_to_table_and_a_rerun_that_skips(digits, tmp_path):
    evals = tmp_path / "evals.yaml"
    evals.write_text(yaml.safe_dump({"catalogs": [write_catalog(tmp_path / "c.json", digits)],
                                     "datasets": ["digits"], "batch_size": 180, "workers": 0}))
    argv = ["-m", "llip.sweep", "llip_tiny", "seed=0,1", f"train_data={digits['train']}",
            f"logs={tmp_path}", "batch_size=16", "train_num_samples=128", "checkpoint_every=4",
            "keep_every=4", "wandb_mode=disabled", "--launcher", "local", "--parallel", "2",
            "--evals", str(evals)]
    first = run_cli(*argv)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "2 point(s): 2 not started; 2 to start (local)" in first.stdout
    sweep = tmp_path / "llip_tiny-seed"
    points = ["llip_tiny-seed0", "llip_tiny-seed1"]
    for p in points:
        assert "resumed" not in read_text(sweep / p / "train.log")
    followed = [json.loads(x) for x in read_text(sweep / "follow.jsonl").splitlines()]
    assert sorted((r["checkpoint"].split("/")[-3], r["step"]) for r in followed) == \
        [(p, s) for p in points for s in (4, 8)]
    wide = pd.read_csv(sweep / "evals" / "sweep_wide.csv")
    assert list(wide.columns[:3]) == ["point", "seed", "step"] and len(wide) == 4
    assert wide["digits"].between(0, 1).all()
    seeds = pd.read_csv(sweep / "evals" / "sweep_seeds.csv")
    assert len(seeds) == 2 and seeds["digits"].str.endswith("(2)").all()  # 2 seeds per step

    board = run_cli("-m", "llip.status", str(sweep), "--json")
    rows = {r["run"]: r for r in json.loads(board.stdout)}
    assert [rows[p]["state"] for p in points] == ["completed", "completed"]
    assert [rows[p]["eval_step"] for p in points] == [8, 8]
    assert rows[points[0]]["eval_average"] == wide[(wide.point == points[0]) &
                                                   (wide.step == 8)]["digits"].item()

    again = run_cli(*argv)  # the same command: nothing left to train or evaluate
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 point(s): 2 completed; 0 to start (local)" in again.stdout
    assert len(read_text(sweep / "follow.jsonl").splitlines()) == 4
