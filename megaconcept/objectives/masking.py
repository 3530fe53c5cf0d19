"""Dynamic masking strategies (registry keyed by `objective.masking.strategy`) and masking-rate schedules.

A strategy turns packed ids (B, N) into model inputs plus the positions to decode and their labels. Every
sample gets exactly M = round(rate * N) targets, so the decoder works on a dense (B, M) tensor without padding;
randomness comes from an explicit generator so masking replays exactly after a resume.

    bert        M positions uniformly at random; 80/10/10 per token
    whole_word  whole words in random order until M tokens (the last word cut at the budget); 80/10/10 per word
    span        SpanBERT (Joshi et al. 2020): span lengths in words ~ Geometric(p) truncated to
                [min_words, max_words], anchored at word starts, until M tokens; 80/10/10 once per span
                (span_masking.py)

Of the targets, mask_prob become the mask token, random_prob a random *ordinary* token of the shards'
tokenizer (never a special id), the rest keep theirs. With `mask_later` (MAE-LM) the batch also carries an
attention_mask that is 0 at every target, so the concept layers (and the backbone) never read them as keys.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch

from ..model.registry import Registry


@dataclass(frozen=True)
class MaskingSpec:
    """What a strategy needs to know about the vocabulary and the rates."""

    rate: float
    mask_prob: float
    random_prob: float
    mask_token_id: int
    replacement_ids: torch.Tensor
    """(R,) the ordinary token ids random replacements are drawn from (uniformly)."""
    word_start: Optional[torch.Tensor] = None
    """(V,) bool: the token starts a word (megaconcept.data.vocab); needed by whole_word and span."""
    special: Optional[torch.Tensor] = None
    """(V,) bool: the token is special (a word of its own)."""
    options: Any = None
    """The strategy's own options (its registry config dataclass), e.g. SpanOptions."""
    mask_later: bool = False


def num_targets(seq_len: int, rate: float) -> int:
    return max(1, int(round(rate * seq_len)))


def corrupt(ids: torch.Tensor, positions: torch.Tensor, action: torch.Tensor, spec: MaskingSpec,
            generator: torch.Generator) -> dict[str, torch.Tensor]:
    """ids (B, N), sorted target positions (B, M), action (B, M) in [0, 1) -> the model batch.

    action < mask_prob: the mask token; < mask_prob + random_prob: a random ordinary token; else unchanged.
    A strategy that decides per word or span passes the same action for all its tokens.
    """
    b, m = positions.shape
    labels = ids.gather(1, positions)
    pick = torch.randint(0, spec.replacement_ids.numel(), (b, m), generator=generator)
    random_ids = spec.replacement_ids[pick]
    replaced = torch.where(action < spec.mask_prob, torch.full_like(labels, spec.mask_token_id), labels)
    replaced = torch.where((action >= spec.mask_prob) & (action < spec.mask_prob + spec.random_prob), random_ids, replaced)
    input_ids = ids.clone()
    input_ids.scatter_(1, positions, replaced)
    batch = {"input_ids": input_ids, "positions": positions, "labels": labels}
    if spec.mask_later:
        batch["attention_mask"] = torch.ones_like(ids).scatter_(1, positions, 0)
    return batch


