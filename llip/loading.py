"""Models in and out: the one owner of "a path (or an open_clip subject) -> a model".

    load_model(source)       -> (model in eval mode, config, step)
    checkpoint_info(path)    -> (config, step), without building the model where it can
    init_from_weights(model, cfg)   a new run's starting weights, from any format below
    export(source, out, fmt)        one file in our format or open_clip's

A source is a run dir (its newest complete checkpoint), a checkpoints/step_* dir (DCP, verified
against its recorded digests first), an llip export (.pt / .safetensors), a released Llip
checkpoint (its config named, or chosen from its tensor shapes among the registered configs),
an open_clip checkpoint (for init_from, with its open_clip model name), or an open_clip eval
subject "openclip:NAME@PRETRAINED" (a local file or a tag). Files are read without running code
(torch.load(weights_only=True), safetensors, DCP through llip.checkpoint_files); names and
layouts are converted by the adapters of llip.models.formats, whose strict accounting refuses
any partial load.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import torch
import torch.distributed.checkpoint.api as dcp_api

from llip.checkpoint_files import load_dcp, load_failure, verify
from llip.config import RunConfig, from_dict, to_dict
from llip.errors import CheckpointError, ConfigError, named_write
from llip.io import atomic_path, atomic_write
from llip.models import build_model
from llip.models.formats import account, llip_release, openclip, ours, strict_load, unwrap
from llip.models.open_clip_subject import OpenClipSubject
from llip.models.tuning import apply_tuning, merge_lora
from llip.run_configs import get_config
from llip.run_dir import read_config, resolve_checkpoint, step_of

# Fields that decide a model's computation (shapes alone do not show heads, tau or activation).
MODEL_FIELDS = ("loss", "image_size", "patch_size", "vision_width", "vision_layers",
                "vision_heads", "text_width", "text_layers", "text_heads", "mlp_ratio",
                "text_mlp_ratio", "context_length", "vocab_size", "embed_dim", "quick_gelu",
                "mixture_tokens", "cross_attn_heads", "cross_attn_tau", "cross_attn_qkv_norm",
                "llip_query")
# Mixture tokens made from a class token: copies plus N(0, (NOISE * rms(class token))^2) noise,
# which breaks the symmetry between otherwise identical tokens.
MIXTURE_NOISE = 0.1
SUBJECT_PREFIX = "openclip:"
# An open_clip export's local-dir folder, <stem>.open_clip/, and its weights file by whether the
# export is safetensors (names open_clip looks for: factory._find_checkpoint_in_dir).
LOCAL_DIR_SUFFIX = ".open_clip"
LOCAL_DIR_WEIGHTS = {True: "open_clip_model.safetensors", False: "open_clip_pytorch_model.bin"}


def _first_line(exn: Exception) -> str:
    return (str(exn).strip().splitlines() or [type(exn).__name__])[0][:200]


# ---------------------------------------------------------------- reading files
def read_weights(path: str):
    """A checkpoint file's content, without running code: torch.load(weights_only=True), or
    safetensors (an llip export there keeps its config and step in the metadata)."""
    if not os.path.isfile(path):
        raise ConfigError(f"weights file {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, "pt") as f:
                meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exn:
            raise ConfigError(f"{path} is not a readable safetensors file "
                              f"({_first_line(exn)})") from None
        try:
            blob = ours.from_safetensors(tensors, meta)
        except (ValueError, RecursionError) as exn:  # metadata not JSON, step not a number
            raise CheckpointError(f"{path}: its llip metadata is malformed ({_first_line(exn)})"
                                  ) from None
        return _checked(blob, path)
    try:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) serialisation cannot be memory-mapped
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exn:
        raise ConfigError(f"{path} is not a readable weights file ({_first_line(exn)})") from None
    return _checked(blob, path)


def _checked(blob, path: str):
    """An llip export, checked before anything is built from it: its config is a valid config,
    its step a step number, and the model its config describes is the one the file holds (a
    config edited to ask for a 32 TB model is refused here, not allocated)."""
    if not ours.matches(blob):
        return blob
    try:
        cfg = from_dict(dict(blob["config"]))
    except (ConfigError, TypeError, ValueError) as exn:
        raise CheckpointError(f"{path}: its config is not a valid llip config "
                              f"({_first_line(exn)})") from None
    step = blob.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: its step {step!r} is not a step number")
    tensors = blob["state_dict"]
    held = sum(t.numel() for t in tensors.values() if isinstance(t, torch.Tensor)) \
        if isinstance(tensors, dict) else -1
    described = sum(math.prod(shape) for shape in _shapes(cfg).values())
    if held != described:
        raise CheckpointError(f"{path}: its config describes a model of {described:,} values "
                              f"but the file holds {held:,}: the file is corrupt or was edited")
    return {**blob, "config": to_dict(cfg), "step": step}


def _unknown_format(path: str, sd: dict) -> ConfigError:
    return ConfigError(f"{path} is neither an llip export, a released Llip checkpoint nor an "
                       f"open_clip CLIP checkpoint (its first keys: {', '.join(list(sd)[:3])})")


# ---------------------------------------------------------------- loading
def load_model(source: str, device="cpu", config: str = ""):
    """A run dir, a DCP checkpoint dir, an exported .pt / .safetensors, a released Llip
    checkpoint (its config named by `config` or chosen from its shapes) or an open_clip eval
    subject "openclip:NAME@PRETRAINED" -> (model in eval mode, config, step)."""
    if is_subject(source):
        return load_subject(source, device)
    if os.path.isfile(source):
        blob = read_weights(source)
        if ours.matches(blob):
            cfg = from_dict(blob["config"])
            model = build_model(cfg)
            strict_load(model, blob["state_dict"], [], source)
            return model.to(device).eval(), cfg, int(blob["step"])
        return _load_release(source, blob, device, config)
    if not os.path.exists(source):
        raise CheckpointError(f"checkpoint {source} does not exist: give a run dir, a "
                              "checkpoints/step_* dir or an exported .pt file")
    return _load_checkpoint_dir(resolve_checkpoint(source), device)


def _load_checkpoint_dir(path: str, device):
    problem, _ = verify(path)
    if problem:
        raise CheckpointError(f"{problem}: use another checkpoint")
    cfg = read_config(path)
    model = build_model(cfg)
    apply_tuning(model, cfg)  # a tuned run's checkpoint holds its LoRA adapters
    state = {"model": model.state_dict()}  # DCP loads in place into these tensors
    try:
        load_dcp(state, path)
    except (Exception, dcp_api.CheckpointException) as exn:  # DCP wraps reader failures
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {load_failure(exn)}") \
            from None
    merge_lora(model)
    return model.to(device).eval(), cfg, step_of(path)


def _load_release(path: str, blob, device, config: str):
    """A file that is not an llip export: a released Llip checkpoint, converted into the config
    named by `config` or chosen from its shapes."""
    sd = unwrap(blob, path)
    if openclip.matches(sd):
        raise ConfigError(f"{path} is an open_clip checkpoint: evaluate it as {{openclip: "
                          f"MODEL_NAME, pretrained: {path}}} or train from it with "
                          f"init_from={path} init_from_model=MODEL_NAME")
    if not llip_release.matches(sd):
        raise _unknown_format(path, sd)
    tensors, leftovers = llip_release.to_ours(sd)
    cfg = get_config(config) if config else config_for(tensors, path)
    if cfg.loss != "llip":
        raise ConfigError(f"{path} is a Llip checkpoint but config {cfg.name} is {cfg.loss}")
    model = build_model(cfg)
    strict_load(model, tensors, leftovers, f"{path} into {cfg.name}")
    epoch = blob.get("epoch", 0) if isinstance(blob, dict) else 0
    return model.to(device).eval(), cfg, int(epoch) * cfg.steps_per_epoch


def checkpoint_info(path: str, config: str = "") -> tuple[RunConfig, int, bool]:
    """(config, step, whether it is ours) of a checkpoint dir or file. Cheap for ours
    (config.yaml and COMPLETE of a checkpoint dir, a memory-mapped export); a foreign file (a
    released Llip checkpoint, in `config` if named) is loaded once: the loader's own answer for
    its config and step. Ours carry their config: naming one is refused."""
    blob = read_weights(path) if os.path.isfile(path) else None
    if config and (blob is None or ours.matches(blob)):
        raise ConfigError(f"{path} carries its own config: 'config: {config}' names the config "
                          "of a released Llip file only")
    if blob is not None:
        if ours.matches(blob):
            return from_dict(blob["config"]), int(blob.get("step", 0)), True
        _, cfg, step = load_model(path, config=config)
        return cfg, step, False
    return read_config(path), step_of(path), True


def _shapes(cfg: RunConfig) -> dict:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}


def _candidates() -> list[str]:
    from llip.run_configs import released
    from llip.run_configs.registry import REGISTRY
    reference = [n for n in REGISTRY if REGISTRY[n].__module__ == released.__name__]
    return list(dict.fromkeys([*released.RELEASED, *reference, *sorted(REGISTRY)]))


def config_for(tensors: dict, path: str) -> RunConfig:
    """The registered Llip config whose model has exactly these shapes: released configs first;
    among several fits that differ in what shapes cannot show (heads, tau), a one-line error."""
    k, width = tensors["visual.prefix_tokens"].shape
    fits, nearest = [], None
    for name in _candidates():
        cfg = get_config(name)
        if cfg.loss != "llip" or (cfg.mixture_tokens, cfg.vision_width) != (k, width) \
                or cfg.llip_query != "text":  # a released model's queries come from its text
            continue
        problems = account(tensors, _shapes(cfg)).problems
        if not problems:
            fits.append(cfg)
        elif nearest is None or len(problems) < len(nearest[1]):
            nearest = (name, problems)
    if not fits:
        hint = (f"; closest {nearest[0]}: {len(nearest[1])} tensor(s) differ, e.g. "
                f"{nearest[1][0]}" if nearest else "")
        raise ConfigError(f"{path}: a released-Llip checkpoint (K={k}, vision width {width}) "
                          f"that fits no registered config{hint}; add a config for it and name "
                          "it (export --config NAME)")
    kinds = {tuple(getattr(c, f) for f in MODEL_FIELDS) for c in fits}
    from llip.run_configs.released import RELEASED
    if len(kinds) > 1 and fits[0].name not in RELEASED:
        raise ConfigError(f"{path} fits {', '.join(c.name for c in fits)}, which differ in "
                          "heads or tau: name one (export --config NAME)")
    return fits[0]


# ---------------------------------------------------------------- open_clip subjects
def subject_spec(name: str, pretrained: str) -> str:
    """An eval sweep entry {openclip: NAME, pretrained: PATH_OR_TAG} as one checkpoint string
    (open_clip names never contain '@'); an unknown name or tag fails here, while planning.
    NAME may be a model config JSON file or open_clip's local-dir:FOLDER (its weights inside)."""
    import open_clip
    openclip.model_config(name)
    pretrained = pretrained or ""
    if name.startswith(openclip.LOCAL_DIR) and pretrained:
        raise ConfigError(f"open_clip {name} holds its own weights (open_clip ignores "
                          f"pretrained={pretrained} there): drop pretrained")
    if pretrained and not os.path.isfile(pretrained) and not name.startswith("hf-hub:"):
        tags = [] if openclip.is_config_file(name) else \
            open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ConfigError(f"open_clip {name}: pretrained={pretrained} is neither a file nor "
                              f"one of its tags ({', '.join(tags) or 'it has none'})")
    return f"{SUBJECT_PREFIX}{name}@{pretrained}"


