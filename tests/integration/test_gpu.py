"""GPU checks: one FSDP2 bf16 step of llip_b16 and clip_b16 over nccl. Skipped without CUDA."""
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_fsdp2_bf16_step_on_one_gpu():
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
         "benchmarks/gpu_step.py", "--batch", "32", "--steps", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "_b16" in line]
    assert len(rows) == 2
    for row in rows:
        loss = float(row.split("|")[5])
        assert loss == loss and 0 < loss < 1e3  # finite
