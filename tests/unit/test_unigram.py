"""heldout_mlm15_unigram: a unigram model of the training shards (add-one smoothing) scored on the probe's targets,
the held-out shard never counted; the monitor logs it beside heldout_mlm15."""
import math
from collections import Counter

import numpy as np
import torch

from megaconcept.config.schema import AnalysisSection
from megaconcept.data.heldout import training_manifest
from megaconcept.data.shards import read_manifest, read_shard
from megaconcept.data.unigram import unigram_cross_entropy, unigram_log_probs
from megaconcept.train.analysis import PROBE_MASKING, ConceptMonitor
from megaconcept.train.builders import build_collator, vocabulary_for

from test_concept_monitor import CTX


def _all_ids(manifest, shards):
    return np.concatenate([read_shard(manifest.shard_path(i), None, manifest.seq_len).reshape(-1) for i in shards])


def test_log_probs_are_smoothed_counts_of_the_first_tokens(tiny_shards):
    manifest = read_manifest(str(tiny_shards))
    ids = _all_ids(manifest, range(len(manifest.shards)))
    limit = ids.size // 3
    counts = Counter(ids[:limit].tolist())
    log_probs = unigram_log_probs(manifest, limit)
    total = limit + manifest.vocab_size
    for token in list(counts)[:20] + [manifest.vocab_size - 1]:
        assert math.isclose(float(log_probs[token]), math.log((counts.get(token, 0) + 1) / total), rel_tol=1e-9)
    labels = torch.tensor([[ids[0], -100, ids[1]]])
    expected = -(float(log_probs[ids[0]]) + float(log_probs[ids[1]])) / 2
    assert math.isclose(unigram_cross_entropy(log_probs, labels), expected, rel_tol=1e-12)


def test_monitor_reports_the_unigram_level_of_the_probe_targets_without_the_heldout_shard(tiny_shards):
    manifest = read_manifest(str(tiny_shards))
    assert len(manifest.shards) >= 2
    cfg = AnalysisSection(interval=5, samples=4)
    vocab = vocabulary_for(manifest)
    collate = build_collator(PROBE_MASKING, manifest.mask_token_id, vocab)
    monitor = ConceptMonitor(cfg, manifest, num_concepts=8, ctx=CTX, collate=collate, probe=collate)
    train_ids = _all_ids(manifest, range(len(manifest.shards) - 1))  # the held-out (last) shard is not counted
    counts = np.bincount(train_ids, minlength=manifest.vocab_size) + 1.0
    targets = monitor.probe["labels"][monitor.probe["labels"] >= 0].numpy()
    expected = float(-np.log(counts[targets] / counts.sum()).mean())
    assert math.isclose(monitor.unigram, expected, rel_tol=1e-9)
    assert training_manifest(manifest, cfg.heldout).shards == manifest.shards[:-1]
    off = ConceptMonitor(AnalysisSection(interval=5, samples=4, unigram_tokens=0), manifest, 8, CTX, collate, collate)
    assert off.unigram is None
