"""Cross-rank operations objectives use, each with the gradient semantics spelled out and tested.

`gather_with_grad` is the one way to gather a tensor over the data-parallel group inside a loss. Its backward
sums every rank's gradient for each slice (all-reduce, then this rank's slice: VICReg's FullGatherLayer):
together with the data-parallel gradient averaging DeepSpeed applies, each parameter gets exactly the gradient
of the single-process loss over the global batch. Hand-written because torch's autograd all-gather
(torch.distributed.nn) fails in backward on a subgroup over gloo (it passes group ranks where global ranks
are expected: "Global rank 1 is not part of group"), and data groups are subgroups under tensor parallelism. The widespread alternative (plain all_gather, then put the local
slice back to keep its graph) scales that gradient by 1/world size, which silently down-weights the term in a
multi-term sum (and with a local-rows loss is biased, not just scaled).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist


def group_size(group: Optional[Any]) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def group_rank(group: Optional[Any]) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def gather_with_grad(tensor: torch.Tensor, group: Optional[Any] = None) -> torch.Tensor:
    """(B, ...) on each rank of `group` -> (W*B, ...) in rank order, differentiable w.r.t. every slice.

    Every rank's B must be equal. This rank's rows sit at [group_rank * B, (group_rank + 1) * B).
    A world of one returns `tensor` itself.
    """
    if group_size(group) == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, group)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Optional[Any]) -> torch.Tensor:
        ctx.group, ctx.rows = group, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(group_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)  # every rank's loss depends on every slice
        start = group_rank(ctx.group) * ctx.rows
        return grad[start:start + ctx.rows], None
