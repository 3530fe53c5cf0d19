"""Per-step loss and objective metrics on one rank, and their global means over a logging window."""
from __future__ import annotations

from typing import Any, Optional

import torch


class StepMetrics:
    """The micro-batches of one optimizer step: summed loss and summed term metrics (loss/<term>, ...)."""

    def __init__(self, holds_metrics: bool = True) -> None:
        self.loss_sum, self.count = 0.0, 0
        self.sums: dict[str, float] = {}
        self.metric_count = 0
        self.holds_metrics = holds_metrics
        """False on pipeline stages before the last: they never see the objectives' metrics."""

    def add(self, loss: Optional[torch.Tensor], metrics: dict[str, torch.Tensor]) -> None:
        """One micro-batch; a single device sync for the loss and every metric."""
        names = list(metrics)
        values = [metrics[n].float().reshape(()) for n in names]
        if loss is not None:
            values.insert(0, loss.detach().float().reshape(()))
        floats = torch.stack(values).tolist() if values else []
        if loss is not None:
            self.loss_sum += floats.pop(0)
            self.count += 1
        for name, value in zip(names, floats):
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.metric_count += 1 if names else 0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @staticmethod
    def global_means(steps: list["StepMetrics"], names: list[str], device: torch.device) -> tuple[float, dict[str, Any]]:
        """(mean loss over the steps and all ranks, {metric: mean over every micro-batch that reported it}).

        One all-reduce: ranks that hold no metrics (early pipeline stages) contribute zero counts."""
        local_loss = sum(s.loss for s in steps) / len(steps)
        held = [s for s in steps if s.holds_metrics]
        sums = [sum(s.sums.get(n, 0.0) for s in held) for n in names]
        count = float(sum(s.metric_count for s in held))
        packed = torch.tensor([local_loss, *sums, count], dtype=torch.float64, device=device)
        world = 1
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
            world = torch.distributed.get_world_size()
        values = packed.tolist()
        total = values[-1]
        metrics = {n: (v / total if total else None) for n, v in zip(names, values[1:-1])}
        return values[0] / world, metrics
