"""Weights in and out, on files made here: released-Llip checkpoints converted into our model,
open_clip models as a starting point and as eval subjects, exports that open_clip loads."""
import dataclasses
import functools
import json

import open_clip
import pytest
import torch

from llip.cli import ConfigError
from llip.config import to_dict
from llip.models import build_model
from llip.models.open_clip_format import subject_spec
from llip.models.pretrained import MODEL_FIELDS, config_for, init_from_weights, released_to_ours
from llip.run_configs import get_config, resolve
from llip.run_dir import load_model
from llip.training.export import export

# A small open_clip architecture equal to our *_tiny towers (registered with open_clip below).
TINY_OPEN_CLIP = {"embed_dim": 64, "quick_gelu": False,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                 "head_width": 16},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64,
                               "heads": 4, "layers": 2}}


# ---------------------------------------------------------------- writers of outside formats
def released_state_dict(model) -> dict:
    """Our LlipModel in the released-Llip layout (written independently of the converter)."""
    sd, out = model.state_dict(), {}
    renamed = {"head.key_proj": "k_proj", "head.value_proj": "v_proj"}
    as_x_at_w = {"head.query_proj.weight": "q_proj", "head.target_proj.weight": "text_projection",
                 "head.out_proj.weight": "pred.out_proj"}
    for name, t in sd.items():
        if name == "visual.prefix_tokens":
            out["visual.class_embedding"] = t
        elif name == "visual.prefix_pos":
            out["visual.positional_embedding"] = torch.cat([t, sd["visual.patch_pos"]])
        elif name == "visual.patch_pos":
            continue
        elif name.startswith("text."):
            out[name[len("text."):]] = t
        elif name in renamed:
            out[renamed[name]] = t
        elif name in as_x_at_w:
            out[as_x_at_w[name]] = t.T.contiguous()
        elif name.startswith("head.") and "_norm." in name:
            out[name[len("head."):]] = t
        elif name in ("head.logit_scale", "head.logit_bias"):
            out[name[len("head."):]] = t.reshape(())
        else:
            out[name] = t
    return out


def write_released(model, path, prefix="_orig_mod.module.", state=None):
    state = released_state_dict(model) if state is None else state
    torch.save({"epoch": 32, "name": "llip_b16_k32", "state_dict":
                {prefix + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]}},
               path)
    return str(path)


@functools.lru_cache
def _tokens(context_length):  # building the BPE tokenizer takes a while: once per length
    return open_clip.get_tokenizer("ViT-B-16", context_length=context_length)(
        ["a photo of a cat", "two dogs on a beach", "a red car"])


def _inputs(cfg):
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 3, cfg.image_size, cfg.image_size, generator=g), \
        _tokens(cfg.context_length)


