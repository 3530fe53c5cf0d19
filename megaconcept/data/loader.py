"""Resumable, deterministic streaming of packed shards into training batches.

Order (all derived from ``seed``; nothing depends on timing or on the physical worker count in use):

* Epoch ``e`` visits the shards in a permutation seeded by ``(seed, e)``; rank ``r`` takes positions
  ``i % world_size == r`` of it, and inside a rank *logical* worker ``w`` of ``W = max(1, num_workers)``
  takes every W-th of those.
* A logical worker reads a whole shard, permutes its samples with a generator seeded by
  ``(seed, e, shard index)`` and emits consecutive samples; its stream runs on through shards and epochs
  without a gap, so a shard's leftover samples fill the start of the next batch (nothing is dropped).
* Batches interleave logical workers round-robin (PyTorch's DataLoader order). The masking generator
  handed to ``collate`` is seeded by ``(seed, rank, logical worker, that worker's batch counter)``; a collate
  with ``takes_batch_index`` also gets the batch's index in the rank's stream (masking-rate schedules).

The position after a batch is each logical worker's (epoch, shard position, sample offset, batch count)
plus which logical worker is next. A fresh DataLoader always starts at physical worker 0, so on resume
physical worker ``p`` plays logical worker ``(next + p) % W`` and the interleaving continues exactly.
"""
from __future__ import annotations

import copy
import hashlib
import signal
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from megaconcept.data.heldout import training_manifest
from megaconcept.data.shards import Manifest, read_manifest, read_shard

STATE_VERSION = 1
Collate = Callable[[torch.Tensor, torch.Generator], dict]
# Distinct first words keep the seed streams for shard order, sample order and masking independent.
_SHARD_ORDER, _SAMPLE_ORDER, _MASKING = 0x5AD0, 0x5A4E, 0x3A5C


def _derive_seed(*words: int) -> int:
    """A 63-bit seed from integers, via numpy's SeedSequence (well mixed, stable across versions)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Shard indices in the order epoch ``epoch`` visits them."""
    if not shuffle:
        return list(range(num_shards))
    rng = np.random.default_rng(_derive_seed(_SHARD_ORDER, seed, epoch))
    return [int(i) for i in rng.permutation(num_shards)]


def worker_shards(num_shards: int, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
                  worker: int, num_logical_workers: int) -> list[int]:
    """The shard indices logical ``worker`` of ``rank`` reads in ``epoch``, in reading order."""
    rank_shards = shard_order(num_shards, seed, epoch, shuffle)[rank::world_size]
    return rank_shards[worker::num_logical_workers]


def check_split(num_shards: int, world_size: int, num_logical_workers: int, held_out: bool = False) -> None:
    """Every rank x worker needs at least one shard per epoch, else its stream would be empty."""
    if num_shards // world_size < num_logical_workers:
        also = (", or give the held-out analysis shard back (analysis.heldout=DIR or analysis.interval=0)"
                if held_out else "")
        raise ValueError(
            f"{num_shards} training shards cannot feed {world_size} ranks x {num_logical_workers} data workers "
            f"(need >= {world_size * num_logical_workers}); re-shard with a smaller --samples-per-shard "
            f"or lower data.num_workers{also}")


class _ShardStream(IterableDataset):
    """Yields ``(batch, worker_position)`` forever for the logical workers this process plays."""

    def __init__(self, manifest: Manifest, micro_batch_size: int, seed: int, rank: int, world_size: int,
                 num_logical_workers: int, collate: Collate, positions: list[dict[str, int]],
                 first_worker: int, shuffle: bool, verify_checksums: bool) -> None:
        self.manifest, self.micro_batch_size, self.seed = manifest, micro_batch_size, seed
        self.rank, self.world_size, self.num_logical_workers = rank, world_size, num_logical_workers
        self.collate, self.positions, self.first_worker = collate, positions, first_worker
        self.shuffle, self.verify_checksums = shuffle, verify_checksums

    def __iter__(self) -> Iterator[tuple[dict, dict[str, int]]]:
        info = get_worker_info()
        physical = 0 if info is None else info.id
        return self._batches((self.first_worker + physical) % self.num_logical_workers)

    def _batches(self, worker: int) -> Iterator[tuple[dict, dict[str, int]]]:
        position = dict(self.positions[worker])
        samples = self._samples(worker, position)
        while True:
            rows = [next(samples) for _ in range(self.micro_batch_size)]
            ids = torch.from_numpy(np.stack(rows))  # (B, N) int64
            generator = torch.Generator().manual_seed(
                _derive_seed(_MASKING, self.seed, self.rank, worker, position["batches"]))
            # The rank stream's micro-batch index: logical workers interleave round-robin, so batch k of
            # worker w is batch k * W + w of the stream, whatever physical workers play them after a resume.
            index = position["batches"] * self.num_logical_workers + worker
            position["batches"] += 1
            batch = (self.collate(ids, generator, batch_index=index) if getattr(self.collate, "takes_batch_index", False)
                     else self.collate(ids, generator))
            yield batch, dict(position, worker=worker)

    def _samples(self, worker: int, position: dict[str, int]) -> Iterator[np.ndarray]:
        """Samples (each (N,) int64) of ``worker``'s stream from ``position``, which it keeps current."""
        num_shards = len(self.manifest.shards)
        while True:
            shards = worker_shards(num_shards, self.seed, position["epoch"], self.shuffle, self.rank,
                                   self.world_size, worker, self.num_logical_workers)
            while position["shard"] < len(shards):
                rows = self._load(shards[position["shard"]], position["epoch"])
                while position["offset"] < len(rows):
                    position["offset"] += 1
                    yield rows[position["offset"] - 1]
                position["shard"], position["offset"] = position["shard"] + 1, 0
            position["epoch"], position["shard"] = position["epoch"] + 1, 0

    def _load(self, index: int, epoch: int) -> np.ndarray:
        """Shard ``index`` as (S, N) int64, its rows permuted for this epoch."""
        info = self.manifest.shards[index]
        rows = read_shard(self.manifest.shard_path(index), info.sha256 if self.verify_checksums else None,
                          self.manifest.seq_len, expected_samples=info.samples, vocab_size=self.manifest.vocab_size)
        if self.shuffle:
            rows = rows[np.random.default_rng(_derive_seed(_SAMPLE_ORDER, self.seed, epoch, index))
                        .permutation(len(rows))]
        return rows