def is_subject(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(SUBJECT_PREFIX)


def subject_tag(spec: str) -> str:
    """The table's name of an open_clip subject, after its weights: the local-dir folder, or
    the model and the weights file or tag ("random" only for a model without weights)."""
    name, pretrained = spec[len(SUBJECT_PREFIX):].split("@", 1)
    if name.startswith(openclip.LOCAL_DIR):
        return f"openclip_{openclip.label(name)}"
    weights = os.path.splitext(os.path.basename(pretrained))[0] if os.path.isfile(pretrained) \
        else pretrained.replace("/", "_").replace(":", "_")
    return f"openclip_{openclip.label(name)}_{weights or 'random'}"


def load_subject(spec: str, device="cpu"):
    """openclip:NAME@PATH_OR_TAG -> (OpenClipSubject, a RunConfig describing it, step 0).
    A local file is read by llip (weights_only, DDP/compile prefixes removed, strict); a tag or
    hf-hub name is fetched by open_clip."""
    import open_clip
    name, pretrained = spec[len(SUBJECT_PREFIX):].split("@", 1)
    openclip.model_config(name)
    local = os.path.isfile(pretrained)
    name = openclip.open_clip_name(name)  # a config file: registered under its stem
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None if local else (pretrained or None))
    except (RuntimeError, ValueError, FileNotFoundError) as exn:
        raise ConfigError(f"open_clip {name} pretrained={pretrained!r}: "
                          f"{str(exn).splitlines()[0][:200]}") from None
    if local:
        sd = {k: v for k, v in unwrap(read_weights(pretrained), pretrained).items()
              if k not in openclip.NOT_WEIGHTS}
        own = model.state_dict()
        for key in openclip.SCALARS:  # 0-D in some checkpoints, [1] in others
            if key in sd and key in own:
                sd[key] = sd[key].reshape(own[key].shape)
        strict_load(model, sd, [], f"{pretrained} does not fit open_clip {name}")
    image_size = model.visual.image_size
    cfg = RunConfig(name=subject_tag(spec), loss="clip" if model.logit_bias is None else "siglip",
                    image_size=image_size[0] if isinstance(image_size, tuple) else image_size,
                    context_length=model.context_length or 77,
                    description=f"open_clip {name} ({pretrained or 'random init'})")
    subject = OpenClipSubject(model, preprocess, open_clip.get_tokenizer(name))
    return subject.to(device).eval(), cfg, 0


