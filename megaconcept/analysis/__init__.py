"""Concept-health metrics, used live in training and offline by `python -m evals.concepts`."""
from .concept_metrics import concept_metrics, concept_metrics_varlen, concept_spectrum

__all__ = ["concept_metrics", "concept_metrics_varlen", "concept_spectrum"]