def _ignore_stop_signals(_worker_id: int) -> None:
    """SLURM signals every process of a job step, data workers included; a worker that died of the SIGTERM
    or SIGUSR1 meant for the trainer would fail the very step it is finishing before its checkpoint. Workers
    end with their parent (the DataLoader shuts them down and they watch it)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _identity(manifest: Manifest) -> str:
    """Short fingerprint of the shard set, so a state is never resumed on different data."""
    return hashlib.sha256("".join(s.sha256 for s in manifest.shards).encode()).hexdigest()[:16]


def _initial_state(manifest: Manifest, seed: int, rank: int, world_size: int, workers: int,
                   shuffle: bool, micro_batch_size: int, epoch: int = 0) -> dict[str, Any]:
    return {"version": STATE_VERSION, "shards": _identity(manifest), "seed": seed, "rank": rank,
            "world_size": world_size, "num_workers": workers, "shuffle": shuffle,
            "micro_batch_size": micro_batch_size, "next_worker": 0,
            "workers": [{"epoch": epoch, "shard": 0, "offset": 0, "batches": 0} for _ in range(workers)]}


def _check_state(state: dict[str, Any], expected: dict[str, Any]) -> None:
    keys = ("version", "shards", "seed", "rank", "world_size", "num_workers", "shuffle", "micro_batch_size")
    diff = [f"{k}: saved {state.get(k)!r} != now {expected[k]!r}" for k in keys if state.get(k) != expected[k]]
    if diff:
        raise ValueError("cannot resume the data stream, the saved position was made with other settings ("
                         + "; ".join(diff) + "); restore those settings or start a new run")


def build_train_stream(shard_dir: str, micro_batch_size: int, seed: int, rank: int, world_size: int,
                       num_workers: int, collate: Collate, state: Optional[dict] = None,
                       shuffle: bool = True, verify_checksums: bool = True,
                       start_epoch: int = 0, heldout: str = "") -> Iterator[tuple[dict, dict]]:
    """Yield ``(collate(ids, generator), position_state)`` forever, looping over epochs.

    ``ids`` is a (micro_batch_size, seq_len) int64 tensor; ``generator`` a torch.Generator seeded for
    this batch (dynamic masking replays exactly). ``position_state`` is a JSON-serialisable dict for the
    position after the batch: passing it back as ``state`` continues with exactly the next batch.
    Without a state the stream starts at the beginning of ``start_epoch``. ``heldout="last_shard"`` keeps
    the last shard out of the stream (see megaconcept.data.heldout).

    Raises:
        ShardError: missing/malformed manifest, or a corrupt shard (names the file).
        ValueError: too few shards for ranks x workers, or ``state`` from other settings.
    """
    if micro_batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need micro_batch_size >= 1 and 0 <= rank < world_size, got "
                         f"{micro_batch_size}, rank {rank}, world_size {world_size}")
    full = read_manifest(shard_dir)
    manifest = training_manifest(full, heldout)
    workers = max(1, num_workers)
    check_split(len(manifest.shards), world_size, workers, held_out=len(manifest.shards) < len(full.shards))
    current = _initial_state(manifest, seed, rank, world_size, workers, shuffle, micro_batch_size, start_epoch)
    if state is not None:
        _check_state(state, current)
        current = copy.deepcopy(state)
    dataset = _ShardStream(manifest, micro_batch_size, seed, rank, world_size, workers, collate,
                           current["workers"], current["next_worker"], shuffle, verify_checksums)
    # Its own generator: starting the loader draws a worker base seed, and a draw from the global RNG would
    # shift every dropout mask after a resume (the stream is restarted there, not in the uninterrupted run).
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(), worker_init_fn=_ignore_stop_signals)
    for batch, position in loader:
        worker = int(position.pop("worker"))
        current["workers"][worker] = {k: int(v) for k, v in position.items()}
        current["next_worker"] = (worker + 1) % workers
        yield batch, copy.deepcopy(current)
