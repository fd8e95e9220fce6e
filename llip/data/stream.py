"""WebDataset streaming for training: shard specs -> batches of (images, tokens, counts).

* A spec is brace-expanded; '::' joins sources, mixed by `train_data_weights`. Any fsspec URL
  works (webdataset opens `pipe:`, `file://`, s3://, gs:// ...); local paths are checked upfront.
* Resampled (default): every (rank, worker) draws shards with replacement from its own RNG, so
  2.5B samples never need a file listing and the stream is infinite. The RNG seed is a function of
  (seed, rank, worker, start_step): restarting the stream at a checkpoint's step reproduces the
  exact same batches, which is what makes resume exact. Readers draw independently, so ranks are
  not disjoint: over n draws of n shards about 1 - 1/e = 63% of the shards are read.
* Partitioned (`dataset_resampled=false`): each pass deals a fresh permutation of the shards to
  the readers (rank x worker) in disjoint equal slices. A stream restarted at step s is
  positioned, not replayed: each worker's pass, shard and samples to skip in that shard follow
  from s (train_num_samples / shards samples per shard), so resume reads nothing consumed
  (except what sat in the shuffle buffer) and continues the same sequence.
* Corrupt samples and unreadable shards are skipped with a warning and counted; every batch
  carries the counts since the previous batch of its worker, so the trainer can log exact totals.
* Every batch also carries a 32-bit digest of its samples' keys and captions, computed in the
  worker: a cheap fingerprint of which samples a step trained on (resume tests compare it step by
  step), instead of reducing the pixels on the training device.
* Too much corruption, or a source that yields nothing, ends the run (llip.data.health).
* Shards are data, never code: only the image and caption members of a sample are decoded
  (PIL and UTF-8 text / JSON); other members (.pyd, .pth, ...) are never unpickled or loaded.
"""
import dataclasses
import hashlib
import logging
import os
import random
import shutil
import signal
import zlib
from urllib.parse import urlparse

import braceexpand
import numpy
import torch
import webdataset as wds

from llip.data import sample_captions, sample_image
from llip.data.health import ShardWatch, SkipCounter, source_name
from llip.data.remote import unread_scheme
from llip.errors import ConfigError, DataError
from llip.io import read_json

log = logging.getLogger("llip.data")
TEXT_KEYS = "json;txt"  # json {"captions": [...]} first: one random caption per use


def expand_sources(spec: str) -> list[list[str]]:
    try:
        return [list(braceexpand.braceexpand(s.strip())) for s in spec.split("::") if s.strip()]
    except braceexpand.UnbalancedBracesError:
        raise ConfigError(f"shard spec {spec!r} has unbalanced braces: write ranges as "
                          "{000000..000099}") from None


def parse_weights(weights: str, n_sources: int) -> list[float]:
    return [float(w) for w in weights.split("::")] if weights else [1.0] * n_sources


def local_path(url: str):
    """The filesystem path of a local shard URL, or None for remote / pipe URLs."""
    if ":" not in url:  # a plain path (most specs): urlparse would cost 1 s per 250k shards
        return url
    if url.startswith("pipe:"):
        return None
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return parsed.path if parsed.scheme else url
    return None


LIST_ABOVE = 64  # shards of one directory: up to this many get a stat each, more one listing


def check_shards(sources: list[list[str]]) -> None:
    """Fail before training if local shards are missing, or if every shard of a source is an
    empty tar (remote ones are checked when read). The trainer calls it once per job, on the
    main rank only. Metadata calls, not bytes, are the cost on a parallel file system (~2 ms
    each): a directory holding many of the shards is listed once instead of a stat per shard,
    and the empty-tar check stops at the first shard that holds data (one stat, usually)."""
    for i, urls in enumerate(sources):
        instead = next((unread_scheme(u) for u in urls[:1] if unread_scheme(u)), None)
        if instead:
            raise ConfigError(f"{urls[0]}: {urlparse(urls[0]).scheme}:// is not read directly "
                              f"(no reader here): stream it through the provider's CLI, e.g. "
                              f"train_data='{instead}', or mount the bucket")
        paths = [p for p in map(local_path, urls) if p is not None]
        missing = _missing(paths)
        if missing and os.path.isdir(missing[0]):
            raise ConfigError(f"train_data names the directory {missing[0]}, not its shards: "
                              f"list them, e.g. train_data='{missing[0].rstrip('/')}/"
                              "shard-{000000..000099}.tar'")
        if missing:
            raise ConfigError(f"missing shard {missing[0]} ({len(missing)} of {len(urls)} in its "
                              "source missing): fix train_data or build the shards first")
        if urls and len(paths) == len(urls) and all(map(_empty_tar, paths)):
            raise ConfigError(f"{source_name(sources, i)} holds no samples: its shards are "
                              "empty tars: fix or remove that source")


