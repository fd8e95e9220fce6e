"""The open_clip adapter: its CLIP state-dict names <-> ours, its model configs <-> our
RunConfig.

Our towers are built from open_clip's Transformer blocks, so block names already agree; the
differences are at the edges of the towers:
    open_clip                              ours (DualEncoder)
    visual.class_embedding (W,)            visual.prefix_tokens (1, W)
    visual.positional_embedding (1+G, W)   visual.prefix_pos (1, W) + visual.patch_pos (G, W)
    visual.proj (W, D), x @ W              image_proj (W, D), x @ W
    token_embedding, positional_embedding, text.token_embedding, text.positional_embedding,
    transformer.*, ln_final.* (top level)  text.transformer.*, text.ln_final.*
    text_projection (W_t, D), x @ W        text_proj (W_t, D), x @ W
    logit_scale, logit_bias (0-D)          logit_scale, logit_bias (1,): FSDP2 shards 1-D only
open_clip's CustomTextCLIP keeps the same text tower under `text.`; both are read.

A model is named to open_clip by a built-in or registered name, `hf-hub:org/repo`, open_clip's
`local-dir:FOLDER` (FOLDER/open_clip_config.json {"model_cfg", "preprocess_cfg"} and the weights
beside it: open_clip_model.safetensors or open_clip_pytorch_model.bin; open_clip/factory.py
create_model, _find_checkpoint_in_dir), or here also the path of a model config JSON file.
"""
import dataclasses
import json
import os

import torch

from llip.config import RunConfig
from llip.errors import ConfigError, closest
from llip.io import read_json

VISION_SAME = ("visual.conv1.", "visual.ln_pre.", "visual.transformer.", "visual.ln_post.")
TEXT_TOP = ("token_embedding", "positional_embedding", "transformer", "ln_final")
SCALARS = ("logit_scale", "logit_bias")
# Keys some CLIP checkpoints carry that are not weights (OpenAI's archives, old buffers).
NOT_WEIGHTS = {"input_resolution", "context_length", "vocab_size", "attn_mask", "text.attn_mask"}


def _text_name(name: str) -> str:
    """A CustomTextCLIP text name (text.token_embedding...) -> the CLIP one (token_embedding...)."""
    inner = name[len("text."):] if name.startswith("text.") else ""
    return inner if inner.split(".")[0] in (*TEXT_TOP, "text_projection") else name


def matches(sd: dict) -> bool:
    """An open_clip CLIP state dict (a text tower at top level or under `text.`)."""
    return "visual.class_embedding" in sd and "visual.proj" in sd and (
        "token_embedding.weight" in sd or "text.token_embedding.weight" in sd)


def to_ours(sd: dict) -> tuple[dict, list[str]]:
    """open_clip CLIP tensors -> (our DualEncoder names -> tensors, source names with no home)."""
    out, leftovers = {}, []
    for source, t in sd.items():
        name = _text_name(source)
        if name in NOT_WEIGHTS:
            continue
        if name == "visual.class_embedding":
            out["visual.prefix_tokens"] = t.reshape(1, -1)
        elif name == "visual.positional_embedding":
            out["visual.prefix_pos"], out["visual.patch_pos"] = t[:1], t[1:]
        elif name == "visual.proj":
            out["image_proj"] = t
        elif name.startswith(VISION_SAME):
            out[name] = t
        elif name.split(".")[0] in TEXT_TOP:
            out["text." + name] = t
        elif name == "text_projection":
            out["text_proj"] = t
        elif name in SCALARS:
            out[name] = t.reshape(1)
        else:
            leftovers.append(source)
    return out, leftovers


def from_ours(sd: dict) -> dict:
    """Our DualEncoder state dict -> open_clip CLIP names (contiguous copies, 0-D scalars)."""
    out = {}
    for name, t in sd.items():
        if name == "visual.prefix_tokens":
            out["visual.class_embedding"] = t.reshape(-1)
        elif name == "visual.prefix_pos":
            out["visual.positional_embedding"] = torch.cat([t, sd["visual.patch_pos"]])
        elif name == "visual.patch_pos":
            continue
        elif name == "image_proj":
            out["visual.proj"] = t
        elif name == "text_proj":
            out["text_projection"] = t
        elif name.startswith("text."):
            out[name[len("text."):]] = t
        elif name in SCALARS:
            out[name] = t.reshape(())
        else:
            out[name] = t
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


