"""Masking strategies on real shards: exact target counts, whole words, SpanBERT span statistics, 80/10/10 per
span, random replacements from ordinary tokens only, rate schedules through the loader, mask-later."""
import numpy as np
import pytest
import torch
from scipy import stats

from megaconcept.config.schema import MaskingSection
from megaconcept.data.loader import build_train_stream
from megaconcept.data.shards import read_manifest, read_shard
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.objectives.masking import MASKING, num_targets, word_ids
from megaconcept.objectives.span_masking import SpanOptions, sample_spans
from megaconcept.train.builders import build_collator, masking_spec, vocabulary_for


@pytest.fixture(scope="module")
def real(tiny_shards):
    manifest = read_manifest(str(tiny_shards))
    rows = np.concatenate([read_shard(manifest.shard_path(i), None, manifest.seq_len) for i in range(8)])
    return manifest, vocabulary_for(manifest), torch.from_numpy(rows)


def _spec(real, **section):
    manifest, tables, _ = real
    return masking_spec(MaskingSection(**section), manifest.mask_token_id, tables)


def test_manifest_records_specials_and_the_mask_is_not_the_last_id(real):
    manifest, tables, _ = real
    assert manifest.special_token_ids == [0, 1] and manifest.mask_token_id == 1 < manifest.vocab_size - 1
    assert tables.family == "byte_level" and tables.ordinary_ids.min() == 2


# diffusion is absorbing (every target becomes the mask token) with Binomial(N, t) targets per sample: its own
# contract is tested in test_diffusion.py.
BERT_LIKE = [k for k in MASKING.keys() if k != "diffusion"]


@pytest.mark.parametrize("strategy", BERT_LIKE)
def test_random_replacements_are_ordinary_tokens(real, strategy):
    # All targets random: the old bound [0, mask_token_id) made every one of them id 0, the eos token.
    _, tables, ids = real
    out = MASKING[strategy](ids[:256], _spec(real, strategy=strategy, mask_prob=0.0, random_prob=1.0),
                            torch.Generator().manual_seed(0))
    replaced = out["input_ids"].gather(1, out["positions"])
    assert not tables.special[replaced.numpy()].any()
    assert len(torch.unique(replaced)) > 300 and replaced.max() < len(tables.special)


@pytest.mark.parametrize("strategy", BERT_LIKE)
def test_exact_target_count_sorted_unique(real, strategy):
    _, _, ids = real
    out = MASKING[strategy](ids[:128], _spec(real, strategy=strategy, rate=0.3), torch.Generator().manual_seed(1))
    m = num_targets(ids.shape[1], 0.3)
    assert out["positions"].shape == (128, m) and bool((out["positions"].diff(dim=1) > 0).all())
    assert torch.equal(out["labels"], ids[:128].gather(1, out["positions"]))


def _words_cut(word_row, chosen):
    """Words whose tokens are only partly chosen."""
    chosen = set(chosen)
    words = {}
    for i, w in enumerate(word_row):
        words.setdefault(w, []).append(i in chosen)
    return sum(any(v) and not all(v) for v in words.values())


def test_whole_word_takes_whole_words_except_the_last(real):
    _, _, ids = real
    spec = _spec(real, strategy="whole_word", rate=0.2)
    out = MASKING["whole_word"](ids[:200], spec, torch.Generator().manual_seed(2))
    words = word_ids(ids[:200], spec).tolist()
    cuts = [_words_cut(words[r], out["positions"][r].tolist()) for r in range(200)]
    assert max(cuts) <= 1 and sum(cuts) < 200  # at most the budget's last word is cut
    # The tokenizer's words really are multi-token here, so this is not bert masking in disguise.
    assert np.mean([len(w) / (w[-1] + 1) for w in words]) > 1.2


