"""Sweeps in milliseconds: expansion (grid, zip), readable deterministic names, every point
checked as a single run before anything happens, bad points refused in one line."""
import dataclasses
import json
import os

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


def _point_dirs(tmp_path, n):
    """A sweep of n seeds; its points' run dirs in the states a re-run meets."""
    sweep = Sweep("llip_tiny", {"seed": [str(i) for i in range(n)]},
                  overrides=(f"logs={tmp_path}", "train_data=x.tar"))
    return sweep, *expand(sweep)


def test_rerun_plan_restarts_failed_cancelled_and_new_points_only(tmp_path):
    from llip.run_dir import (
        cancelled_path,
        checkpoint_dir,
        metrics_path,
        train_log,
        write_config,
        write_marker,
    )
    from llip.sweep import plan
    _, _, points = _point_dirs(tmp_path, 5)
    done, failed, diverged, cancelled, new = points
    for point in (done, failed, diverged, cancelled):
        os.makedirs(point.run_dir)
        write_config(point.run_dir, point.cfg)
    final = checkpoint_dir(done.run_dir, done.cfg.total_steps)
    os.makedirs(final)
    write_marker(final, {"step": done.cfg.total_steps})
    with open(metrics_path(failed.run_dir), "w") as f:
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n")
    with open(train_log(diverged.run_dir), "w") as f:
        f.write("error: training diverged: the mean loss of the last steps is nan at step 8\n")
    with open(cancelled_path(cancelled.run_dir), "w") as f:
        f.write("1\n")
    todo, counts = plan(points)
    assert [p.name for p in todo] == [failed.name, cancelled.name, new.name]
    assert counts == {"completed": 1, "failed": 1, "diverged": 1, "cancelled": 1,
                      "not started": 1}


def test_rerun_refusals_a_changed_config_and_a_silent_controller(tmp_path, monkeypatch):
    from llip.run_dir import job_id_path, submitit_dir, write_config
    from llip.sweep import check_same_config, plan
    _, _, points = _point_dirs(tmp_path, 2)
    os.makedirs(points[0].run_dir)
    write_config(points[0].run_dir, dataclasses.replace(points[0].cfg, lr=0.5))
    with pytest.raises(ConfigError, match=r"holds a run with another config \(lr 0.5 -> 0.001"):
        check_same_config(points[0])
    check_same_config(points[1])  # no run there yet: fine
    os.makedirs(submitit_dir(points[1].run_dir))
    with open(job_id_path(points[1].run_dir), "w") as f:
        f.write("77")
    monkeypatch.setattr("llip.training.slurm.job_states", lambda ids: None)  # controller down
    with pytest.raises(ConfigError, match="SLURM controller does not answer"):
        plan(points)


def test_the_record_keeps_points_and_evals_across_commands(tmp_path):
    from llip.sweep import record
    sweep, sweep_dir, points = _point_dirs(tmp_path, 2)
    first = record(dataclasses.replace(sweep, evals=str(tmp_path / "e.yaml")), sweep_dir,
                   points, "local")
    os.makedirs(sweep_dir)
    with open(os.path.join(sweep_dir, "sweep.json"), "w") as f:
        json.dump(first, f)
    wider = dataclasses.replace(sweep, axes={"seed": ["1", "2"]})
    _, more = expand(wider)
    second = record(wider, sweep_dir, more, "slurm")
    assert [p["name"] for p in second["points"]] == ["llip_tiny-seed0", "llip_tiny-seed1",
                                                     "llip_tiny-seed2"]
    assert second["axes"] == {"seed": ["0", "1", "2"]}
    assert second["evals"] == str(tmp_path / "e.yaml")  # kept when the command omits it
    assert second["created"] == first["created"] and second["launcher"] == "slurm"


def test_cancel_marks_points_not_started_so_a_local_sweep_skips_them(tmp_path):
    from llip.run_dir import cancelled_path
    from llip.status import cancel, run_status
    _, sweep_dir, points = _point_dirs(tmp_path, 2)
    rows = [run_status(p.run_dir) for p in points]
    assert [r.state for r in rows] == ["not started", "not started"]
    assert cancel(sweep_dir, rows) == 2
    assert all(os.path.exists(cancelled_path(p.run_dir)) for p in points)
    assert [run_status(p.run_dir).state for p in points] == ["cancelled", "cancelled"]
