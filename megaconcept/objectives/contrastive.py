"""Contrastive term (SimCSE-style InfoNCE) between the concepts of two views of the same document.

Each packed sample yields two adjacent spans of its longest document (megaconcept.objectives.views). Both views
run through the encoder (concepts only, nothing decoded), are mean-pooled over the C concepts, projected by a
small MLP that belongs to the objective (SimCSE trains with one; the export drops it with `objectives.*`) and
L2-normalised. Negatives are every other valid document of the global batch: the view-b embeddings are gathered
over the data-parallel group with exact gradients (parallel.collectives.gather_with_grad), so the term's
gradient does not shrink as ranks are added. Under tensor parallelism the embeddings are replicated within a
tensor group, and the gather runs over the data-parallel group only (no duplicate negatives).

loss = sum over this rank's valid anchors of CE(a_i . B^T / t, i) / (valid anchors in the global batch / W),
so the data-parallel mean of the ranks' losses is the single-process loss over the global batch (symmetric:
the b -> a direction is added the same way and the two are averaged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel.collectives import gather_with_grad, group_rank, group_size
from .base import OBJECTIVES, BuildContext, Objective, TermConfig
from .views import VIEW_KEYS, DocumentViews


@dataclass
class ContrastiveConfig(TermConfig):
    """objective.terms.contrastive: InfoNCE between two views of each sample's longest document."""

    temperature: float = 0.05
    """Softmax temperature of the cosine similarities (SimCSE: 0.05)."""
    view_tokens: int = 0
    """Tokens per view; 0 = half the sample length."""
    min_tokens: int = 16
    """A document shorter than this gives no pair (the sample is left out of the term)."""
    projection: bool = True
    """Pool -> MLP projection before the similarity (trained with the term, dropped by the export)."""
    symmetric: bool = True
    """Average the a->b and b->a directions (else a->b only, as SimCSE)."""

    def __post_init__(self) -> None:
        if not self.temperature > 0 or self.view_tokens < 0 or self.min_tokens < 2:
            raise ValueError(f"temperature={self.temperature} must be > 0, view_tokens={self.view_tokens} >= 0 and "
                             f"min_tokens={self.min_tokens} >= 2")


class ContrastiveObjective(Objective):
    reads = VIEW_KEYS
    stats = ("accuracy", "pairs")
    nonnegative = True  # cross-entropy
    runs_in_pipeline = False  # it runs the encoder on the views

    def __init__(self, cfg: ContrastiveConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.cfg = cfg
        self._model = (ctx.model,)  # the encoder stays the model's module (one name per parameter)
        self.group = getattr(ctx, "data_group", None)
        width = ctx.model.config.concept_dim
        self.projection = (nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
                           if cfg.projection else nn.Identity())

    def batch_maker(self, separator_id: int, seq_len: int) -> DocumentViews:
        """What the data workers add to each batch for this term (documents end with `separator_id`)."""
        return DocumentViews(separator_id, self.cfg.view_tokens or seq_len // 2, self.cfg.min_tokens)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) view -> (B, D) unit-norm embedding of its pooled concepts."""
        concepts = self._model[0](input_ids=ids, attention_mask=mask, decode=False).concepts  # (B, C, D)
        return F.normalize(self.projection(concepts.float().mean(dim=1)), dim=-1)

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a = self.embed(batch["view_a_ids"], batch["view_a_mask"])  # (B, D)
        b = self.embed(batch["view_b_ids"], batch["view_b_mask"])
        valid = batch["view_valid"].bool()
        valid_all = gather_with_grad(valid.float(), self.group).bool()  # no gradient flows through a bool
        scale = valid_all.sum().clamp(min=1) / group_size(self.group)  # global anchors per rank
        loss, correct = self._direction(a, gather_with_grad(b, self.group), valid, valid_all, scale)
        if self.cfg.symmetric:
            loss_b, correct_b = self._direction(b, gather_with_grad(a, self.group), valid, valid_all, scale)
            loss, correct = (loss + loss_b) / 2, (correct + correct_b) / 2
        return {"loss": loss, "accuracy": correct / scale, "pairs": valid.float().sum()}

    def _direction(self, anchors: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor,
                   valid_all: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed CE over this rank's valid anchors / scale, correct top-1 count)."""
        logits = anchors @ candidates.T / self.cfg.temperature  # (B, W*B)
        logits = logits.masked_fill(~valid_all.unsqueeze(0), float("-inf"))  # no pair: not a negative either
        targets = torch.arange(anchors.shape[0], device=anchors.device) + group_rank(self.group) * anchors.shape[0]
        rows = valid.nonzero().flatten()
        if rows.numel() == 0:  # keeps the graph (and ZeRO's hooks) identical on every rank
            return (anchors.sum() + candidates.sum()) * 0.0, logits.new_zeros(())
        ce = F.cross_entropy(logits[rows], targets[rows], reduction="sum")
        correct = (logits[rows].argmax(dim=-1) == targets[rows]).float().sum()
        return ce / scale, correct.detach()


OBJECTIVES.add("contrastive", ContrastiveObjective, ContrastiveConfig)
