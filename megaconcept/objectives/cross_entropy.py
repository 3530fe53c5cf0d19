"""LM-head cross-entropy implementations (registry keyed by `objective.cross_entropy`).

All take the decoded states, never full-sequence logits: (states (T, D), weight (V, D), bias (V,), labels (T,),
chunk_size[, row_weights (T,), normalizer]) -> mean loss (weighted: sum(w * CE) / normalizer; liger takes no
row weights, see WEIGHTED). Fused GPU kernels are used when importable; the sparse chunked path runs anywhere;
under tensor parallelism the vocab-parallel chunked path splits the vocabulary across the group.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..model.lm_loss import CrossEntropyFn, chunked_cross_entropy
from ..model.registry import Registry


def liger_cross_entropy(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        labels: torch.Tensor, chunk_size: int = 4096, row_weights: Optional[torch.Tensor] = None,
                        normalizer: Any = None) -> torch.Tensor:
    """Liger's fused linear + cross-entropy (Triton): chunks internally and writes gradients in forward. It has
    no per-row weights, so weighted terms never select it (select_cross_entropy(weighted=True))."""
    if row_weights is not None or normalizer is not None:
        raise ValueError("the liger kernel takes no per-row weights; use objective.cross_entropy=chunked or apex")
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(reduction="mean")(weight, states, labels, bias)


def _weighted_sum(rows: torch.Tensor, row_weights: Optional[torch.Tensor]) -> torch.Tensor:
    return rows.sum() if row_weights is None else (rows * row_weights).sum()


def _apex_chunk_loss(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     labels: torch.Tensor, row_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    from apex.contrib.xentropy import SoftmaxCrossEntropyLoss

    logits = F.linear(states, weight, bias)  # stays in the compute dtype: the kernel accumulates in fp32
    # (logits, labels, smoothing, padding_idx, half_to_float); -100 never occurs as a label here.
    return _weighted_sum(SoftmaxCrossEntropyLoss.apply(logits, labels, 0.0, -100, True), row_weights)


def apex_cross_entropy(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       labels: torch.Tensor, chunk_size: int = 4096, row_weights: Optional[torch.Tensor] = None,
                       normalizer: Any = None) -> torch.Tensor:
    """apex's fused softmax cross-entropy kernel inside the sparse chunked loop."""
    return chunked_cross_entropy(states, weight, bias, labels, chunk_size, chunk_loss=_apex_chunk_loss,
                                 row_weights=row_weights, normalizer=normalizer)


def vocab_parallel_cross_entropy_sum(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                     labels: torch.Tensor, row_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One chunk's summed CE with this rank's vocabulary rows: states (T, D) replicated, weight (V/TP, D)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    logits = F.linear(states, weight, bias).float()  # (T, V/TP), fp32 for a stable log-softmax
    return _weighted_sum(vocab_parallel_cross_entropy(logits, labels), row_weights)


def vocab_parallel_chunked_cross_entropy(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                         labels: torch.Tensor, chunk_size: int = 4096, group: Any = None,
                                         row_weights: Optional[torch.Tensor] = None, normalizer: Any = None) -> torch.Tensor:
    """Sparse, chunked CE over a vocabulary split across the tensor-parallel group (never gathers logits)."""
    from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

    # Identity forward; backward sums the states' gradient over the ranks' vocabulary slices.
    states = copy_to_tensor_model_parallel_region(states, group=group)
    return chunked_cross_entropy(states, weight, bias, labels, chunk_size, chunk_loss=vocab_parallel_cross_entropy_sum,
                                 row_weights=row_weights, normalizer=normalizer)


CROSS_ENTROPY: Registry[CrossEntropyFn] = Registry("objective.cross_entropy")
CROSS_ENTROPY.add("chunked", chunked_cross_entropy)
CROSS_ENTROPY.add("liger", liger_cross_entropy)
CROSS_ENTROPY.add("apex", apex_cross_entropy)
CHOICES = ("auto", *CROSS_ENTROPY.keys())
"""Values objective.cross_entropy accepts."""
# What each fused kernel needs: its package, and a CUDA device to run on.
_NEEDS: dict[str, str] = {"liger": "liger_kernel", "apex": "apex.contrib.xentropy"}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def available(name: str, cuda: bool) -> bool:
    return name == "chunked" or (cuda and _importable(_NEEDS[name]))


WEIGHTED = ("chunked", "apex")
"""Kernels that take per-row weights (terms with unequal weights per target, e.g. diffusion's 1/t)."""


def select_cross_entropy(name: str, cuda: bool, tensor_parallel: bool,
                         importable: Callable[[str, bool], bool] = available, weighted: bool = False) -> str:
    """The implementation to use for `objective.cross_entropy=name` on this machine (auto: fastest present;
    weighted: among the kernels that take per-row weights)."""
    if weighted and name not in ("auto", *WEIGHTED):
        raise ValueError(f"objective.cross_entropy={name} takes no per-row weights, which this objective needs; "
                         f"use auto or one of {', '.join(WEIGHTED)}")
    if tensor_parallel:
        if name not in ("auto", "chunked"):
            raise ValueError(f"objective.cross_entropy={name} cannot split the vocabulary across tensor-parallel "
                             f"ranks; use auto or chunked (the vocab-parallel chunked path)")
        return "vocab_parallel"
    if name == "auto":
        order = WEIGHTED[::-1] if weighted else ("liger", "apex", "chunked")
        return next(n for n in order if importable(n, cuda))
    if name not in CROSS_ENTROPY:
        raise ValueError(f"objective.cross_entropy={name!r} is unknown; valid: {', '.join(CHOICES)}")
    if not importable(name, cuda):
        need = "a CUDA device and " if not cuda else ""
        raise ValueError(f"objective.cross_entropy={name} needs {need}the {_NEEDS[name]} package; "
                         f"use auto or chunked here")
    return name
