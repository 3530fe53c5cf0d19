"""Preemption: SIGTERM (what SLURM and torchrun send before killing a job) and SIGUSR1 (what
`launchers/slurm/pretrain.sbatch` asks SLURM to send ahead of the time limit) make the run finish the step it
is in, write a checkpoint and exit with status PREEMPTED_EXIT; the requeued job resumes exactly."""
from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Optional

import torch

PREEMPTED_EXIT = 75
"""EX_TEMPFAIL: the run stopped on request with its state saved; run the same command again to continue."""
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised after the checkpoint of a preempted run was written."""


class PreemptionWatch:
    """Records a stop request from a signal; every rank asks `requested()` after each step and they agree."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.signal: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "PreemptionWatch":
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: Optional[FrameType]) -> None:
        # Only a flag: the step in flight (collectives included) completes on every rank first.
        self.signal = signal.Signals(signum).name

    def requested(self) -> bool:
        """True on every rank when any rank got a signal. Signals reach the ranks at different moments (one
        torchrun agent per node forwards them), so the ranks take the maximum: one tiny all-reduce a step."""
        flag = torch.tensor([1.0 if self.signal else 0.0], device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
