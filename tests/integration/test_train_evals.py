"""Zero-shot evals inside training: a real 2-rank torchrun (gloo, FSDP2) run of llip_tiny on the
digits logs eval rows whose numbers equal an eval sweep of the same checkpoint, and keep_every
keeps the checkpoints a learning curve needs while keep_last prunes the rest."""
import json
import os

from evals import checkpoints
from evals.runner import run_task
from helpers import run_cli, write_catalog
from llip.evaluation.catalog import load_catalogs
from llip.io import read_text
from llip.run_dir import checkpoint_dir, complete_checkpoints, metrics_path, step_of


def test_evals_in_two_rank_training_equal_the_sweep_and_keep_every_keeps(digits, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", digits)
    result = run_cli("-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "llip.main",
                     "llip_tiny", f"train_data={digits['train']}", f"logs={tmp_path}",
                     "train_num_samples=96", "batch_size=16", "checkpoint_every=2",
                     "keep_last=1", "keep_every=4", "log_every=3", "eval_every=3",
                     "eval_datasets=digits::digits_retrieval", f"eval_catalog={catalog}",
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run_dir = str(tmp_path / "llip_tiny")
    assert [step_of(c) for c in complete_checkpoints(run_dir)] == [4, 6]

    rows = [json.loads(line) for line in read_text(metrics_path(run_dir)).splitlines()]
    evals = {r["step"]: r for r in rows if "eval/digits/acc1" in r}
    assert list(evals) == [3, 6]
    assert evals[6]["eval/digits/n"] == evals[6]["eval/digits_retrieval/n"] == 360
    # every eval logs the collapse diagnostic of the class prompts (Llip: targets and queries);
    # retrieval has no class prompts
    for row in evals.values():
        assert -1 <= row["eval/digits/text_collapse"] <= 1
        assert -1 <= row["eval/digits/text_collapse_query"] <= 1
        assert row["eval/digits/text_collapsed"] in (0.0, 1.0)
        assert not any(k.startswith("eval/digits_retrieval/text_coll") for k in row)
    assert "eval at step 6 | digits acc1" in result.stdout

    # The same checkpoint scored by one process (the sweep's runner, the images unsplit):
    # the 2 ranks' shares, merged, give the same numbers.
    entries = load_catalogs([catalog])
    ckpt = checkpoints.checkpoint_of(checkpoint_dir(run_dir, 6))
    for name in ("digits", "digits_retrieval"):
        task = {"checkpoint": ckpt, "dataset": entries[name], "taus": [None], "batch_size": 64,
                "workers": 0, "output": str(tmp_path / f"{name}.json")}
        alone = run_task(task)["by_tau"][0]["metrics"]
        for metric, value in alone.items():
            assert abs(evals[6][f"eval/{name}/{metric}"] - value) < 1e-6, (name, metric)


def test_unknown_eval_dataset_fails_before_training(digits, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", digits)
    result = run_cli("-m", "llip.main", "llip_tiny", f"train_data={digits['train']}",
                     f"logs={tmp_path}", "eval_every=3", "eval_datasets=digitz",
                     f"eval_catalog={catalog}")
    assert result.returncode == 2 and not os.path.exists(tmp_path / "llip_tiny")
    assert result.stderr.strip().splitlines() == [
        f"error: eval_datasets: no dataset 'digitz' in catalog {catalog}; closest: digits, "
        "digits_knn, digits_retrieval"]
