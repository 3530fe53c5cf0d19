"""ZeRO-specific wiring applied to the trained module from outside."""
from __future__ import annotations

from torch import nn


def register_tied_head(module: nn.Module, zero_stage: int) -> None:
    """Under ZeRO-3 a parameter is gathered only while its owning module runs; a tied LM head reads the token
    embedding from the objectives (outside the embedding's forward), so DeepSpeed must gather it for the whole
    forward of `module` (the trained module, or a bare model)."""
    model = getattr(module, "model", module)
    if zero_stage != 3 or getattr(model, "lm_head", None) is not None:
        return
    import deepspeed

    deepspeed.zero.register_external_parameter(module, model.encoder.token_embed.weight)
