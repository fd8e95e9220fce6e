"""GPU checks: FSDP2 bf16 steps of llip_b16 and clip_b16 over nccl, with MFU from the trainer's
FLOP counter. Skipped without CUDA (`bash benchmarks/gpu_all.sh` runs the full GPU set)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_fsdp2_bf16_step_on_one_gpu(tmp_path):
    out = tmp_path / "rows.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
         "benchmarks/gpu_step.py", "--batch", "32", "--steps", "2", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["config"] for r in rows] == ["clip_b16", "llip_b16"]
    for row in rows:
        assert 0 < row["loss"] < 1e3  # finite
        assert row["samples_per_s"] > 0 and row["tflops"] > 0 and row["peak_mem_gib"] > 0
        if row["mfu"] is not None:  # a GPU of the peak table
            assert 0 < row["mfu"] < 1
