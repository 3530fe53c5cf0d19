"""The held-out batch of live concept analysis: a shard kept out of training, or another shard directory."""
from __future__ import annotations

import dataclasses

import numpy as np

from .shards import Manifest, read_manifest, read_shard

LAST_SHARD = "last_shard"


def holds_out_last_shard(manifest: Manifest, heldout: str) -> bool:
    """last_shard keeps the last shard out of training when there are at least two; a one-shard directory (a
    small corpus) trains on its shard and the analysis batch is that shard's first samples (see heldout_note)."""
    return heldout == LAST_SHARD and len(manifest.shards) >= 2


def heldout_note(manifest: Manifest, heldout: str) -> str:
    """Where the analysis batch comes from, for the run's log."""
    if heldout != LAST_SHARD:
        return f"held-out batch: {heldout}"
    if holds_out_last_shard(manifest, heldout):
        return f"held-out batch: {manifest.shards[-1].name}, kept out of training"
    return (f"analysis batch: the first samples of {manifest.shards[0].name}, the only shard, which training also "
            "reads (not held out: re-shard with a smaller --samples-per-shard or set analysis.heldout=DIR for a "
            "held-out loss)")


def training_manifest(manifest: Manifest, heldout: str) -> Manifest:
    """The shards training reads: all of them, or all but the last when that one is held out."""
    if not holds_out_last_shard(manifest, heldout):
        return manifest
    return dataclasses.replace(manifest, shards=manifest.shards[:-1])


def heldout_ids(manifest: Manifest, heldout: str, samples: int) -> np.ndarray:
    """The first ``samples`` rows (S, N) int64 of the held-out shards, in stored order (the same every time)."""
    if heldout == LAST_SHARD:
        source, indices = manifest, [len(manifest.shards) - 1]
    else:
        source = read_manifest(heldout)
        if source.tokenizer.get("sha256") != manifest.tokenizer.get("sha256"):
            raise ValueError(f"analysis.heldout={heldout} was tokenized with another tokenizer than data.shards; "
                             "shard the held-out text with the same --tokenizer")
        indices = list(range(len(source.shards)))
    rows: list[np.ndarray] = []
    for index in indices:
        info = source.shards[index]
        rows.extend(read_shard(source.shard_path(index), info.sha256, source.seq_len, info.samples,
                               vocab_size=manifest.vocab_size))
        if len(rows) >= samples:
            break
    return np.stack(rows[:samples])
