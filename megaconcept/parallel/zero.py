"""ZeRO-specific wiring applied to a plain model from outside."""
from __future__ import annotations

from torch import nn


def register_tied_head(model: nn.Module, zero_stage: int) -> None:
    """Under ZeRO-3 a parameter is gathered only while its owning module runs; the tied LM head reads
    the token embedding from the top-level forward, so DeepSpeed must know to gather it there too."""
    if zero_stage != 3 or getattr(model, "lm_head", None) is not None:
        return
    import deepspeed

    deepspeed.zero.register_external_parameter(model, model.encoder.token_embed.weight)