# ---------------------------------------------------------------- init_from
def llip_from_dual(tensors: dict, cfg: RunConfig) -> dict:
    """CLIP/SigLIP weights (our DualEncoder names) -> a Llip starting point. The K mixture
    tokens are the class token plus noise (seeded by cfg.seed), all with the class token's
    position; every token's key and value projection is the image projection, the query and
    target projections are the text projection, W_o = I. With K = 1 (no noise) and no qkv
    LayerNorm the Llip score then equals the CLIP score; with K > 1 the tokens start
    near-identical and the attention decides which of them serves which caption."""
    k, out = cfg.mixture_tokens, dict(tensors)
    cls = out.pop("visual.prefix_tokens").float()
    noise = torch.randn(k, cls.shape[-1], generator=torch.Generator().manual_seed(cfg.seed))
    scale = MIXTURE_NOISE * cls.pow(2).mean().sqrt() if k > 1 else 0.0  # one token: no twins
    out["visual.prefix_tokens"] = cls + scale * noise
    out["visual.prefix_pos"] = out["visual.prefix_pos"].expand(k, -1)
    image_proj, text_proj = out.pop("image_proj"), out.pop("text_proj")
    out["head.key_proj"] = out["head.value_proj"] = image_proj.expand(k, -1, -1)
    out["head.query_proj.weight"] = out["head.target_proj.weight"] = text_proj.T
    out["head.out_proj.weight"] = torch.eye(text_proj.shape[-1])
    for name in openclip.SCALARS:  # a softmax temperature is not a Llip scale: keep the config's
        out.pop(name, None)
    return out


