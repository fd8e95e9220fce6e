"""Sweeps in milliseconds: expansion (grid, zip), readable deterministic names, every point
checked as a single run before anything happens, bad points refused in one line."""
import pytest

from llip.errors import ConfigError
from llip.run_configs.sweeps import SWEEPS, Sweep
from llip.sweep import expand, grid, main, split_values, value_label


def test_grid_is_the_product_in_axis_order_and_zip_pairs_axes():
    sweep = Sweep("llip_tiny", {"lr": ["1e-3", "2e-3"], "mixture_tokens": ["2", "4"],
                                "seed": ["0", "1", "2"]})
    points = grid(sweep)
    assert len(points) == 12 and points[0] == {"lr": "1e-3", "mixture_tokens": "2", "seed": "0"}
    assert points[-1] == {"lr": "2e-3", "mixture_tokens": "4", "seed": "2"}
    zipped = grid(Sweep("llip_tiny", {"lr": ["1e-3", "2e-3"], "warmup_steps": ["10", "20"],
                                      "seed": ["0", "1"]}, zip=(("lr", "warmup_steps"),)))
    assert [(p["lr"], p["warmup_steps"]) for p in zipped] == [("1e-3", "10"), ("1e-3", "10"),
                                                              ("2e-3", "20"), ("2e-3", "20")]
    assert list(zipped[0]) == ["lr", "warmup_steps", "seed"]  # columns keep the axis order


@pytest.mark.parametrize("value,label", [(1e-3, "1e-3"), (2.5e-4, "2.5e-4"), (0.5, "0.5"),
                                         (5.0, "5"), (16, "16"), (True, "true"),
                                         (1e6, "1e6"), ("b c", "b_c"),
                                         ("/data/a/shard-{0..9}.tar", "shard-_0..9_.tar")])
def test_value_labels_are_short_and_path_safe(value, label):
    assert value_label(value) == label


def test_commas_inside_braces_are_not_axes():
    assert split_values("/d/{000..009}.tar,/e/{0,1}.tar") == ["/d/{000..009}.tar",
                                                             "/e/{0,1}.tar"]


def test_points_are_named_after_typed_values_and_resolved_as_runs(tmp_path):
    sweep = Sweep("llip_tiny", {"lr": ["0.001", "2e-3"], "seed": ["0", "1"]},
                  overrides=(f"logs={tmp_path}", "train_data=x.tar"))
    sweep_dir, points = expand(sweep)
    assert sweep_dir == str(tmp_path / "llip_tiny-lr-seed")  # the same command, the same dir
    assert [p.name for p in points] == ["llip_tiny-lr1e-3-seed0", "llip_tiny-lr1e-3-seed1",
                                        "llip_tiny-lr2e-3-seed0", "llip_tiny-lr2e-3-seed1"]
    first = points[0]
    assert first.cfg.lr == 1e-3 and first.cfg.seed == 0 and first.cfg.name == first.name
    assert first.run_dir == str(tmp_path / "llip_tiny-lr-seed" / "llip_tiny-lr1e-3-seed0")
    named, _ = expand(Sweep("llip_tiny", {"seed": ["0", "1"]}, name="mine",
                            overrides=(f"logs={tmp_path}",)))
    assert named == str(tmp_path / "mine")


@pytest.mark.parametrize("sweep,needle", [
    (Sweep("llip_tiny", {"lr": ["1e-3", "x"]}), "sweep point llip_tiny-lrx: bad value for lr: "
                                                "'x' is not a valid float"),
    (Sweep("llip_tiny", {"lr": ["1e-3", "-1"]}), "sweep point llip_tiny-lr-1: lr=-1.0 must be "
                                                 ">= 0"),
    (Sweep("llip_tiny", {"mixture_tokns": ["2", "4"]}), "unknown key 'mixture_tokns'; closest: "
                                                        "mixture_tokens"),
    (Sweep("llip_tiny", {"lr": ["1e-3", "1e-3"]}), "sweep axis lr repeats a value"),
    (Sweep("llip_tiny", {"lr": ["1e-3", "2e-3"], "seed": ["0"]}, zip=(("lr", "seed"),)),
     "zipped axes need as many values each"),
    (Sweep("llip_tiny", {"lr": ["1e-3", "2e-3"]}, zip=(("lr", "wd"),)),
     "wd is not an axis of the sweep"),
    (Sweep("llip_tiny", {"name": ["a", "b"]}), "name cannot be a sweep axis"),
    (Sweep("llip_tiny", {"lr": ["0.001", "1e-3"]}), "are both named llip_tiny-lr1e-3"),
])
def test_one_bad_point_refuses_the_sweep_in_one_line(sweep, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")) as info:
        expand(sweep)
    assert "\n" not in str(info.value)


def test_command_line_refusals_write_nothing(tmp_path, capsys):
    assert main(["llip_tiny", "lr=1e-3,x", f"logs={tmp_path}", "train_data=x.tar"]) == 2
    assert "sweep point llip_tiny-lrx" in capsys.readouterr().err
    assert main(["llip_tny", "lr=1e-3,2e-3"]) == 2
    assert "unknown config 'llip_tny'; closest: llip_tiny" in capsys.readouterr().err
    assert main(["llip_tiny", "lr=1e-3", f"logs={tmp_path}"]) == 2
    assert "a sweep needs an axis" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert main(["llip_tiny", "lr=1e-3,2e-3", f"logs={tmp_path}", "train_data=x.tar",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "llip_tiny-lr1e-3: lr=1e-3" in out and "llip_tiny-lr2e-3: lr=2e-3" in out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_sweeps_kept_in_the_repo_expand():
    for name, make in SWEEPS.items():
        sweep = make()
        _, points = expand(Sweep(sweep.config, sweep.axes, sweep.zip, sweep.name,
                                 (*sweep.overrides, "train_data=x.tar"), sweep.evals))
        assert points, name
