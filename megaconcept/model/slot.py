"""Slot-attention concept layer (model.concept_layer=slot): concepts compete for the tokens.

Cross-attention lets every concept read whatever it likes, so nothing stops all of them from reading the same
tokens (and collapsing). Slot attention (Locatello et al. 2020, google-research slot_attention/model.py) takes
the softmax over the *concepts* instead: each token hands out one unit of attention among the concepts, and a
concept's update is the weighted mean of the tokens it won. Multi-head as in SAVi's InvertedDotProductAttention
(softmax over the slots within each head). K weight-tied iterations refine the concepts; each ends in a GRU
update and a residual MLP, as in the reference.

Differences from the TF reference, on purpose: RMSNorm (the project's norm) instead of LayerNorm, the gated
MLP of the other layers (hidden model.mlp_dim) instead of a ReLU one, an output projection after the heads
(SAVi's), and no sampled initial slots: they are the incoming concepts (the encoder's learned vectors in the
first layer), so training, evaluation and exports are deterministic.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .concept_positions import concept_rotary, read_positions
from .config import ConceptModelConfig
from .layers import MLPBlock, SelfAttentionBlock

SLOT_UPDATES = ("gru", "residual")
"""model.slot_update: the reference's GRU, or a residual add (see ConceptModelConfig.slot_update)."""
SLOT_EPSILON = 1e-8
"""Added to the softmax over concepts before the mean over tokens (the reference's): a concept that won no
token gets the plain mean instead of 0/0. Meaningful only in fp32, where the attention is computed."""


def slot_weights(q: torch.Tensor, k: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """q (B, H, C, Dh), k (B, H, N, Dh), keep (B, 1, 1, N) bool -> (B, H, C, N) softmax over the concepts (C),
    in fp32 or wider; padding tokens' columns are exactly 0, every real token's column sums to 1."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    logits = q.to(dtype) @ k.to(dtype).transpose(-1, -2) * q.shape[-1] ** -0.5
    weights = logits.softmax(dim=-2)
    return weights if keep is None else weights.masked_fill(~keep, 0.0)


def token_means(weights: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, H, C, N) softmax over concepts -> each concept's weights over the real tokens, summing to 1.

    Padding stays at exactly 0 (epsilon only on real tokens); a row with no real token at all is all 0
    (the clamp avoids 0/0), so its update is 0 and the concepts stay finite.
    """
    weights = weights + SLOT_EPSILON
    if keep is not None:
        weights = weights.masked_fill(~keep, 0.0)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


class SlotAttention(nn.Module):
    """K weight-tied iterations of: q = W_q RMSNorm(concepts); softmax over concepts; weighted mean of the
    values over tokens; o_proj; GRU(updates, concepts); concepts + MLP(RMSNorm(concepts)).

    Keys and values come from the normed tokens once; queries per iteration. Head counts follow from the
    projections' widths, so a tensor-parallel shard (H/T heads) runs as is: the softmax over concepts and the
    mean over tokens are per head, o_proj sums the ranks' heads into the full-width updates that the
    replicated GRU and MLP read.
    """

    # Heads split across tensor-parallel ranks; o_proj sums them (the GRU reads its full-width output).
    tensor_parallel_plan = {"q_proj": "column", "k_proj": "column", "v_proj": "column", "o_proj": "row"}

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float, dropout: float, iterations: int,
                 kv_dim: Optional[int] = None, update: str = "gru") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.head_dim = dim // num_heads
        self.iterations = check_iterations(iterations)
        kv_dim = kv_dim or dim
        self.token_norm = nn.RMSNorm(kv_dim, eps=eps)
        self.query_norm = nn.RMSNorm(dim, eps=eps)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(kv_dim, dim, bias=False)
        self.v_proj = nn.Linear(kv_dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        if update not in SLOT_UPDATES:
            raise ValueError(f"model.slot_update={update!r} is unknown; valid: {', '.join(SLOT_UPDATES)}")
        # The reference's recurrent update: replacing it by `concepts = updates` (no residual) makes gradients
        # explode; residual keeps the concept's own vector instead.
        self.gru = nn.GRUCell(dim, dim) if update == "gru" else None
        self.mlp = MLPBlock(dim, mlp_dim, eps, dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, D) -> (B, H, L, Dh)
        return x.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)

    def forward(self, concepts: torch.Tensor, tokens: torch.Tensor, token_mask: Optional[torch.Tensor],
                iterations: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """concepts (B, C, D), tokens (B, N, Dt), token_mask (B, N) 1 = real -> concepts (B, C, D) and the last
        iteration's softmax over concepts (B, H, C, N) (padding columns 0). `iterations` overrides K."""
        steps = self.iterations if iterations is None else check_iterations(iterations)
        tokens = self.token_norm(tokens)
        k, v = self._heads(self.k_proj(tokens)), self._heads(self.v_proj(tokens))  # (B, H, N, Dh)
        keep = None if token_mask is None else token_mask[:, None, None, :].bool()
        concepts, weights = self.step(concepts, k, v, keep)
        for _ in range(steps - 1):  # weight-tied: the same projections, GRU and MLP every iteration
            concepts, weights = self.step(concepts, k, v, keep)
        return concepts, weights

    def step(self, concepts: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             keep: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration: concepts (B, C, D), k/v (B, H, N, Dh) -> concepts (B, C, D), weights (B, H, C, N)."""
        weights = slot_weights(self._heads(self.q_proj(self.query_norm(concepts))), k, keep)
        means = token_means(weights, keep).to(v.dtype)
        updates = self.dropout(self.o_proj((means @ v).transpose(1, 2).flatten(-2)))  # (B, C, D)
        if self.gru is None:
            updated = concepts + updates
        else:
            updated = self.gru(updates.flatten(0, 1), concepts.flatten(0, 1)).view_as(concepts)
        return self.mlp(updated), weights


def check_iterations(iterations: int) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"slot_iterations={iterations!r} must be an integer >= 1")
    return iterations


class SlotConceptLayer(nn.Module):
    """concepts <- tokens slot attention (K iterations), then concept self-attention and gated MLP (pre-norm
    residual), the same tail as the cross-attention layer."""

    iterates = True
    """Takes `iterations` (an inference-time override of model.slot_iterations)."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        d, h, eps, p = cfg.concept_dim, cfg.num_heads, cfg.norm_eps, cfg.dropout
        self.read_positions = read_positions(cfg)
        self.slot = SlotAttention(d, h, cfg.mlp_dim, eps, p, cfg.slot_iterations, kv_dim=cfg.token_dim,
                                  update=cfg.slot_update)
        self.self_attn = SelfAttentionBlock(d, h, eps, p, cfg.attention, rotary=concept_rotary(cfg))
        self.mlp = MLPBlock(d, cfg.mlp_dim, eps, p)

    def forward(self, concepts: torch.Tensor, tokens: torch.Tensor, token_mask: Optional[torch.Tensor],
                return_weights: bool = False, iterations: Optional[int] = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """concepts (B, C, D), tokens (B, N, Dt), token_mask (B, N) -> concepts (B, C, D); with return_weights also
        the last iteration's softmax over the concepts (B, H, C, N): each real token's column sums to 1 over C,
        padding columns are 0 (not, as for cross-attention, each concept's row over the tokens)."""
        if self.read_positions is not None:
            tokens = self.read_positions(tokens)
        concepts, weights = self.slot(concepts, tokens, token_mask, iterations)
        concepts = self.mlp(self.self_attn(concepts))
        return (concepts, weights) if return_weights else concepts
