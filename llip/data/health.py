"""How a training stream notices that its data is bad, instead of crashing on a little of it or
spinning forever on none of it.

* Corruption is a rate, not a streak: a worker fails only when more than `max_corrupt_fraction`
  of its last WINDOW samples could not be decoded. 5% corrupt images never stop a run, whatever
  the batch size; a source that is mostly garbage stops it within a window.
* A source that yields nothing fails fast, naming it: after SOURCE_PROBE_SHARDS shard reads
  without one sample (empty tars, unreadable files), or SOURCE_PROBE_SAMPLES samples of which
  none decodes. In a mix this is the difference between training on what was asked and silently
  training on the other sources only.
* A stream whose last EMPTY_SHARDS_IN_A_ROW shard reads gave no sample (storage gone mid-run)
  fails instead of looping.
* A DataLoader worker checks at every shard that its parent is alive and exits if not: torch's
  own watchdog only runs between batches, which a worker looping inside one never reaches.
"""
from __future__ import annotations

import collections
import logging
import os

from llip.errors import DataError

log = logging.getLogger("llip.data")
WINDOW = 1000  # samples per worker over which the corrupt fraction is measured
SOURCE_PROBE_SHARDS = 20
SOURCE_PROBE_SAMPLES = 100
EMPTY_SHARDS_IN_A_ROW = 200


class SkipCounter:
    """A webdataset error handler: warn, count, continue. With `max_fraction`, it also records
    the outcome of every item (`ok()` for a good one) over the last `window` and raises
    DataError once more than that fraction of them failed."""

    def __init__(self, what: str, max_fraction: float | None = None, window: int = WINDOW):
        self.what, self.count, self.last = what, 0, ""
        self.max_fraction, self.window = max_fraction, window
        self._ring, self._pos, self._errors, self._seen = bytearray(window), 0, 0, 0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        self.last = f"{type(exn).__name__}: {_one_line(exn)}"  # the cause, for a stop's line
        if self.count <= 5 or self.count % 1000 == 0:
            log.warning("skipping %s (%d so far): %s: %s", self.what, self.count,
                        type(exn).__name__, str(exn)[:200])
        self._record(1)
        if self.max_fraction is not None and self._errors > self.max_fraction * self.window:
            raise DataError(
                f"{self._errors} of the last {min(self._seen, self.window)} {self.what}s could "
                f"not be read (more than max_corrupt_fraction={self.max_fraction:g} of "
                f"{self.window}); last: {type(exn).__name__}: {_one_line(exn)}: check "
                "train_data, or raise max_corrupt_fraction")
        return True

    def ok(self) -> None:
        self._record(0)

    def _record(self, bad: int) -> None:
        if self.max_fraction is None:
            return
        self._errors += bad - self._ring[self._pos]
        self._ring[self._pos] = bad
        self._pos = (self._pos + 1) % self.window
        self._seen += 1

    def take(self) -> int:
        """The count since the last take (each batch reports its own)."""
        n, self.count = self.count, 0
        return n


class ShardWatch:
    """Per source: shards drawn, samples read, samples decoded or not. Wraps the shard iterator
    (`urls`) and the raw sample iterator (`read`); the decoder reports `good` / `bad`."""

    def __init__(self, sources: list[list[str]] | None, parent_pid: int | None = None,
                 shard_errors: SkipCounter | None = None):
        self.sources = sources or [[]]
        self.shard_errors = shard_errors  # its last error is the likely cause of no samples
        self.source_of = {u: i for i, urls in reversed(list(enumerate(self.sources)))
                          for u in urls}
        self.drawn, self.read, self.decoded, self.failed = (collections.Counter()
                                                            for _ in range(4))
        self.draws_since_sample = 0
        self.parent_pid = parent_pid

    def urls(self, shards):
        for shard in shards:
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                os._exit(0)  # a worker whose trainer died: nobody will ever read its batches
            source = shard.get("source", self.source_of.get(shard["url"], 0))
            self.source_of.setdefault(shard["url"], source)  # a stream of unknown sources
            self._check_empty(source, shard["url"])
            self.drawn[source] += 1
            self.draws_since_sample += 1
            yield shard

    def read_samples(self, samples):
        for sample in samples:
            self.read[self.source(sample)] += 1
            self.draws_since_sample = 0
            yield sample

    def source(self, sample) -> int:
        return self.source_of.get(sample.get("__url__"), 0)

    def good(self, sample) -> None:
        self.decoded[self.source(sample)] += 1

    def bad(self, sample, exn: Exception) -> None:
        source = self.source(sample)
        self.failed[source] += 1
        if not self.decoded[source] and self.failed[source] >= SOURCE_PROBE_SAMPLES:
            raise DataError(f"none of the first {self.failed[source]} samples of "
                            f"{source_name(self.sources, source)} could be decoded (last: "
                            f"{sample.get('__url__', '?')}: {type(exn).__name__}: "
                            f"{_one_line(exn)}): fix or remove that source")

    def _check_empty(self, source: int, url: str) -> None:
        if not self.read[source] and self.drawn[source] >= SOURCE_PROBE_SHARDS:
            raise DataError(f"{source_name(self.sources, source)} yielded no samples from "
                            f"{self.drawn[source]} shard reads (last: {url}{self._cause()}): "
                            "its shards are empty or unreadable")
        if self.draws_since_sample >= EMPTY_SHARDS_IN_A_ROW:
            raise DataError(f"no samples from the last {self.draws_since_sample} shards read "
                            f"(last: {url}{self._cause()}): shards empty or storage unreachable")

    def _cause(self) -> str:
        last = self.shard_errors.last if self.shard_errors is not None else ""
        return f"; last error: {last}" if last else ""


def source_name(sources: list[list[str]], source: int) -> str:
    """How an error names a train_data source: its first shard (and count), and its number
    when train_data mixes several."""
    urls = sources[source] if source < len(sources) else []
    where = (f"{urls[0]} ... ({len(urls)} shards)" if len(urls) > 1 else urls[0]) if urls \
        else "the stream"
    return f"train_data source {source + 1} ({where})" if len(sources) > 1 else where


def _one_line(exn: Exception) -> str:
    return " ".join(str(exn).split())[:200]
