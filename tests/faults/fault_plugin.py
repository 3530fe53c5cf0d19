"""Fault injection for the tests, loaded with `launchers/pretrain.py --plugin tests.faults.fault_plugin`.

The objective `faulty` is the MLM term (same loss, same gradients) that, counting its training forwards from 0
(one per optimizer step with train.grad_accum_steps=1):
- returns NaN from forward `nan_start` for `nan_count` forwards. The gradients stay finite (a NaN constant is
  added), the case the trainer must still refuse to apply;
- sends its own process SIGTERM during forward `signal_at`, as a preemption would (deterministic timing).
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from megaconcept.objectives.base import OBJECTIVES
from megaconcept.objectives.mlm import MLMConfig, MLMObjective


@dataclass
class FaultyConfig(MLMConfig):
    nan_start: int = -1
    """First training forward with a NaN loss; -1 = never."""
    nan_count: int = 1_000_000
    """Forwards with a NaN loss from nan_start on."""
    signal_at: int = -1
    """The training forward during which the process gets SIGTERM; -1 = never."""


class Faulty(MLMObjective):
    def __init__(self, cfg: FaultyConfig, ctx) -> None:
        super().__init__(cfg, ctx)
        self.cfg, self.forwards = cfg, 0

    def forward(self, outputs, batch):
        result = super().forward(outputs, batch)
        if not self.training:
            return result
        if 0 <= self.cfg.nan_start <= self.forwards < self.cfg.nan_start + self.cfg.nan_count:
            result["loss"] = result["loss"] + float("nan")
        if self.forwards == self.cfg.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.forwards += 1
        return result


OBJECTIVES.add("faulty", Faulty, FaultyConfig)
