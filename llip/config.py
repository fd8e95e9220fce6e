"""The run configuration: one flat frozen dataclass, every check of its values, and the fields
that may change when a run resumes.

Flat on purpose: every field is a `key=value` override on the command line with the same name
(as open_clip_train's flags), and one YAML file describes a run; leaf functions take the fields
they need, not the whole config. Named experiments are functions in llip/run_configs/; the
override parser is in llip/cli.py.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re

import braceexpand

from llip.errors import ConfigError

LOSSES = ("clip", "siglip", "llip")
PRECISIONS = ("auto", "fp32", "bf16")
LLIP_QUERIES = ("text", "zero")
INITS = ("ours", "reference")
SCHEDULES = ("cosine", "const")
WANDB_MODES = ("offline", "online", "disabled")
CHOICES = {"loss": LOSSES, "precision": PRECISIONS, "schedule": SCHEDULES,
           "wandb_mode": WANDB_MODES, "llip_query": LLIP_QUERIES, "init": INITS}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str = ""
    description: str = ""

    # --- model: towers built from open_clip's transformer blocks ---
    loss: str = "llip"  # clip | siglip | llip; llip also selects the mixture-token vision tower
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    mlp_ratio: float = 4.0
    text_mlp_ratio: float = 0.0  # 0: same as mlp_ratio (G/14's text tower uses 4.0, not 4.9231)
    context_length: int = 77
    vocab_size: int = 49408  # open_clip's BPE tokenizer
    embed_dim: int = 512
    quick_gelu: bool = True
    mixture_tokens: int = 32  # K: learnable tokens replacing the class token (llip only)
    cross_attn_heads: int = 8
    cross_attn_tau: float = 5.0  # softmax temperature over mixture tokens (no 1/sqrt(d))
    cross_attn_qkv_norm: bool = False  # LayerNorm on q, k, v (H/14 and G/14)
    llip_chunk: int = 1024  # texts per block in the pairwise Llip score (bounds memory)
    init_logit_scale: float = math.log(1 / 0.07)
    # siglip and llip only: a number, or "auto" = -ln(B - 1) with B the global batch (the bias
    # at which a random score gives the B - 1 negatives and 1 positive of a row equal weight;
    # -10 is that value at B = 32k and stays near -10 for a whole short small-batch run)
    init_logit_bias: str = "-10"
    # llip only: "zero" zeroes the query (uniform attention over the K tokens, same parameters
    # and compute): the control that tells the caption-contextualisation apart from the rest
    llip_query: str = "text"
    # The init of the vision blocks and of the Llip head's query, target and output projections
    # (the text tower always has CLIP's init). "ours": CLIP's init for the vision blocks; the
    # head's three projections keep nn.Linear's default, uniform(+-fan_in^-1/2), std
    # 0.58 fan_in^-1/2. "reference": the Llip authors' release: PyTorch's default init for the
    # vision blocks, normal(0, fan_in^-1/2) for the three head projections.
    init: str = "ours"

    # --- starting point and what trains (llip/loading.py, llip/models/tuning.py) ---
    init_from: str = ""  # weights file (llip export, released Llip, open_clip) or hf-hub:org/name
    init_from_model: str = ""  # the open_clip model name of an open_clip init_from
    lock_image: bool = False  # freeze the vision tower (LiT); Llip's mixture tokens still train
    lock_mixture_tokens: bool = False  # llip with lock_image: freeze the mixture tokens too
    lock_text: bool = False  # freeze the text tower
    unlock_last_n: int = 0  # ...except its last n blocks, final LayerNorm and projection
    unlock_norms: bool = False  # ...except its LayerNorms
    unlock_biases: bool = False  # ...except its biases (BitFit)
    lora_rank: int = 0  # LoRA adapters on the attention projections of locked towers

    # --- data: WebDataset shards ---
    train_data: str = ""  # brace-expanded shard spec; '::' joins sources
    train_data_weights: str = ""  # '::'-joined weights, one per source; empty = equal
    train_num_samples: int = 0  # samples per "epoch" (the stream itself is infinite)
    dataset_resampled: bool = True
    workers: int = 4  # DataLoader workers per rank
    shuffle_buffer: int = 1000  # samples per worker
    seed: int = 0
    max_corrupt_fraction: float = 0.5  # of a worker's last 1000 samples; more ends the run

    # --- optimisation ---
    batch_size: int = 32768  # global, across all ranks
    epochs: int = 32
    lr: float = 5e-4
    wd: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-6
    warmup_steps: int = 2000
    schedule: str = "cosine"
    grad_clip: float = 1.0  # max global grad norm; 0 disables (the reference does not clip)
    # weight decay on the learnable tokens and position embeddings too (the reference decays
    # every >= 2-D weight); false keeps them out of decay, like 1-D parameters
    decay_tokens: bool = False
    accum_steps: int = 1  # micro-batches per step; the contrastive loss stays the global batch's
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    grad_checkpointing: bool = False
    torch_compile: bool = False
    peak_tflops: float = 0.0  # the device's peak for MFU; 0: from the table of known GPUs

    # --- scale (read by the SLURM launcher; the trainer uses whatever world it is given) ---
    nodes: int = 1
    gpus_per_node: int = 8
    slurm_partition: str = ""
    slurm_account: str = ""
    slurm_qos: str = ""
    slurm_constraint: str = ""
    slurm_timeout_min: int = 4320
    slurm_mem_gb: int = 0  # 0: the partition's default
    slurm_cpus_per_task: int = 10
    slurm_gpus: bool = True  # request gpus_per_node GPUs; false for CPU-only clusters
    slurm_comment: str = ""
    slurm_signal_delay_s: int = 120  # SIGUSR2 this long before the time limit

    # --- output ---
    logs: str = "./logs"
    checkpoint_every: int = 1000  # steps; the data stream is re-seeded at each checkpoint
    checkpoint_async: bool = True  # training pauses only to copy the state to CPU memory
    keep_last: int = 3
    keep_every: int = 0  # steps; checkpoints at multiples are never pruned (0: none kept)
    log_every: int = 50
    wandb_project: str = "llip"
    wandb_mode: str = "offline"

    # --- evals inside training (llip/training/evaluate.py) ---
    eval_every: int = 0  # steps; 0: off
    eval_datasets: str = ""  # '::'- or ','-joined dataset names of the eval catalog
    eval_catalog: str = ""  # a catalog JSON; empty: llip/evaluation/dataset_catalog.json

    # ------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.train_num_samples // self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def logit_bias_init(self) -> float:
        """init_logit_bias as a number ("auto" resolved against the global batch)."""
        if self.init_logit_bias == "auto":
            return -math.log(max(self.batch_size - 1, 1))
        return float(self.init_logit_bias)

    def validate(self) -> "RunConfig":
        """Every value check of a config; the first failure is one ConfigError naming the field
        and the fix."""
        _check_fields(self)
        _check_model(self)
        _check_tuning(self)
        _check_data(self)
        if self.eval_every and not self.eval_datasets:
            raise ConfigError(f"eval_every={self.eval_every} needs eval_datasets, e.g. "
                              "eval_datasets=imagenet1k::coco_retrieval")
        return self

    def require_training_inputs(self) -> None:
        """Checks that only matter when training starts (a config may be printed without data);
        train_num_samples may still be 0 here: llip.data.stream.with_dataset_size fills it."""
        if not self.train_data:
            raise ConfigError("train_data is empty: set "
                              "train_data=/path/shard-{000000..000099}.tar")


# ---------------------------------------------------------------- value checks
# Lower bounds of integer fields (fields not named here must be >= 1).
INT_MIN = {"train_num_samples": 0, "workers": 0, "shuffle_buffer": 0, "warmup_steps": 0,
           "seed": 0, "slurm_mem_gb": 0, "slurm_signal_delay_s": 0, "unlock_last_n": 0,
           "lora_rank": 0, "keep_every": 0, "eval_every": 0}
# (low, high, low inclusive) of float fields; all floats must also be finite.
FLOAT_RANGE = {
    "mlp_ratio": (0, None, False), "cross_attn_tau": (0, None, False),
    "lr": (0, None, True), "wd": (0, None, True), "eps": (0, None, False),
    "beta1": (0, 1, True), "beta2": (0, 1, True), "grad_clip": (0, None, True),
    "max_corrupt_fraction": (0, 1, False), "text_mlp_ratio": (0, None, True),
    "peak_tflops": (0, None, True),
}
# A run name becomes a directory under `logs` and the SLURM job name: no '/', no '..'.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_fields(cfg: RunConfig) -> None:
    """Each field on its own: its type, finite numbers in range, one-line strings, choices."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if not isinstance(value, _TYPES[kind]) or (kind != "bool" and isinstance(value, bool)):
            raise ConfigError(f"{f.name}={value!r} must be of type {kind}")
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            # A newline in e.g. slurm_partition would add a shell line to the sbatch script.
            bad = _CONTROL.search(value)
            if bad:
                raise ConfigError(f"{f.name} contains the control character {bad.group()!r}: "
                                  "give it on one line without tabs or newlines")
            if f.name in CHOICES and value not in CHOICES[f.name]:
                raise ConfigError(f"{f.name}={value!r} is not one of "
                                  f"{', '.join(CHOICES[f.name])}")
        elif kind == "int" and value < INT_MIN.get(f.name, 1):
            raise ConfigError(f"{f.name}={value} must be >= {INT_MIN.get(f.name, 1)}")
        if kind == "float":
            _check_float(f.name, float(value))
    if not NAME.match(cfg.name):
        raise ConfigError(f"name={cfg.name!r} must be 1-200 letters, digits or ._+=@- (not "
                          "starting with . or -): it names the run dir under logs=")


