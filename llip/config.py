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
LLIP_QUERIES = ("text", "zero")
INITS = ("ours", "reference")
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

    # --- starting point and what trains (llip/models/pretrained.py, llip/models/tuning.py) ---
    init_from: str = ""  # weights file (llip export, released Llip, open_clip) or hf-hub:org/name
    init_from_model: str = ""  # the open_clip model name of an open_clip init_from
    lock_image: bool = False  # freeze the vision tower (LiT)
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
    eval_catalog: str = ""  # a catalog JSON; empty: evals/dataset_catalog.json

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
        check_values(self)  # types, ranges, finiteness, safe strings (llip/config_checks.py)
        _choice("loss", self.loss, LOSSES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("wandb_mode", self.wandb_mode, WANDB_MODES)
        _choice("llip_query", self.llip_query, LLIP_QUERIES)
        _choice("init", self.init, INITS)
        try:
            if not math.isfinite(self.logit_bias_init):
                raise ValueError
        except ValueError:
            raise ConfigError(f"init_logit_bias={self.init_logit_bias!r} must be a number or "
                              "'auto' (= -ln(batch_size - 1))") from None
        for f in ("batch_size", "epochs", "mixture_tokens", "cross_attn_heads", "embed_dim",
                  "checkpoint_every", "keep_last", "log_every", "llip_chunk", "accum_steps"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f}={getattr(self, f)} must be >= 1")
        if self.embed_dim % self.cross_attn_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} must be divisible by "
                              f"cross_attn_heads={self.cross_attn_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} must be divisible by "
                              f"patch_size={self.patch_size}")
        _check_tuning(self)
        for f in ("keep_every", "eval_every"):
            if getattr(self, f) < 0:
                raise ConfigError(f"{f}={getattr(self, f)} must be >= 0 (0: off)")
        if self.eval_every and not self.eval_datasets:
            raise ConfigError(f"eval_every={self.eval_every} needs eval_datasets, e.g. "
                              "eval_datasets=imagenet1k::coco_retrieval")
        if self.peak_tflops < 0:
            raise ConfigError(f"peak_tflops={self.peak_tflops} must be >= 0 (0: look it up)")
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


def _check_tuning(cfg: "RunConfig") -> None:
    for f in ("unlock_last_n", "lora_rank", "text_mlp_ratio"):
        if getattr(cfg, f) < 0:
            raise ConfigError(f"{f}={getattr(cfg, f)} must be >= 0")
    partial = [f for f in ("unlock_last_n", "unlock_norms", "unlock_biases", "lora_rank")
               if getattr(cfg, f)]
    if partial and not (cfg.lock_image or cfg.lock_text):
        raise ConfigError(f"{partial[0]} only applies to a locked tower: set lock_image=true "
                          "and/or lock_text=true")
    if cfg.init_from_model and not cfg.init_from:
        raise ConfigError(f"init_from_model={cfg.init_from_model} without init_from: give the "
                          "weights, e.g. init_from=/path/open_clip_model.pt")


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
    if "init_logit_bias" in d:  # saved as a number before "auto" existed
        d = {**d, "init_logit_bias": str(d["init_logit_bias"])}
    return RunConfig(**d).validate()
