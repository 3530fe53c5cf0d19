"""Decoders: turn concepts back into per-position states (registry keyed by `model.decoder`)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .config import ConceptModelConfig
from .layers import CrossAttentionBlock, MLPBlock, sinusoidal_features
from .registry import Registry
from .units import StageUnit


class SinusoidalQueries(nn.Module):
    """Position queries with no length limit: fixed sin/cos features of the position, learned projection.

    A learned table stops at max_position_embeddings, so a model with a RoPE backbone could encode 8192
    tokens but decode only the first rows of its table. The concepts carry the same sinusoidal features
    (encoder.ReadPositions), so a query and the concept that read position p can learn to match.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (B, M) int -> queries (B, M, D)."""
        return self.proj(sinusoidal_features(positions, self.dim, self.proj.weight.dtype))


POSITION_QUERIES: Registry[Callable[[ConceptModelConfig], nn.Module]] = Registry("model.decoder_positions")
POSITION_QUERIES.add("learned", lambda cfg: nn.Embedding(cfg.max_position_embeddings, cfg.concept_dim))
POSITION_QUERIES.add("sinusoidal", lambda cfg: SinusoidalQueries(cfg.concept_dim))


class PerceiverMLMDecoder(nn.Module):
    """Position queries cross-attend to the concepts; each position is decoded independently.

    Queries carry only *where* (a position vector, `model.decoder_positions`), never the input token, so
    the decoder has no shortcut around the concept bottleneck. Because positions never attend to each
    other, decoding only the masked positions (sparse decoding) gives exactly the states a full decode
    would give there.
    """

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        d = cfg.concept_dim
        self.position_queries = POSITION_QUERIES[cfg.decoder_positions](cfg)
        self.max_positions = cfg.max_position_embeddings if cfg.decoder_positions == "learned" else None
        self.cross = nn.ModuleList(
            CrossAttentionBlock(d, cfg.num_heads, cfg.norm_eps, cfg.dropout, cfg.attention)
            for _ in range(cfg.decoder_layers)
        )
        self.mlp = nn.ModuleList(MLPBlock(d, cfg.mlp_dim, cfg.norm_eps, cfg.dropout) for _ in range(cfg.decoder_layers))
        self.norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        # A tied LM head lives at the token width; project when the concept path is wider or narrower.
        out = cfg.token_dim if cfg.tie_word_embeddings else d
        self.out_proj = nn.Linear(d, out, bias=False) if out != d else None

    def check_length(self, n: int) -> None:
        """Refuse, by shape alone (no device sync), to decode positions 0..n-1 past a learned table."""
        if self.max_positions is not None and n > self.max_positions:
            raise ValueError(
                f"decoding {n} positions exceeds the decoder's learned table of max_position_embeddings="
                f"{self.max_positions}; a model with a RoPE backbone and model.decoder_positions=sinusoidal "
                f"decodes any length"
            )

    def queries(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """positions (B, M) int -> position queries (B, M, D)."""
        return self.position_queries(positions).to(dtype)

    def output(self, states: torch.Tensor) -> torch.Tensor:
        """Last layer's states (B, M, D) -> decoded states at the LM head's width."""
        states = self.norm(states)
        return states if self.out_proj is None else self.out_proj(states)

    def forward(self, concepts: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """concepts (B, C, D), positions (B, M) int -> decoded states (B, M, D or token_dim)."""
        states = self.queries(positions, concepts.dtype)  # (B, M, D)
        for cross, mlp in zip(self.cross, self.mlp):
            states = mlp(cross(states, concepts, None))
        return self.output(states)

    def pipeline_units(self) -> list[nn.Module]:
        """(concepts, positions) -> ... -> (states, concepts), as pipeline units (megaconcept.model.units)."""
        return [DecoderInput(self), *(QueryLayerUnit(c, m) for c, m in zip(self.cross, self.mlp)), DecoderOutput(self)]


class DecoderInput(nn.Module):
    """(concepts, positions) -> (queries (B, M, D), concepts)."""

    def __init__(self, decoder: PerceiverMLMDecoder) -> None:
        super().__init__()
        self.decoder = (decoder,)  # a tuple: this unit owns only the position queries
        self.position_queries = decoder.position_queries

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        concepts, positions = inputs
        return self.decoder[0].queries(positions, concepts.dtype), concepts


class QueryLayerUnit(StageUnit):
    """One decoder layer: queries cross-attend to the concepts, then the MLP."""

    def __init__(self, cross: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.cross, self.mlp = cross, mlp

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        states, concepts = inputs
        return self.mlp(self.cross(states, concepts, None)), concepts


class DecoderOutput(nn.Module):
    """(states, concepts) -> (decoded states at the LM head's width, concepts)."""

    def __init__(self, decoder: PerceiverMLMDecoder) -> None:
        super().__init__()
        self.decoder = (decoder,)
        self.norm, self.out_proj = decoder.norm, decoder.out_proj

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        states, concepts = inputs
        return self.decoder[0].output(states), concepts


DECODERS: Registry[Callable[[ConceptModelConfig], nn.Module]] = Registry("model.decoder")
DECODERS.add("perceiver_mlm", PerceiverMLMDecoder)


def build_decoder(cfg: ConceptModelConfig) -> nn.Module:
    return DECODERS[cfg.decoder](cfg)
