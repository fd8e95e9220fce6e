"""Every registered config validates and builds its model (big ones on the meta device)."""
import pytest
import torch

from llip.errors import ConfigError
from llip.models import build_model
from llip.run_configs import get_config, resolve
from llip.run_configs.registry import REGISTRY

get_config("llip_tiny")  # fills the registry
EXPECTED_PARAMS_M = {"llip_b16": (140, 220), "clip_b16": (140, 160), "llip_G14": (2400, 3000)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_config_builds(name):
    cfg = get_config(name).validate()
    assert cfg.name == name and cfg.description
    with torch.device("meta"):
        model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    if name in EXPECTED_PARAMS_M:
        low, high = EXPECTED_PARAMS_M[name]
        assert low < n < high, f"{name}: {n:.0f}M params"
    x = torch.zeros(2, 3, cfg.image_size, cfg.image_size, device="meta")
    t = torch.zeros(3, cfg.context_length, dtype=torch.long, device="meta")
    assert model.logits(*model(x, t)).shape == (2, 3)


def test_paper_recipe_defaults():
    b16, g14 = get_config("llip_b16"), get_config("llip_G14")
    assert (b16.mixture_tokens, g14.mixture_tokens) == (32, 64)
    assert b16.batch_size == 32768 and b16.nodes * b16.gpus_per_node == 128
    assert b16.epochs * b16.train_num_samples == 12_800_000_000
    assert (b16.beta1, b16.beta2, b16.wd, b16.warmup_steps, b16.lr) == (0.9, 0.95, 0.2, 2000, 5e-4)
    assert get_config("llip_l14").cross_attn_tau == 1.0 and b16.cross_attn_tau == 5.0


def test_overrides_are_typed():
    cfg = resolve("llip_tiny", ["batch_size=2e3", "lr=1e-3", "quick_gelu=yes", "name=x"])
    assert (cfg.batch_size, cfg.lr, cfg.quick_gelu, cfg.name) == (2000, 1e-3, True, "x")
    with pytest.raises(ConfigError, match="not a valid bool"):
        resolve("llip_tiny", ["quick_gelu=maybe"])
    with pytest.raises(ConfigError, match="train_data_weights has 1 entries but train_data has 2"):
        resolve("llip_tiny", ["train_data=a.tar::b.tar", "train_data_weights=1"])
    with pytest.raises(ConfigError, match="train_data_weights needs dataset_resampled=true"):
        resolve("llip_tiny", ["train_data=a.tar::b.tar", "train_data_weights=1::2",
                              "dataset_resampled=false"])


def test_eval_and_keep_every_fields_are_validated():
    cfg = resolve("llip_tiny", ["eval_every=50", "eval_datasets=digits::imagenet1k",
                                "keep_every=100"])
    assert (cfg.eval_every, cfg.keep_every) == (50, 100)
    with pytest.raises(ConfigError, match="eval_every=5 needs eval_datasets"):
        resolve("llip_tiny", ["eval_every=5"])
    for bad in ("eval_every=-1", "keep_every=-2"):
        with pytest.raises(ConfigError, match="must be >= 0"):
            resolve("llip_tiny", [bad])


def test_help_names_the_command_typed_and_lists_every_field(capsys, monkeypatch):
    import dataclasses

    from llip.config import RunConfig
    from llip.main import main
    monkeypatch.setattr("sys.argv", ["/venv/bin/llip-train", "--help"])
    with pytest.raises(SystemExit) as exit_code:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_code.value.code == 0 and out.startswith("usage: llip-train ")
    assert "python -m llip.main" not in out and "llip-train CONFIG --print" in out
    lines = out.splitlines()
    for field in dataclasses.fields(RunConfig):  # name, type and default of every field
        assert any(line.split()[:2] == [field.name, field.type] and
                   line.rstrip().endswith(repr(field.default)) for line in lines), field.name