def _open_clip_source(cfg: RunConfig, blob):
    """(tensors in open_clip names, model name) for an open_clip init_from: a local file (its
    content `blob`) read by us, or a tag / hf-hub name fetched by open_clip (online)."""
    hub = cfg.init_from.startswith("hf-hub:")
    name = cfg.init_from if hub else cfg.init_from_model
    arch = openclip.architecture(openclip.model_config(name))
    wrong = openclip.mismatches(cfg, arch)
    if wrong:
        raise ConfigError(f"init_from_model={name} does not match config {cfg.name}: set "
                          f"{' '.join(wrong)}")
    if blob is not None:
        return unwrap(blob, cfg.init_from), name
    import open_clip
    try:
        model = open_clip.create_model(openclip.open_clip_name(name),
                                       pretrained=None if hub else cfg.init_from,
                                       require_pretrained=True)
    except Exception as exn:
        raise ConfigError(f"init_from={cfg.init_from} ({name}): {_first_line(exn)}") from None
    return model.state_dict(), name


def check_init_from(cfg: RunConfig) -> None:
    """Cheap checks before any work: the source exists and a named open_clip model is known."""
    if not cfg.init_from or cfg.init_from.startswith("hf-hub:"):
        return
    if cfg.init_from_model:
        openclip.model_config(cfg.init_from_model)
        if not os.path.isfile(cfg.init_from):
            import open_clip
            tags = open_clip.list_pretrained_tags_by_model(cfg.init_from_model)
            if cfg.init_from not in tags:
                raise ConfigError(f"init_from={cfg.init_from} is neither a file nor a pretrained "
                                  f"tag of {cfg.init_from_model} ({', '.join(tags) or 'none'})")
    elif not os.path.isfile(cfg.init_from):
        raise ConfigError(f"init_from={cfg.init_from} does not exist: give a weights file (an "
                          "llip export, a released Llip .pt, an open_clip checkpoint with "
                          "init_from_model=NAME) or hf-hub:org/name")


