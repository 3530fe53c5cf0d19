"""Training objectives: masking strategies, losses (registries keyed by config strings)."""
