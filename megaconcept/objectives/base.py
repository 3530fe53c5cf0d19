"""The objective seam: a term turns the model's outputs and the batch into a loss and statistics.

    term(outputs: ConceptOutputs, batch: {key: tensor}) -> {"loss": scalar, <stat>: scalar, ...}

Terms are entries of :data:`OBJECTIVES` (config key `objective.terms`), each with a config dataclass
derived from :class:`TermConfig`, so a term's weight, its schedule (warm-up or cyclical) and own options are
checked together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..model.registry import Registry


@dataclass
class TermConfig:
    """Options every term has; a term's own config dataclass extends it."""

    weight: float = 1.0
    """Multiplier of the term in the total loss."""
    warmup_steps: int = 0
    """Linear warm-up of the weight: step s (0-based) uses weight * min(1, (s + 1) / warmup_steps); 0 = none."""
    schedule: str = "linear"
    """How the weight moves over optimizer steps (megaconcept.objectives.compose.WEIGHT_SCHEDULES): linear = the
    warm-up above (warmup_steps=0: constant); cyclical = Fu et al. 2019 (schedule_options n_cycles, ratio,
    cycle_steps), which takes no warmup_steps."""
    schedule_options: Optional[dict[str, Any]] = None
    """The schedule's own options (cyclical: n_cycles, ratio, cycle_steps); null = none."""


@dataclass(frozen=True)
class BuildContext:
    """What a term may need when it is built (narrow: no run config)."""

    model: nn.Module
    """The plain model (its LM head, its config)."""
    cross_entropy: str = "auto"
    """objective.cross_entropy: the LM-head kernel asked for."""
    ce_chunk_size: int = 4096
    cuda: bool = False
    tensor_parallel_size: int = 1
    tensor_group: Optional[Any] = None
    """megatron-core's tensor-parallel group (vocab-parallel loss) when tensor_parallel_size > 1."""
    data_group: Optional[Any] = None
    """The data-parallel group (ParallelContext.data_group; None = the whole world): what cross-sample terms
    gather over (parallel.collectives) and batch statistics are all-reduced over."""
    say: Callable[[str], None] = lambda _message: None
    """Where a term reports a choice it made (e.g. the CE kernel); printed by the main rank."""


class Objective(nn.Module):
    """Base of every term. Class attributes declare what the outside needs to know."""

    reads: tuple[str, ...] = ()
    """Batch keys the term reads (a pipeline sends exactly these to its last stage)."""
    stats: tuple[str, ...] = ()
    """Names of the statistics the term returns besides "loss" (logged as <term>/<stat>)."""
    needs_aux: tuple[str, ...] = ()
    """Auxiliary model outputs the term reads (ConceptOutputs.aux); the decoder must produce them (its aux_names)."""
    nonnegative: bool = True
    """The loss is >= 0 for every input. Uncertainty weighting refuses a term without this (a signed or
    unbounded-below term lets it drive the total to -inf and silence every other term)."""
    requires_masking: Optional[str] = None
    """The objective.masking.strategy whose batch keys the term reads (None = any); config validation checks it."""
    runs_in_pipeline: bool = True
    """The term only reads the model's outputs and the batch. False for a term that runs the encoder itself
    (e.g. on other views): a pipeline's last stage, where the terms run, holds no encoder."""

    @classmethod
    def nonnegative_for(cls, cfg: TermConfig) -> bool:
        """`nonnegative` for a term built with `cfg` (config validation asks before anything is built)."""
        return cls.nonnegative

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


OBJECTIVES: Registry[Callable[[Any, BuildContext], Objective]] = Registry("objective.terms")
"""term name -> constructor (config, BuildContext) -> Objective."""
