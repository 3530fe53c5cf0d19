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
    skipped_steps: int = 0
    """Steps whose update was skipped because the loss or gradient norm was not finite (megaconcept.train.guard)."""
    data_position: dict[str, Any] = field(default_factory=dict)
    restart_epoch: Optional[int] = None
    """Set when a checkpoint of another data-parallel size was resumed (a reshard): no old rank's data position
    maps onto a new rank, so the data stream restarts at this epoch. Never saved: it describes one resume."""

    def counters(self) -> dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "samples_seen": self.samples_seen,
                "skipped_steps": self.skipped_steps}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def capture_rng() -> dict[str, Any]:
    """Every RNG stream a training step can draw from (dropout, python, numpy), as tensors and plain values
    only, so the file loads with ``torch.load(weights_only=True)`` (no pickled objects)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(words, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    # Checkpoints written before the tensor form hold the tuples and the numpy array themselves.
    random.setstate((version, tuple(int(w) for w in words), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