def _check_float(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value} must be a finite number")
    low, high, low_inclusive = FLOAT_RANGE.get(name, (None, None, True))
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ConfigError(f"{name}={value} must be {'>=' if low_inclusive else '>'} {low}")
    if high is not None and value >= high:
        raise ConfigError(f"{name}={value} must be < {high}")


def _check_model(cfg: RunConfig) -> None:
    """Shapes that must divide, and the sigmoid bias."""
    for tower in ("vision", "text"):
        width, heads = getattr(cfg, f"{tower}_width"), getattr(cfg, f"{tower}_heads")
        if width % heads:
            raise ConfigError(f"{tower}_width={width} must be divisible by {tower}_heads={heads}")
    if cfg.embed_dim % cfg.cross_attn_heads:
        raise ConfigError(f"embed_dim={cfg.embed_dim} must be divisible by "
                          f"cross_attn_heads={cfg.cross_attn_heads}")
    if cfg.image_size % cfg.patch_size:
        raise ConfigError(f"image_size={cfg.image_size} must be divisible by "
                          f"patch_size={cfg.patch_size}")
    try:
        if not math.isfinite(cfg.logit_bias_init):
            raise ValueError
    except ValueError:
        raise ConfigError(f"init_logit_bias={cfg.init_logit_bias!r} must be a number or "
                          "'auto' (= -ln(batch_size - 1))") from None


