"""Plain model configuration (no framework types), shared by training and the exported HF model."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class ConceptModelConfig:
    """Architecture of a concept encoder with an MLM decoder; every field is a plain JSON value."""

    vocab_size: int
    num_concepts: int = 32
    concept_dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.75
    decoder: str = "perceiver_mlm"
    decoder_layers: int = 1
    max_position_embeddings: int = 512
    dropout: float = 0.0
    tie_word_embeddings: bool = True
    attention: str = "sdpa"
    norm_eps: float = 1e-5
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.concept_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        # Rounded to a multiple of 64 so matmuls stay aligned for tensor cores.
        return int(math.ceil(self.concept_dim * self.mlp_ratio / 64) * 64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ConceptModelConfig":
        """Build from a dict of architecture fields; an unknown key is an error, never silently dropped."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid: {[f.name for f in fields(cls)]}")
        return cls(**values)
