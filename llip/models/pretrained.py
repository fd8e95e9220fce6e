"""Weights from outside: reading checkpoint files, telling their formats apart, converting the
Llip authors' released checkpoints and open_clip models into ours, and loading with strict key
accounting.

Formats (all read with torch.load(weights_only=True) or safetensors: reading never runs code):
- llip export: {"state_dict", "config", "step"} from llip.training.export (.pt or .safetensors,
  where config and step sit in the safetensors metadata).
- released Llip (`llip_b16_k32.pt`, `llip_G14_k64.pt`): {"state_dict", "epoch", "optimizer", ..},
  keys maybe prefixed `_orig_mod.` / `module.`; open_clip-style names with the text tower at
  top level; `visual.class_embedding` (K, W) holds the mixture tokens and
  `visual.positional_embedding` (K + G, W) their positions followed by the patches';
  `k_proj`/`v_proj` (K, W, D) map a token by x @ W[k]; `q_proj`, `text_projection` and
  `pred.out_proj` are stored as x @ W matrices, the transpose of an nn.Linear weight (they are
  square in B/16, so a missing transpose would pass every shape check); 0-D logit scale/bias.
- open_clip CLIP: a state dict or an open_clip training checkpoint; its architecture comes from
  the open_clip model name given beside it.

A load refuses with one line naming the file unless every tensor of the file found a home in
the model with the right shape and every tower weight of the model was filled.
"""
import json
import os

import torch

from llip.cli import ConfigError
from llip.config import RunConfig, from_dict
from llip.models import build_model
from llip.models import open_clip_format as oc
from llip.run_configs import get_config

PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers, in either order
RELEASED_HEAD = {  # released name -> (our name, stored as x @ W: transpose)
    "k_proj": ("head.key_proj", False), "v_proj": ("head.value_proj", False),
    "q_proj": ("head.query_proj.weight", True),
    "text_projection": ("head.target_proj.weight", True),
    "pred.out_proj": ("head.out_proj.weight", True),
    "out_proj": ("head.out_proj.weight", True),  # older files, before the `pred.` module
}
# The q/k/v LayerNorms of H/14 and G/14 under the names their files may use.
for _w in "qkv":
    for _name in (f"{_w}_norm", f"ln_{_w}", f"pred.{_w}_norm", f"pred.ln_{_w}"):
        for _p in ("weight", "bias"):
            RELEASED_HEAD[f"{_name}.{_p}"] = (f"head.{_w}_norm.{_p}", False)
# Fields that decide a model's computation (shapes alone do not show heads, tau or activation).
MODEL_FIELDS = ("loss", "image_size", "patch_size", "vision_width", "vision_layers",
                "vision_heads", "text_width", "text_layers", "text_heads", "mlp_ratio",
                "text_mlp_ratio", "context_length", "vocab_size", "embed_dim", "quick_gelu",
                "mixture_tokens", "cross_attn_heads", "cross_attn_tau", "cross_attn_qkv_norm",
                "llip_query")
# Mixture tokens made from a class token: copies plus N(0, (NOISE * rms(class token))^2) noise,
# which breaks the symmetry between otherwise identical tokens.
MIXTURE_NOISE = 0.1


def _first_line(exn: Exception) -> str:
    return (str(exn).strip().splitlines() or [type(exn).__name__])[0][:200]


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
        if "llip_config" in meta:
            return {"state_dict": tensors, "config": json.loads(meta["llip_config"]),
                    "step": int(meta.get("llip_step", 0))}
        return tensors
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) serialisation cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exn:
        raise ConfigError(f"{path} is not a readable weights file ({_first_line(exn)})") from None


def is_export(blob) -> bool:
    return isinstance(blob, dict) and "config" in blob and "state_dict" in blob


