"""One process's share of an eval, and how the shares merge.

In a sweep a process scores a whole dataset (`LOCAL`). Inside distributed training every rank
scores its own share of the images (the readers split samples by rank and DataLoader worker)
and the accumulators merge across ranks: `sum` adds a tensor over all shares, `gather` stacks
every share's tensor. The training code provides those two (llip.training.evaluate); this
package never touches torch.distributed.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class Shard:
    rank: int = 0
    size: int = 1
    sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t[None]  # -> (size, ...)


LOCAL = Shard()


def lockstep(batches, shard: Shard, dummy_images: Callable[[], torch.Tensor], device):
    """This share's (images, targets) batches. With several shares every process must call the
    model equally often (a sharded model's forward is a collective): a share that has run out
    yields (dummy image, None) until every share is done."""
    if shard.size == 1:
        yield from batches
        return
    batches = iter(batches)
    while True:
        item = next(batches, None)
        more = shard.sum(torch.tensor([float(item is not None)], device=device))
        if more.item() == 0:
            return
        yield item if item is not None else (dummy_images(), None)
