"""The one place parallelism is applied to the trained module, in a fixed order (torchtitan's parallelize_*):

    tensor parallel (the components' declared plans) -> activation checkpointing -> compile
    -> ZeRO-3 external-parameter registration -> pipeline layout

Each step works on the plain module from outside; parameter names never change (no wrapper prefixes).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..objectives.module import PretrainModule
from .distributed import ParallelContext
from .pipeline import build_pipeline
from .tensor import apply_tensor_parallel
from .zero import register_tied_head


@dataclass(frozen=True)
class ParallelizeOptions:
    activation_checkpointing: bool = False
    compile: bool = False
    zero_stage: int = 0


def per_layer_options(model: nn.Module, activation_checkpointing: bool, compile: bool) -> int:
    """Activation checkpointing and/or torch.compile on each repeated layer the encoder declares; returns the count.

    Applied per layer by replacing the layer's forward (no wrapper module), so parameter names stay
    canonical: no `_orig_mod.` or checkpoint-wrapper prefixes reach checkpoints.
    """
    layers = model.encoder.repeated_layers()
    for layer in layers:
        forward = torch.compile(layer.forward) if compile else layer.forward
        if activation_checkpointing:
            # Non-reentrant: works with ZeRO-3's gather hooks and with inputs that need no grad; the
            # compiled forward (if any) is what gets recomputed.
            forward = partial(checkpoint, forward, use_reentrant=False)
        layer.forward = forward
    return len(layers)


def parallelize(module: PretrainModule, ctx: ParallelContext, options: ParallelizeOptions) -> nn.Module:
    """`module` made ready for this rank; returns what DeepSpeed wraps (the module, or its pipeline stage)."""
    apply_tensor_parallel(module.model, ctx)
    per_layer_options(module.model, options.activation_checkpointing, options.compile)
    register_tied_head(module, options.zero_stage)
    if ctx.pipeline_parallel_size > 1:
        return build_pipeline(module, ctx)
    return module