def _strip(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def state_dict_of(blob, path: str) -> dict:
    """The model tensors of a checkpoint: blob["state_dict"] (training checkpoints keep optimizer
    state and epoch beside it) or the blob itself, wrapper prefixes removed."""
    sd = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConfigError(f"{path} holds no state dict of tensors (top-level keys: "
                          f"{list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__})")
    return {_strip(k): v for k, v in sd.items()}


def kind_of(sd: dict) -> str:
    if "visual.class_embedding" in sd and "k_proj" in sd:
        return "released_llip"
    if "visual.class_embedding" in sd and ("token_embedding.weight" in sd
                                           or "text.token_embedding.weight" in sd):
        return "open_clip"
    return ""


def _unknown_format(path: str, sd: dict) -> ConfigError:
    return ConfigError(f"{path} is neither an llip export, a released Llip checkpoint nor an "
                       f"open_clip CLIP checkpoint (its first keys: {', '.join(list(sd)[:3])})")


# ---------------------------------------------------------------- released Llip
def released_to_ours(sd: dict) -> tuple[dict, list[str]]:
    """Released-Llip tensors -> (our LlipModel names -> tensors, names with no home)."""
    k = sd["visual.class_embedding"].reshape(-1, sd["visual.class_embedding"].shape[-1]).shape[0]
    out, leftovers = {}, []
    for name, t in sd.items():
        if name in oc.NOT_WEIGHTS:
            continue
        if name == "visual.class_embedding":
            out["visual.prefix_tokens"] = t.reshape(k, -1)  # 1-D when K = 1
        elif name == "visual.positional_embedding":
            out["visual.prefix_pos"], out["visual.patch_pos"] = t[:k], t[k:]
        elif name.startswith(oc.VISION_SAME):
            out[name] = t
        elif name.split(".")[0] in oc.TEXT_TOP:
            out["text." + name] = t
        elif name in RELEASED_HEAD:
            ours, transpose = RELEASED_HEAD[name]
            out[ours] = t.T if transpose else t
        elif name in oc.SCALARS:
            out["head." + name] = t.reshape(1)
        else:
            leftovers.append(name)
    return out, leftovers


def _shapes(cfg: RunConfig) -> dict:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}


def _shape_problems(tensors: dict, shapes: dict) -> list[str]:
    wrong = [f"{k} {tuple(v.shape)} (expected {shapes[k]})" for k, v in tensors.items()
             if k in shapes and tuple(v.shape) != shapes[k]]
    return (wrong + [f"{k} has no home" for k in tensors if k not in shapes]
            + [f"{k} missing" for k in shapes if k not in tensors])


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
        problems = _shape_problems(tensors, _shapes(cfg))
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


def load_into(model, tensors: dict, leftovers: list[str], source: str,
              may_keep: tuple = ()) -> list[str]:
    """Copy converted tensors into `model` after strict accounting; return the model tensors
    kept at their initial value (only names starting with one of `may_keep` may be)."""
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})"
             for k, v in tensors.items() if k in own and v.shape != own[k].shape]
    unexpected = leftovers + [k for k in tensors if k not in own]
    missing = [k for k in own if k not in tensors and not k.startswith(may_keep)]
    problems = [f"{len(items)} {what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                for what, items in (("shape mismatch(es)", wrong),
                                    ("tensor(s) with no home in the model", unexpected),
                                    ("model tensor(s) not in the file", missing)) if items]
    if problems:
        raise ConfigError(f"{source}: refusing a partial load: {'; '.join(problems)}")
    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return list(result.missing_keys)


def load_foreign(path: str, blob, device="cpu", config: str = ""):
    """load_model for a file that is not an llip export: a released Llip checkpoint, converted
    into the config named by `config` or chosen from its shapes -> (model, config, step)."""
    sd = state_dict_of(blob, path)
    kind = kind_of(sd)
    if kind == "open_clip":
        raise ConfigError(f"{path} is an open_clip checkpoint: evaluate it as {{openclip: "
                          f"MODEL_NAME, pretrained: {path}}} or train from it with "
                          f"init_from={path} init_from_model=MODEL_NAME")
    if kind != "released_llip":
        raise _unknown_format(path, sd)
    tensors, leftovers = released_to_ours(sd)
    cfg = get_config(config) if config else config_for(tensors, path)
    if cfg.loss != "llip":
        raise ConfigError(f"{path} is a Llip checkpoint but config {cfg.name} is {cfg.loss}")
    model = build_model(cfg)
    load_into(model, tensors, leftovers, f"{path} into {cfg.name}")
    epoch = blob.get("epoch", 0) if isinstance(blob, dict) else 0
    return model.to(device).eval(), cfg, int(epoch) * cfg.steps_per_epoch


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
    for name in oc.SCALARS:  # a softmax temperature is not a Llip scale: keep the config's
        out.pop(name, None)
    return out


