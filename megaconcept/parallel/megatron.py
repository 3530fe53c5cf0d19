"""megatron-core process groups, and the `mpu` view of them that DeepSpeed expects."""
from __future__ import annotations

import sys
from typing import Any

import torch


class MegatronMPU:
    """DeepSpeed's `mpu` interface over megatron-core's parallel_state.

    DeepSpeed asks for "model parallel" groups (it means tensor parallel here: pipelines are DeepSpeed's own),
    names megatron-core does not define; everything else is forwarded.
    """

    def __init__(self) -> None:
        from megatron.core import parallel_state

        self._ps = parallel_state

    def get_model_parallel_group(self) -> Any:
        return self._ps.get_tensor_model_parallel_group()

    def get_model_parallel_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self._ps.get_tensor_model_parallel_world_size()

    def __getattr__(self, name: str) -> Any:
        # get_data_parallel_*, get_tensor_model_parallel_*, get_pipeline_model_parallel_* come straight through.
        if name.startswith("get_"):
            return getattr(self._ps, name)
        raise AttributeError(name)


def init_tensor_parallel(tensor: int, pipeline: int, coords: dict[str, int]) -> dict[str, Any]:
    """Create megatron-core's groups (tensor ranks consecutive, then data, then pipeline) and check they place
    this rank where the layout does (DeepSpeed's pipeline topology assumes the same order)."""
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=tensor, pipeline_model_parallel_size=pipeline)
    theirs = {"tensor_parallel_rank": ps.get_tensor_model_parallel_rank(),
              "pipeline_rank": ps.get_pipeline_model_parallel_rank(),
              "data_parallel_rank": ps.get_data_parallel_rank(), "data_parallel_size": ps.get_data_parallel_world_size()}
    if any(coords[k] != v for k, v in theirs.items()):
        raise RuntimeError(f"megatron-core placed this rank at {theirs}, the layout at {coords}")
    return {"tensor_group": ps.get_tensor_model_parallel_group(), "mpu": MegatronMPU()}


def destroy_tensor_parallel() -> None:
    # Runs without tensor parallelism never import megatron-core; nothing to tear down then.
    if not torch.distributed.is_initialized() or "megatron.core.parallel_state" not in sys.modules:
        return
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
