"""Run configuration: one frozen dataclass, a registry of named experiments, CLI overrides.

A run config is a plain function in llip/run_configs/ that returns a `RunConfig`, usually
`dataclasses.replace` of a base. `@register` puts it in the registry under its function name.
CLI text is never evaluated: overrides are parsed by the type of the dataclass field.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
from typing import Callable

LOSSES = ("clip", "siglip", "llip")
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "const")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A user-facing configuration problem; the CLI prints it as one line and exits 2."""


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


def cli(main: Callable) -> Callable:
    """A command's main(argv): a ConfigError ends it with one line on stderr and exit code 2."""
    @functools.wraps(main)
    def run(argv=None) -> int:
        try:
            return main(argv) or 0
        except ConfigError as exn:
            print(f"error: {exn}", file=sys.stderr)
            return 2
    return run


# ---------------------------------------------------------------- registry
REGISTRY: dict[str, Callable[[], RunConfig]] = {}


def register(fn: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
    if fn.__name__ in REGISTRY:
        raise RuntimeError(f"run config {fn.__name__} registered twice")
    REGISTRY[fn.__name__] = fn
    return fn


def _load_registry() -> None:
    import llip.run_configs  # noqa: F401  (registers every config on import)


def closest(word: str, candidates, n: int = 3) -> str:
    found = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.4)
    return ", ".join(found) if found else ", ".join(sorted(candidates)[:n])


def get_config(name: str) -> RunConfig:
    _load_registry()
    if name not in REGISTRY:
        raise ConfigError(f"unknown config {name!r}; closest: {closest(name, REGISTRY)} "
                          "(python -m llip.main --list shows all)")
    cfg = REGISTRY[name]()
    return dataclasses.replace(cfg, name=cfg.name or name)


def list_configs() -> list[tuple[str, str]]:
    _load_registry()
    return [(name, REGISTRY[name]().description) for name in sorted(REGISTRY)]


# ---------------------------------------------------------------- overrides
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(field: dataclasses.Field, text: str):
    kind = field.type if isinstance(field.type, type) else {"int": int, "float": float,
                                                             "str": str, "bool": bool}[field.type]
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if kind is int:
            # Accept 2e9 for sample counts, but never silently truncate 2.5.
            value = float(text) if "e" in text.lower() else int(text)
            if value != int(value):
                raise ValueError
            return int(value)
        return kind(text)
    except ValueError:
        raise ConfigError(f"bad value for {field.name}: {text!r} is not a valid "
                          f"{kind.__name__}") from None


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        if key not in fields:
            raise ConfigError(f"unknown key {key!r}; closest: {closest(key, fields)}")
        changes[key] = _parse(fields[key], text)
    return dataclasses.replace(cfg, **changes).validate()


def resolve(name: str, overrides: list[str] = ()) -> RunConfig:
    return apply_overrides(get_config(name), list(overrides))


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> RunConfig:
    """Rebuild a config saved with a run (unknown keys from other versions are an error)."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"saved config has unknown keys {sorted(unknown)}")
    return RunConfig(**d).validate()