@torch.no_grad()
def _scores(model, cfg):
    images, tokens = _inputs(cfg)
    image_emb, text_emb = model.encode_image(images), model.encode_text(tokens)
    return image_emb, text_emb, model.logits(image_emb, text_emb)


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """Register TINY_OPEN_CLIP (and a SigLIP-style twin with a logit bias) with open_clip."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / "tiny-test-clip.json").write_text(json.dumps(TINY_OPEN_CLIP))
    (folder / "tiny-test-siglip.json").write_text(json.dumps({**TINY_OPEN_CLIP,
                                                               "init_logit_bias": -10.0}))
    open_clip.add_model_config(folder)
    return folder


def _open_clip_file(name, path, seed=0, wrap=False):
    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    with torch.no_grad():  # a trained-looking scale and bias, not the init values
        model.logit_scale.fill_(3.1)
        if model.logit_bias is not None:
            model.logit_bias.fill_(-7.5)
    sd = model.state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
               if wrap else sd, path)
    return model, str(path)


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
    for a, b in zip(_scores(ours, cfg), _scores(loaded, cfg)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

    # Negative control: the same file without the x @ W transposes loads (shapes all fit)
    # but scores differently, which is why the transposes are tested with values.
    untransposed = released_state_dict(ours)
    for name in ("q_proj", "text_projection", "pred.out_proj"):
        untransposed[name] = untransposed[name].T.contiguous()
    wrong, _, _ = load_model(write_released(ours, tmp_path / "wrong.pt", state=untransposed))
    assert not torch.allclose(_scores(ours, cfg)[2], _scores(wrong, cfg)[2], atol=1e-3)


def test_released_llip_file_is_planned_in_a_sweep_at_the_step_its_loader_gives(tmp_path):
    from evals.checkpoints import describe
    path = write_released(build_model(get_config("llip_tiny")).eval(), tmp_path / "released.pt")
    ckpt = describe(path)  # the runner refuses a checkpoint whose step changed since planning
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
    assert "q_norm.weight" in state
    tensors, leftovers = released_to_ours(state)
    assert not leftovers
    model = build_model(cfg).eval()
    assert model.load_state_dict(tensors, strict=True)
    for a, b in zip(_scores(ours, cfg), _scores(model, cfg)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


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
    tensors, leftovers = released_to_ours(released)
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
    tensors, _ = released_to_ours(released_state_dict(g14_model))
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
        with pytest.raises(ConfigError) as exn:
            load_model(path, config=config)
        assert needle in str(exn.value) and "\n" not in str(exn.value), str(exn.value)
        assert path in str(exn.value)


# ---------------------------------------------------------------- open_clip in
@pytest.mark.parametrize("loss,name", [("clip", "tiny-test-clip"), ("siglip", "tiny-test-siglip")])
def test_init_from_open_clip_file_gives_its_embeddings(tiny_open_clip, tmp_path, loss, name):
    reference, path = _open_clip_file(name, tmp_path / "oc.pt", wrap=loss == "clip")
    cfg = resolve(f"{loss}_tiny", [f"init_from={path}", f"init_from_model={name}"])
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    report = init_from_weights(model, cfg)
    assert f"open_clip {name}" in report and "kept at init" not in report, report
    images, tokens = _inputs(cfg)
    with torch.no_grad():
        image_emb, text_emb = model(images, tokens)
        torch.testing.assert_close(image_emb, reference.encode_image(images, normalize=True),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(text_emb, reference.encode_text(tokens, normalize=True),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(model.logits(image_emb, text_emb),
                                   reference.get_logits(images, tokens)[0], atol=1e-4, rtol=0)


def test_llip_from_open_clip_one_token_scores_like_clip(tiny_open_clip, tmp_path):
    reference, path = _open_clip_file("tiny-test-siglip", tmp_path / "oc.pt")
    cfg = resolve("llip_tiny", [f"init_from={path}", "init_from_model=tiny-test-siglip",
                                "mixture_tokens=1"])
    model = build_model(cfg).eval()
    report = init_from_weights(model, cfg)
    assert "kept at init: head.logit_scale, head.logit_bias" in report, report
    images, tokens = _inputs(cfg)
    with torch.no_grad():  # one mixture token: attention weight 1, x = W_o v = image embedding
        cosines = model.head.cosines(*model(images, tokens))
        clip_cos = reference.encode_image(images, normalize=True) @ \
            reference.encode_text(tokens, normalize=True).T
    torch.testing.assert_close(cosines, clip_cos, atol=1e-5, rtol=0)

    cfg = resolve("llip_tiny", [f"init_from={path}", "init_from_model=tiny-test-siglip"])
    model = build_model(cfg)
    init_from_weights(model, cfg)
    tokens4 = model.visual.prefix_tokens.detach()
    cls = reference.visual.class_embedding.detach()
    spread = (tokens4 - cls).pow(2).mean().sqrt() / cls.pow(2).mean().sqrt()
    assert 0.05 < spread < 0.2  # the class token plus 10% noise, tokens distinct
    assert torch.cdist(tokens4, tokens4).add(torch.eye(4)).min() > 0


def test_init_from_bad_input_is_one_line(tiny_open_clip, tmp_path):
    _, path = _open_clip_file("tiny-test-clip", tmp_path / "oc.pt")
    llip = tmp_path / "llip.pt"
    torch.manual_seed(0)
    write_released(build_model(get_config("llip_tiny")), llip)
    cases = [
        (["clip_tiny", f"init_from={path}", "init_from_model=ViT-Q-99"],
         "open_clip model 'ViT-Q-99' does not exist; closest:"),
        (["clip_tiny", f"init_from={path}", "init_from_model=ViT-B-32"],
         "init_from_model=ViT-B-32 does not match config clip_tiny: set image_size=224 "
         "patch_size=32 vision_width=768"),
        (["clip_tiny", f"init_from={path}"], "is an open_clip checkpoint: name its "
                                              "architecture with init_from_model=NAME"),
        (["clip_tiny", f"init_from={llip}"], "is a released Llip checkpoint: it starts llip "
                                             "configs, not clip"),
        (["clip_tiny", f"init_from={tmp_path / 'nope.pt'}"], "does not exist"),
        (["clip_tiny", f"init_from={tmp_path / 'nope.pt'}", "init_from_model=ViT-B-32"],
         "nope.pt is neither a file nor a pretrained tag of ViT-B-32 (openai, laion400m_e31"),
        (["llip_tiny", f"init_from={path}", "init_from_model=tiny-test-clip",
          "vision_width=32"], "does not match config llip_tiny: set vision_width=64"),
    ]
    for argv, needle in cases:
        with pytest.raises(ConfigError) as exn:
            cfg = resolve(argv[0], argv[1:])
            init_from_weights(build_model(cfg), cfg)
        assert needle in str(exn.value) and "\n" not in str(exn.value), str(exn.value)
    with pytest.raises(ConfigError, match="init_from_model=ViT-B-32 without init_from"):
        resolve("clip_tiny", ["init_from_model=ViT-B-32"])


# ---------------------------------------------------------------- open_clip out, evals
def _llip_export(tmp_path, name):
    cfg = get_config(name)
    torch.manual_seed(2)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.7)
    path = tmp_path / f"{name}_export.pt"
    torch.save({"state_dict": model.state_dict(), "config": to_dict(cfg), "step": 7}, path)
    return model, cfg, str(path)


@pytest.mark.parametrize("name,suffix", [("clip_tiny", ".pt"), ("siglip_tiny", ".safetensors")])
def test_export_to_open_clip_loads_with_equal_embeddings(tmp_path, name, suffix):
    model, cfg, path = _llip_export(tmp_path, name)
    out = tmp_path / f"exported_{name}{suffix}"
    files = export(path, str(out), "open_clip")
    assert files == [str(out), str(out.with_suffix(".json"))]
    open_clip.add_model_config(files[1])
    theirs, _, preprocess = open_clip.create_model_and_transforms(out.stem, pretrained=str(out))
    theirs.eval()
    images, tokens = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_image(images, normalize=True),
                                   model.encode_image(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.encode_text(tokens, normalize=True),
                                   model.encode_text(tokens), atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.get_logits(images, tokens)[0],
                                   model.logits(*model(images, tokens)), atol=1e-4, rtol=0)
    assert (theirs.logit_bias is not None) == (name == "siglip_tiny")

    # llip format as safetensors: config and step ride in the metadata
    again = tmp_path / "again.safetensors"
    export(path, str(again))
    loaded, loaded_cfg, step = load_model(str(again))
    assert loaded_cfg == cfg and step == 7
    for a, b in zip(_scores(model, cfg), _scores(loaded, cfg)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_export_of_llip_to_open_clip_refused_and_builtin_name_found(tmp_path):
    _, _, path = _llip_export(tmp_path, "llip_tiny")
    with pytest.raises(ConfigError, match="open_clip has no Llip"):
        export(path, str(tmp_path / "x.pt"), "open_clip")
    from llip.models.open_clip_format import builtin_name, config_of
    assert builtin_name(config_of(get_config("clip_b16"))) == "ViT-B-16-quickgelu"
    assert builtin_name(config_of(resolve("clip_tiny", ["vision_layers=3"]))) is None


def test_open_clip_model_as_eval_subject(tiny_open_clip, tmp_path):
    reference, path = _open_clip_file("tiny-test-clip", tmp_path / "oc.pt", wrap=True)
    spec = subject_spec("tiny-test-clip", path)
    subject, cfg, step = load_model(spec)
    assert cfg.name == "openclip_tiny-test-clip_oc" and cfg.loss == "clip" and step == 0
    images, tokens = _inputs(cfg)
    assert torch.equal(subject.tokenizer(["a red car"])[0], tokens[2])
    with torch.no_grad():
        torch.testing.assert_close(subject.logits(*subject(images, tokens)),
                                   reference.get_logits(images, tokens)[0], atol=1e-5, rtol=0)
    for name, pretrained, needle in [
            ("ViT-Q-99", path, "open_clip model 'ViT-Q-99' does not exist"),
            ("ViT-B-32", "no_such_tag", "pretrained=no_such_tag is neither a file nor one of "
                                        "its tags (openai, laion400m_e31")]:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
            subject_spec(name, pretrained)


def test_shipped_released_sweep_names_existing_open_clip_models_and_tags():
    import os

    from evals.main_mc import load_sweep
    sweep = load_sweep(os.path.join(os.path.dirname(__file__), "..", "..", "config_evals",
                                    "released_and_baselines.yaml"))
    subjects = [subject_spec(c["openclip"], c["pretrained"]) for c in sweep.checkpoints
                if "openclip" in c]
    assert subjects == ["openclip:ViT-B-16-quickgelu@openai", "openclip:ViT-B-16@laion2b_s34b_b88k",
                        "openclip:ViT-bigG-14@laion2b_s39b_b160k"]