def init_from_weights(model, cfg: RunConfig) -> str:
    """Load cfg.init_from into a freshly built model; return a one-line report of what loaded."""
    check_init_from(cfg)
    path, label = cfg.init_from, cfg.init_from
    blob = read_weights(path) if os.path.isfile(path) else None
    sd = unwrap(blob, path) if blob is not None and not ours.matches(blob) else None
    if ours.matches(blob):
        source = from_dict(blob["config"])
        tensors, leftovers = ours.to_ours(blob["state_dict"])
        kind = f"llip {source.loss} export"
        if source.loss == "llip" and cfg.loss != "llip":
            raise ConfigError(f"init_from={path} is a Llip model: it starts llip configs, not "
                              f"{cfg.loss}")
    elif sd is not None and llip_release.matches(sd):
        tensors, leftovers = llip_release.to_ours(sd)
        kind = "released Llip"
        if cfg.loss != "llip":
            raise ConfigError(f"init_from={path} is a released Llip checkpoint: it starts llip "
                              f"configs, not {cfg.loss}")
    elif sd is None or openclip.matches(sd):
        if sd is not None and not cfg.init_from_model:
            raise ConfigError(f"init_from={path} is an open_clip checkpoint: name its "
                              "architecture with init_from_model=NAME (e.g. ViT-B-16)")
        source_sd, name = _open_clip_source(cfg, blob)
        tensors, leftovers = openclip.to_ours(source_sd)
        kind, label = f"open_clip {name}", f"{path} ({name})"
    else:
        raise _unknown_format(path, sd)
    dropped = []
    if cfg.loss == "llip" and "image_proj" in tensors:
        dropped = [n for n in openclip.SCALARS if n in tensors]
        tensors = llip_from_dual(tensors, cfg)
    elif cfg.loss != "llip" and ("logit_bias" in tensors) != (cfg.loss == "siglip"):
        # CLIP's softmax temperature and SigLIP's sigmoid scale + bias are not interchangeable
        dropped = [n for n in openclip.SCALARS if tensors.pop(n, None) is not None]
    kept = strict_load(model, tensors, leftovers, f"init_from={label} into {cfg.name}",
                       may_keep=("logit_scale", "logit_bias", "head."))
    n_params = sum(v.numel() for v in tensors.values()) / 1e6
    return (f"init_from {label}: {kind}, {len(tensors)} tensors ({n_params:.2f}M) loaded"
            + (f"; kept at init: {', '.join(kept)}" if kept else "")
            + (f"; not used: {', '.join(dropped)}" if dropped else ""))


