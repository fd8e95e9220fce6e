"""Process-group setup and collectives: the only module that talks to torch.distributed.

One code path: a lone process, torchrun (RANK/WORLD_SIZE/MASTER_* in the env), or srun under
SLURM (submitit's TorchDistributedEnvironment derives the same variables from SLURM's).
"""
import dataclasses
import datetime
import os

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False  # a process group exists (torchrun / SLURM, even with one rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _export_from_submitit_or_slurm() -> None:
    """Under submitit (SLURM or its local executor) or a bare `srun`, let submitit derive
    RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the job's variables."""
    if "RANK" in os.environ:  # torchrun already set them
        return
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
            return
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"  # srun without submitit: same variables
    import submitit
    env = submitit.helpers.TorchDistributedEnvironment()
    if env.world_size > 1:
        env.export(set_cuda_visible_devices=False)


PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)  # a first checkpoint load can be slow


def setup() -> World:
    _export_from_submitit_or_slurm()
    if "RANK" not in os.environ:
        return World(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        _share_cpu_threads()
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    return World(rank=rank, local_rank=local_rank, size=size, device=device, distributed=True)


def _share_cpu_threads() -> None:
    """Ranks sharing a CPU machine would each start one thread per core and thrash; give each
    its share unless the user (or torchrun, via OMP_NUM_THREADS) already chose."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
        cpus = max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(int(cpus))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def new_cpu_group():
    """A new gloo group of all ranks (a collective), or None without a process group."""
    return dist.new_group(backend="gloo") if dist.is_initialized() else None


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank along dim 0; backward sums each rank's gradient slices."""
    return funcol.all_gather_tensor_autograd(x.contiguous(), gather_dim=0, group=dist.group.WORLD)


def gather_fn(world: World):
    return gather_with_grad if world.size > 1 else None


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.AVG if values.is_cuda else dist.ReduceOp.SUM)
        if not values.is_cuda:  # gloo has no AVG
            values /= dist.get_world_size()
    return values


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_gather(values: torch.Tensor) -> torch.Tensor:
    """Every rank's `values` (same shape everywhere), stacked along a new dim 0 in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values[None]
    out = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(out, values.contiguous())
    return torch.stack(out)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def rank_and_size() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_object(obj, group=None) -> list:
    """Every rank's picklable `obj`, in rank order (a collective: all ranks call it). Used for
    small values our own ranks produced (file digests, verdicts), never for outside data."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj, group=group)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