# ---------------------------------------------------------------- model configs
# open_clip ViT/text options our towers do not implement; the value is what we require.
_VISION_REQUIRED = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                    "pos_embed_type": "learnable", "pool_type": "tok", "block_type": None,
                    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                    "act_kwargs": None, "norm_kwargs": None, "timm_model_name": None}
_TEXT_REQUIRED = {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
                  "pool_type": "argmax", "proj_bias": False, "proj_type": "linear",
                  "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
                  "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                  "scale_fc": False, "act_kwargs": None, "norm_kwargs": None,
                  "hf_model_name": None}


LOCAL_DIR = "local-dir:"  # open_clip's prefix of a model folder
LOCAL_DIR_CONFIG = "open_clip_config.json"  # {"model_cfg": ..., "preprocess_cfg": ...} in it


def is_config_file(name: str) -> bool:
    """A model config given as its JSON file (what `export --format open_clip` writes)."""
    return name.endswith(".json")


def open_clip_name(name: str) -> str:
    """The name open_clip knows a model by: a config JSON file is registered with
    add_model_config under its stem (refused when the stem already names another config)."""
    if not is_config_file(name):
        return name
    import open_clip
    stem = os.path.splitext(os.path.basename(name))[0]
    mine = _read_config_file(name)
    if stem in open_clip.list_models() and open_clip.get_model_config(stem) != mine:
        raise ConfigError(f"open_clip model config {name}: open_clip already has another model "
                          f"named {stem}: rename the file")
    open_clip.add_model_config(name)
    return stem


def _read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"open_clip model config {path} does not exist")
    try:
        found = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise ConfigError(f"open_clip model config {path} is not readable JSON ({exn})") \
            from None
    found = found.get("model_cfg", found) if isinstance(found, dict) else found
    if not isinstance(found, dict) or not all(k in found for k in ("embed_dim", "vision_cfg",
                                                                     "text_cfg")):
        raise ConfigError(f"open_clip model config {path} lacks embed_dim, vision_cfg or "
                          "text_cfg: not an open_clip model config")
    return found


def label(name: str) -> str:
    """A model's name for tables: a config file or local-dir folder by its stem."""
    path = name[len(LOCAL_DIR):].rstrip("/") if name.startswith(LOCAL_DIR) else \
        name if is_config_file(name) else None
    if path is None:
        return name.replace("/", "_").replace(":", "_")
    return os.path.splitext(os.path.basename(path))[0]


def model_config(name: str) -> dict:
    """open_clip's config of a model name (built-in, a JSON registered with add_model_config,
    a config JSON file, a local-dir:FOLDER, or hf-hub:org/repo when online); a one-line error
    with the closest names otherwise."""
    import open_clip
    if is_config_file(name):
        return _read_config_file(name)
    if name.startswith(LOCAL_DIR):
        return _read_config_file(os.path.join(name[len(LOCAL_DIR):], LOCAL_DIR_CONFIG))
    try:
        found = open_clip.get_model_config(name)
    except Exception as exn:  # hub unreachable, repo without an open_clip config
        raise ConfigError(f"open_clip model {name}: {str(exn).splitlines()[0][:200]}") from None
    if found is None:
        raise ConfigError(f"open_clip model {name!r} does not exist; closest: "
                          f"{closest(name, open_clip.list_models())}")
    return found


def _towers(oc: dict):
    from open_clip import CLIPTextCfg, CLIPVisionCfg
    try:
        return CLIPVisionCfg(**oc["vision_cfg"]), CLIPTextCfg(**oc["text_cfg"])
    except (KeyError, TypeError) as exn:
        raise ConfigError(f"open_clip config has unexpected tower settings: {exn}") from None


