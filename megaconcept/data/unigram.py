"""The unigram baseline of the held-out probe: what a model that ignores all context scores on the same targets.

A model that has learned nothing but token frequencies reaches the unigram cross-entropy; an MLM-style loss
above it means the concepts carry no context yet. Counts come from the training shards (those the run reads;
the held-out shard is never counted), in stored order up to `max_tokens` tokens, with add-one smoothing so
every id has a probability. Hand-written: a bincount over the shards is all it takes.
"""
from __future__ import annotations

import numpy as np
import torch

from .shards import Manifest, read_shard


def unigram_log_probs(manifest: Manifest, max_tokens: int) -> torch.Tensor:
    """(V,) float64 log-probabilities of each id: add-one smoothed counts of the manifest's shards' first
    `max_tokens` tokens."""
    counts = np.ones(manifest.vocab_size, dtype=np.float64)
    seen = 0
    for index, info in enumerate(manifest.shards):
        if seen >= max_tokens:
            break
        ids = read_shard(manifest.shard_path(index), info.sha256, manifest.seq_len, info.samples,
                         vocab_size=manifest.vocab_size).reshape(-1)[: max_tokens - seen]
        counts += np.bincount(ids, minlength=manifest.vocab_size)
        seen += ids.size
    return torch.from_numpy(np.log(counts / counts.sum()))


def unigram_cross_entropy(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log p(label) over the labels that are targets (>= 0)."""
    targets = labels[labels >= 0].long().cpu()
    return float(-log_probs[targets].mean()) if targets.numel() else float("nan")
