"""ConceptMLM: the concept encoder plus a decoder and an (optionally tied) LM head. It computes no loss.

`forward` returns :class:`ConceptOutputs` (concepts, decoded states, auxiliary tensors); objectives
(megaconcept.objectives) turn them into losses, the MLM term applying the LM head with the kernel it chose.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .bottleneck import build_bottleneck
from .config import ConceptModelConfig
from .decoders import build_decoder
from .encoder import ConceptEncoder
from .layers import init_weights
from .sampling import InfillOptions, infill


class ConceptOutputs(NamedTuple):
    """What the model hands to the objectives (and, through the HF wrappers, to evaluation)."""

    concepts: torch.Tensor
    """(B, C, D) the encoder's normed concepts, after the bottleneck's mean (vae: mu; none: themselves)."""
    states: Optional[torch.Tensor]
    """(B, M, Dout) decoded states at the requested positions; None when nothing was decoded."""
    aux: dict[str, torch.Tensor]
    """Auxiliary tensors components expose (a decoder's gate (B, M), a vae bottleneck's vae_mu / vae_logvar
    (B, C, D)); empty for the default model."""


def head_weight(encoder: ConceptEncoder, lm_head: Optional[nn.Linear]) -> torch.Tensor:
    """The LM head matrix (V, D): the token embedding when tied. Shared with the HF wrapper."""
    return encoder.token_embed.weight if lm_head is None else lm_head.weight


def all_positions(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, N) ids -> (B, N) positions 0..N-1."""
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)


def encode_decode(
    encoder: ConceptEncoder, decoder: Optional[nn.Module], input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor], positions: Optional[torch.Tensor],
    bottleneck: Optional[nn.Module] = None, sample: bool = False, decoder_input_ids: Optional[torch.Tensor] = None,
    noise_level: Optional[torch.Tensor] = None,
) -> ConceptOutputs:
    """input_ids (B, N) -> concepts (B, C, D) and decoded states (B, M, D) at `positions` (B, M), default all N.

    Shared with the HF wrappers; with no decoder only the concepts are computed. The bottleneck (none when not
    given) sits between encoder and decoder: the decoder reads its sample when `sample` (the native model in
    training mode), else its mean (eval mode, every HF wrapper), so exported logits are deterministic.
    decoder_input_ids (B, N): what a decoder that reads tokens reads, when it differs from what the encoder reads
    (a diffusion batch whose encoder reads the clean text); noise_level (B,): t, for time-conditioned decoders.
    """
    encoded = encoder(input_ids, attention_mask)  # (B, C, D)
    # Nothing decoded, nothing sampled: a concepts-only forward draws no noise from the RNG.
    sample = sample and decoder is not None
    concepts, decoded, aux = (encoded, encoded, {}) if bottleneck is None else bottleneck(encoded, sample=sample)
    if decoder is None:
        return ConceptOutputs(concepts, None, aux)
    if positions is None:
        decoder.check_length(input_ids.shape[1])
        positions = all_positions(input_ids)
    token_ids = input_ids if decoder_input_ids is None else decoder_input_ids
    if noise_level is None:  # a time-conditioned decoder reads t off its inputs' mask tokens
        noise_level = decoder.infer_noise_level(token_ids, attention_mask)
    result = decoder(decoded, positions, decoder_token_inputs(decoder, encoder.token_embed, token_ids, positions),
                     noise_level=noise_level, attention_mask=attention_mask)
    return ConceptOutputs(concepts, result.states, {**result.aux, **aux})


def decoder_token_inputs(decoder: nn.Module, token_embed: nn.Module, input_ids: torch.Tensor,
                         positions: torch.Tensor) -> Optional[torch.Tensor]:
    """The token embeddings (B, M, Dt) of the input ids at the decoded positions, for decoders that read the
    input tokens (uses_tokens); None for the others. The pipeline looks them up the same way on its first stage."""
    if not decoder.uses_tokens:
        return None
    return token_embed(input_ids.gather(1, positions))


class ConceptMLM(nn.Module):
    """Encoder -> concepts -> bottleneck -> decoder at requested positions -> states for the LM head.

    Decoding only the requested (masked) positions keeps `[B, N, V]` logits from ever existing; the MLM
    objective applies the head to those states chunk by chunk.
    """

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ConceptModelConfig.vocab_size is unset; take it from the tokenizer (len(tokenizer))")
        self.config = cfg
        self.encoder = ConceptEncoder(cfg)
        # Registered before the decoder, like the data flow; it draws nothing from the RNG and init_weights
        # leaves its fixed start alone, so every other weight is the none model's for the same seed.
        self.bottleneck = build_bottleneck(cfg)
        self.decoder = build_decoder(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.concept_dim, cfg.vocab_size, bias=False)
        self.lm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        init_weights(self, cfg.init_std)

    # Vocabulary rows: split across tensor-parallel ranks (megaconcept.model.sharding reads these plans).
    tensor_parallel_plan = {"lm_head": "vocab", "lm_bias": "vocab"}

    @property
    def aux_names(self) -> tuple[str, ...]:
        """ConceptOutputs.aux keys: the decoder's, then the bottleneck's (the order the pipeline carries them in)."""
        return (*self.decoder.aux_names, *self.bottleneck.aux_names)

    def output_embedding(self) -> torch.Tensor:
        """The LM head matrix (V, D): the token embedding when tied."""
        return head_weight(self.encoder, self.lm_head)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        positions: Optional[torch.Tensor] = None,
        decode: bool = True,
        decoder_input_ids: Optional[torch.Tensor] = None,
        noise_level: Optional[torch.Tensor] = None,
    ) -> ConceptOutputs:
        """input_ids (B, N); positions (B, M) to decode (default: all N); decode=False: concepts only.
        In training mode the decoder reads the bottleneck's sample, in eval mode its mean. decoder_input_ids and
        noise_level: see encode_decode (a diffusion batch's keys)."""
        return encode_decode(self.encoder, self.decoder if decode else None, input_ids, attention_mask, positions,
                             bottleneck=self.bottleneck, sample=self.training, decoder_input_ids=decoder_input_ids,
                             noise_level=noise_level)

    def pipeline_units(self) -> list[nn.Module]:
        """Everything between the token embedding and the LM head as pipeline units (megaconcept.model.units):
        (embeddings (B, N, Dt), positions (B, M)) -> (states (B, M, Dout), concepts (B, C, D), *aux in aux_names
        order)."""
        return [*self.encoder.pipeline_units(), *self.bottleneck.pipeline_units(self.decoder.pipeline_units())]

    @torch.no_grad()
    def infill(self, input_ids: torch.Tensor, mask_token_id: int, attention_mask: Optional[torch.Tensor] = None,
               forbidden_ids: Sequence[int] = (), **options: Any) -> torch.Tensor:
        """Fill every `mask_token_id` of input_ids (B, N) by iterative unmasking (sampling.infill; options: steps,
        temperature, block_length, remasking, seed), in eval mode (the bottleneck's mean), as the export does."""
        was_training = self.training
        self.eval()
        try:
            def logits(ids: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
                return self.logits(self(ids, attention_mask, noise_level=level).states)

            return infill(logits, input_ids, mask_token_id, InfillOptions(**options), attention_mask, forbidden_ids)
        finally:
            self.train(was_training)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """states (..., D) -> logits (..., V). Only for small inputs (inference, export)."""
        return F.linear(states, self.output_embedding(), self.lm_bias)
