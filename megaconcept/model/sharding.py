"""Which dimension each parameter is cut along under tensor parallelism (Megatron's scheme).

Plain data, no collectives: megaconcept.parallel shards a built model by it, and the export merges
tensor-parallel checkpoint shards by it, so the two can never disagree.
"""
from __future__ import annotations

from typing import Optional

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
"""Linear layers whose output features (heads, MLP hidden units) are split: weight rows, dim 0."""
ROW_PARALLEL = ("o_proj", "down_proj")
"""Linear layers whose input features are split: weight columns, dim 1; outputs are summed across ranks."""
VOCAB_PARALLEL = ("encoder.token_embed.weight", "lm_head.weight", "lm_bias")
"""Vocabulary rows split across ranks (embedding, untied LM head, LM bias)."""


def split_dim(name: str) -> Optional[int]:
    """The dimension parameter `name` is split along under tensor parallelism; None = replicated."""
    if name in VOCAB_PARALLEL:
        return 0
    parts = name.split(".")
    if len(parts) >= 2 and parts[-1] == "weight":
        if parts[-2] in COLUMN_PARALLEL:
            return 0
        if parts[-2] in ROW_PARALLEL:
            return 1
    return None
