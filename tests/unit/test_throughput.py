"""Throughput accounting: FLOPs counted on the meta device at the real per-rank shapes (towers
linear in the local batch, the pairwise loss in B_local x B_global, Llip's head without its
recomputation), the peak table, and the data-wait fraction of a window."""
import dataclasses
import time

import pytest
import torch

from llip.run_configs import resolve
from llip.training.dist import World
from llip.training.throughput import Meter, peak_tflops, progress_text, step_flops


def _pair_and_text_flops(cfg) -> tuple[int, int]:
    """Forward + backward FLOPs per (image, text) pair and per text of the loss, by hand."""
    d = cfg.embed_dim
    if cfg.loss == "clip":  # two B_local x B_global x D products (image->text, text->image)
        return 3 * 2 * (2 * d), 0
    if cfg.loss == "siglip":
        return 3 * (2 * d), 0
    k, hk = cfg.mixture_tokens, cfg.cross_attn_heads * cfg.mixture_tokens
    # attention logits and the numerator (2KD each) and the HK x HK Gram form; W_o^T y per text
    return 3 * (2 * 2 * k * d + 2 * hk * hk), 3 * 2 * d * d


@pytest.mark.parametrize("loss", ["clip", "siglip", "llip"])
def test_loss_flops_are_counted_at_local_times_global_pairs(loss):
    cfg = resolve(f"{loss}_tiny")
    per_pair, per_text = _pair_and_text_flops(cfg)
    b = 4
    one_rank = step_flops(cfg, b, 1)
    for world in (2, 8):  # more ranks: the same towers, b x (world - 1) b more pairs
        extra = step_flops(cfg, b, world) - one_rank
        assert extra == b * b * (world - 1) * per_pair + b * (world - 1) * per_text
    # A bigger local batch: towers scale linearly, pairs quadratically.
    assert step_flops(cfg, 2 * b, 1) - 2 * one_rank == 2 * b * b * per_pair
    assert one_rank > 100 * b * b * per_pair  # the towers dominate at this batch


def test_flop_count_leaves_the_rng_and_the_config_alone():
    cfg = resolve("llip_tiny")
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    step_flops(dataclasses.replace(cfg, grad_checkpointing=True), 4, 2)
    assert torch.equal(torch.rand(1), expected)


def test_peak_table_and_override():
    cfg = resolve("clip_tiny")
    assert peak_tflops(cfg, torch.device("cpu")) is None  # no MFU on CPU ...
    assert peak_tflops(dataclasses.replace(cfg, peak_tflops=1.5), torch.device("cpu")) == 1.5


def test_meter_measures_data_wait_and_rates():
    cfg = dataclasses.replace(resolve("clip_tiny"), batch_size=8)
    meter = Meter(cfg, World(), flops_per_step=10 ** 9)

    def slow_batches():
        while True:
            time.sleep(0.03)
            yield "batch"

    batches = slow_batches()
    for _ in range(2):
        assert meter.next_batch(batches) == "batch"
        time.sleep(0.03)  # the "step"
    metrics, elapsed = meter.window(steps=2)
    assert 0.12 <= elapsed < 1.0
    assert 0.2 < metrics["data_wait"] < 0.8  # half the window was spent in next()
    assert metrics["samples_per_s_per_rank"] == pytest.approx(16 / elapsed)
    assert metrics["tflops_per_rank"] == pytest.approx(2e-3 / elapsed)
    assert metrics["mfu"] is None and metrics["peak_mem_gib"] > 0
    line = progress_text(metrics)
    assert "TFLOP/s/rank" in line and "data wait" in line and "MFU" not in line
    assert "MFU 50.0%" in progress_text({**metrics, "mfu": 0.5})
