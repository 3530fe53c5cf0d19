"""The held-out batch of live concept analysis: a shard kept out of training, or another shard directory."""
from __future__ import annotations

import dataclasses

import numpy as np

from .shards import Manifest, read_manifest, read_shard

LAST_SHARD = "last_shard"


def training_manifest(manifest: Manifest, heldout: str) -> Manifest:
    """The shards training reads: all of them, or all but the last when that one is held out."""
    if heldout != LAST_SHARD:
        return manifest
    if len(manifest.shards) < 2:
        raise ValueError(f"analysis.heldout=last_shard needs at least 2 shards in {manifest.directory} (it has "
                         f"{len(manifest.shards)}); re-shard with a smaller --samples-per-shard, point "
                         "analysis.heldout at another shard directory, or set analysis.interval=0")
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
        rows.extend(read_shard(source.shard_path(index), info.sha256, source.seq_len, info.samples))
        if len(rows) >= samples:
            break
    return np.stack(rows[:samples])