def test_span_lengths_follow_the_truncated_geometric_law_and_start_at_words(real):
    _, _, ids = real
    options = SpanOptions(p=0.2, max_words=10)
    spec = _spec(real, strategy="span", rate=0.15)
    # Long rows (real text, 4096 tokens): ~100 spans each, so the one cut at the budget is a small minority
    # (in short rows the budget mostly cuts the long spans, and the completed ones look too short).
    ids = ids[:4096].reshape(-1, 4096)
    words = word_ids(ids, spec).tolist()
    n, m = ids.shape[1], num_targets(ids.shape[1], 0.15)
    lengths, generator = [], torch.Generator().manual_seed(3)
    for row in words:
        spans = sample_spans(row, m, options, generator)
        assert sum(len({*range(s, e)}) for s, e, _ in spans) >= m
        begins = {i for i in range(n) if i == 0 or row[i] != row[i - 1]}
        assert all(s in begins for s, _, _ in spans)  # no span starts inside a word
        # Completed spans only: the last one is cut at the budget, one reaching the end may be clipped.
        lengths += [w for s, e, w in spans[:-1] if e < n]
    counts = np.bincount(lengths, minlength=11)[1:]
    expected = options.length_probs().numpy() * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3, (counts, expected.round())
    assert abs(np.mean(lengths) - 3.8) < 0.2  # the paper's mean span length in words


def test_span_decides_80_10_10_once_per_span(real):
    _, _, ids = real
    spec = _spec(real, strategy="span", mask_prob=0.5, random_prob=0.0)
    words = word_ids(ids[:50], spec).tolist()
    m = num_targets(ids.shape[1], spec.rate)
    mixed = 0
    for r in range(50):
        out = MASKING["span"](ids[r:r + 1], spec, torch.Generator().manual_seed(r))
        spans = sample_spans(words[r], m, spec.options, torch.Generator().manual_seed(r))  # the same draws
        masked = dict(zip(out["positions"][0].tolist(), (out["input_ids"][0, out["positions"][0]] == 1).tolist()))
        seen = set()
        for s, e, _ in spans:
            own = [masked[i] for i in range(s, e) if i in masked and i not in seen]
            seen.update(range(s, e))
            mixed += len(set(own)) > 1
    assert mixed == 0


def test_schedule_values_and_the_loader_applies_them(real, tiny_shards):
    manifest, tables, _ = real
    section = MaskingSection(rate=0.15, schedule="linear", final_rate=0.4, schedule_steps=100)
    collate = build_collator(section, manifest.mask_token_id, tables, grad_accum_steps=2)
    assert [collate.rate_at(s) for s in (0, 50, 100, 500)] == pytest.approx([0.15, 0.275, 0.4, 0.4])
    step = build_collator(MaskingSection(rate=0.3, schedule="step", final_rate=0.15, schedule_steps=10),
                          manifest.mask_token_id, tables)
    assert [step.rate_at(s) for s in (0, 9, 10)] == [0.3, 0.3, 0.15]
    fast = build_collator(MaskingSection(rate=0.15, schedule="linear", final_rate=0.4, schedule_steps=4),
                          manifest.mask_token_id, tables, grad_accum_steps=2)
    stream = build_train_stream(str(tiny_shards), 4, 0, 0, 1, 2, fast)  # two workers interleaved
    seen = [next(stream)[0]["positions"].shape[1] for _ in range(10)]
    n = manifest.seq_len
    assert seen == [num_targets(n, fast.rate_at(i // 2)) for i in range(10)] and seen[0] < seen[-1]


def test_mask_later_concepts_never_attend_to_targets(real):
    _, _, ids = real
    out = MASKING["bert"](ids[:4], _spec(real, mask_later=True), torch.Generator().manual_seed(5))
    assert (out["attention_mask"].gather(1, out["positions"]) == 0).all() and out["attention_mask"].sum() > 0
    torch.manual_seed(0)
    model = ConceptMLM(ConceptModelConfig(vocab_size=1000, num_concepts=4, concept_dim=16, num_heads=2,
                                          max_position_embeddings=64))
    trace = model.encoder.trace(out["input_ids"], out["attention_mask"])
    for weights in trace.attentions:  # (B, H, C, N)
        picked = weights.gather(3, out["positions"][:, None, None, :].expand(-1, 2, 4, -1))
        assert picked.abs().max() == 0 and (weights.sum(-1) - 1).abs().max() < 1e-5
