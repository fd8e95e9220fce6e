"""Result files of eval tasks: torn or foreign files are not done, same-named checkpoints never
share a file or a label, a store is read with one open per result."""
import json

from helpers import count_fs_calls


# ------------------------------------------------------------ result files
def _result(path, model="clip_demo", step=110, checkpoint="/r/a/clip_demo/checkpoints/"
            "step_00000110", loss="clip", taus=(None,)):
    from llip.evaluation.results import checkpoint_id
    return {"id": checkpoint_id(checkpoint, step), "model": model, "loss": loss, "step": step,
            "checkpoint": checkpoint, "dataset": "digits", "task": "zeroshot_classification",
            "metric": "acc1", "n": 3, "by_tau": [{"eval_tau": t, "value": 0.5, "metrics":
                                                  {"acc1": 0.5, "n": 3}} for t in taus]}


def test_truncated_or_foreign_result_files_are_not_done(tmp_path):
    from llip.evaluation.results import missing_taus, read_result
    path = tmp_path / "r.json"
    text = json.dumps(_result(path))
    path.write_text(text)
    assert read_result(str(path))["model"] == "clip_demo"
    assert missing_taus(read_result(str(path)), [1.0, 5.0]) == []  # CLIP: taus do not apply
    for broken in (text[: len(text) // 2], "{}", json.dumps({**_result(path), "by_tau": []}),
                   json.dumps([1, 2]), ""):
        path.write_text(broken)
        assert read_result(str(path)) is None, broken
    assert read_result(str(tmp_path / "absent.json")) is None
    llip = _result(path, loss="llip", taus=(1.0,))
    assert missing_taus(llip, [1, 5]) == [5] and missing_taus(llip, [1]) == []
    assert missing_taus(None, [None]) == [None]


def test_same_named_checkpoints_get_distinct_files_and_labels(tmp_path):
    from llip.evaluation.results import display_labels, result_path
    ckpts = ["/x/a/clip_demo/checkpoints/step_00000110", "/x/b/clip_demo/checkpoints/"
             "step_00000110", "/x/a/model.pt", "/x/b/model.pt"]
    results = [_result(None, checkpoint=c) for c in ckpts]
    results.append(_result(None, checkpoint="/x/a/clip_demo/checkpoints/step_00000055", step=55))
    results.append(_result(None, model="siglip_demo", checkpoint="/y/siglip_demo/checkpoints/"
                           "step_00000110"))
    assert len({r["id"] for r in results}) == 6
    assert len({result_path("out", "clip_demo__step00000110", "digits", r["id"])
                for r in results}) == 6
    labels = display_labels(results)
    assert [labels[r["id"]] for r in results] == [
        "clip_demo (a/clip_demo)", "clip_demo (b/clip_demo)", "clip_demo (a/model.pt)",
        "clip_demo (b/model.pt)", "clip_demo (a/clip_demo)", "siglip_demo"]


def test_a_store_is_read_with_one_open_per_result_and_plotted_in_rows(tmp_path, monkeypatch):
    """21 results (3 steps x 7 datasets): the aggregation and the done checks open each result
    file once and never stat it (on a parallel file system each call costs ~2 ms: 10,000
    results would cost 20 s per extra call); the plot's panels wrap into rows."""
    from evals.aggregate import aggregate
    from evals.results import read_result
    store = tmp_path / "store"
    (store / "results").mkdir(parents=True)
    files = []
    for step in (10, 20, 30):
        result = _result(None, step=step, checkpoint=f"/r/a/clip_demo/checkpoints/step_{step:08d}")
        for d in range(7):
            files.append(store / "results" / f"clip_demo__{step}__set{d}.json")
            files[-1].write_text(json.dumps({**result, "dataset": f"set{d}"}))
    calls = count_fs_calls(monkeypatch)
    wide = aggregate(str(store), groups={}, catalog={})
    assert [read_result(str(f)) is not None for f in files] == [True] * 21
    monkeypatch.undo()
    assert len(wide) == 3 and {f"set{d}" for d in range(7)} <= set(wide.columns)
    assert {calls["open", str(f)] for f in files} == {2}  # aggregate once, done check once
    assert not any(calls["stat", str(f)] for f in files)
    from PIL import Image
    with Image.open(store / "results_vs_step.png") as png:
        assert png.height > 1.5 * 3.2 * 120  # 2 rows of panels (3.2 in at 120 dpi), not 1