def _check_tuning(cfg: RunConfig) -> None:
    partial = [f for f in ("unlock_last_n", "unlock_norms", "unlock_biases", "lora_rank")
               if getattr(cfg, f)]
    if partial and not (cfg.lock_image or cfg.lock_text):
        raise ConfigError(f"{partial[0]} only applies to a locked tower: set lock_image=true "
                          "and/or lock_text=true")
    if cfg.lock_mixture_tokens and not (cfg.loss == "llip" and cfg.lock_image):
        raise ConfigError("lock_mixture_tokens only applies to a llip config with lock_image=true "
                          "(the mixture tokens train with the vision tower otherwise)")
    if cfg.init_from_model and not cfg.init_from:
        raise ConfigError(f"init_from_model={cfg.init_from_model} without init_from: give the "
                          "weights, e.g. init_from=/path/open_clip_model.pt")


def _check_data(cfg: RunConfig) -> None:
    """Every '::' source is non-empty and brace-expands (checked on its first name only: a spec
    may stand for millions of shards); one finite non-negative weight per source."""
    sources = cfg.train_data.split("::") if cfg.train_data else []
    for i, source in enumerate(sources):
        if not source.strip():
            raise ConfigError(f"train_data={cfg.train_data!r} has an empty source (#{i + 1}): "
                              "remove the extra '::'")
        try:
            list(itertools.islice(braceexpand.braceexpand(source.strip()), 1))
        except braceexpand.UnbalancedBracesError:
            raise ConfigError(f"train_data source {source.strip()!r} has unbalanced braces: "
                              "write ranges as {000000..000099}") from None
    if not cfg.train_data_weights:
        return
    weights = cfg.train_data_weights.split("::")
    try:
        numbers = [float(w) for w in weights]
        if not all(math.isfinite(w) and w >= 0 for w in numbers) or sum(numbers) <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"train_data_weights={cfg.train_data_weights!r} must be finite "
                          "non-negative numbers joined by '::', e.g. 0.7::0.3") from None
    if len(weights) != len(sources):
        raise ConfigError(f"train_data_weights has {len(weights)} entries but train_data "
                          f"has {len(sources)} sources: give one weight per '::' source")
    if not cfg.dataset_resampled:
        raise ConfigError("train_data_weights needs dataset_resampled=true: without resampling "
                          "every shard is read once per pass, whatever the weights")


