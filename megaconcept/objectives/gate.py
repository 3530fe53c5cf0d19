"""The auxiliary gate term: pushes a gated decoder (sim_matrix) toward the path the researcher wants used."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..model.registry import RegistryError
from .base import OBJECTIVES, BuildContext, Objective, TermConfig


@dataclass
class GateConfig(TermConfig):
    """objective.terms.gate: binary cross-entropy of the decoder's gate against `target`."""

    target: float = 1.0
    """The gate value asked for: 1 = decode from the concepts, 0 = from the token path."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"target={self.target} must be in [0, 1]")


class GateObjective(Objective):
    """mean BCE(g, target) over the decoded positions: >= H(target) >= 0, so it is safe under any weighting.
    Without it (or at weight 0) the gate is free, and a decoder can learn to route around the concepts."""

    needs_aux = ("gate",)
    nonnegative = True

    def __init__(self, cfg: GateConfig, ctx: BuildContext) -> None:
        super().__init__()
        decoder = getattr(ctx.model, "decoder", None)
        if "gate" not in getattr(decoder, "aux_names", ()):
            raise RegistryError(f"objective.terms.gate needs a decoder with a gate (model.decoder=sim_matrix); "
                                f"{type(decoder).__name__} has none")
        self.target = cfg.target

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        gate = outputs.aux["gate"].float()  # (B, M)
        return {"loss": F.binary_cross_entropy(gate, torch.full_like(gate, self.target))}


OBJECTIVES.add("gate", GateObjective, GateConfig)
