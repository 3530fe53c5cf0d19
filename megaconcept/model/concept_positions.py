"""Positions for the concept layers: what they add to the token states they read, and RoPE over the concept index.

Shared by every concept-layer kind (megaconcept.model.encoder.CONCEPT_LAYERS). Neither holds a parameter
that a default model lacks: ReadPositions exists only with a backbone (as before), ConceptRotary has none.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import RotaryEmbedding, rotate_half
from .config import ConceptModelConfig
from .layers import sinusoidal_features

CONCEPT_POSITIONS = ("none", "rope")
"""Values of model.concept_positions."""

CONCEPT_ROPE_THETA = 10000.0
"""RoPE base over the concept index: C is at most a few hundred, far below where a base of 1e4 starts to alias."""


class ReadPositions(nn.Module):
    """Adds an absolute-position signal to the backbone states one concept layer reads.

    RoPE rotates queries and keys inside the backbone's attention and leaves no absolute position in its
    states, yet the MLM decoder asks the concepts for the token *at position p*. Fixed sinusoidal features
    (any length, like RoPE) go through a learned projection that starts at zero, so a warm-started
    backbone's states reach the concept layers unchanged at step 0 and the model learns how much position
    to mix in. A plain parameter rather than nn.Linear: generic re-initialisation never touches its zeros.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, Dt) -> tokens + P(sinusoid) (B, N, Dt)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        features = sinusoidal_features(positions, tokens.shape[-1], tokens.dtype)
        return tokens + F.linear(features, self.weight.to(tokens.dtype))


def read_positions(cfg: ConceptModelConfig) -> Optional[ReadPositions]:
    """The ReadPositions a concept layer applies to what it reads: only behind a backbone that asks for them."""
    use = cfg.backbone.enabled and cfg.backbone.read_positions == "sinusoidal"
    return ReadPositions(cfg.token_dim) if use else None


class ConceptRotary(nn.Module):
    """RoPE over the concept index for the concepts' self-attention: query/key heads (B, H, C, Dh) rotated by
    their concept's index 0..C-1.

    Without it, concepts are an unordered set: self-attention, cross-attention and slot attention are all
    equivariant to permuting them, and only the learned initial vectors tell them apart. RoPE makes the
    attention between two concepts depend on their index distance, giving the set an order. The rotation acts
    within each head, so a tensor-parallel shard (H/T heads) applies it unchanged. No parameters: the tables
    are computed per call (see backbone.RotaryEmbedding on why not a buffer).
    """

    def __init__(self, head_dim: int, theta: float = CONCEPT_ROPE_THETA) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"concept_positions=rope needs an even head dim (concept_dim / num_heads), got {head_dim}")
        self.rotary = RotaryEmbedding(head_dim, theta)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k (B, H, C, Dh) -> the same, rotated by concept index."""
        cos, sin = self.rotary(q.shape[-2], q.device, q.dtype)  # (C, Dh)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def concept_rotary(cfg: ConceptModelConfig) -> Optional[ConceptRotary]:
    """The concept self-attention's rotation for model.concept_positions (None: no positions)."""
    if cfg.concept_positions not in CONCEPT_POSITIONS:
        raise ValueError(f"model.concept_positions={cfg.concept_positions!r} must be one of "
                         f"{', '.join(CONCEPT_POSITIONS)}")
    return ConceptRotary(cfg.head_dim) if cfg.concept_positions == "rope" else None
