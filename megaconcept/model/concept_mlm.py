"""ConceptMLM: the concept encoder plus an MLM decoder and (optionally tied) LM head."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConceptModelConfig
from .decoders import build_decoder
from .encoder import ConceptEncoder
from .layers import init_weights
from .lm_loss import CrossEntropyFn, chunked_cross_entropy


class MLMOutput(NamedTuple):
    states: torch.Tensor
    """Decoded states (B, M, D) at the requested positions."""
    loss: Optional[torch.Tensor]
    """Mean cross-entropy over the positions when labels were given."""


def head_weight(encoder: ConceptEncoder, lm_head: Optional[nn.Linear]) -> torch.Tensor:
    """The LM head matrix (V, D): the token embedding when tied. Shared with the HF wrapper."""
    return encoder.token_embed.weight if lm_head is None else lm_head.weight


def encode_decode(
    encoder: ConceptEncoder, decoder: nn.Module, input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor], positions: Optional[torch.Tensor],
) -> torch.Tensor:
    """input_ids (B, N) -> decoded states (B, M, D) at `positions` (B, M), default all N. Shared with the HF wrapper."""
    concepts = encoder(input_ids, attention_mask)  # (B, C, D)
    if positions is None:
        decoder.check_length(input_ids.shape[1])
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    return decoder(concepts, positions)


class ConceptMLM(nn.Module):
    """Encoder -> concepts -> decoder at requested positions -> states for the LM head.

    With labels, `forward` scores only the decoded positions and applies the LM head chunk by chunk
    inside the loss, so `[B, N, V]` logits never exist (sparse decoding + chunked cross-entropy).
    """

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ConceptModelConfig.vocab_size is unset; take it from the tokenizer (len(tokenizer))")
        self.config = cfg
        self.encoder = ConceptEncoder(cfg)
        self.decoder = build_decoder(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.concept_dim, cfg.vocab_size, bias=False)
        self.lm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        init_weights(self, cfg.init_std)
        # The LM-head loss; tensor parallelism (vocab-parallel) and fused kernels replace it from outside.
        self.cross_entropy: CrossEntropyFn = chunked_cross_entropy

    def output_embedding(self) -> torch.Tensor:
        """The LM head matrix (V, D): the token embedding when tied."""
        return head_weight(self.encoder, self.lm_head)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        positions: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        ce_chunk_size: int = 4096,
    ) -> MLMOutput:
        """input_ids (B, N); positions (B, M) to decode (default: all N); labels (B, M) -> MLMOutput."""
        states = encode_decode(self.encoder, self.decoder, input_ids, attention_mask, positions)  # (B, M, D)
        if labels is None:
            return MLMOutput(states, None)
        return MLMOutput(states, self.lm_loss(states, labels, ce_chunk_size))

    def lm_loss(self, states: torch.Tensor, labels: torch.Tensor, ce_chunk_size: int = 4096) -> torch.Tensor:
        """states (B, M, D), labels (B, M) -> mean cross-entropy; the LM head runs chunk by chunk inside."""
        return self.cross_entropy(states.flatten(0, 1), self.output_embedding(), self.lm_bias, labels.flatten(),
                                  ce_chunk_size)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """states (..., D) -> logits (..., V). Only for small inputs (inference, export)."""
        return F.linear(states, self.output_embedding(), self.lm_bias)
