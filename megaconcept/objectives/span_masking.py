"""SpanBERT span masking (Joshi et al. 2020; facebookresearch/SpanBERT `PairWithSpanMaskingScheme`).

Per sample, until exactly M = round(rate * N) tokens are chosen: draw a span length l in *words* from
p(l) proportional to p (1 - p)^(l - min_words) on [min_words, max_words] (paper: p = 0.2, 1..10, mean 3.8
words), draw an anchor word uniformly, skip it if already masked, else take l whole words from the anchor
(clipped at the sequence end; the span that reaches the budget is cut there). Spans therefore always start at
a word start. BERT's 80/10/10 is decided once per span (the paper's `--replacement-method span`).

Hand-written: no library implements it (HF's collators have whole-word masking only), and the per-sample
loop over spans runs in the data-loader workers, on a few dozen spans per sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .masking import MASKING, MaskingSpec, corrupt, num_targets, word_ids


@dataclass
class SpanOptions:
    p: float = 0.2
    """Geometric parameter of the span length in words (SpanBERT's paper command; its code default is 0.3)."""
    min_words: int = 1
    max_words: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.p <= 1.0 or not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"p={self.p} must be in (0, 1] and 1 <= min_words={self.min_words} <= "
                             f"max_words={self.max_words}")

    def length_probs(self) -> torch.Tensor:
        """(max_words - min_words + 1,) probabilities of span lengths min_words..max_words."""
        k = torch.arange(self.max_words - self.min_words + 1, dtype=torch.float64)
        weights = self.p * (1 - self.p) ** k
        return weights / weights.sum()


def sample_spans(word: list[int], budget: int, options: SpanOptions,
                 generator: torch.Generator) -> list[tuple[int, int, int]]:
    """One sample's spans: [(start, end, words)] token ranges in draw order, covering exactly `budget` tokens.

    `word` (N,) is the word index of every token (non-decreasing, from 0). A span that overlaps earlier ones
    adds only its new tokens; the last span is cut at the budget.
    """
    n = len(word)
    begins = [i for i in range(n) if i == 0 or word[i] != word[i - 1]]
    ends = begins[1:] + [n]
    probs, masked, spans, count = options.length_probs(), [False] * n, [], 0
    while count < budget:
        draws = max(budget - count, 8)
        anchors = torch.randint(0, len(begins), (draws,), generator=generator).tolist()
        lengths = (torch.multinomial(probs, draws, replacement=True, generator=generator) + options.min_words).tolist()
        for anchor, length in zip(anchors, lengths):
            if masked[begins[anchor]]:
                continue  # SpanBERT skips anchors already inside a span
            last = min(anchor + length, len(begins)) - 1
            new = [i for i in range(begins[anchor], ends[last]) if not masked[i]][: budget - count]
            for i in new:
                masked[i] = True
            count += len(new)
            spans.append((begins[anchor], new[-1] + 1, last - anchor + 1))
            if count == budget:
                break
    return spans


def span_masking(ids: torch.Tensor, spec: MaskingSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    b, n = ids.shape
    m = num_targets(n, spec.rate)
    options = spec.options or SpanOptions()
    words = word_ids(ids, spec).tolist()
    positions = torch.empty(b, m, dtype=torch.long)
    action = torch.empty(b, m)
    for row in range(b):
        spans = sample_spans(words[row], m, options, generator)
        per_span = torch.rand(len(spans), generator=generator).tolist()  # 80/10/10 once per span
        decided: dict[int, float] = {}
        for (start, end, _), value in zip(spans, per_span):
            for i in range(start, end):
                decided.setdefault(i, value)  # a token keeps the decision of the first span that took it
        chosen = sorted(decided)
        positions[row] = torch.tensor(chosen)
        action[row] = torch.tensor([decided[i] for i in chosen])
    return corrupt(ids, positions, action, spec, generator)


MASKING.add("span", span_masking, SpanOptions)
