"""Exact gradient accumulation: 4 micro-batches give the gradient of the one big batch for all
three contrastive losses (float64, one process), where averaging micro-batch losses does not."""
import contextlib
import dataclasses

import pytest
import torch

from llip.losses import contrastive_loss
from llip.models import build_model
from llip.run_configs import resolve
from llip.training.accumulate import accumulate_gradients
from llip.training.dist import World
from llip.training.optim import build_optimizer
from llip.training.trainer import train_step

BATCH, ACCUM = 8, 4
VOCAB = 512  # a small embedding table keeps the test fast


def _model_and_batch(loss: str, accum_steps: int):
    cfg = dataclasses.replace(resolve(f"{loss}_tiny"), accum_steps=accum_steps,
                              vocab_size=VOCAB)
    torch.manual_seed(0)
    model = build_model(cfg).double()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, cfg.image_size, cfg.image_size, generator=g,
                         dtype=torch.float64)
    tokens = torch.randint(1, VOCAB - 1, (BATCH, cfg.context_length), generator=g)
    tokens[:, 5] = VOCAB - 1  # end of text: the highest id
    return cfg, model, images, tokens


def _grads(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _big_batch_grads(loss: str):
    cfg, model, images, tokens = _model_and_batch(loss, 1)
    image_emb, text_emb = model(images, tokens)
    value = contrastive_loss(cfg.loss, model, image_emb, text_emb)
    value.backward()
    return value.item(), _grads(model)


@pytest.mark.parametrize("loss", ["clip", "siglip", "llip"])
def test_accumulated_gradient_equals_big_batch_gradient(loss):
    ref_loss, ref = _big_batch_grads(loss)
    cfg, model, images, tokens = _model_and_batch(loss, ACCUM)
    value = accumulate_gradients(model, cfg, images, tokens, contextlib.nullcontext())
    assert abs(value.item() - ref_loss) < 1e-9
    got = _grads(model)
    assert got.keys() == ref.keys()
    for name in ref:  # every parameter, the loss's own (scale, bias, Llip's W_o) included
        torch.testing.assert_close(got[name], ref[name], atol=1e-9, rtol=0, msg=name)

    # The test can tell: averaging the losses of micro-batches is a different objective.
    _, naive_model, _, _ = _model_and_batch(loss, ACCUM)
    for x, t in zip(images.split(BATCH // ACCUM), tokens.split(BATCH // ACCUM)):
        (contrastive_loss(cfg.loss, naive_model, *naive_model(x, t)) / ACCUM).backward()
    naive = _grads(naive_model)
    assert max((naive[n] - ref[n]).abs().max().item() for n in ref) > 1e-5


def test_train_step_with_accumulation_takes_the_big_batch_step():
    """Through train_step (grad clip, AdamW): the same update with and without accumulation."""
    states = []
    for accum in (1, ACCUM):
        cfg, model, images, tokens = _model_and_batch("llip", accum)
        optimizer = build_optimizer(model, cfg)
        for _ in range(2):
            train_step(model, optimizer, cfg, images, tokens, 1e-3, contextlib.nullcontext(),
                       World())
        states.append(model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, atol=1e-9, rtol=0, msg=name)
