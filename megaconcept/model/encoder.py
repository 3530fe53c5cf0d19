"""The concept encoder: C learned concepts cross-attend to N token states, then to each other.

Cost per concept layer is O(C*N) for the cross-attention and O(C^2) among concepts, never O(N^2). Token
states come either straight from embeddings + learned positions, or from a Llama-style backbone (RoPE)
whose last state (layout "last") or intermediate states (layout "interleaved") the concept layers read.
How concepts read tokens is a registry (CONCEPT_LAYERS, model.concept_layer): one cross-attention softmax over the
tokens, or slot attention (megaconcept.model.slot), where the concepts compete for each token.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from .backbone import Backbone
# ReadPositions is imported from here too (hf_modeling): it lived in this file before slot layers shared it.
from .concept_positions import ReadPositions, concept_rotary, read_positions  # noqa: F401
from .config import ConceptModelConfig
from .layers import CrossAttentionBlock, MLPBlock, SelfAttentionBlock
from .registry import Registry
from .slot import SlotConceptLayer
from .units import BackboneUnit, ConceptUnit, EncoderInput, EncoderOutput


READ_POSITIONS = ("sinusoidal", "none")


class EncoderTrace(NamedTuple):
    concepts: torch.Tensor
    """(B, C, D) normed concepts, as forward returns them."""
    hidden_states: tuple[torch.Tensor, ...]
    """(B, C, D) the concept queries, then the concepts after each concept layer (before the final norm)."""
    attentions: tuple[torch.Tensor, ...]
    """(B, H, C, N) fp32 per concept layer, padding exactly 0. cross_attention: each concept's attention over the
    tokens (rows sum to 1); slot: the last iteration's softmax over the concepts (each real token's column sums
    to 1 over C)."""


class ConceptLayer(nn.Module):
    """concepts <- tokens cross-attention, concept self-attention, gated MLP (all pre-norm residual)."""

    iterates = False
    """One pass: there is no iteration count to override."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        d, h, eps, p = cfg.concept_dim, cfg.num_heads, cfg.norm_eps, cfg.dropout
        self.read_positions = read_positions(cfg)
        self.cross = CrossAttentionBlock(d, h, eps, p, cfg.attention, kv_dim=cfg.token_dim)
        self.self_attn = SelfAttentionBlock(d, h, eps, p, cfg.attention, rotary=concept_rotary(cfg))
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


CONCEPT_LAYERS: Registry[type[nn.Module]] = Registry("model.concept_layer")
"""Concept layer kinds. Each is built from the model config and called as layer(concepts (B, C, D), tokens
(B, N, Dt), token_mask (B, N) | None, return_weights=False) -> concepts (B, C, D) [, weights (B, H, C, N)],
which is all ConceptUnit (pipeline) and trace need; `iterates` layers also take `iterations`."""
CONCEPT_LAYERS.add("cross_attention", ConceptLayer)
CONCEPT_LAYERS.add("slot", SlotConceptLayer)


def read_depths(cfg: ConceptModelConfig) -> list[int]:
    """Backbone depth each concept layer reads: all the last one, or spread evenly when interleaved."""
    depth, layers = cfg.backbone.num_layers, cfg.num_layers
    if cfg.backbone.layout == "interleaved":
        return [math.ceil((i + 1) * depth / layers) for i in range(layers)]
    return [depth] * layers


class ConceptEncoder(nn.Module):
    """Token embedding (+ backbone or learned positions) -> stack of concept layers (CONCEPT_LAYERS) -> normed
    concepts."""

    tensor_parallel_plan = {"token_embed": "vocab"}

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.token_dim)
        self.backbone = Backbone(cfg.backbone) if cfg.backbone.enabled else None
        # With a backbone, RoPE carries positions (any length); otherwise a learned table does.
        self.position_embed = None if self.backbone else nn.Embedding(cfg.max_position_embeddings, cfg.token_dim)
        self.concepts = nn.Parameter(torch.randn(cfg.num_concepts, cfg.concept_dim) * cfg.concept_init_std)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = CONCEPT_LAYERS[cfg.concept_layer]
        self.layers = nn.ModuleList(layer(cfg) for _ in range(cfg.num_layers))
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

    def layer_options(self, slot_iterations: Optional[int]) -> dict[str, int]:
        """Keyword arguments for the concept layers: an inference-time K for slot layers (None: the config's)."""
        if slot_iterations is None:
            return {}
        if not all(getattr(layer, "iterates", False) for layer in self.layers):
            raise ValueError(f"slot_iterations={slot_iterations} applies to model.concept_layer=slot only; this "
                             f"model's concept layers are {type(self.layers[0]).__name__}")
        return {"iterations": slot_iterations}

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                slot_iterations: Optional[int] = None) -> torch.Tensor:
        """input_ids (B, N), attention_mask (B, N) 1 = real token -> concepts (B, C, D); slot_iterations
        overrides model.slot_iterations (slot layers only)."""
        options = self.layer_options(slot_iterations)
        reads = self.token_states(input_ids, attention_mask)
        concepts = self.initial_concepts(reads[0])  # (B, C, D)
        for layer, tokens in zip(self.layers, reads):
            concepts = layer(concepts, tokens, attention_mask, **options)
        return self.norm(concepts)

    def trace(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
              slot_iterations: Optional[int] = None) -> EncoderTrace:
        """forward, keeping what analysis needs: the concepts entering and leaving every layer and each layer's
        attention weights over the tokens (exact: eager softmax; HF's output_hidden_states / output_attentions;
        for slot layers the last iteration's softmax over the concepts, see EncoderTrace.attentions)."""
        options = self.layer_options(slot_iterations)
        reads = self.token_states(input_ids, attention_mask)
        concepts = self.initial_concepts(reads[0])
        hidden, attentions = [concepts], []
        for layer, tokens in zip(self.layers, reads):
            concepts, weights = layer(concepts, tokens, attention_mask, return_weights=True, **options)
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
