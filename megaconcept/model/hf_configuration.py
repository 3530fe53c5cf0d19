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


_DEFAULTS = ConceptModelConfig()


class MegaconceptConfig(PretrainedConfig):
    """Architecture of a concept encoder + MLM decoder, stored in ``config.json``.

    transformers 5 turns every config subclass into a keyword-only dataclass, so the annotated class
    attributes below are the constructor's arguments (and their defaults).
    """

    model_type = "megaconcept"

    # Defaults come from the plain config, the one place they are written.

    vocab_size: int = 32000
    num_concepts: int = _DEFAULTS.num_concepts
    concept_dim: int = _DEFAULTS.concept_dim
    num_layers: int = _DEFAULTS.num_layers
    num_heads: int = _DEFAULTS.num_heads
    mlp_ratio: float = _DEFAULTS.mlp_ratio
    concept_layer: str = _DEFAULTS.concept_layer
    slot_iterations: int = _DEFAULTS.slot_iterations
    slot_update: str = _DEFAULTS.slot_update
    """K of slot layers; `from_pretrained(dir, slot_iterations=K)` builds the model with another K."""
    concept_positions: str = _DEFAULTS.concept_positions
    decoder: str = _DEFAULTS.decoder
    decoder_options: Optional[dict] = _DEFAULTS.decoder_options
    decoder_layers: int = _DEFAULTS.decoder_layers
    decoder_positions: str = _DEFAULTS.decoder_positions
    bottleneck: str = _DEFAULTS.bottleneck
    bottleneck_options: Optional[dict] = _DEFAULTS.bottleneck_options
    max_position_embeddings: int = _DEFAULTS.max_position_embeddings
    dropout: float = _DEFAULTS.dropout
    tie_word_embeddings: bool = _DEFAULTS.tie_word_embeddings
    attention: str = _DEFAULTS.attention
    norm_eps: float = _DEFAULTS.norm_eps
    init_std: float = _DEFAULTS.init_std
    concept_init_std: float = _DEFAULTS.concept_init_std
    backbone: Optional[dict] = None
    config_version: int = _DEFAULTS.config_version
    # Sequence classification only (not part of the pretraining architecture).
    classifier_pooling: str = "mean"
    """How concepts become one vector: mean | attention | decoder (see classification.py)."""
    classifier_dropout: float = 0.1

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
