"""Pretrained weights through the commands: a run started with init_from and a locked tower,
the resume rules for init_from, and an eval sweep with an open_clip model beside ours."""
import json

import open_clip
import pandas as pd
import torch
import yaml

from helpers import run_cli, write_catalog
from llip.config import to_dict
from llip.loading import load_model
from llip.models import build_model
from llip.run_configs import get_config


def _export(model, cfg, path):
    torch.save({"state_dict": model.state_dict(), "config": to_dict(cfg), "step": 0}, path)
    return str(path)


def test_init_from_with_locked_text_then_resume_rules(digits, tmp_path):
    cfg = get_config("llip_tiny")
    torch.manual_seed(7)
    source = build_model(cfg)
    start = _export(source, cfg, tmp_path / "start.pt")
    args = ["-m", "llip.main", "llip_tiny", f"train_data={digits['train']}", f"logs={tmp_path}",
            "name=run", "train_num_samples=32", "batch_size=16", "checkpoint_every=2",
            "log_every=2", "workers=1", "lock_text=true"]
    first = run_cli(*args, f"init_from={start}", "epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"init_from {start}: llip llip export, " in first.stdout
    assert "trainable parameters: " in first.stdout and "text tower locked" in first.stdout

    trained, _, step = load_model(str(tmp_path / "run"))
    assert step == 2
    after = trained.state_dict()
    for name, value in source.state_dict().items():  # the locked tower is exactly the source's
        assert torch.equal(value, after[name]) == name.startswith("text."), name

    requeued = run_cli(*args, f"init_from={start}", "epochs=2")  # same init_from: resumes
    assert requeued.returncode == 0, requeued.stderr[-2000:]
    assert "was applied when the run started; resuming instead" in requeued.stdout
    assert "resumed from" in requeued.stdout and "at step 2" in requeued.stdout

    other = _export(build_model(cfg), cfg, tmp_path / "other.pt")
    refused = run_cli(*args, f"init_from={other}", "epochs=3")
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "already has checkpoint step_00000004" in lines[0] and "resume wins" in lines[0]


def test_eval_sweep_lists_open_clip_models_beside_ours(digits, tmp_path):
    from evals.main_mc import main
    (tmp_path / "tiny-sweep-clip.json").write_text(json.dumps({
        "embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                        "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4,
                     "layers": 2}}))
    open_clip.add_model_config(tmp_path / "tiny-sweep-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-sweep-clip").state_dict(), tmp_path / "base.pt")
    cfg = get_config("clip_tiny")
    ours = _export(build_model(cfg), cfg, tmp_path / "ours.pt")
    sweep = {"checkpoints": [ours, {"openclip": "tiny-sweep-clip",
                                    "pretrained": str(tmp_path / "base.pt")}],
             "catalogs": [write_catalog(tmp_path / "catalog.json", digits)],
             "datasets": ["digits"], "batch_size": 128, "workers": 0,
             "output_dir": str(tmp_path / "out")}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["--fname", str(tmp_path / "sweep.yaml")]) == 0
    wide = pd.read_csv(tmp_path / "out" / "results_wide.csv")
    assert sorted(wide["model"]) == ["clip_tiny", "openclip_tiny-sweep-clip_base"]
    [path] = (tmp_path / "out" / "results").glob(
        "openclip_tiny-sweep-clip_base__step00000000__digits__*.json")
    row = json.load(open(path))
    assert row["n"] == 360 and row["loss"] == "clip" and 0 <= row["by_tau"][0]["value"] <= 1

    sweep["checkpoints"] = [{"openclip": "ViT-Q-99", "pretrained": "x"}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(sweep))
    bad = run_cli("-m", "evals.main_mc", "--fname", str(tmp_path / "bad.yaml"))
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "open_clip model 'ViT-Q-99' does not exist; closest:" in lines[0]
