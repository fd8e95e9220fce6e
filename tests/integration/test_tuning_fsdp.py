"""FSDP2 on 2 gloo ranks with a locked image tower, trainable LayerNorms and LoRA adapters:
frozen weights stay put, trainable ones move identically on both ranks, resuming from the DCP
checkpoint repeats the run exactly, and the checkpoint loads for inference with LoRA merged."""
import contextlib
import dataclasses
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from helpers import run_ranks
from llip.loading import load_model
from llip.models import build_model
from llip.models.tuning import apply_tuning
from llip.run_configs import resolve
from llip.run_dir import latest
from llip.training import checkpoint

WORLD, STEPS, GLOBAL_BATCH, SAVE_AT = 2, 3, 8, 2


def _cfg():
    cfg = resolve("llip_tiny", ["lock_image=true", "unlock_norms=true", "lora_rank=2"])
    return dataclasses.replace(cfg, lr=1e-3, warmup_steps=1, name="tuned")


def _batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
        tokens = torch.randint(1, 49000, (GLOBAL_BATCH, 16), generator=g)
        tokens[:, 5] = 49407
        yield images, tokens


def _full(model) -> dict:
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def _worker(rank, port, run_dir, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    from llip.training import dist as llip_dist
    from llip.training.model_setup import build_for_training
    from llip.training.optim import build_optimizer
    from llip.training.parallel import parallelize
    from llip.training.trainer import train_step
    world = llip_dist.setup()
    cfg = _cfg()
    local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)

    def step(model, optimizer, batch):
        train_step(model, optimizer, cfg, batch[0][local], batch[1][local], cfg.lr,
                   contextlib.nullcontext(), world)

    torch.manual_seed(0)
    model = parallelize(build_for_training(cfg, run_dir, rank == 0), cfg, world)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    start = _full(model)
    optimizer = build_optimizer(model, cfg)
    batches = list(_batches())
    for i, batch in enumerate(batches):
        step(model, optimizer, batch)
        if i + 1 == SAVE_AT:
            checkpoint.save(run_dir, cfg, SAVE_AT, model, optimizer, {"step": SAVE_AT},
                            is_main=rank == 0)
    end = _full(model)

    torch.manual_seed(123)  # a different fresh model: the checkpoint must restore everything
    resumed = parallelize(build_for_training(cfg, run_dir, False), cfg, world)
    resumed_optimizer = build_optimizer(resumed, cfg)
    assert checkpoint.load(latest(run_dir), resumed, resumed_optimizer)["step"] == 2
    for batch in batches[SAVE_AT:]:
        step(resumed, resumed_optimizer, batch)
    again = _full(resumed)
    queue.put({
        "rank": rank,
        "n_frozen": len(frozen),
        "frozen_moved": [n for n in frozen if not torch.equal(start[n], end[n])],
        "trainable_still": [n for n in end if n not in frozen and torch.equal(start[n], end[n])],
        "resume_diff": max((end[n] - again[n]).abs().max().item() for n in end),
        "checksum": sum(end[n].double().sum().item() * (i + 1) for i, n in enumerate(sorted(end))),
        "optimizer_params": sum(len(g["params"]) for g in optimizer.param_groups),
        "n_trainable": len(end) - len(frozen),
    })
    dist.destroy_process_group()


def test_fsdp2_with_frozen_parts_and_lora_trains_and_resumes_exactly(tmp_path):
    run_dir = tmp_path / "tuned"
    results = sorted(run_ranks(_worker, str(run_dir), world=WORLD, results=WORLD),
                     key=lambda r: r["rank"])
    for r in results:
        assert r["n_frozen"] > 0 and r["frozen_moved"] == [], r
        assert r["trainable_still"] == [], r
        assert r["optimizer_params"] == r["n_trainable"]
        assert r["resume_diff"] == 0.0, r
    assert results[0]["checksum"] == results[1]["checksum"]

    # Inference loading: the DCP checkpoint of 2 sharded ranks, LoRA folded into the weights.
    model, cfg, step = load_model(str(run_dir))
    assert step == SAVE_AT and not any("lora_" in n for n in model.state_dict())
    adapted = build_model(cfg)
    apply_tuning(adapted, cfg)
    state = {"model": adapted.state_dict()}
    dcp.load(state, checkpoint_id=latest(str(run_dir)))
    images, tokens = next(_batches())
    with torch.no_grad():
        torch.testing.assert_close(model.logits(*model(images, tokens)),
                                   adapted.eval().logits(*adapted(images, tokens)),
                                   atol=1e-5, rtol=0)
