"""The run configuration schema: one flat frozen dataclass and its validation.

Flat on purpose: every field is a `key=value` override on the command line with the same name
(as open_clip_train's flags), and one YAML file describes a run. Named experiments are functions
in llip/run_configs/; the override parser and user errors are in llip/cli.py.
"""
from __future__ import annotations

import dataclasses
import math

from llip.cli import ConfigError
from llip.config_checks import check_values

LOSSES = ("clip", "siglip", "llip")
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "const")
WANDB_MODES = ("offline", "online", "disabled")


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
    init_logit_bias: float = -10.0  # siglip and llip only

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
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    grad_checkpointing: bool = False
    torch_compile: bool = False

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
    keep_last: int = 3
    log_every: int = 50
    wandb_project: str = "llip"
    wandb_mode: str = "offline"

    # ------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.train_num_samples // self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def validate(self) -> "RunConfig":
        check_values(self)  # types, ranges, finiteness, safe strings (llip/config_checks.py)
        _choice("loss", self.loss, LOSSES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("wandb_mode", self.wandb_mode, WANDB_MODES)
        for f in ("batch_size", "epochs", "mixture_tokens", "cross_attn_heads", "embed_dim",
                  "checkpoint_every", "keep_last", "log_every", "llip_chunk"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f}={getattr(self, f)} must be >= 1")
        if self.embed_dim % self.cross_attn_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} must be divisible by "
                              f"cross_attn_heads={self.cross_attn_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} must be divisible by "
                              f"patch_size={self.patch_size}")
        if self.cross_attn_tau <= 0:
            raise ConfigError(f"cross_attn_tau={self.cross_attn_tau} must be > 0")
        n_sources = len(self.train_data.split("::")) if self.train_data else 0
        if self.train_data_weights:
            weights = self.train_data_weights.split("::")
            if len(weights) != n_sources:
                raise ConfigError(f"train_data_weights has {len(weights)} entries but train_data "
                                  f"has {n_sources} sources: give one weight per '::' source")
            try:
                if any(float(w) < 0 for w in weights) or sum(map(float, weights)) <= 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"train_data_weights={self.train_data_weights!r} must be "
                                  "non-negative numbers joined by '::', e.g. 0.7::0.3") from None
        return self

    def require_training_inputs(self) -> None:
        """Checks that only matter when training starts (a config may be printed without data);
        train_num_samples may still be 0 here: llip.data.stream.with_dataset_size fills it."""
        if not self.train_data:
            raise ConfigError("train_data is empty: set "
                              "train_data=/path/shard-{000000..000099}.tar")


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(allowed)}")


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> RunConfig:
    """Rebuild a config saved with a run (unknown keys from other versions are an error)."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"saved config has unknown keys {sorted(unknown)}")
    return RunConfig(**d).validate()
