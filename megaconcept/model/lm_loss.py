"""Sparse, chunked LM-head cross-entropy: logits only at decoded positions, one chunk at a time.

Lives with the model (not in objectives/) because the LM head owns it; training only (an export does not ship it).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


ChunkLoss = Callable[..., torch.Tensor]
"""(states (T, D), weight (V, D), bias (V,) | None, labels (T,)[, row_weights (T,) | None]) -> summed loss over
the T positions (each row's loss times its weight when row_weights is given)."""
CrossEntropyFn = Callable[..., torch.Tensor]
"""Signature of :func:`chunked_cross_entropy`; tensor parallelism and fused kernels swap in their own."""


def linear_cross_entropy_sum(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
                             row_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    logits = F.linear(states, weight, bias).float()  # (chunk, V), fp32 for a stable log-softmax
    if row_weights is None:
        return F.cross_entropy(logits, labels, reduction="sum")
    return (F.cross_entropy(logits, labels, reduction="none") * row_weights).sum()


def chunked_cross_entropy(
    states: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    chunk_size: int = 4096,
    chunk_loss: ChunkLoss = linear_cross_entropy_sum,
    row_weights: Optional[torch.Tensor] = None,
    normalizer: Optional[torch.Tensor | float] = None,
) -> torch.Tensor:
    """CE of `states @ weight.T + bias` against labels without materializing all logits.

    states (T, D) decoded positions only, weight (V, D), labels (T,) -> scalar: the mean over the T rows, or
    with row_weights (T,) sum(w_i * CE_i) / normalizer (default T). Rows of weight 0 (padding of samples with
    fewer targets) then count for nothing, instead of diluting the mean as a plain mean over rows would.
    Each chunk's logits are recomputed in backward (activation checkpointing), so at most one
    (chunk_size, V) block is alive at a time in forward and backward. `chunk_loss` computes one chunk
    (a vocab-parallel or fused kernel may replace the plain one).
    """
    if states.shape[0] == 0:
        raise ValueError("chunked_cross_entropy got no positions to score")
    total = states.new_zeros((), dtype=torch.float32)
    for start in range(0, states.shape[0], chunk_size):
        end = start + chunk_size
        args = (states[start:end], weight, bias, labels[start:end])
        if row_weights is not None:
            args = (*args, row_weights[start:end])
        if torch.is_grad_enabled():
            total = total + checkpoint(chunk_loss, *args, use_reentrant=False)
        else:
            total = total + chunk_loss(*args)
    return total / (states.shape[0] if normalizer is None else normalizer)
