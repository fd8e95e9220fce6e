"""What a training run checks before it writes anything: the per-rank batch, and the shards
(checked by the main rank only, with few file-system calls)."""
import collections
import dataclasses
import os

import pytest

from helpers import count_fs_calls
from llip.data import stream
from llip.errors import ConfigError
from llip.run_configs import resolve
from llip.training.dist import World
from llip.training.trainer import check_shards_once


@pytest.mark.parametrize("batch,world,accum,expected", [
    (32768, 128, 1, 256), (32768, 128, 4, 256), (16, 1, 16, 16), (8, 8, 1, 1)])
def test_local_batch_size(batch, world, accum, expected):
    cfg = dataclasses.replace(resolve("clip_tiny"), batch_size=batch, accum_steps=accum)
    assert stream.local_batch_size(cfg, world) == expected


@pytest.mark.parametrize("batch,world,accum,needle", [
    (100, 8, 1, "batch_size=100 is not divisible by the world size 8"),
    (4, 8, 1, "batch_size=4 is not divisible by the world size 8"),
    (48, 2, 5, "per-rank batch 24 (batch_size=48 over 2 rank(s)) is not divisible by "
               "accum_steps=5")])
def test_bad_local_batch_is_a_config_error(batch, world, accum, needle):
    cfg = dataclasses.replace(resolve("clip_tiny"), batch_size=batch, accum_steps=accum)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        stream.local_batch_size(cfg, world)


def test_shards_are_checked_by_the_main_rank_only(tmp_path, monkeypatch):
    cfg = dataclasses.replace(resolve("clip_tiny"), train_data=f"{tmp_path}/s-{{0..3}}.tar")
    with pytest.raises(ConfigError, match="missing shard"):
        check_shards_once(cfg, World(rank=0))

    def no_stat(path, *args, **kwargs):
        raise AssertionError(f"rank 1 looked at {path}")

    for name in ("stat", "scandir"):
        monkeypatch.setattr(stream.os, name, no_stat)
    check_shards_once(cfg, World(rank=1))  # alone it cannot hear the main rank: no error


def _by_call(calls) -> collections.Counter:
    totals = collections.Counter()
    for (name, _), n in calls.items():
        totals[name] += n
    return totals


def test_shard_check_lists_a_directory_once_instead_of_a_stat_per_shard(tmp_path, monkeypatch):
    """The up-front check of 300 shards in one directory: one listing and one stat (the first
    shard holds data, so the source is not all empty tars), not 300 stats; a missing shard is
    still named. A handful of shards (no more than LIST_ABOVE) get a stat each instead."""
    for i in range(300):
        with open(tmp_path / f"s-{i:03d}.tar", "wb") as f:
            f.truncate(20_000)  # sparse: more than an empty tar's 10 KiB
    spec = f"{tmp_path}/s-{{000..299}}.tar"
    calls = count_fs_calls(monkeypatch)
    stream.check_shards(stream.expand_sources(spec))
    assert _by_call(calls) == {"scandir": 1, "stat": 1}
    calls.clear()
    stream.check_shards(stream.expand_sources(f"{tmp_path}/s-{{000..009}}.tar"))
    assert _by_call(calls) == {"stat": 10 + 1}
    monkeypatch.undo()
    os.remove(tmp_path / "s-150.tar")
    with pytest.raises(ConfigError, match=r"missing shard .*s-150.tar \(1 of 300 in its"):
        stream.check_shards(stream.expand_sources(spec))


def test_a_source_of_only_empty_tars_is_still_refused(tmp_path):
    for i in range(100):
        (tmp_path / f"e-{i:03d}.tar").write_bytes(bytes(10240))
    with pytest.raises(ConfigError, match="holds no samples"):
        stream.check_shards(stream.expand_sources(f"{tmp_path}/e-{{000..099}}.tar"))