def _missing(paths: list[str]) -> list[str]:
    """The paths that are not files, in order: a stat each where a directory holds few of them,
    else one listing of the directory."""
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        by_dir.setdefault(os.path.dirname(path), []).append(path)
    present = set()
    for directory, members in by_dir.items():
        files = _files_in(directory or ".") if len(members) > LIST_ABOVE else None
        if files is None:
            present.update(p for p in members if os.path.isfile(p))
        else:
            present.update(p for p in members if os.path.basename(p) in files)
    return [p for p in paths if p not in present]


def _files_in(directory: str):
    """The names of the files in `directory` (symlinks followed), or None where it cannot be
    listed but its files may still be readable (no read permission on the directory)."""
    try:
        with os.scandir(directory) as entries:
            return {e.name for e in entries if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError:
        return None


def _empty_tar(path: str) -> bool:
    """A tar without a member: at most one record (10 KiB) of zeros, so its first block (where
    a member's header would be) is all zero."""
    try:
        if os.stat(path).st_size > 10240:
            return False
        with open(path, "rb") as f:
            return not any(f.read(512))
    except OSError:  # gone since the listing: not provably empty; the stream reports it if read
        return False


PREFETCH = 4  # batches each DataLoader worker keeps ready
SHM = "/dev/shm"


def check_shared_memory(cfg, local_batch: int, free: int | None = None) -> None:
    """Workers hand whole batches to the trainer through shared memory (/dev/shm): where it is
    too small (Docker's default is 64 MB) a worker cannot put its batch there and the trainer
    would wait for it for ever. Refuse up front, naming the sizes and the fixes."""
    if not cfg.workers:
        return
    if free is None:
        if not os.path.isdir(SHM):
            return
        free = shutil.disk_usage(SHM).free
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    batch_bytes = local_batch * (3 * cfg.image_size ** 2 * 4 + cfg.context_length * 8)
    need = batch_bytes * cfg.workers * (PREFETCH + 1) * ranks_here
    if need > free:
        mib = 2 ** 20
        raise ConfigError(
            f"the data workers need ~{need // mib} MiB of shared memory ({SHM}) for "
            f"{cfg.workers} worker(s) x {PREFETCH + 1} batches of {local_batch} images of "
            f"{cfg.image_size}px on each of {ranks_here} rank(s) here, but {SHM} has "
            f"{free // mib} MiB free: give it more (docker run --shm-size={-(-need // 2 ** 30)}g, "
            "or a larger tmpfs), or lower workers (workers=0 uses none)")


def local_batch_size(cfg, world_size: int) -> int:
    """This rank's batch (batch_size is global), checked before a run writes anything."""
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the world size "
                          f"{world_size}: pick a multiple")
    local = cfg.batch_size // world_size
    if local % cfg.accum_steps:
        raise ConfigError(f"the per-rank batch {local} (batch_size={cfg.batch_size} over "
                          f"{world_size} rank(s)) is not divisible by accum_steps="
                          f"{cfg.accum_steps}: pick batch_size or accum_steps so that it is")
    return local


def sample_digest(key: str, caption: str) -> int:
    """A stable 32-bit fingerprint of one training sample (crc32 of key and caption)."""
    return zlib.crc32(f"{key}\0{caption}".encode())


def manifest_samples(sources: list[list[str]]):
    """Samples in all sources according to the manifest.json that llip.data.convert writes
    next to its shards; None unless every shard is listed in one."""
    total = 0
    for urls in sources:
        paths = [local_path(u) for u in urls]
        if not paths or None in paths:
            return None
        manifest = os.path.join(os.path.dirname(paths[0]), "manifest.json")
        if not os.path.exists(manifest):
            return None
        counts = _manifest_counts(manifest)
        if any(os.path.basename(p) not in counts for p in paths):
            return None
        total += sum(counts[os.path.basename(p)] for p in paths)
    return total


def _manifest_counts(path: str) -> dict:
    """{shard name: samples} of a manifest.json, checked: it may be hand-edited or foreign."""
    try:
        counts = read_json(path).get("shards")
    except (ValueError, UnicodeDecodeError, AttributeError):
        counts = None
    if not isinstance(counts, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values()):
        raise ConfigError(f"{path} is not a manifest of llip.data.convert ({{\"shards\": "
                          "{name: samples}}): fix or remove it")
    return counts


def with_dataset_size(cfg):
    """The config with train_num_samples from the shards' manifest when the user gave none."""
    if cfg.train_num_samples > 0:
        return cfg
    n = manifest_samples(expand_sources(cfg.train_data))
    if not n:
        raise ConfigError("train_num_samples is not set and no manifest.json (written by "
                          "python -m llip.data.convert) covers train_data: give "
                          "train_num_samples=N")
    log.info("train_num_samples=%d from the shards' manifest", n)
    return dataclasses.replace(cfg, train_num_samples=n)


