"""The concept encoder: C learned concepts cross-attend to N token states, then to each other.

Cost per layer is O(C*N) for the cross-attention and O(C^2) among concepts, never O(N^2).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import ConceptModelConfig
from .layers import CrossAttentionBlock, MLPBlock, SelfAttentionBlock


class ConceptLayer(nn.Module):
    """concepts <- tokens cross-attention, concept self-attention, gated MLP (all pre-norm residual)."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        d, h, eps, p = cfg.concept_dim, cfg.num_heads, cfg.norm_eps, cfg.dropout
        self.cross = CrossAttentionBlock(d, h, eps, p, cfg.attention)
        self.self_attn = SelfAttentionBlock(d, h, eps, p, cfg.attention)
        self.mlp = MLPBlock(d, cfg.mlp_dim, eps, p)

    def forward(self, concepts: torch.Tensor, tokens: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """concepts (B, C, D), tokens (B, N, D), token_mask (B, N) -> concepts (B, C, D)."""
        concepts = self.cross(concepts, tokens, token_mask)
        concepts = self.self_attn(concepts)
        return self.mlp(concepts)


class ConceptEncoder(nn.Module):
    """Token embedding + learned positions -> stack of :class:`ConceptLayer` -> normed concepts."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.concept_dim)
        self.position_embed = nn.Embedding(cfg.max_position_embeddings, cfg.concept_dim)
        self.concepts = nn.Parameter(torch.randn(cfg.num_concepts, cfg.concept_dim) * cfg.init_std)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(ConceptLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.concept_dim, eps=cfg.norm_eps)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, N) -> token states (B, N, D)."""
        n = input_ids.shape[1]
        if n > self.position_embed.num_embeddings:
            raise ValueError(
                f"sequence length {n} exceeds max_position_embeddings {self.position_embed.num_embeddings}"
            )
        positions = torch.arange(n, device=input_ids.device)
        return self.dropout(self.token_embed(input_ids) + self.position_embed(positions))

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids (B, N), attention_mask (B, N) 1 = real token -> concepts (B, C, D)."""
        tokens = self.embed_tokens(input_ids)  # (B, N, D)
        concepts = self.concepts.unsqueeze(0).expand(input_ids.shape[0], -1, -1).to(tokens.dtype)  # (B, C, D)
        for layer in self.layers:
            concepts = layer(concepts, tokens, attention_mask)
        return self.norm(concepts)
