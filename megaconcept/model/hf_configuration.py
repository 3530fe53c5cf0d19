"""Hugging Face configuration for exported concept encoders (``model_type = "megaconcept"``).

Shipped flat inside every exported folder and loaded with ``trust_remote_code=True``, so it imports only
transformers and its sibling files. The architecture fields are not written here: they are read off the plain
:class:`ConceptModelConfig` dataclass when this class is created (names, types, defaults), so a field added
there is a config.json key here without a second edit. :meth:`MegaconceptConfig.to_model_config` turns it back
into the plain config the model code is written against.
"""
from __future__ import annotations

from dataclasses import field, fields
from typing import Any, Optional, get_type_hints

from transformers import PretrainedConfig

from .config import ConceptModelConfig

# Where config.json must differ from the plain config: the HF model always knows its vocabulary (the plain
# field may be null, "take it from the shards"), and the nested backbone travels as a dict (None = none).
_JSON_FIELDS: dict[str, tuple[Any, Any]] = {"vocab_size": (int, 32000), "backbone": (Optional[dict], None)}


def model_fields() -> dict[str, tuple[Any, Any]]:
    """name -> (type, default) of every ConceptModelConfig field, in its order, as config.json holds them."""
    hints, defaults = get_type_hints(ConceptModelConfig), ConceptModelConfig()
    return {f.name: _JSON_FIELDS.get(f.name, (hints[f.name], getattr(defaults, f.name)))
            for f in fields(ConceptModelConfig)}


def _declare_model_fields(namespace: dict[str, Any]) -> None:
    """Add the model fields to a class body: transformers 5 turns every config subclass into a keyword-only
    dataclass of its annotated attributes while the class is created, so they must be there before it is."""
    annotations = namespace.setdefault("__annotations__", {})
    for name, (hint, default) in model_fields().items():
        annotations[name] = hint
        # A dataclass refuses mutable defaults; a (future) list or dict default gets its own copy per config.
        mutable = getattr(default, "__hash__", None) is None
        namespace[name] = field(default_factory=lambda value=default: type(value)(value)) if mutable else default


class MegaconceptConfig(PretrainedConfig):
    """Architecture of a concept encoder + MLM decoder, stored in ``config.json``: every ConceptModelConfig
    field (see its docstrings; `from_pretrained(dir, slot_iterations=K)` builds slot layers with another K),
    plus the task heads' own options below."""

    model_type = "megaconcept"

    _declare_model_fields(locals())  # a class body's locals() is the namespace the class is made from

    # Sequence classification and QA heads only (not part of the pretraining architecture).
    classifier_pooling: str = "mean"
    """How concepts become one vector: mean | attention | decoder (see classification.py)."""
    classifier_dropout: float = 0.1

    @property
    def hidden_size(self) -> int:
        """Width of the concept path, under the name generic HF tooling looks for."""
        return self.concept_dim

    @classmethod
    def from_model_config(cls, cfg: ConceptModelConfig, **kwargs: Any) -> "MegaconceptConfig":
        """Wrap a plain :class:`ConceptModelConfig`; extra kwargs are HF bookkeeping (auto_map, dtype, ...)."""
        return cls(**cfg.to_dict(), **kwargs)

    def to_model_config(self) -> ConceptModelConfig:
        """The plain architecture config the model classes are built from."""
        values = {f.name: getattr(self, f.name) for f in fields(ConceptModelConfig)}
        if values["backbone"] is None:
            values.pop("backbone")
        return ConceptModelConfig.from_dict(values)
