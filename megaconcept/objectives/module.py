"""The trained module: the plain model plus the objectives. What DeepSpeed wraps (or a pipeline lays out).

    PretrainModule(batch) -> StepOutput(loss, metrics, outputs)

Its parameters are `model.*` (the canonical model, what the export keeps) and `objectives.*` (terms' and the
weighting's own state, checkpointed and resumed, dropped by the export on purpose). The trainer names no
objective: it feeds batches, sets the step, backpropagates `loss` and logs `metrics`.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from .compose import ObjectiveSet

MODEL_INPUTS = ("input_ids", "attention_mask", "positions", "decoder_input_ids", "noise_level")
"""Batch keys the model's forward takes; every other key is for the objectives."""


class StepOutput(NamedTuple):
    loss: Optional[torch.Tensor]
    """The weighted total (None when the forward was not scored)."""
    metrics: dict[str, torch.Tensor]
    """loss/<term>, weight/<term>, <term>/<stat>: detached scalars."""
    outputs: Any
    """The model's ConceptOutputs (concepts, states, aux)."""


class PretrainModule(nn.Module):
    def __init__(self, model: nn.Module, objectives: ObjectiveSet) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives

    def set_step(self, step: int) -> None:
        """The optimizer step the coming forwards belong to (weight warm-ups and schedules read it)."""
        self.objectives.step = step

    def forward(self, score: bool = True, probe: bool = False, **batch: torch.Tensor) -> StepOutput:
        """batch: input_ids (B, N), positions (B, M), labels (B, M), ...; score=False: outputs only; probe=True: the
        loss is the plain MLM cross-entropy at the labels whatever the run's terms (ObjectiveSet.probe_loss), inside
        the forward, where ZeRO-3 has the LM head gathered."""
        outputs = self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
        if probe:
            return StepOutput(self.objectives.probe_loss(outputs, batch), {}, outputs)
        if not score:
            return StepOutput(None, {}, outputs)
        loss, metrics = self.objectives(outputs, batch)
        return StepOutput(loss, metrics, outputs)


def mlm_module(model: nn.Module, ce_chunk_size: int = 4096) -> PretrainModule:
    """`model` with the default objective (MLM alone, fixed weight 1): what a run with no objective config trains."""
    from .base import BuildContext
    from .compose import build_objectives

    return PretrainModule(model, build_objectives({"mlm": {}}, "fixed", None,
                                                  BuildContext(model=model, ce_chunk_size=ce_chunk_size)))