def stream_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() is salted per process for str)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _resampled_shards(sources, weights, rng):
    while True:  # choices over indices draws exactly as over the sources themselves
        source = rng.choices(range(len(sources)), weights=weights)[0]
        yield {"url": rng.choice(sources[source]), "source": source}


def _partitioned_shards(sources, seed: int, reader: int, readers: int, start: int = 0,
                        pass_samples: int = 0):
    """Without resampling: every pass is a new permutation of all shards (a function of seed and
    pass), dealt to the `readers` (ranks x workers) in equal disjoint slices of n // readers
    shards; the n % readers left over sit that pass out (a different few each pass). The reader
    begins `start` samples into its sequence, counting pass_samples / n samples per shard: the
    pass and shard are computed, not read through, and the first shard's "skip" says how many
    of its samples were already consumed."""
    urls = sources[0] if len(sources) == 1 else [u for s in sources for u in s]
    per_pass = len(urls) // readers
    if not per_pass:
        raise DataError(f"dataset_resampled=false needs >= {readers} shards (ranks x workers), "
                        f"found {len(urls)}: use dataset_resampled=true")
    if start and pass_samples <= 0:
        raise ValueError("a partitioned stream that starts past sample 0 needs pass_samples")
    shard = start * len(urls) // pass_samples if start else 0
    skip = start - shard * pass_samples // len(urls) if start else 0
    pass_no, index = divmod(shard, per_pass)
    while True:
        order = _pass_order(len(urls), seed, pass_no)
        for i in range(index, per_pass):
            yield {"url": urls[order[reader + i * readers]], **({"skip": skip} if skip else {})}
            skip = 0
        pass_no, index = pass_no + 1, 0


def _pass_order(n: int, seed: int, pass_no: int):
    """The permutation of n shards for one pass (numpy's legacy RandomState: its streams are
    frozen across numpy versions, so a resumed run deals the same shards)."""
    return numpy.random.RandomState(stream_seed(seed, pass_no) % 2 ** 32).permutation(n)


def consumed_samples(step: int, batch_size: int, worker: int, workers: int) -> int:
    """Samples a worker of a rank has yielded by `step` of a stream started at step 0: the
    DataLoader takes a rank's batches from its workers in turn, worker w making the batches
    w, w + workers, w + 2 * workers, ..."""
    return max(0, -(-(step - worker) // workers)) * batch_size


class ShardStream(torch.utils.data.IterableDataset):
    def __init__(self, sources, weights, transform, tokenizer, batch_size: int, *,
                 shuffle_buffer: int, seed: int, rank: int, world_size: int, start_step: int,
                 resampled: bool = True, max_corrupt_fraction: float = 0.5,
                 pass_samples: int = 0):
        super().__init__()
        self.sources, self.weights = sources, weights
        self.transform, self.tokenizer, self.batch_size = transform, tokenizer, batch_size
        self.shuffle_buffer, self.resampled = shuffle_buffer, resampled
        self.seed, self.rank, self.world_size, self.start_step = seed, rank, world_size, start_step
        self.max_corrupt_fraction = max_corrupt_fraction
        self.pass_samples = pass_samples  # samples in all shards (positions a partitioned stream)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(stream_seed(self.seed, self.rank, worker, self.start_step))
        if info is not None:  # augmentations draw from torch's RNG inside the worker
            torch.manual_seed(stream_seed(self.seed, self.rank, worker, self.start_step, 1))
        shard_errors = SkipCounter("shard")
        sample_errors = SkipCounter("sample", self.max_corrupt_fraction)
        watch = ShardWatch(self.sources, parent_pid=os.getppid() if info else None,
                           shard_errors=shard_errors)
        if self.resampled:
            shards = _resampled_shards(self.sources, self.weights, rng)
        else:
            shards = _partitioned_shards(
                self.sources, self.seed, self.rank * n_workers + worker,
                self.world_size * n_workers,
                consumed_samples(self.start_step, self.batch_size, worker, n_workers),
                self.pass_samples)
        images, captions, digest = [], [], 0
        for image, caption, key in decode_samples(shards, self.transform, self.shuffle_buffer,
                                                  rng, shard_errors, sample_errors, watch):
            images.append(image)
            captions.append(caption)
            digest = (digest + sample_digest(key, caption)) % 2 ** 32
            if len(images) == self.batch_size:
                yield (torch.stack(images), self.tokenizer(captions),
                       torch.tensor([shard_errors.take(), sample_errors.take(), digest]))
                images, captions, digest = [], [], 0


def decode_samples(shards, transform, shuffle_buffer: int, rng: random.Random,
                   shard_errors: SkipCounter, sample_errors: SkipCounter,
                   watch: ShardWatch | None = None):
    """{"url": ...} dicts -> (image tensor, caption, key); every failure is counted and
    skipped."""
    watch = watch or ShardWatch(None)
    skips = {}
    samples = watch.read_samples(_skip_consumed(wds.tarfile_to_samples(handler=shard_errors)(
        watch.urls(_note_skips(shards, skips))), skips))
    if shuffle_buffer > 1:
        samples = wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), rng=rng)(samples)
    for sample in samples:
        try:
            image, captions = image_and_captions(sample)
            if not captions:
                raise ValueError("sample has no caption")
            # one caption: no draw, so the stream's RNG sequence does not depend on caption counts
            caption = captions[0] if len(captions) == 1 else rng.choice(captions)
            item = transform(image), caption, sample.get("__key__", "")
        except Exception as exn:  # noqa: BLE001 - any bad sample is skipped and counted
            watch.bad(sample, exn)
            sample_errors(exn)
            continue
        watch.good(sample)
        sample_errors.ok()
        yield item


