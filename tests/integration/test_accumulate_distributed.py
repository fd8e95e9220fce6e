"""Two gloo ranks: exact gradient accumulation under FSDP2 (the big batch's gradient, one
gradient reduction per step), and a torchrun training run with accumulation and asynchronous
checkpoints on its own gloo group."""
import contextlib
import dataclasses
import json
import os

import torch
import torch.distributed as dist

from helpers import run_cli, run_ranks
from llip.loading import load_model
from llip.losses import contrastive_loss
from llip.models import build_model, transformer_blocks
from llip.run_configs import resolve
from llip.run_dir import checkpoints_dir, complete_checkpoints, metrics_path
from llip.training.accumulate import accumulate_gradients

WORLD, BATCH, VOCAB = 2, 8, 512


def _cfg(accum_steps):
    return dataclasses.replace(resolve("llip_tiny"), accum_steps=accum_steps, vocab_size=VOCAB)


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, VOCAB - 1, (BATCH, 16), generator=g)
    tokens[:, 5] = VOCAB - 1
    return images, tokens


def _worker(rank, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    from llip.training import dist as llip_dist
    from llip.training.parallel import parallelize
    world = llip_dist.setup()
    cfg = _cfg(accum_steps=2)
    torch.manual_seed(0)
    model = parallelize(build_model(cfg).double(), cfg, world)
    reductions = []
    real_reduce_scatter = dist.reduce_scatter_tensor

    def counted(*args, **kwargs):
        reductions.append(1)
        return real_reduce_scatter(*args, **kwargs)

    dist.reduce_scatter_tensor = counted  # FSDP2 reduces gradients with it
    images, tokens = _batch()
    mine = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    accumulate_gradients(model, cfg, images[mine], tokens[mine], contextlib.nullcontext(),
                         rank, llip_dist.gather_fn(world))
    grads = {n: p.grad.full_tensor().numpy() for n, p in model.named_parameters()}
    if rank == 0:
        queue.put((grads, len(reductions), len(transformer_blocks(model)) + 1))
    dist.destroy_process_group()


def test_fsdp2_accumulation_equals_one_process_big_batch_and_reduces_once(tmp_path):
    (grads, reductions, fsdp_groups), = run_ranks(_worker, world=WORLD)
    assert reductions == fsdp_groups  # one reduce-scatter per sharded group, not per micro-batch

    cfg = _cfg(accum_steps=1)
    torch.manual_seed(0)
    model = build_model(cfg).double()
    contrastive_loss(cfg.loss, model, *model(*_batch())).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(torch.from_numpy(grads[name]), p.grad, atol=1e-9, rtol=0,
                                   msg=name)


def test_torchrun_two_ranks_accumulate_and_save_asynchronously(digits, tmp_path):
    result = run_cli("-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "llip.main",
                     "llip_tiny", f"train_data={digits['train']}", f"logs={tmp_path}",
                     "name=run", "batch_size=16", "train_num_samples=64", "accum_steps=2",
                     "checkpoint_every=2", "log_every=1", "workers=1", "wandb_mode=disabled",
                     env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = str(tmp_path / "run")
    assert [os.path.basename(c) for c in complete_checkpoints(run_dir)] == [
        "step_00000002", "step_00000004"]
    assert not [d for d in os.listdir(checkpoints_dir(run_dir)) if d.endswith(".tmp")]
    rows = [json.loads(line) for line in open(metrics_path(run_dir))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["samples_per_s_per_rank"] * 2 == r["samples_per_s"] for r in rows)
    assert load_model(run_dir)[2] == 4  # the 2-rank checkpoint loads in one process