# ---------------------------------------------------------------- resume
# What a relaunch into a run dir that has a checkpoint may change: how long, how often to log
# and save, how many workers and nodes, speed switches that do not change the maths, where it
# is logged. Anything else would mix two experiments in one run dir.
SAFE_TO_CHANGE = frozenset({
    "name", "description", "logs",  # where the run lives (a moved run dir still resumes)
    "epochs",  # train longer (the cosine schedule is stretched from the resumed step on)
    "log_every", "checkpoint_every", "keep_last", "keep_every", "checkpoint_async",
    "wandb_project", "wandb_mode", "peak_tflops",  # bookkeeping and reporting
    "eval_every", "eval_datasets", "eval_catalog",  # what is measured along the way
    "workers", "nodes", "gpus_per_node",  # DCP reshards; the batch order then differs
    "torch_compile", "grad_checkpointing", "llip_chunk",  # speed/memory, same maths
    "max_corrupt_fraction",
    "slurm_partition", "slurm_account", "slurm_qos", "slurm_constraint", "slurm_timeout_min",
    "slurm_mem_gb", "slurm_cpus_per_task", "slurm_gpus", "slurm_comment",
    "slurm_signal_delay_s",
})


def config_changes(saved: dict, cfg: RunConfig) -> list[str]:
    """'key saved -> new' for every field outside SAFE_TO_CHANGE that differs. train_data may
    change where the shards moved: the same file names, in the same order, in every source."""
    new = to_dict(cfg)
    defaults = to_dict(RunConfig())
    return [f"{key} {saved.get(key, defaults[key])!r} -> {value!r}"
            for key, value in new.items()
            if key not in SAFE_TO_CHANGE and saved.get(key, defaults[key]) != value
            and not (key == "train_data" and moved_shards(saved.get(key, ""), value))]


def moved_shards(old: str, new: str) -> bool:
    """The same shards at another place: equal file names, in order, source by source."""
    def names(spec):
        return [[u.rstrip("/").rsplit("/", 1)[-1] for u in braceexpand.braceexpand(s.strip())]
                for s in spec.split("::")]
    try:
        return names(old) == names(new)
    except braceexpand.UnbalancedBracesError:
        return False


# ---------------------------------------------------------------- dict form
def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> RunConfig:
    """Rebuild a config saved with a run (unknown keys from other versions are an error)."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"saved config has unknown keys {sorted(unknown)}")
    if "init_logit_bias" in d:  # saved as a number before "auto" existed
        d = {**d, "init_logit_bias": str(d["init_logit_bias"])}
    return RunConfig(**d).validate()
