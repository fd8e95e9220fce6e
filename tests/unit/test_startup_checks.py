"""What a training run checks before it writes anything: the per-rank batch, and the shards
(stat-ed by the main rank only)."""
import dataclasses

import pytest

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

    def no_stat(path):
        raise AssertionError(f"rank 1 looked at {path}")

    monkeypatch.setattr(stream.os.path, "exists", no_stat)
    check_shards_once(cfg, World(rank=1))  # alone it cannot hear the main rank: no error
