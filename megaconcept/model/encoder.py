"""The concept encoder: C learned concepts cross-attend to N token states, then to each other.

Cost per concept layer is O(C*N) for the cross-attention and O(C^2) among concepts, never O(N^2). Token
states come either straight from embeddings + learned positions, or from a Llama-style backbone (RoPE)
whose last state (layout "last") or intermediate states (layout "interleaved") the concept layers read.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .config import ConceptModelConfig
from .layers import CrossAttentionBlock, MLPBlock, SelfAttentionBlock, sinusoidal_features
from .units import BackboneUnit, ConceptUnit, EncoderInput, EncoderOutput


READ_POSITIONS = ("sinusoidal", "none")


class EncoderTrace(NamedTuple):
    concepts: torch.Tensor
    """(B, C, D) normed concepts, as forward returns them."""
    hidden_states: tuple[torch.Tensor, ...]
    """(B, C, D) the concept queries, then the concepts after each concept layer (before the final norm)."""
    attentions: tuple[torch.Tensor, ...]
    """(B, H, C, N) fp32 per concept layer: each concept's cross-attention over the tokens (padding exactly 0)."""


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

    def forward(self, concepts: torch.Tensor, tokens: torch.Tensor, token_mask: Optional[torch.Tensor],
                return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """concepts (B, C, D), tokens (B, N, Dt), token_mask (B, N) -> concepts (B, C, D); with return_weights
        also the cross-attention weights of the concepts over the tokens (B, H, C, N)."""
        if self.read_positions is not None:
            tokens = self.read_positions(tokens)
        weights = None
        if return_weights:
            concepts, weights = self.cross(concepts, tokens, token_mask, return_weights=True)
        else:
            concepts = self.cross(concepts, tokens, token_mask)
        concepts = self.mlp(self.self_attn(concepts))
        return concepts if weights is None else (concepts, weights)


def read_depths(cfg: ConceptModelConfig) -> list[int]:
    """Backbone depth each concept layer reads: all the last one, or spread evenly when interleaved."""
    depth, layers = cfg.backbone.num_layers, cfg.num_layers
    if cfg.backbone.layout == "interleaved":
        return [math.ceil((i + 1) * depth / layers) for i in range(layers)]
    return [depth] * layers


class ConceptEncoder(nn.Module):
    """Token embedding (+ backbone or learned positions) -> stack of :class:`ConceptLayer` -> normed concepts."""

    tensor_parallel_plan = {"token_embed": "vocab"}

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
        return self.add_positions(self.token_embed(input_ids))

    def add_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, N, Dt) + the learned position table (and dropout) when there is no backbone."""
        if self.position_embed is None:
            return tokens
        n = tokens.shape[1]
        if n > self.position_embed.num_embeddings:
            raise ValueError(
                f"sequence length {n} exceeds max_position_embeddings {self.position_embed.num_embeddings}"
            )
        return self.dropout(tokens + self.position_embed(torch.arange(n, device=tokens.device)))

    def initial_concepts(self, tokens: torch.Tensor) -> torch.Tensor:
        """The learned concept queries broadcast over the batch of `tokens` (B, N, Dt) -> (B, C, D)."""
        return self.concepts.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(tokens.dtype)

    def token_states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """The token states (B, N, Dt) each concept layer reads, in layer order."""
        tokens = self.embed_tokens(input_ids)
        if self.backbone is None:
            return [tokens] * len(self.layers)
        return [self.dropout(t) for t in self.backbone(tokens, attention_mask, capture=self.depths)]

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids (B, N), attention_mask (B, N) 1 = real token -> concepts (B, C, D)."""
        reads = self.token_states(input_ids, attention_mask)
        concepts = self.initial_concepts(reads[0])  # (B, C, D)
        for layer, tokens in zip(self.layers, reads):
            concepts = layer(concepts, tokens, attention_mask)
        return self.norm(concepts)

    def trace(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> EncoderTrace:
        """forward, keeping what analysis needs: the concepts entering and leaving every layer and each layer's
        cross-attention weights (exact: eager softmax; HF's output_hidden_states / output_attentions)."""
        reads = self.token_states(input_ids, attention_mask)
        concepts = self.initial_concepts(reads[0])
        hidden, attentions = [concepts], []
        for layer, tokens in zip(self.layers, reads):
            concepts, weights = layer(concepts, tokens, attention_mask, return_weights=True)
            hidden.append(concepts)
            attentions.append(weights)
        return EncoderTrace(self.norm(concepts), tuple(hidden), tuple(attentions))

    def repeated_layers(self) -> list[nn.Module]:
        """The layers activation checkpointing and compile apply to: backbone layers, then concept layers."""
        return [*(self.backbone.layers if self.backbone is not None else []), *self.layers]

    def pipeline_units(self) -> list[nn.Module]:
        """The encoder after its token embedding, as pipeline units (megaconcept.model.units): input, then
        backbone and concept layers interleaved by the depth each concept layer reads (concept layer i runs
        right after the backbone layer it reads: identical maths, since it reads nothing later), then the norm.
        Input (embeddings (B, N, Dt), positions) -> output (concepts (B, C, D), positions)."""
        units: list[nn.Module] = [EncoderInput(self)]
        backbone = list(self.backbone.layers) if self.backbone is not None else []
        pending = list(zip(self.depths or [0] * len(self.layers), self.layers))
        # Backbone reads get dropout as they reach a concept layer; embeddings without a backbone already had it.
        read_dropout = self.dropout if self.backbone is not None else nn.Identity()
        for depth in range(len(backbone) + 1):
            if depth > 0:
                last = depth == len(backbone)
                units.append(BackboneUnit(backbone[depth - 1], self.backbone.rotary, self.backbone.norm if last else None))
            while pending and pending[0][0] == depth:
                units.append(ConceptUnit(pending.pop(0)[1], read_dropout))
        return units + [EncoderOutput(self.norm)]