def _open_clip_source(cfg: RunConfig, blob):
    """(tensors in open_clip names, model name) for an open_clip init_from: a local file (its
    content `blob`) read by us, or a tag / hf-hub name fetched by open_clip (online)."""
    hub = cfg.init_from.startswith("hf-hub:")
    name = cfg.init_from if hub else cfg.init_from_model
    arch = oc.architecture(oc.model_config(name))
    wrong = oc.mismatches(cfg, arch)
    if wrong:
        raise ConfigError(f"init_from_model={name} does not match config {cfg.name}: set "
                          f"{' '.join(wrong)}")
    if blob is not None:
        return state_dict_of(blob, cfg.init_from), name
    import open_clip
    try:
        model = open_clip.create_model(name, pretrained=None if hub else cfg.init_from,
                                       require_pretrained=True)
    except Exception as exn:
        raise ConfigError(f"init_from={cfg.init_from} ({name}): {_first_line(exn)}") from None
    return model.state_dict(), name


def check_init_from(cfg: RunConfig) -> None:
    """Cheap checks before any work: the source exists and a named open_clip model is known."""
    if not cfg.init_from or cfg.init_from.startswith("hf-hub:"):
        return
    if cfg.init_from_model:
        oc.model_config(cfg.init_from_model)
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
    if is_export(blob):
        source = from_dict(blob["config"])
        tensors, leftovers, kind = dict(blob["state_dict"]), [], f"llip {source.loss} export"
        if source.loss == "llip" and cfg.loss != "llip":
            raise ConfigError(f"init_from={path} is a Llip model: it starts llip configs, not "
                              f"{cfg.loss}")
    elif blob is not None and kind_of(state_dict_of(blob, path)) == "released_llip":
        tensors, leftovers = released_to_ours(state_dict_of(blob, path))
        kind = "released Llip"
        if cfg.loss != "llip":
            raise ConfigError(f"init_from={path} is a released Llip checkpoint: it starts llip "
                              f"configs, not {cfg.loss}")
    elif blob is None or kind_of(state_dict_of(blob, path)) == "open_clip":
        if blob is not None and not cfg.init_from_model:
            raise ConfigError(f"init_from={path} is an open_clip checkpoint: name its "
                              "architecture with init_from_model=NAME (e.g. ViT-B-16)")
        sd, name = _open_clip_source(cfg, blob)
        tensors, leftovers = oc.to_ours(sd)
        kind, label = f"open_clip {name}", f"{path} ({name})"
    else:
        raise _unknown_format(path, state_dict_of(blob, path))
    dropped = []
    if cfg.loss == "llip" and "image_proj" in tensors:
        dropped = [n for n in oc.SCALARS if n in tensors]
        tensors = llip_from_dual(tensors, cfg)
    elif cfg.loss != "llip" and ("logit_bias" in tensors) != (cfg.loss == "siglip"):
        # CLIP's softmax temperature and SigLIP's sigmoid scale + bias are not interchangeable
        dropped = [n for n in oc.SCALARS if tensors.pop(n, None) is not None]
    kept = load_into(model, tensors, leftovers, f"init_from={label} into {cfg.name}",
                     may_keep=("logit_scale", "logit_bias", "head."))
    n_params = sum(v.numel() for v in tensors.values()) / 1e6
    return (f"init_from {label}: {kind}, {len(tensors)} tensors ({n_params:.2f}M) loaded"
            + (f"; kept at init: {', '.join(kept)}" if kept else "")
            + (f"; not used: {', '.join(dropped)}" if dropped else ""))
