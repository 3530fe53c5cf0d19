"""The one place that starts torch.distributed (through DeepSpeed) and describes the process layout."""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .layout import Layout
from .slurm import torch_env_from_slurm


@dataclass(frozen=True)
class ParallelContext:
    """Who this process is. Passed explicitly; nothing reads global distributed state behind it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str
    tensor_parallel_size: int = 1
    tensor_parallel_rank: int = 0
    pipeline_parallel_size: int = 1
    pipeline_rank: int = 0
    """This process's pipeline stage."""
    data_parallel_size: int = 0
    """0 = every process is a data-parallel replica (no model parallelism)."""
    data_parallel_rank: int = -1
    """-1 = the global rank (no model parallelism)."""
    tensor_group: Optional[Any] = None
    """megatron-core's tensor-parallel process group when tensor_parallel_size > 1."""
    data_group: Optional[Any] = None
    """The ranks holding the same model shard (this rank's data-parallel replicas); None = the whole world.
    Cross-sample terms (contrastive, batch-axis regularizers) gather over it (parallel.collectives)."""
    pipeline_group: Optional[Any] = None
    """The ranks of this rank's pipeline (one per stage); None without pipeline parallelism."""
    mpu: Optional[Any] = None
    """Group accessors DeepSpeed takes as `mpu` when model parallelism is on."""

    def __post_init__(self) -> None:
        if self.data_parallel_size == 0:
            object.__setattr__(self, "data_parallel_size", self.world_size)
        if self.data_parallel_rank < 0:
            object.__setattr__(self, "data_parallel_rank", self.rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_launch_env() -> None:
    """`srun python launchers/pretrain.py` takes its ranks from SLURM; a plain `python launchers/pretrain.py`
    runs as a world of one, like the launchers would."""
    os.environ.update(torch_env_from_slurm(os.environ))
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def prepare_cpu_deepspeed() -> None:
    """On a machine without CUDA: CPU accelerator over gloo, with no JIT-compiled ops.

    DeepSpeed otherwise compiles a shared-memory collective (~50 s) at init; gloo does the same job here.
    Must run before `deepspeed` is first imported.
    """
    if torch.cuda.is_available():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def launch_world_size() -> int:
    """Processes in this launch, read before any process group exists (1 for a plain `python` run)."""
    _ensure_launch_env()
    return int(os.environ["WORLD_SIZE"])


def init_distributed(layout: Optional[Layout] = None) -> ParallelContext:
    """Start the process group for deepspeed/torchrun/srun launches (or a world of one), and megatron-core's
    tensor-parallel groups when the layout asks for them."""
    _ensure_launch_env()
    prepare_cpu_deepspeed()
    # DeepSpeed still calls torch's renamed collectives; the rename warning repeats every step otherwise.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    import deepspeed

    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # Processes on one host share its cores; oversubscription makes every rank slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    layout = layout or Layout(world)
    pipe, data, tensor = layout.coordinates(rank)
    coords = {"tensor_parallel_size": layout.tensor, "tensor_parallel_rank": tensor,
              "pipeline_parallel_size": layout.pipeline, "pipeline_rank": pipe,
              "data_parallel_size": layout.data, "data_parallel_rank": data}
    groups: dict[str, Any] = {}
    if layout.tensor > 1:
        from .megatron import init_tensor_parallel

        groups = init_tensor_parallel(layout.tensor, layout.pipeline, coords)
    groups.update(layout_groups(layout, rank))
    return ParallelContext(rank, world, local_rank, local_world, device, backend, **coords, **groups)


def layout_groups(layout: Layout, rank: int) -> dict[str, Any]:
    """This rank's data-parallel and pipeline groups. Every rank creates every group, in the same order (a
    torch.distributed requirement); a pure data-parallel world needs none (the world group is the data group)."""
    if layout.tensor == 1 and layout.pipeline == 1:
        return {}
    mine: dict[str, Any] = {}
    by_data: dict[tuple[int, int], list[int]] = {}
    by_pipe: dict[tuple[int, int], list[int]] = {}
    for r in range(layout.world_size):
        pipe, data, tensor = layout.coordinates(r)
        by_data.setdefault((pipe, tensor), []).append(r)
        by_pipe.setdefault((data, tensor), []).append(r)
    for _, ranks in sorted(by_data.items()):
        group = torch.distributed.new_group(ranks)
        if rank in ranks:
            mine["data_group"] = group
    if layout.pipeline > 1:
        for _, ranks in sorted(by_pipe.items()):
            group = torch.distributed.new_group(ranks)
            if rank in ranks:
                mine["pipeline_group"] = group
    return mine


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def shutdown() -> None:
    from .megatron import destroy_tensor_parallel

    destroy_tensor_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
