"""WebDataset streaming on real tar shards: corruption is skipped and counted, URLs through
fsspec/pipe work, and the stream is a deterministic function of (seed, rank, worker, step)."""
import collections
import io
import itertools
import random

import pytest
import torch
import webdataset as wds
from PIL import Image

from llip.data import tokenizer_for, transform_for
from llip.data.stream import (
    ShardStream,
    SkipCounter,
    _partitioned_shards,
    _resampled_shards,
    build_train_stream,
    check_shards,
    decode_samples,
    expand_sources,
    stream_seed,
)
from llip.errors import ConfigError, DataError
from llip.run_configs import resolve


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 255, 10, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _write(path, keys, bad_image=()):
    with wds.TarWriter(str(path)) as sink:
        for i, key in enumerate(keys):
            image = b"this is not an image" if key in bad_image else _png(i)
            sink.write({"__key__": key, "png": image, "txt": key})
    return str(path)


@pytest.fixture
def shards(tmp_path):
    good = _write(tmp_path / "good.tar", [f"a{i}" for i in range(5)])
    bad_member = _write(tmp_path / "bad_member.tar", [f"b{i}" for i in range(5)], bad_image={"b2"})
    full = _write(tmp_path / "full.tar", [f"c{i}" for i in range(6)])
    with open(full, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])  # cut in the middle of a member
    return {"good": good, "bad_member": bad_member, "truncated": str(truncated),
            "missing": str(tmp_path / "missing.tar")}


def _identity(image):
    return torch.as_tensor(image.size, dtype=torch.float32)


def test_corrupt_members_and_shards_are_skipped_and_counted(shards):
    urls = [f"pipe:cat {shards['good']}", f"file://{shards['bad_member']}",
            shards["truncated"], shards["missing"]]
    shard_errors, sample_errors = SkipCounter("shard"), SkipCounter("sample")
    out = list(decode_samples(({"url": u} for u in urls), _identity, 0, random.Random(0),
                              shard_errors, sample_errors))
    captions = [c for _, c, _ in out]
    # Everything intact came through, in order, through pipe: and file:// URLs.
    assert captions[:9] == ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b3", "b4"]
    truncated_ok = captions[9:]
    assert truncated_ok == [f"c{i}" for i in range(len(truncated_ok))] and len(truncated_ok) < 6
    # The non-image member (and any half-member of the cut tar) is a sample error; the cut tar
    # and the missing file are shard errors.
    assert sample_errors.count >= 1
    assert shard_errors.count == 2
    assert len(captions) + sample_errors.count <= 5 + 5 + 6


def test_stream_with_corrupt_shards_keeps_flowing_and_reports_counts(shards):
    cfg = resolve("clip_tiny")
    sources = [[shards["good"], shards["bad_member"], shards["truncated"], shards["missing"]]]
    stream = ShardStream(sources, [1.0], transform_for(cfg, True), tokenizer_for(cfg), 4,
                         shuffle_buffer=8, seed=0, rank=0, world_size=1, start_step=0)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    skipped = torch.zeros(2, dtype=torch.long)
    for _, (images, tokens, counts) in zip(range(20), loader):
        assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()
        assert tokens.shape == (4, cfg.context_length)
        skipped += counts[:2]  # counts[2] is the batch's digest
    assert skipped[0] > 0 and skipped[1] > 0  # both kinds were met, counted, survived


def test_all_shards_unreadable_fails_instead_of_spinning(tmp_path):
    shard_errors, sample_errors = SkipCounter("shard"), SkipCounter("sample")
    urls = ({"url": f"pipe:cat {tmp_path}/none-{i}.tar"} for i in range(1000))
    with pytest.raises(DataError, match="yielded no samples from 20 shard reads"):
        list(decode_samples(urls, _identity, 0, random.Random(0), shard_errors, sample_errors))


def test_missing_local_shards_are_a_config_error(tmp_path):
    _write(tmp_path / "s-0.tar", ["x"])
    with pytest.raises(ConfigError, match=r"missing shard .*s-1.tar \(1 of 2"):
        check_shards(expand_sources(f"{tmp_path}/s-{{0..1}}.tar"))
    # remote shards are checked when read; object stores without a reader are refused now
    check_shards(expand_sources(f"{tmp_path}/s-{{0..0}}.tar::https://host/remote-{{0..9}}.tar"))
    with pytest.raises(ConfigError, match=r"s3:// is not read directly.*pipe:aws s3 cp"):
        check_shards(expand_sources(f"{tmp_path}/s-{{0..0}}.tar::s3://bucket/r-{{0..9}}.tar"))


def _first_batches(cfg, rank, start_step, n=6):
    loader = build_train_stream(cfg, rank, 2, start_step, transform_for(cfg, True),
                                tokenizer_for(cfg))
    return [b for _, b in zip(range(n), loader)]


def test_stream_is_deterministic_in_seed_rank_and_step(digits):
    import dataclasses
    cfg = dataclasses.replace(resolve("clip_tiny"), train_data=digits["train"], workers=2,
                              batch_size=8)
    first = _first_batches(cfg, rank=0, start_step=10)
    again = _first_batches(cfg, rank=0, start_step=10)
    for (i1, t1, _), (i2, t2, _) in zip(first, again):
        assert torch.equal(i1, i2) and torch.equal(t1, t2)
    other_rank = _first_batches(cfg, rank=1, start_step=10)
    other_step = _first_batches(cfg, rank=0, start_step=20)
    assert not torch.equal(first[0][1], other_rank[0][1])
    assert not torch.equal(first[0][1], other_step[0][1])


