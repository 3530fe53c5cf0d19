"""Live concept analysis: the held-out shard leaves training, the monitor logs metrics and alarms once."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from megaconcept.config.schema import AnalysisSection, MaskingSection
from megaconcept.data.heldout import LAST_SHARD, heldout_ids, training_manifest
from megaconcept.data.loader import build_train_stream
from megaconcept.data.shards import read_manifest, read_shard
from megaconcept.parallel import ParallelContext
from megaconcept.train.analysis import ConceptMonitor, summary_line
from megaconcept.train.builders import build_collator, vocabulary_for

CTX = ParallelContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"),
                      backend="gloo")


def test_last_shard_is_held_out_of_the_training_stream(tiny_shards):
    manifest = read_manifest(str(tiny_shards))
    train = training_manifest(manifest, LAST_SHARD)
    assert train.shards == manifest.shards[:-1]
    assert training_manifest(manifest, str(tiny_shards)) is manifest  # another directory holds it out already
    last = read_shard(manifest.shard_path(len(manifest.shards) - 1), None, manifest.seq_len)
    ids = heldout_ids(manifest, LAST_SHARD, 5)
    np.testing.assert_array_equal(ids, last[:5])
    # One epoch of the stream never yields a held-out row.
    held = {tuple(r) for r in last}
    stream = build_train_stream(str(tiny_shards), 16, 0, 0, 1, 0, lambda ids, gen: ids, shuffle=False,
                                heldout=LAST_SHARD)
    seen = sum(s.samples for s in train.shards)
    rows = [tuple(r) for _ in range(seen // 16) for r in next(stream)[0].tolist()]
    assert not held & set(rows)


def test_a_single_shard_trains_and_analyses_its_first_samples(tiny_shards):
    """A small corpus (one shard) still gets a run with analysis: on that shard's first samples, which training
    also reads, and the log says so."""
    import dataclasses

    from megaconcept.data.heldout import heldout_note

    full = read_manifest(str(tiny_shards))
    one = dataclasses.replace(full, shards=full.shards[:1], samples=full.shards[0].samples)
    assert training_manifest(one, LAST_SHARD) is one
    first = read_shard(one.shard_path(0), None, one.seq_len)
    np.testing.assert_array_equal(heldout_ids(one, LAST_SHARD, 4), first[:4])
    note = heldout_note(one, LAST_SHARD)
    assert "only shard" in note and "not held out" in note and one.shards[0].name in note
    assert "kept out of training" in heldout_note(full, LAST_SHARD)


class _Engine:
    """The surface of a DeepSpeed engine the monitor uses: module, eval/train, forward."""

    def __init__(self, encoder: nn.Module) -> None:
        self.module = nn.Module()
        self.module.encoder = encoder
        self.training, self.calls = True, []

    def eval(self) -> None:
        self.training = False

    def train(self) -> None:
        self.training = True

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, labels=None, score=True):
        assert not self.training and score == (labels is not None)
        self.calls.append((input_ids, positions, labels))
        concepts = self.module.encoder(input_ids)
        loss = torch.tensor(float(len(self.calls)))
        return SimpleNamespace(loss=loss, metrics={"loss/mlm": loss, "weight/mlm": torch.tensor(1.0)},
                               outputs=SimpleNamespace(concepts=concepts))


class _Constant(nn.Module):
    def __init__(self, concepts: torch.Tensor) -> None:
        super().__init__()
        self.concepts = concepts

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.concepts.expand(input_ids.shape[0], -1, -1)


def _monitor(manifest, cfg):
    collate = build_collator(MaskingSection(), manifest.mask_token_id, vocabulary_for(manifest))
    return ConceptMonitor(cfg, manifest, num_concepts=8, ctx=CTX, collate=collate)


def test_monitor_logs_metrics_and_alarms_once_on_collapse(tiny_shards, capsys):
    manifest = read_manifest(str(tiny_shards))
    cfg = AnalysisSection(interval=5, samples=4, collapse_fraction=0.5)
    collapsed = _monitor(manifest, cfg)
    engine = _Engine(_Constant(torch.ones(1, 8, 16)))  # 8 identical concepts: effective rank 1
    assert collapsed.due(5, 100) and collapsed.due(7, 7) and not collapsed.due(6, 100)
    first = collapsed.measure(engine, 5)
    second = collapsed.measure(engine, 10)
    assert engine.training  # back in train mode
    # Per measurement: the clean held-out text (concepts), then the same fixed masking with labels (loss).
    (clean, one, none), (masked, _, labels) = engine.calls[:2]
    assert none is None and one.shape == (4, 1) and labels is not None
    assert torch.equal(masked, engine.calls[3][0]) and not torch.equal(clean, masked)
    assert first["heldout_loss"] == 2.0 and second["heldout_loss"] == 4.0
    assert first["concepts/effective_rank"] == pytest.approx(1.0) and first["concepts/collapse_alarm"]
    assert second["concepts/collapse_alarm"] and capsys.readouterr().out.count("WARNING: concept collapse") == 1
    assert "eff. rank 1.0/8" in summary_line(first, 8)

    healthy = _monitor(manifest, cfg)
    record = healthy.measure(_Engine(_Constant(torch.eye(8, 16)[None])), 5)  # orthogonal: effective rank 8
    assert record["concepts/effective_rank"] == pytest.approx(8.0) and "concepts/collapse_alarm" not in record
    assert "WARNING" not in capsys.readouterr().out


def test_too_few_training_shards_names_the_held_out_one(tiny_shards):
    num = len(read_manifest(str(tiny_shards)).shards)  # all of them feed `num` ranks; minus the held-out one not
    next(build_train_stream(str(tiny_shards), 2, 0, 0, num, 0, lambda ids, gen: ids))
    with pytest.raises(ValueError, match=f"{num - 1} training shards cannot feed {num} ranks.*held-out analysis shard"):
        next(build_train_stream(str(tiny_shards), 2, 0, 0, num, 0, lambda ids, gen: ids, heldout=LAST_SHARD))
