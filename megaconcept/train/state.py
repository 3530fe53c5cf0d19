"""Mutable training state beyond the engine: counters, data position, RNG streams."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch


@dataclass
class TrainState:
    """Global counters (identical on every rank) plus this rank's data position."""

    step: int = 0
    tokens_seen: int = 0
    samples_seen: int = 0
    data_position: dict[str, Any] = field(default_factory=dict)
    restart_epoch: Optional[int] = None
    """Set when a checkpoint of another data-parallel size was resumed (a reshard): no old rank's data position
    maps onto a new rank, so the data stream restarts at this epoch. Never saved: it describes one resume."""

    def counters(self) -> dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "samples_seen": self.samples_seen}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def capture_rng() -> dict[str, Any]:
    """Every RNG stream a training step can draw from (dropout, python, numpy)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
