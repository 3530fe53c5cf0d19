"""Plain-PyTorch concept encoder models (no distributed code; exported as-is to HF folders)."""
from .concept_mlm import ConceptMLM
from .config import ConceptModelConfig

__all__ = ["ConceptMLM", "ConceptModelConfig"]
