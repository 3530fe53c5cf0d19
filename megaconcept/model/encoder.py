"""The concept encoder: C learned concepts cross-attend to N token states, then to each other.

Cost per concept layer is O(C*N) for the cross-attention and O(C^2) among concepts, never O(N^2). Token
states come either straight from embeddings + learned positions, or from a Llama-style backbone (RoPE)
whose last state (layout "last") or intermediate states (layout "interleaved") the concept layers read.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .config import ConceptModelConfig
from .layers import CrossAttentionBlock, MLPBlock, SelfAttentionBlock, sinusoidal_features


READ_POSITIONS = ("sinusoidal", "none")


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


class ConceptLayer(nn.Module):
    """concepts <- tokens cross-attention, concept self-attention, gated MLP (all pre-norm residual)."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        d, h, eps, p = cfg.concept_dim, cfg.num_heads, cfg.norm_eps, cfg.dropout
        use_positions = cfg.backbone.enabled and cfg.backbone.read_positions == "sinusoidal"
        self.read_positions = ReadPositions(cfg.token_dim) if use_positions else None
        self.cross = CrossAttentionBlock(d, h, eps, p, cfg.attention, kv_dim=cfg.token_dim)
        self.self_attn = SelfAttentionBlock(d, h, eps, p, cfg.attention)
        self.mlp = MLPBlock(d, cfg.mlp_dim, eps, p)

    def forward(self, concepts: torch.Tensor, tokens: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """concepts (B, C, D), tokens (B, N, Dt), token_mask (B, N) -> concepts (B, C, D)."""
        if self.read_positions is not None:
            tokens = self.read_positions(tokens)
        concepts = self.cross(concepts, tokens, token_mask)
        concepts = self.self_attn(concepts)
        return self.mlp(concepts)


def read_depths(cfg: ConceptModelConfig) -> list[int]:
    """Backbone depth each concept layer reads: all the last one, or spread evenly when interleaved."""
    depth, layers = cfg.backbone.num_layers, cfg.num_layers
    if cfg.backbone.layout == "interleaved":
        return [math.ceil((i + 1) * depth / layers) for i in range(layers)]
    return [depth] * layers


class ConceptEncoder(nn.Module):
    """Token embedding (+ backbone or learned positions) -> stack of :class:`ConceptLayer` -> normed concepts."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.token_dim)
        self.backbone = Backbone(cfg.backbone) if cfg.backbone.enabled else None
        # With a backbone, RoPE carries positions (any length); otherwise a learned table does.
        self.position_embed = None if self.backbone else nn.Embedding(cfg.max_position_embeddings, cfg.token_dim)
        self.concepts = nn.Parameter(torch.randn(cfg.num_concepts, cfg.concept_dim) * cfg.concept_init_std)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(ConceptLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.concept_dim, eps=cfg.norm_eps)
        self.depths = read_depths(cfg) if self.backbone else None

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, N) -> token embeddings (B, N, Dt), with learned positions when there is no backbone."""
        tokens = self.token_embed(input_ids)
        if self.position_embed is None:
            return tokens
        n = input_ids.shape[1]
        if n > self.position_embed.num_embeddings:
            raise ValueError(
                f"sequence length {n} exceeds max_position_embeddings {self.position_embed.num_embeddings}"
            )
        return self.dropout(tokens + self.position_embed(torch.arange(n, device=input_ids.device)))

    def token_states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """The token states (B, N, Dt) each concept layer reads, in layer order."""
        tokens = self.embed_tokens(input_ids)
        if self.backbone is None:
            return [tokens] * len(self.layers)
        return [self.dropout(t) for t in self.backbone(tokens, attention_mask, capture=self.depths)]

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids (B, N), attention_mask (B, N) 1 = real token -> concepts (B, C, D)."""
        reads = self.token_states(input_ids, attention_mask)
        concepts = self.concepts.unsqueeze(0).expand(input_ids.shape[0], -1, -1).to(reads[0].dtype)  # (B, C, D)
        for layer, tokens in zip(self.layers, reads):
            concepts = layer(concepts, tokens, attention_mask)
        return self.norm(concepts)
