"""Sequence classification over concepts: poolers (registry keyed by name) and the classification head.

Pooling turns the encoder's concepts (B, C, D) into one vector per sequence:
  mean       mean over the C concepts;
  attention  a few learned queries attend over the concepts (multi-head), their outputs averaged: the
             model learns which concepts matter for the task instead of one fixed query deciding;
  decoder    the pretrained MLM decoder decodes every real position from the concepts, and the decoded
             states are mean-pooled over real tokens: classification reads the representation pretraining
             actually trained (the concepts only ever had to serve that decoder).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from .config import ConceptModelConfig
from .layers import Attention
from .registry import Registry

ATTENTION_POOL_QUERIES = 4


class MeanPooler(nn.Module):
    """Mean over the sequence (over real positions only when a mask is given)."""

    def forward(self, states: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is None:
            return states.mean(dim=1)
        weights = mask.to(states.dtype).unsqueeze(-1)
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class AttentionPooler(nn.Module):
    """Learned queries (Q, D) attend over the sequence (multi-head); the Q outputs are averaged."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(ATTENTION_POOL_QUERIES, cfg.concept_dim) * cfg.init_std)
        self.norm = nn.RMSNorm(cfg.concept_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.concept_dim, cfg.num_heads, cfg.attention)

    def forward(self, states: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        queries = self.query.unsqueeze(0).expand(states.shape[0], -1, -1).to(states.dtype)
        return self.attn(queries, self.norm(states), mask).mean(dim=1)


def decoder_width(cfg: ConceptModelConfig) -> int:
    """Width of the decoder's output states (the token width when a tied head sits behind a projection)."""
    return cfg.token_dim if cfg.tie_word_embeddings else cfg.concept_dim


class Pooling(NamedTuple):
    build: Callable[[ConceptModelConfig], nn.Module]
    decodes: bool
    """Pool the pretrained decoder's states at every real position instead of the concepts."""


POOLINGS: Registry[Pooling] = Registry("classifier_pooling")
POOLINGS.add("mean", Pooling(lambda cfg: MeanPooler(), decodes=False))
POOLINGS.add("attention", Pooling(AttentionPooler, decodes=False))
POOLINGS.add("decoder", Pooling(lambda cfg: MeanPooler(), decodes=True))


def pooling(name: str) -> Pooling:
    return POOLINGS[name]


def pooled_width(cfg: ConceptModelConfig, name: str) -> int:
    return decoder_width(cfg) if pooling(name).decodes else cfg.concept_dim


class ClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> labels (the BERT/RoBERTa sequence-classification head)."""

    def __init__(self, width: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(width, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.dense(self.dropout(pooled)))
        return self.out_proj(self.dropout(hidden))
