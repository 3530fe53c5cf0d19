"""Dynamic masking strategies (registry keyed by `objective.masking.strategy`).

A strategy turns packed ids (B, N) into model inputs plus the positions to decode and their labels.
Every sample gets the same number of targets M = round(rate * N), so the decoder works on a dense
(B, M) tensor without padding; randomness comes from an explicit generator so masking replays exactly
after a resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..model.registry import Registry


@dataclass(frozen=True)
class MaskingSpec:
    """What a strategy needs to know about the vocabulary and the rates."""

    rate: float
    mask_prob: float
    random_prob: float
    mask_token_id: int
    random_vocab_size: int
    """Random replacements are drawn from [0, random_vocab_size): ordinary tokens only."""


def num_targets(seq_len: int, rate: float) -> int:
    return max(1, int(round(rate * seq_len)))


def bert_masking(ids: torch.Tensor, spec: MaskingSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """BERT 80/10/10: of M chosen positions per sample, mask_prob -> [MASK], random_prob -> random id.

    ids (B, N) int64 -> {input_ids (B, N), positions (B, M) sorted, labels (B, M)}.
    """
    b, n = ids.shape
    m = num_targets(n, spec.rate)
    scores = torch.rand(b, n, generator=generator)
    positions = scores.topk(m, dim=1).indices.sort(dim=1).values  # (B, M) uniform subset per row
    labels = ids.gather(1, positions)
    action = torch.rand(b, m, generator=generator)
    random_ids = torch.randint(0, spec.random_vocab_size, (b, m), generator=generator)
    replaced = torch.where(action < spec.mask_prob, torch.full_like(labels, spec.mask_token_id), labels)
    replaced = torch.where(
        (action >= spec.mask_prob) & (action < spec.mask_prob + spec.random_prob), random_ids, replaced
    )
    input_ids = ids.clone()
    input_ids.scatter_(1, positions, replaced)
    return {"input_ids": input_ids, "positions": positions, "labels": labels}


MaskingFn = Callable[[torch.Tensor, MaskingSpec, torch.Generator], dict[str, torch.Tensor]]
MASKING: Registry[MaskingFn] = Registry("objective.masking.strategy")
MASKING.add("bert", bert_masking)


class MaskingCollator:
    """Picklable collate callable for loader workers: (ids (B, N), generator) -> model batch."""

    def __init__(self, strategy: str, spec: MaskingSpec) -> None:
        self.fn = MASKING[strategy]
        self.spec = spec

    def __call__(self, ids: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.fn(ids, self.spec, generator)
