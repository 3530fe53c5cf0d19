"""build_train_stream: rank/worker split, determinism, exact resume, and shard/manifest error reporting."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from megaconcept.data.loader import build_train_stream, worker_shards
from megaconcept.data.shards import ShardError, read_manifest, read_shard


def mask_collate(ids: torch.Tensor, generator: torch.Generator) -> dict:
    """Stand-in for the masking collator: draws its mask from the generator it is given."""
    return {"ids": ids, "mask": torch.rand(ids.shape, generator=generator) < 0.15}


def _take(stream, count: int) -> list[tuple[dict, dict]]:
    return list(islice(stream, count))


def _stream(shards: Path, **overrides):
    kwargs = dict(micro_batch_size=48, seed=7, rank=1, world_size=2, num_workers=0, collate=mask_collate)
    kwargs.update(overrides)
    return build_train_stream(str(shards), **kwargs)


def _all_samples(shards: Path) -> list[np.ndarray]:
    manifest = read_manifest(str(shards))
    return [read_shard(manifest.shard_path(i), None, manifest.seq_len) for i in range(len(manifest.shards))]


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 3), (4, 2)])
def test_rank_worker_split_is_disjoint_and_covering(tiny_shards: Path, world_size: int, workers: int) -> None:
    num = len(read_manifest(str(tiny_shards)).shards)
    assert num >= 8
    for epoch in range(3):
        parts = [worker_shards(num, 7, epoch, True, r, world_size, w, workers)
                 for r in range(world_size) for w in range(workers)]
        assert all(parts) and sorted(i for p in parts for i in p) == list(range(num))
    assert worker_shards(num, 7, 0, True, 0, 1, 0, 1) != worker_shards(num, 7, 1, True, 0, 1, 0, 1)


def test_ranks_stream_each_sample_once_per_epoch(tiny_shards: Path) -> None:
    shards = _all_samples(tiny_shards)
    seen: Counter[bytes] = Counter()
    for rank in range(2):
        epoch_samples = sum(len(shards[i]) for i in worker_shards(len(shards), 7, 0, True, rank, 2, 0, 1))
        for batch, _ in _take(_stream(tiny_shards, rank=rank, micro_batch_size=1), epoch_samples):
            seen[batch["ids"][0].numpy().tobytes()] += 1
    assert seen == Counter(row.tobytes() for shard in shards for row in shard)


def test_order_is_deterministic_from_seed(tiny_shards: Path) -> None:
    batches = [b for b, _ in _take(_stream(tiny_shards), 4)]
    first = [b["ids"] for b in batches]
    assert not torch.equal(batches[0]["mask"], batches[1]["mask"])  # a fresh masking draw per batch
    again = [b["ids"] for b, _ in _take(_stream(tiny_shards), 4)]
    other = [b["ids"] for b, _ in _take(_stream(tiny_shards, seed=8), 4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    plain = _take(_stream(tiny_shards, shuffle=False, rank=0, world_size=1, micro_batch_size=64), 1)[0][0]
    assert torch.equal(plain["ids"], torch.from_numpy(_all_samples(tiny_shards)[0]))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_any_state_replays_exactly(tiny_shards: Path, workers: int) -> None:
    total, every = 30, 7  # 48-sample batches over 64-sample shards: resumes land mid-shard and across epochs
    reference = _take(_stream(tiny_shards, num_workers=workers), total)
    assert len({json.dumps(s, sort_keys=True) for _, s in reference}) == total
    for k in range(0, total - 1, every):
        state = json.loads(json.dumps(reference[k][1]))  # states must survive a JSON checkpoint
        resumed = _take(_stream(tiny_shards, num_workers=workers, state=state), total - k - 1)
        for (want, want_state), (got, got_state) in zip(reference[k + 1:], resumed):
            assert torch.equal(want["ids"], got["ids"]) and torch.equal(want["mask"], got["mask"])
            assert want_state == got_state


def test_stream_runs_past_an_epoch(tiny_shards: Path) -> None:
    manifest = read_manifest(str(tiny_shards))
    batches = manifest.samples // 256 + 2
    last_state = _take(_stream(tiny_shards, rank=0, world_size=1, micro_batch_size=256), batches)[-1][1]
    assert last_state["workers"][0]["epoch"] == 1


def test_resume_with_other_settings_is_refused(tiny_shards: Path) -> None:
    state = _take(_stream(tiny_shards), 1)[0][1]
    with pytest.raises(ValueError, match="micro_batch_size: saved 48 != now 32"):
        next(_stream(tiny_shards, micro_batch_size=32, state=state))


def test_too_few_shards_names_the_numbers(tiny_shards: Path) -> None:
    num = len(read_manifest(str(tiny_shards)).shards)
    with pytest.raises(ValueError, match=f"{num} training shards cannot feed 2 ranks x {num} data workers"):
        next(_stream(tiny_shards, num_workers=num))


def _copy(tiny_shards: Path, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    return copy, copy / read_manifest(str(copy)).shards[0].name


def test_corrupt_shard_error_names_the_file(tiny_shards: Path, tmp_path: Path) -> None:
    copy, victim = _copy(tiny_shards, tmp_path)
    data = bytearray(victim.read_bytes())
    data[5000] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"shard {victim} fails its checksum.*data_prep.shard"):
        _take(_stream(copy, rank=0, world_size=1, shuffle=False), 2)


def test_read_shard_reports_truncation_and_length(tiny_shards: Path, tmp_path: Path) -> None:
    copy, victim = _copy(tiny_shards, tmp_path)
    entry = read_manifest(str(copy)).shards[0]
    with pytest.raises(ShardError, match="expected \\(32,\\)"):
        read_shard(str(victim), entry.sha256, 32)
    victim.write_bytes(victim.read_bytes()[:7000])
    with pytest.raises(ShardError, match=f"shard {victim} is corrupt or truncated") as info:
        read_shard(str(victim), None, 64)
    assert "\n" not in str(info.value)
    with pytest.raises(ShardError, match="cannot be read"):
        read_shard(str(copy / "nope.tar"), None, 64)


def test_read_manifest_errors(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="does not exist; create it with `python -m data_prep.shard"):
        read_manifest(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="manifest.json is missing"):
        read_manifest(str(tmp_path / "empty"))
    copy, _ = _copy(tiny_shards, tmp_path)
    manifest_path = copy / "manifest.json"
    data = json.loads(manifest_path.read_text())
    manifest_path.write_text("{ not json")
    with pytest.raises(ShardError, match=f"{manifest_path} is malformed"):
        read_manifest(str(copy))
    manifest_path.write_text(json.dumps({k: v for k, v in data.items() if k != "seq_len"}))
    with pytest.raises(ShardError, match="malformed"):
        read_manifest(str(copy))
    manifest_path.write_text(json.dumps(dict(data, tokens=data["tokens"] + 1)))
    with pytest.raises(ShardError, match="inconsistent .*dropped_tokens"):
        read_manifest(str(copy))
