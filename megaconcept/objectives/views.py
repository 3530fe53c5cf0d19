"""Two views of one document per packed sample, for contrastive terms (made in the data workers).

A packed sample concatenates documents, each ended by the shards' separator id (eos, or BERT's [SEP]: the
manifest's `separator_id`). Its longest document (its longest separator-free run) is
cut into two adjacent halves: view a = the first half, view b = the second, each at most `view_tokens` long
(the halves are taken around the cut, so the two views touch). Samples whose longest document is shorter than
`min_tokens` have no pair (`view_valid` False): the term leaves them out as anchors and as negatives.

    DocumentViews(ids (B, N)) -> view_a_ids, view_b_ids (B, L) int64, view_a_mask, view_b_mask (B, L) int64,
                                 view_valid (B,) bool       with L = view_tokens
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

VIEW_KEYS = ("view_a_ids", "view_a_mask", "view_b_ids", "view_b_mask", "view_valid")


@dataclass(frozen=True)
class DocumentViews:
    """Picklable: it travels to the loader workers with the collator."""

    separator_id: int
    """The id that ends each document (the shards' manifest `separator_id`)."""
    view_tokens: int
    min_tokens: int

    def __call__(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, length = ids.shape[0], self.view_tokens
        out = {key: torch.zeros(batch, length, dtype=torch.long) for key in VIEW_KEYS[:4]}
        out["view_valid"] = torch.zeros(batch, dtype=torch.bool)
        for row in range(batch):
            start, end = longest_document(ids[row], self.separator_id)
            if end - start < max(2, self.min_tokens):
                continue
            cut = (start + end) // 2
            a, b = ids[row, max(start, cut - length):cut], ids[row, cut:min(end, cut + length)]
            out["view_a_ids"][row, :a.numel()], out["view_a_mask"][row, :a.numel()] = a, 1
            out["view_b_ids"][row, :b.numel()], out["view_b_mask"][row, :b.numel()] = b, 1
            out["view_valid"][row] = True
        return out


def longest_document(row: torch.Tensor, separator_id: int) -> tuple[int, int]:
    """[start, end) of the longest run of non-separator ids in `row` (N,); the first one on ties; (0, 0) if none."""
    ends = torch.nonzero(row == separator_id).flatten().tolist()
    bounds = [-1, *ends, row.numel()]
    spans = [(left + 1, right) for left, right in zip(bounds, bounds[1:])]
    start, end = max(spans, key=lambda s: s[1] - s[0])
    return (start, end) if end > start else (0, 0)
