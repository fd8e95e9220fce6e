"""Locked towers, partial unlocking and LoRA: what trains, what the optimizer keeps, and that
adapters neither change the model when added nor when merged."""
import contextlib

import pytest
import torch

from llip.errors import ConfigError
from llip.models import build_model
from llip.models.tuning import LoraMultiheadAttention, apply_tuning, merge_lora
from llip.run_configs import resolve
from llip.training.dist import World
from llip.training.optim import build_optimizer
from llip.training.trainer import train_step


def _batch(cfg, n=4):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=g)
    tokens = torch.randint(1, 49000, (n, cfg.context_length), generator=g)
    tokens[:, 5] = 49407
    return images, tokens


def _tuned(name, *overrides):
    cfg = resolve(name, list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model, apply_tuning(model, cfg)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lock_and_unlock_choose_the_trainable_parameters():
    _, model, report = _tuned("clip_tiny", "lock_image=true")
    trainable = _trainable(model)
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith("text") or n == "logit_scale"}
    assert report.trainable == sum(p.numel() for n, p in model.named_parameters()
                                   if n in trainable)
    assert report.line().startswith(f"trainable parameters: {report.trainable / 1e6:.2f}M of")
    assert "image tower locked" in report.line()

    _, model, _ = _tuned("clip_tiny", "lock_image=true", "lock_text=true", "unlock_last_n=1")
    assert _trainable(model) == {"logit_scale", "image_proj", "text_proj"} | {
        n for n, _ in model.named_parameters()
        if n.startswith(("visual.transformer.resblocks.1.", "text.transformer.resblocks.1.",
                         "visual.ln_post.", "text.ln_final."))}

    _, model, _ = _tuned("llip_tiny", "lock_text=true", "unlock_norms=true")
    text_trainable = {n for n in _trainable(model) if n.startswith("text")}
    assert text_trainable and all(".ln_" in n or "ln_final" in n for n in text_trainable)
    assert all(p.requires_grad for n, p in model.named_parameters()
               if n.startswith(("visual.", "head.")))  # Llip's head always trains

    _, model, _ = _tuned("siglip_tiny", "lock_image=true", "unlock_biases=true")
    assert {n for n in _trainable(model) if n.startswith("visual")} == {
        n for n, _ in model.named_parameters() if n.startswith("visual") and n.endswith("bias")}


def test_frozen_parameters_get_no_gradient_and_no_optimizer_state():
    cfg, model, _ = _tuned("llip_tiny", "lock_image=true", "lora_rank=2")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(model, cfg)
    train_step(model, optimizer, cfg, *_batch(cfg), cfg.lr, contextlib.nullcontext(), World())
    params = dict(model.named_parameters())
    assert frozen and all(params[n].grad is None and params[n] not in optimizer.state
                          and torch.equal(params[n], v) for n, v in frozen.items())
    assert all(params[n] in optimizer.state for n in before)
    changed = [n for n, v in before.items() if not torch.equal(params[n], v)]
    assert "visual.transformer.resblocks.0.attn.lora_in_b" in changed  # adapters learn
    assert "text.transformer.resblocks.0.attn.in_proj_weight" in changed  # text trains
    assert {"visual.prefix_tokens", "visual.prefix_pos"} <= set(changed)  # Llip's head trains


def test_locked_vision_tower_keeps_llips_mixture_tokens_trainable_unless_asked():
    """The K mixture tokens (made from a CLIP class token: K near-identical copies) are Llip's
    head: under a frozen ViT they still learn, and the report says so."""
    tokens = {"visual.prefix_tokens", "visual.prefix_pos"}
    _, model, report = _tuned("llip_tiny", "lock_image=true")
    assert {n for n in _trainable(model) if n.startswith("visual.")} == tokens
    assert "image tower locked except Llip's mixture tokens and their positions" in report.line()
    _, model, report = _tuned("llip_tiny", "lock_image=true", "lock_mixture_tokens=true")
    assert not any(n.startswith("visual.") for n in _trainable(model))
    assert "image tower locked (mixture tokens included)" in report.line()
    _, model, report = _tuned("clip_tiny", "lock_image=true")  # CLIP's class token: the tower's
    assert not any(n.startswith("visual.") for n in _trainable(model))
    for name, overrides in [("llip_tiny", []), ("clip_tiny", ["lock_image=true"])]:
        with pytest.raises(ConfigError, match="lock_mixture_tokens only applies to a llip config "
                                              "with lock_image=true"):
            resolve(name, [*overrides, "lock_mixture_tokens=true"])


def test_lora_adds_nothing_at_start_and_merges_to_the_same_model():
    cfg = resolve("clip_tiny", ["lock_image=true", "lock_text=true", "lora_rank=3"])
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    report = apply_tuning(model, cfg)
    assert "LoRA rank 3 on 4 attention layers" in report.line()
    attn = model.visual.transformer.resblocks[0].attn
    assert isinstance(attn, LoraMultiheadAttention) and attn.lora_in_b.shape == (3 * 64, 3)
    images, tokens = _batch(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(images, tokens), plain(images, tokens),
                                   atol=1e-6, rtol=0)
        for name, p in model.named_parameters():  # as if trained: nonzero updates
            if "lora_" in name:
                p.normal_(std=0.05)
        adapted = model(images, tokens)
        assert not torch.allclose(adapted[0], plain(images, tokens)[0], atol=1e-3)
    assert merge_lora(model) == 4
    assert not any("lora_" in n for n in model.state_dict())
    assert set(model.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(images, tokens), adapted, atol=1e-5, rtol=0)


def test_tuning_settings_need_a_locked_tower():
    for override, needle in [("unlock_norms=true", "unlock_norms only applies to a locked"),
                             ("lora_rank=4", "lora_rank only applies to a locked tower"),
                             ("unlock_last_n=-1", "unlock_last_n=-1 must be >= 0")]:
        with pytest.raises(ConfigError, match=needle):
            resolve("clip_tiny", [override])
    with pytest.raises(ConfigError, match="unlock_last_n=3 but the image tower has 2 blocks"):
        _tuned("clip_tiny", "lock_image=true", "unlock_last_n=3")
