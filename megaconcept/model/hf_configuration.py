"""Hugging Face configuration for exported concept encoders (``model_type = "megaconcept"``).

Shipped flat inside every exported folder and loaded with ``trust_remote_code=True``, so it imports only
transformers and its sibling files. The fields mirror :class:`ConceptModelConfig` one to one (a unit test
keeps names and defaults in step); :meth:`MegaconceptConfig.to_model_config` turns it back into the plain
config the model code is written against.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Optional

from transformers import PretrainedConfig

from .config import ConceptModelConfig


class MegaconceptConfig(PretrainedConfig):
    """Architecture of a concept encoder + MLM decoder, stored in ``config.json``.

    transformers 5 turns every config subclass into a keyword-only dataclass, so the annotated class
    attributes below are the constructor's arguments (and their defaults).
    """

    model_type = "megaconcept"

    vocab_size: int = 32000
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
    backbone: Optional[dict] = None

    @property
    def hidden_size(self) -> int:
        """Width of the concept path, under the name generic HF tooling looks for."""
        return self.concept_dim

    @classmethod
    def from_model_config(cls, cfg: ConceptModelConfig, **kwargs) -> "MegaconceptConfig":
        """Wrap a plain :class:`ConceptModelConfig`; extra kwargs are HF bookkeeping (auto_map, dtype, ...)."""
        return cls(**cfg.to_dict(), **kwargs)

    def to_model_config(self) -> ConceptModelConfig:
        """The plain architecture config the model classes are built from."""
        values = {f.name: getattr(self, f.name) for f in fields(ConceptModelConfig)}
        if values["backbone"] is None:
            values.pop("backbone")
        return ConceptModelConfig.from_dict(values)
