"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def frozen_then(step: int, frozen_until: int, schedule: Callable[[int], float]) -> float:
    """0 for the first `frozen_until` steps (parameters fixed), the shared schedule afterwards."""
    return 0.0 if step < frozen_until else schedule(step)


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float, backbone_freeze_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """One multiplier per param group: groups flagged `backbone` are frozen for the first steps."""
    schedule = partial(warmup_cosine, warmup=warmup, total=total, floor=floor)
    lambdas = [
        partial(frozen_then, frozen_until=backbone_freeze_steps if group.get("backbone") else 0, schedule=schedule)
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