def _note_skips(shards, skips: dict):
    for shard in shards:
        if shard.get("skip"):
            skips[shard["url"]] = shard["skip"]
        yield shard


def _skip_consumed(samples, skips: dict):
    """Drop the first skips[url] samples of shard `url` (only a resumed partitioned stream's first
    shard has an entry: the samples trained on before the checkpoint), without decoding them."""
    for sample in samples:
        if skips:
            url = sample.get("__url__")
            if skips.get(url, 0) > 0:
                skips[url] -= 1
                continue
            skips.clear()  # past the consumed head of the first shard (or it was unreadable)
        yield sample


_TEXT_EXTS = TEXT_KEYS.split(";")


def image_and_captions(sample: dict):
    """The RGB image and caption list of a raw sample, decoding only those two members."""
    if not any(k in sample for k in _TEXT_EXTS):
        raise ValueError(f"sample {sample.get('__key__')!r} has no caption member ({TEXT_KEYS})")
    return sample_image(sample), sample_captions(sample)


def build_train_stream(cfg, world_rank: int, world_size: int, start_step: int, transform,
                       tokenizer) -> torch.utils.data.DataLoader:
    """A DataLoader over the stream. Batches come round-robin from the workers (in order), so the
    sequence of batches is a deterministic function of (config, world size, start_step).
    Shards are not checked here: the stream restarts at every checkpoint on every rank, and a
    stat per shard per rank per restart is a metadata storm on a parallel file system."""
    sources = expand_sources(cfg.train_data)
    n_shards, n_readers = sum(map(len, sources)), world_size * max(1, cfg.workers)
    if not cfg.dataset_resampled and n_shards < n_readers:
        raise ConfigError(f"dataset_resampled=false needs >= {n_readers} shards (ranks x "
                          f"workers), found {n_shards}: use dataset_resampled=true")
    dataset = ShardStream(
        sources, parse_weights(cfg.train_data_weights, len(sources)), transform, tokenizer,
        local_batch_size(cfg, world_size), shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
        rank=world_rank, world_size=world_size, start_step=start_step,
        resampled=cfg.dataset_resampled, max_corrupt_fraction=cfg.max_corrupt_fraction,
        pass_samples=cfg.train_num_samples)
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=cfg.workers, pin_memory=torch.cuda.is_available(),
        prefetch_factor=PREFETCH if cfg.workers else None, persistent_workers=False,
        worker_init_fn=worker_init)


# SLURM signals every process of a job before it stops it (USR1/USR2 from --signal before a time
# limit or a preemption, TERM when it ends the job): they are the trainer's to handle (requeue,
# finish a checkpoint). A worker killed by one would make torch raise in the trainer, in the
# middle of its requeue, and the job would be lost; so a worker ignores USR1/USR2 and leaves on
# TERM with exit status 0, which torch does not count as a failure (and which lets the exiting
# trainer's own SIGTERM to its workers end them, where ignoring TERM would hang that exit).
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def worker_init(_worker_id=None) -> None:
    """A DataLoader worker leaves the job's signals to its trainer, and dies with it."""
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave)
    die_with_parent()


def _leave(signum, frame):
    os._exit(0)


def die_with_parent() -> None:
    """Linux: the kernel kills this worker when the trainer dies, even while the worker is
    blocked inside a read (a hung pipe: URL, a stalled mount) where no Python check runs."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call: nobody is left to notify us
            os._exit(0)
    except (OSError, AttributeError):
        pass  # not Linux: ShardWatch's per-shard parent check remains
