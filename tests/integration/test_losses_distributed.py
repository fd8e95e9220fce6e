"""Distributed losses equal the single-process full-batch loss and gradients (2 gloo ranks)."""
import dataclasses
import os

import pytest
import torch
import torch.distributed as dist

from helpers import run_ranks
from llip.losses import contrastive_loss
from llip.models.llip import LlipHead
from llip.run_configs import resolve

GLOBAL_BATCH, WORLD = 8, 2


class Towers(torch.nn.Module):
    """Linear stand-ins for the towers, in float64: the losses see real parameters and graphs."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        cfg = dataclasses.replace(resolve(f"{kind}_tiny"), vision_width=12, text_width=10,
                                  embed_dim=8, mixture_tokens=3, cross_attn_heads=2, llip_chunk=3)
        out = 3 * 12 if kind == "llip" else 8
        self.image = torch.nn.Linear(6, out)
        self.text = torch.nn.Linear(5, 10 if kind == "llip" else 8)
        if kind == "llip":
            self.head = LlipHead(cfg)
        else:
            self.logit_scale = torch.nn.Parameter(torch.full((1,), cfg.init_logit_scale))
            if kind == "siglip":
                self.logit_bias = torch.nn.Parameter(torch.full((1,), -2.0))

    def forward(self, x, t):
        if self.kind == "llip":
            return (self.head.encode_image(self.image(x).view(len(x), 3, 12)),
                    self.head.encode_text(self.text(t)))
        n = torch.nn.functional.normalize
        return n(self.image(x), dim=-1), n(self.text(t), dim=-1)

    def logits(self, image_emb, text_emb):  # used by the llip loss
        return self.head.logit_scale.exp() * self.head.cosines(image_emb, text_emb) \
            + self.head.logit_bias


def _setup(kind):
    torch.manual_seed(0)
    model = Towers(kind).double()
    if kind == "llip":  # pull the bias off -10 so that every pair contributes visibly
        torch.nn.init.constant_(model.head.logit_bias, -1.0)
    x = torch.randn(GLOBAL_BATCH, 6, dtype=torch.float64)
    t = torch.randn(GLOBAL_BATCH, 5, dtype=torch.float64)
    return model, x, t


def _reference(kind):
    model, x, t = _setup(kind)
    loss = contrastive_loss(kind, model, *model(x, t))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank, port, kind, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from llip.training.dist import all_reduce_mean, gather_with_grad
    model, x, t = _setup(kind)
    local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
    loss = contrastive_loss(kind, model, *model(x[local], t[local]), rank=rank,
                            gather=gather_with_grad)
    loss.backward()
    mean_loss = all_reduce_mean(loss.detach().reshape(1)).item()
    # What DDP / FSDP do with gradients: average over ranks.
    grads = {n: all_reduce_mean(p.grad) for n, p in model.named_parameters()}
    if rank == 0:  # numpy pickles by value: no shared fd that dies with this process
        queue.put((mean_loss, {n: g.numpy() for n, g in grads.items()}))
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["clip", "siglip", "llip"])
def test_two_ranks_equal_single_process(kind):
    ref_loss, ref_grads = _reference(kind)
    (loss, grads), = run_ranks(_worker, kind, world=WORLD, timeout=120)
    assert abs(loss - ref_loss) < 1e-5, (loss, ref_loss)
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        g = torch.from_numpy(g)
        assert ref_grads[name].abs().sum() > 0, f"{name} got no gradient: the test is vacuous"
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=0, msg=name)

