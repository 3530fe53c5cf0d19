"""Non-finite steps and loss spikes.

A step whose loss or gradient norm is not finite makes no update: the objectives turn a non-finite loss into
non-finite gradients (megaconcept.objectives.compose), and DeepSpeed's ZeRO optimizers skip a step whose
gradient norm is not finite, on every rank alike (the norm is global). The guard reads that verdict from the
engine, counts and logs each skip, and stops the run after `guard.max_consecutive_skips` in a row or
`guard.max_total_skips` in all. While steps are being skipped no checkpoint is written, so the newest
checkpoint is always one whose last step updated the weights with finite numbers.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Optional

from ..config.schema import GuardSection


class DivergedError(RuntimeError):
    """Too many non-finite steps: the run stops (exit status 3) with its last healthy checkpoint kept."""


class StepGuard:
    def __init__(self, cfg: GuardSection, total_skips: int = 0) -> None:
        self.cfg = cfg
        self.total = total_skips
        """Skips over the whole run (resumed from the checkpoint's counters)."""
        self.in_a_row = 0
        self.first_skipped: Optional[int] = None
        self._losses: deque[float] = deque(maxlen=max(1, cfg.spike_window))

    @property
    def skipping(self) -> bool:
        """The latest step was skipped: checkpoints wait for a step that updates the weights."""
        return self.in_a_row > 0

    def after_step(self, step: int, applied: bool, loss: float, grad_norm: Optional[float]) -> Optional[dict[str, Any]]:
        """Account for optimizer step `step` (1-based, done); the warning record of a skip, else None.

        `applied` is the engine's word that the weights changed. A non-finite loss the optimizer applied anyway
        means this DeepSpeed configuration does not skip such steps: refused rather than trained on."""
        finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
        if applied and finite:
            self.in_a_row, self.first_skipped = 0, None
            return None
        if applied:
            raise DivergedError(f"step {step}: the loss ({loss}) or gradient norm ({grad_norm}) is not finite but "
                                "the optimizer applied the update; this DeepSpeed configuration does not skip "
                                "overflowing steps (for bf16 set \"bf16\": {\"check_grad_overflow\": true})")
        self.total += 1
        self.in_a_row += 1
        self.first_skipped = self.first_skipped or step
        return {"step": step, "event": "skipped_step", "loss": _finite_or_none(loss),
                "grad_norm": _finite_or_none(grad_norm), "skipped_in_a_row": self.in_a_row,
                "skipped_steps": self.total}

    def check_limits(self, step: int) -> None:
        """Raise DivergedError when the skips exceed either limit (after the skip's record was logged)."""
        cfg = self.cfg
        if self.in_a_row > cfg.max_consecutive_skips:
            raise DivergedError(f"steps {self.first_skipped}-{step}: {self.in_a_row} steps in a row had a non-finite "
                                f"loss or gradient norm (guard.max_consecutive_skips={cfg.max_consecutive_skips})")
        if self.total > cfg.max_total_skips:
            raise DivergedError(f"step {step}: {self.total} steps of this run had a non-finite loss or gradient "
                                f"norm (guard.max_total_skips={cfg.max_total_skips})")

    def spike(self, step: int, loss: Optional[float]) -> Optional[dict[str, Any]]:
        """A `loss_spike` warning record when a logged loss exceeds spike_factor x the running median of
        the previous logged losses (at least 5 of them), else None. Non-finite losses are the skips' business."""
        if loss is None or not math.isfinite(loss):
            return None
        record = None
        if self.cfg.spike_factor > 0 and len(self._losses) >= 5:
            median = statistics.median(self._losses)
            if loss > self.cfg.spike_factor * median:
                record = {"step": step, "event": "loss_spike", "loss": loss, "running_median": median,
                          "factor": loss / median}
        self._losses.append(loss)
        return record


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None