# ---------------------------------------------------------------- export
def save_export(path: str, model: torch.nn.Module, cfg: RunConfig, step: int) -> str:
    """Our export format (llip.models.formats.ours), written atomically."""
    state = ours.from_ours(model.state_dict())
    with named_write(path, path):
        with atomic_path(path) as tmp:
            if path.endswith(".safetensors"):
                from safetensors.torch import save_file
                save_file(state, tmp, metadata=ours.metadata(to_dict(cfg), step))
            else:
                torch.save(ours.pack(state, to_dict(cfg), step), tmp)
    return path


def _link_or_copy(source: str, target: str) -> None:
    """`target` as a second name of `source` (a hard link: no second copy), or a copy."""
    with atomic_path(target) as tmp:
        os.remove(tmp)
        try:
            os.link(source, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, tmp)


def export(source: str, out: str, fmt: str = "llip", config: str = "") -> list[str]:
    """Write `source` (anything load_model reads) as one file; return the files written. The
    open_clip format is open_clip's CLIP state dict, <stem>.json (its model config, for
    open_clip.add_model_config, sweep entries and init_from_model=) and <stem>.open_clip/, an
    open_clip local-dir folder (for a model name alone: `local-dir:<stem>.open_clip`, as
    CLIP_benchmark's --model takes it) holding the config and the same weights."""
    if fmt != "llip" and os.path.splitext(out)[1] in (".json", LOCAL_DIR_SUFFIX):
        raise ConfigError(f"export to {out}: the open_clip format writes the model config to "
                          f"<stem>.json and a <stem>{LOCAL_DIR_SUFFIX}/ folder beside the weights, "
                          "so this name would be overwritten: name the weights file .pt, .bin "
                          "or .safetensors")
    model, cfg, step = load_model(source, config=config)
    if fmt == "llip":
        return [save_export(out, model, cfg, step)]
    if cfg.loss == "llip":
        raise ConfigError(f"{source} is a Llip model and open_clip has no Llip: export it with "
                          "--format llip")
    model_cfg = openclip.config_of(cfg)
    state = openclip.from_ours(model.state_dict())
    with named_write(out, out), atomic_path(out) as tmp:
        if out.endswith(".safetensors"):
            from safetensors.torch import save_file
            save_file(state, tmp)
        else:
            torch.save(state, tmp)
    config_path = os.path.splitext(out)[0] + ".json"
    atomic_write(config_path, json.dumps(model_cfg, indent=2) + "\n")
    folder = os.path.splitext(out)[0] + LOCAL_DIR_SUFFIX
    os.makedirs(folder, exist_ok=True)
    atomic_write(os.path.join(folder, openclip.LOCAL_DIR_CONFIG),
                 json.dumps(openclip.local_dir_config(cfg), indent=2) + "\n")
    kept = LOCAL_DIR_WEIGHTS[out.endswith(".safetensors")]
    _link_or_copy(out, os.path.join(folder, kept))
    for other in LOCAL_DIR_WEIGHTS.values():  # one weights file: no stale one for open_clip
        if other != kept and os.path.exists(os.path.join(folder, other)):
            os.remove(os.path.join(folder, other))
    return [out, config_path, folder]