def bert_masking(ids: torch.Tensor, spec: MaskingSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """BERT: M positions uniformly at random per sample; 80/10/10 decided per token."""
    b, n = ids.shape
    m = num_targets(n, spec.rate)
    scores = torch.rand(b, n, generator=generator)
    positions = scores.topk(m, dim=1).indices.sort(dim=1).values  # (B, M) uniform subset per row
    action = torch.rand(b, m, generator=generator)
    return corrupt(ids, positions, action, spec, generator)


def word_ids(ids: torch.Tensor, spec: MaskingSpec) -> torch.Tensor:
    """(B, N) -> (B, N) index of the word each token belongs to (0-based per row)."""
    if spec.word_start is None or spec.special is None:
        raise ValueError("this masking strategy needs the tokenizer's word-start table (MaskingSpec.word_start)")
    starts = spec.word_start[ids].clone()
    after_special = torch.zeros_like(starts)
    after_special[:, 1:] = spec.special[ids[:, :-1]]  # a special token is a word of its own
    starts |= after_special
    starts[:, 0] = True
    return starts.long().cumsum(dim=1) - 1


def whole_word_masking(ids: torch.Tensor, spec: MaskingSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Whole words in a random order per sample until exactly M tokens (the last word cut at the budget);
    80/10/10 decided once per word. Vectorised: words are ranked, tokens sorted by (word rank, position)."""
    b, n = ids.shape
    m = num_targets(n, spec.rate)
    word = word_ids(ids, spec)  # (B, N)
    word_rank = torch.rand(b, n, generator=generator).argsort(dim=1).argsort(dim=1)  # a random rank per word id
    token_key = word_rank.gather(1, word) * n + torch.arange(n)  # whole words stay together, in order
    positions = token_key.topk(m, dim=1, largest=False).indices.sort(dim=1).values  # (B, M)
    per_word = torch.rand(b, n, generator=generator)
    action = per_word.gather(1, word.gather(1, positions))
    return corrupt(ids, positions, action, spec, generator)


MaskingFn = Callable[[torch.Tensor, MaskingSpec, torch.Generator], dict[str, torch.Tensor]]
MASKING: Registry[MaskingFn] = Registry("objective.masking.strategy")
MASKING.add("bert", bert_masking)
MASKING.add("whole_word", whole_word_masking)


@dataclass
class ScheduleOptions:
    final_rate: Optional[float] = None
    """The rate the schedule moves to (linear) or switches to (step); None = objective.masking.rate."""
    steps: int = 0
    """linear: optimizer steps from rate to final_rate (then final_rate); step: the step it switches at."""


def _constant(rate: float, options: ScheduleOptions, step: int) -> float:
    return rate


def _linear(rate: float, options: ScheduleOptions, step: int) -> float:
    final = rate if options.final_rate is None else options.final_rate
    if options.steps <= 0:
        return final
    return rate + (final - rate) * min(1.0, step / options.steps)


def _step(rate: float, options: ScheduleOptions, step: int) -> float:
    final = rate if options.final_rate is None else options.final_rate
    return rate if step < options.steps else final


MASK_SCHEDULES: Registry[Callable[[float, ScheduleOptions, int], float]] = Registry("objective.masking.schedule")
"""Masking rate as a function of the optimizer step (e.g. linear 0.30 -> 0.15, Ankner et al. 2023). The step
is part of the resumed state, so a resumed run continues the schedule where it stopped."""
MASK_SCHEDULES.add("constant", _constant, ScheduleOptions)
MASK_SCHEDULES.add("linear", _linear, ScheduleOptions)
MASK_SCHEDULES.add("step", _step, ScheduleOptions)


BatchMaker = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""Clean ids (B, N) -> extra batch tensors (an objective's, made in the data workers)."""


class MaskingCollator:
    """Picklable collate callable for loader workers: (ids (B, N), generator[, batch_index]) -> model batch.

    The loader passes `batch_index`, this rank's micro-batch index in its stream (stable across resumes), from
    which the optimizer step and so the scheduled rate follow: step = first_step + batch_index // grad_accum.
    Called without it (the held-out batch), the base rate applies.
    """

    takes_batch_index = True

    def __init__(self, strategy: str, spec: MaskingSpec, schedule: str = "constant",
                 schedule_options: Optional[ScheduleOptions] = None, grad_accum_steps: int = 1,
                 first_step: int = 0, extras: Sequence[BatchMaker] = ()) -> None:
        self.fn = MASKING[strategy]
        self.spec = spec
        self.schedule, self.schedule_options = MASK_SCHEDULES[schedule], schedule_options or ScheduleOptions()
        self.grad_accum_steps, self.first_step = grad_accum_steps, first_step
        self.extras = tuple(extras)
        """Batch makers of the objectives (e.g. a contrastive term's document views): clean ids -> more keys."""

    def rate_at(self, step: int) -> float:
        return self.schedule(self.spec.rate, self.schedule_options, step)

    def __call__(self, ids: torch.Tensor, generator: torch.Generator,
                 batch_index: Optional[int] = None) -> dict[str, torch.Tensor]:
        spec = self.spec
        if batch_index is not None:
            rate = self.rate_at(self.first_step + batch_index // self.grad_accum_steps)
            if rate != spec.rate:
                spec = replace(spec, rate=rate)
        batch = self.fn(ids, spec, generator)
        for extra in self.extras:  # from the clean ids: views are never masked
            batch.update(extra(ids))
        return batch


from . import span_masking as _span  # noqa: E402,F401  (registers `span`)
from . import diffusion_masking as _diffusion  # noqa: E402,F401  (registers `diffusion`)
