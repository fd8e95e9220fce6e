"""The Llip authors' released checkpoints, on files written here in their layout: loaded with
the scores of the model they came from, planned in a sweep, configs chosen from shapes, bad files
refused in one line."""
import dataclasses

import pytest
import torch

from helpers import (
    model_scores,
    released_state_dict,
    write_released,
)
from llip.errors import UserError
from llip.loading import (
    MODEL_FIELDS,
    config_for,
    load_model,
)
from llip.models import build_model
from llip.models.formats import llip_release
from llip.run_configs import get_config


# ---------------------------------------------------------------- released Llip
def test_released_llip_file_loads_with_equal_scores(tmp_path):
    cfg = get_config("llip_tiny")
    torch.manual_seed(3)
    ours = build_model(cfg).eval()
    q = ours.head.query_proj.weight
    assert q.shape[0] == q.shape[1] and not torch.allclose(q, q.T)  # square, not symmetric
    path = write_released(ours, tmp_path / "released.pt")
    loaded, found, step = load_model(path)
    same_model = [getattr(found, f) == getattr(cfg, f) for f in MODEL_FIELDS]
    assert all(same_model) and step == 32 * found.steps_per_epoch  # llip_tiny or a same-shape twin
    for a, b in zip(model_scores(ours, cfg), model_scores(loaded, cfg)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

    # Negative control: the same file without the x @ W transposes loads (shapes all fit)
    # but scores differently, which is why the transposes are tested with values.
    untransposed = released_state_dict(ours)
    for name in ("q_proj", "text_projection", "pred.out_proj"):
        untransposed[name] = untransposed[name].T.contiguous()
    wrong, _, _ = load_model(write_released(ours, tmp_path / "wrong.pt", state=untransposed))
    assert not torch.allclose(model_scores(ours, cfg)[2], model_scores(wrong, cfg)[2], atol=1e-3)


def test_released_llip_file_is_planned_in_a_sweep_at_the_step_its_loader_gives(tmp_path):
    from evals.checkpoints import checkpoint_of
    path = write_released(build_model(get_config("llip_tiny")).eval(), tmp_path / "released.pt")
    ckpt = checkpoint_of(path)  # the runner refuses a checkpoint whose step changed since planning
    assert (ckpt.name, ckpt.loss, ckpt.step) == ("released", "llip", load_model(path)[2])


def test_released_llip_with_qkv_norms_and_plain_names(tmp_path):
    cfg = dataclasses.replace(get_config("llip_tiny"), cross_attn_qkv_norm=True,
                              mixture_tokens=1)
    torch.manual_seed(4)
    ours = build_model(cfg).eval()
    with torch.no_grad():
        for norm in (ours.head.q_norm, ours.head.k_norm, ours.head.v_norm):
            norm.weight.normal_()
            norm.bias.normal_()
    state = released_state_dict(ours)
    state["visual.class_embedding"] = state["visual.class_embedding"][0]  # K = 1: stored 1-D
    assert {"Q_norm.weight", "K_norm.bias", "V_norm.weight"} <= set(state)  # the release's case
    tensors, leftovers = llip_release.to_ours(state)
    assert not leftovers
    model = build_model(cfg).eval()
    assert model.load_state_dict(tensors, strict=True)
    for a, b in zip(model_scores(ours, cfg), model_scores(model, cfg)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# Every key the release's Llip model stores, and where it lands in ours. Source: the Llip
# authors' release, facebookresearch/Llip, llip/open_clip/model.py: VisualTransformer (conv1
# without bias, class_embedding (K, W), positional_embedding (G + K, W), ln_pre, transformer,
# ln_post; CMP sets visual.proj to None, so it is not stored), ResidualAttentionBlock (attn,
# ln_1, mlp.c_fc, mlp.c_proj, ln_2), CLIP (text tower at top level, text_projection (W_t, D),
# 0-D logit_scale / logit_bias, attn_mask a non-persistent buffer), CMP (k_proj, v_proj (K, W,
# D); q_proj (W_t, D); K_norm, Q_norm, V_norm = nn.LayerNorm(D) when use_norm, else
# nn.Identity) and xAttnPred (out_proj (D, D), applied as zv @ out_proj). "T" marks an x @ W
# matrix that is an nn.Linear weight here (transposed).
BLOCK = ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
         "attn.out_proj.bias", "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
         "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias")
RELEASED_KEYS = {
    "visual.conv1.weight": "visual.conv1.weight",
    "visual.class_embedding": "visual.prefix_tokens",
    "visual.positional_embedding": "visual.prefix_pos + visual.patch_pos",
    "visual.ln_pre.weight": "visual.ln_pre.weight", "visual.ln_pre.bias": "visual.ln_pre.bias",
    **{f"visual.transformer.resblocks.{{i}}.{b}": f"visual.transformer.resblocks.{{i}}.{b}"
       for b in BLOCK},
    "visual.ln_post.weight": "visual.ln_post.weight",
    "visual.ln_post.bias": "visual.ln_post.bias",
    "token_embedding.weight": "text.token_embedding.weight",
    "positional_embedding": "text.positional_embedding",
    **{f"transformer.resblocks.{{i}}.{b}": f"text.transformer.resblocks.{{i}}.{b}"
       for b in BLOCK},
    "ln_final.weight": "text.ln_final.weight", "ln_final.bias": "text.ln_final.bias",
    "text_projection": "T head.target_proj.weight",
    "logit_scale": "head.logit_scale", "logit_bias": "head.logit_bias",
    "k_proj": "head.key_proj", "v_proj": "head.value_proj",
    "q_proj": "T head.query_proj.weight",
    **{f"{w}_norm.{p}": f"head.{w.lower()}_norm.{p}" for w in "KQV" for p in ("weight", "bias")},
    "pred.out_proj": "T head.out_proj.weight",
}


def _release_shapes(cfg) -> dict:
    """The release's key -> shape for a config, from its constructors (see RELEASED_KEYS)."""
    w, wt, d, k = cfg.vision_width, cfg.text_width, cfg.embed_dim, cfg.mixture_tokens
    grid = (cfg.image_size // cfg.patch_size) ** 2

    def block(width, ratio):
        hidden = int(width * ratio)
        return {"attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
                "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
                "mlp.c_fc.weight": (hidden, width), "mlp.c_fc.bias": (hidden,),
                "mlp.c_proj.weight": (width, hidden), "mlp.c_proj.bias": (width,),
                **{f"ln_{n}.{p}": (width,) for n in (1, 2) for p in ("weight", "bias")}}
    shapes = {"visual.conv1.weight": (w, 3, cfg.patch_size, cfg.patch_size),
              "visual.class_embedding": (k, w), "visual.positional_embedding": (grid + k, w),
              "token_embedding.weight": (cfg.vocab_size, wt),
              "positional_embedding": (cfg.context_length, wt), "text_projection": (wt, d),
              "logit_scale": (), "logit_bias": (), "k_proj": (k, w, d), "v_proj": (k, w, d),
              "q_proj": (wt, d), "pred.out_proj": (d, d),
              **{f"{n}.{p}": (w,) for n in ("visual.ln_pre", "visual.ln_post")
                 for p in ("weight", "bias")},
              **{f"ln_final.{p}": (wt,) for p in ("weight", "bias")},
              **{f"{n}_norm.{p}": (d,) for n in "KQV" for p in ("weight", "bias")}}
    for prefix, width, layers, ratio in (
            ("visual.", w, cfg.vision_layers, cfg.mlp_ratio),
            ("", wt, cfg.text_layers, cfg.text_mlp_ratio or cfg.mlp_ratio)):
        for i in range(layers):
            shapes.update({f"{prefix}transformer.resblocks.{i}.{b}": s
                           for b, s in block(width, ratio).items()})
    return shapes


def test_every_released_key_lands_where_the_table_says(tmp_path):
    """A file with every key of the release's model (qkv LayerNorms included, as the G/14 has
    them), random values, wrapped as the release saves a training checkpoint: each tensor
    arrives at its place in our model, transposed where the release stores x @ W."""
    from llip.models.formats import strict_load, unwrap
    cfg = dataclasses.replace(get_config("llip_tiny"), cross_attn_qkv_norm=True)
    shapes = _release_shapes(cfg)
    table = {}
    for pattern, ours in RELEASED_KEYS.items():
        layers = cfg.vision_layers if pattern.startswith("visual.") else cfg.text_layers
        for i in range(layers) if "{i}" in pattern else [None]:
            table[pattern.format(i=i)] = ours.format(i=i)
    assert set(table) == set(shapes)  # the table names every key the release stores
    g = torch.Generator().manual_seed(11)
    state = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    assert set(released_state_dict(build_model(cfg))) == set(state)  # the helper agrees
    path = write_released(None, tmp_path / "epoch_latest.pt", state=state)
    sd = unwrap(torch.load(path, weights_only=True), path)  # "_orig_mod.module." removed
    tensors, leftovers = llip_release.to_ours(sd)
    model = build_model(cfg)
    strict_load(model, tensors, leftovers, path)  # the loader's one strict accounting
    ours = model.state_dict()
    for released, target in table.items():
        if target == "visual.prefix_pos + visual.patch_pos":
            landed = torch.cat([ours["visual.prefix_pos"], ours["visual.patch_pos"]])
        elif target.startswith("T "):
            landed = ours[target[2:]].T
        else:
            landed = ours[target].reshape(shapes[released])
        assert torch.equal(landed, state[released]), (released, target)
    back = llip_release.from_ours(ours)  # and the adapter's other direction gives the file back
    assert set(back) == set(state) and all(torch.equal(back[k], state[k].reshape(back[k].shape))
                                           for k in state)


def test_released_b16_and_g14_shapes():
    """The real B/16 release (306 tensors, 174.97M params) and the G/14 text-MLP fix, on the
    meta device: no memory, no download."""
    with torch.device("meta"):
        b16 = build_model(get_config("llip_b16_k32"))
    released = released_state_dict(b16)
    assert len(released) == 306
    assert round(sum(t.numel() for t in released.values()) / 1e6, 2) == 174.97
    assert released["visual.positional_embedding"].shape == (32 + 196, 768)
    assert released["k_proj"].shape == (32, 768, 512) and released["q_proj"].shape == (512, 512)
    tensors, leftovers = llip_release.to_ours(released)
    assert not leftovers and config_for(tensors, "llip_b16_k32.pt").name == "llip_b16_k32"

    g14 = get_config("llip_G14_k64")
    with torch.device("meta"):
        g14_model = build_model(g14)
        before = build_model(dataclasses.replace(g14, text_mlp_ratio=0.0)).state_dict()
    fixed = g14_model.state_dict()
    differ = [k for k in fixed if fixed[k].shape != before[k].shape]
    assert len(differ) == 96 and all(k.startswith("text.transformer.") and ".mlp.c_" in k
                                     for k in differ)
    assert fixed["text.transformer.resblocks.0.mlp.c_fc.weight"].shape == (5120, 1280)
    tensors, _ = llip_release.to_ours(released_state_dict(g14_model))
    assert config_for(tensors, "llip_G14_k64.pt").name == "llip_G14_k64"
    assert get_config("llip_h14").mixture_tokens == 64
    assert get_config("llip_l14").context_length == 64
    assert get_config("llip_l14_k64").context_length == 77


def test_bad_weight_files_fail_in_one_line(tmp_path):
    cfg = get_config("llip_tiny")
    torch.manual_seed(0)
    ours = build_model(cfg)
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    state = released_state_dict(ours)
    grown = dict(state, **{"visual.positional_embedding": torch.zeros(4 + 25, 64)})
    extra = dict(state, **{"visual.attn_pool.weight": torch.zeros(3)})
    cases = [
        (str(foreign), "", "is neither an llip export, a released Llip checkpoint nor an "
                           "open_clip CLIP checkpoint"),
        (str(garbage), "", "is not a readable weights file"),
        (write_released(ours, tmp_path / "grown.pt", state=grown), "",
         "1 tensor(s) differ, e.g. visual.patch_pos (25, 64) (expected (16, 64))"),
        (write_released(ours, tmp_path / "named.pt", state=grown), "llip_tiny",
         "refusing a partial load: 1 shape mismatch(es): visual.patch_pos (25, 64)"),
        (write_released(ours, tmp_path / "extra.pt", state=extra), "",
         "1 tensor(s) with no home in the model: visual.attn_pool.weight"),
        (str(tmp_path / "absent.pt"), "", "does not exist"),
    ]
    for path, config, needle in cases:
        with pytest.raises(UserError) as exn:  # a ConfigError, or a CheckpointError (absent)
            load_model(path, config=config)
        assert needle in str(exn.value) and "\n" not in str(exn.value), str(exn.value)
        assert path in str(exn.value)