def test_partitioned_shards_without_resampling_cover_each_sample_once_per_pass(tmp_path):
    """dataset_resampled=false: every (rank, worker) reads a disjoint slice of the shards, and
    one pass over all ranks sees every sample exactly once, in a new order every pass."""
    keys = [[f"s{s}k{i}" for i in range(3)] for s in range(8)]
    urls = [_write(tmp_path / f"s{s}.tar", keys[s]) for s in range(8)]
    world, per_pass = 2, 8 * 3 // 2
    passes = [[], []]
    for rank in range(world):
        stream = ShardStream([urls], [1.0], lambda image: torch.zeros(1), list, batch_size=4,
                             shuffle_buffer=0, seed=3, rank=rank, world_size=world,
                             start_step=0, resampled=False)
        batches = iter(stream)
        for seen in passes:
            seen.append([c for _ in range(per_pass // 4) for c in next(batches)[1]])
    everything = sorted(k for ks in keys for k in ks)
    for seen in passes:
        assert sorted(seen[0] + seen[1]) == everything
    assert passes[0] != passes[1]  # reshuffled between passes
    with pytest.raises(DataError, match="needs >= 16 shards"):
        next(iter(ShardStream([urls], [1.0], lambda image: torch.zeros(1), list, batch_size=4,
                              shuffle_buffer=0, seed=3, rank=0, world_size=16, start_step=0,
                              resampled=False)))


def _zeros(image):
    return torch.zeros(1)


def _rank_captions(urls, rank, start_step, batches, per_shard=3):
    """The captions of a partitioned stream's first `batches` batches on `rank` of 4 (2 workers
    each, through a real DataLoader, which takes the workers' batches in turn)."""
    stream = ShardStream([urls], [1.0], _zeros, list, batch_size=2, shuffle_buffer=0, seed=5,
                         rank=rank, world_size=4, start_step=start_step, resampled=False,
                         pass_samples=len(urls) * per_shard)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    return [b[1] for _, b in zip(range(batches), loader)]


def test_partitioned_readers_are_disjoint_and_a_restarted_stream_continues_it(tmp_path):
    """dataset_resampled=false, a big job in miniature (4 ranks x 2 workers, 27 shards of 3
    samples, so 3 shards per reader per pass and 3 left over): within a pass the 8 readers see
    disjoint samples, and the left-over shards differ between passes. A stream restarted at a
    checkpoint (step 4: mid-shard; step 10: in the second pass) yields exactly the batches of the
    uninterrupted stream from that step: positioned, no consumed sample read again."""
    urls = [_write(tmp_path / f"s{s:02d}.tar", [f"s{s:02d}k{i}" for i in range(3)])
            for s in range(27)]
    passes = [[], []]
    for rank in range(4):
        straight = _rank_captions(urls, rank, 0, 18)  # 9 batches of 2 per worker: 2 passes
        for step in (4, 10):
            assert _rank_captions(urls, rank, step, 18 - step) == straight[step:]
        for worker in range(2):
            samples = [c for batch in straight[worker::2] for c in batch]
            passes[0] += samples[:9]
            passes[1] += samples[9:]
    for seen in passes:
        assert len(seen) == len(set(seen)) == 8 * 9
    left_over = [{u[-7:-4] for u in urls} - {c[:3] for c in seen} for seen in passes]
    assert all(len(shards) == 3 for shards in left_over) and left_over[0] != left_over[1]


def test_partitioned_position_is_computed_not_read_through():
    """2,500 shards over 256 readers: one pass deals disjoint slices of 9 shards; a reader
    resumed 1,234 samples in (10 per shard) starts at its 124th shard (the 2nd pass), skipping
    its first 4 samples, without drawing the 123 before it."""
    n, readers = 2_500, 256
    sources = [[f"/data/{i:06d}.tar" for i in range(n)]]
    first_pass = [d["url"] for r in range(readers)
                  for d in itertools.islice(_partitioned_shards(sources, 0, r, readers), 9)]
    assert len(set(first_pass)) == len(first_pass) == 9 * readers
    straight = next(itertools.islice(_partitioned_shards(sources, 0, 7, readers), 123, None))
    resumed = _partitioned_shards(sources, 0, 7, readers, start=1234, pass_samples=10 * n)
    assert next(resumed) == {**straight, "skip": 4}
    assert "skip" not in next(resumed)


def test_weighted_mix_of_three_sources_is_realised_within_one_point():
    """Resampled shards, 3 sources weighted 0.5 / 0.3 / 0.2 and 64 ranks x 4 workers drawing
    100 shards each with the stream's own seeds: every source's share of the draws is within 1
    percentage point of its weight (shards of equal size: the same share of samples)."""
    sources = [[f"/data/{name}/{i:05d}.tar" for i in range(1000)] for name in "abc"]
    weights = [0.5, 0.3, 0.2]
    drawn = collections.Counter()
    for rank, worker in itertools.product(range(64), range(4)):
        rng = random.Random(stream_seed(0, rank, worker, 0))
        for shard in itertools.islice(_resampled_shards(sources, weights, rng), 100):
            assert shard["url"] in sources[shard["source"]]
            drawn[shard["source"]] += 1
    total = sum(drawn.values())
    assert all(abs(drawn[s] / total - w) < 0.01 for s, w in enumerate(weights)), drawn
