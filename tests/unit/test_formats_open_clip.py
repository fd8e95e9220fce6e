"""open_clip's files in and out: a starting point for training (init_from), an export that
open_clip loads with equal embeddings, open_clip models as eval subjects."""
import os
import stat

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from helpers import model_inputs, model_scores, open_clip_file, write_released
from llip.config import to_dict
from llip.data import transform_for
from llip.errors import ConfigError
from llip.loading import (
    export,
    init_from_weights,
    load_model,
    subject_spec,
)
from llip.models import build_model
from llip.run_configs import get_config, resolve


# ---------------------------------------------------------------- open_clip in
@pytest.mark.parametrize("loss,name", [("clip", "tiny-test-clip"), ("siglip", "tiny-test-siglip")])
def test_init_from_open_clip_file_gives_its_embeddings(tiny_open_clip, tmp_path, loss, name):
    reference, path = open_clip_file(name, tmp_path / "oc.pt", wrap=loss == "clip")
    cfg = resolve(f"{loss}_tiny", [f"init_from={path}", f"init_from_model={name}"])
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    report = init_from_weights(model, cfg)
    assert f"open_clip {name}" in report and "kept at init" not in report, report
    images, tokens = model_inputs(cfg)
    with torch.no_grad():
        image_emb, text_emb = model(images, tokens)
        torch.testing.assert_close(image_emb, reference.encode_image(images, normalize=True),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(text_emb, reference.encode_text(tokens, normalize=True),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(model.logits(image_emb, text_emb),
                                   reference.get_logits(images, tokens)[0], atol=1e-4, rtol=0)


def test_llip_from_open_clip_one_token_scores_like_clip(tiny_open_clip, tmp_path):
    reference, path = open_clip_file("tiny-test-siglip", tmp_path / "oc.pt")
    cfg = resolve("llip_tiny", [f"init_from={path}", "init_from_model=tiny-test-siglip",
                                "mixture_tokens=1"])
    model = build_model(cfg).eval()
    report = init_from_weights(model, cfg)
    assert "kept at init: head.logit_scale, head.logit_bias" in report, report
    images, tokens = model_inputs(cfg)
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
    _, path = open_clip_file("tiny-test-clip", tmp_path / "oc.pt")
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
    folder = tmp_path / f"exported_{name}.open_clip"
    assert files == [str(out), str(out.with_suffix(".json")), str(folder)]
    assert sorted(os.listdir(folder)) == ["open_clip_config.json", "open_clip_model.safetensors"
                                          if suffix == ".safetensors" else
                                          "open_clip_pytorch_model.bin"]
    open_clip.add_model_config(files[1])
    images, tokens = model_inputs(cfg)
    # the .json with the weights, and open_clip's local-dir folder (a model name alone, as
    # CLIP_benchmark's --model takes it): the same model and preprocessing as ours
    for theirs, preprocess in [
            open_clip.create_model_and_transforms(out.stem, pretrained=str(out))[::2],
            open_clip.create_model_and_transforms(f"local-dir:{folder}")[::2]]:
        theirs.eval()
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode_image(images, normalize=True),
                                       model.encode_image(images), atol=1e-5, rtol=0)
            torch.testing.assert_close(theirs.encode_text(tokens, normalize=True),
                                       model.encode_text(tokens), atol=1e-5, rtol=0)
            torch.testing.assert_close(theirs.get_logits(images, tokens)[0],
                                       model.logits(*model(images, tokens)), atol=1e-4, rtol=0)
        assert (theirs.logit_bias is not None) == (name == "siglip_tiny")
        image = Image.fromarray(np.arange(40 * 48 * 3, dtype=np.uint8).reshape(40, 48, 3))
        assert torch.equal(preprocess(image), transform_for(cfg, False)(image))

    # llip format as safetensors: config and step ride in the metadata
    again = tmp_path / "again.safetensors"
    umask = os.umask(0o022)
    try:
        export(path, str(again))
    finally:
        os.umask(umask)
    # others' jobs read exports: the mode of any new file (safetensors writes its own 0600)
    assert stat.S_IMODE(os.stat(again).st_mode) == 0o644
    loaded, loaded_cfg, step = load_model(str(again))
    assert loaded_cfg == cfg and step == 7
    for a, b in zip(model_scores(model, cfg), model_scores(loaded, cfg)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_export_of_llip_to_open_clip_refused_and_builtin_name_found(tmp_path):
    _, _, path = _llip_export(tmp_path, "llip_tiny")
    with pytest.raises(ConfigError, match="open_clip has no Llip"):
        export(path, str(tmp_path / "x.pt"), "open_clip")
    from llip.models.formats.openclip import builtin_name, config_of
    assert builtin_name(config_of(get_config("clip_b16"))) == "ViT-B-16-quickgelu"
    assert builtin_name(config_of(resolve("clip_tiny", ["vision_layers=3"]))) is None


def test_open_clip_model_as_eval_subject(tiny_open_clip, tmp_path):
    reference, path = open_clip_file("tiny-test-clip", tmp_path / "oc.pt", wrap=True)
    spec = subject_spec("tiny-test-clip", path)
    subject, cfg, step = load_model(spec)
    assert cfg.name == "openclip_tiny-test-clip_oc" and cfg.loss == "clip" and step == 0
    images, tokens = model_inputs(cfg)
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
    from evals.sweep_file import load_sweep
    sweep = load_sweep(os.path.join(os.path.dirname(__file__), "..", "..", "config_evals",
                                    "released_and_baselines.yaml"))
    subjects = [subject_spec(c["openclip"], c["pretrained"]) for c in sweep.checkpoints
                if "openclip" in c]
    assert subjects == ["openclip:ViT-B-16-quickgelu@openai", "openclip:ViT-B-16@laion2b_s34b_b88k",
                        "openclip:ViT-bigG-14@laion2b_s39b_b160k"]


def test_open_clip_export_works_wherever_a_model_name_is_accepted(tmp_path):
    """The export's .json stands for a model name in sweep entries and init_from_model=, its
    local-dir folder too; their rows are named after the weights, never "_random"."""
    model, cfg, path = _llip_export(tmp_path, "clip_tiny")
    weights, config, folder = export(path, str(tmp_path / "mine.safetensors"), "open_clip")
    images, tokens = model_inputs(cfg)
    expected = model.logits(*model(images, tokens)).detach()
    for spec, label in [(subject_spec(config, weights), "openclip_mine_mine"),
                        (subject_spec(f"local-dir:{folder}", ""), "openclip_mine")]:
        subject, subject_cfg, _ = load_model(spec)
        assert subject_cfg.name == label
        with torch.no_grad():
            torch.testing.assert_close(subject.logits(*subject(images, tokens)), expected,
                                       atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="holds its own weights"):
        subject_spec(f"local-dir:{folder}", weights)
    with pytest.raises(ConfigError, match="pretrained=laion is neither a file nor one of its "
                                          "tags \\(it has none\\)"):
        subject_spec(config, "laion")

    started = resolve("clip_tiny", [f"init_from={weights}", f"init_from_model={config}"])
    fresh = build_model(started).eval()
    assert f"({config})" in init_from_weights(fresh, started)
    with torch.no_grad():
        torch.testing.assert_close(fresh.logits(*fresh(images, tokens)), expected, atol=1e-4,
                                   rtol=0)