def architecture(oc: dict) -> dict:
    """The RunConfig model fields an open_clip CLIP config stands for; ConfigError when the
    model uses a part our towers do not have (timm/HF towers, ResNets, layer scale, ...)."""
    vision, text = _towers(oc)
    unsupported = [f"vision {k}={getattr(vision, k)!r}" for k, v in _VISION_REQUIRED.items()
                   if getattr(vision, k) != v]
    unsupported += [f"text {k}={getattr(text, k)!r}" for k, v in _TEXT_REQUIRED.items()
                    if getattr(text, k) != v]
    if not isinstance(vision.layers, int):
        unsupported.append("a ResNet vision tower")
    if oc.get("multimodal_cfg"):
        unsupported.append("a CoCa decoder")
    if not isinstance(vision.image_size, int):
        unsupported.append(f"image_size={vision.image_size}")
    if unsupported:
        raise ConfigError(f"open_clip model uses {', '.join(unsupported)}, which llip's towers "
                          "do not implement")
    return {"image_size": vision.image_size, "patch_size": vision.patch_size,
            "vision_width": vision.width, "vision_layers": vision.layers,
            "vision_heads": vision.width // vision.head_width, "mlp_ratio": vision.mlp_ratio,
            "text_width": text.width, "text_layers": text.layers, "text_heads": text.heads,
            "text_mlp_ratio": text.mlp_ratio, "context_length": text.context_length,
            "vocab_size": text.vocab_size, "embed_dim": oc["embed_dim"],
            "quick_gelu": bool(oc.get("quick_gelu", False))}


def mismatches(cfg: RunConfig, arch: dict) -> list[str]:
    """`field=value` for every model field where cfg differs from an open_clip architecture."""
    mine = dataclasses.replace(cfg, text_mlp_ratio=cfg.text_mlp_ratio or cfg.mlp_ratio)
    return [f"{k}={v}" for k, v in arch.items() if getattr(mine, k) != v]


def config_of(cfg: RunConfig) -> dict:
    """Our CLIP/SigLIP config as an open_clip model config (a JSON for add_model_config)."""
    if cfg.vision_width % cfg.vision_heads:
        raise ConfigError(f"vision_width={cfg.vision_width} is not a multiple of vision_heads="
                          f"{cfg.vision_heads}: open_clip cannot express it")
    out = {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.quick_gelu,
           "vision_cfg": {"image_size": cfg.image_size, "layers": cfg.vision_layers,
                          "width": cfg.vision_width, "patch_size": cfg.patch_size,
                          "head_width": cfg.vision_width // cfg.vision_heads,
                          "mlp_ratio": cfg.mlp_ratio},
           "text_cfg": {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size,
                        "width": cfg.text_width, "heads": cfg.text_heads,
                        "layers": cfg.text_layers,
                        "mlp_ratio": cfg.text_mlp_ratio or cfg.mlp_ratio}}
    if cfg.loss == "siglip":
        out["init_logit_bias"] = cfg.logit_bias_init  # makes open_clip create logit_bias
    return out


def local_dir_config(cfg: RunConfig) -> dict:
    """The open_clip_config.json of a local-dir folder: the model config and the preprocessing
    our evals use (open_clip's defaults at the model's image size)."""
    from open_clip.transform import PreprocessCfg
    return {"model_cfg": config_of(cfg),
            "preprocess_cfg": dataclasses.asdict(PreprocessCfg(size=cfg.image_size))}


def builtin_name(oc: dict):
    """The built-in open_clip model whose config equals `oc`, if any (e.g. ViT-B-16-quickgelu)."""
    import open_clip

    def key(c):
        vision, text = _towers(c)
        return (c["embed_dim"], bool(c.get("quick_gelu", False)), c.get("init_logit_bias"),
                dataclasses.asdict(vision), dataclasses.asdict(text))
    target = key(oc)
    for name in open_clip.list_models():
        c = open_clip.get_model_config(name)
        if c.get("custom_text") or c.get("multimodal_cfg"):
            continue
        try:
            if key(c) == target:
                return name
        except ConfigError:
            continue
    return None
