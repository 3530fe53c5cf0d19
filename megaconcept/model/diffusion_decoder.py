"""The masked-diffusion decoder (`model.decoder=diffusion`): queries are the noisy tokens' embeddings plus their
positions; each layer optionally lets the decoded positions attend to each other (token self-attention, O(M^2)),
then cross-attends to the concepts, then runs the MLP.

Optional AdaLN-Zero timestep conditioning (DiT, facebookresearch/DiT `DiTBlock`): t -> sinusoidal features ->
MLP -> per layer (shift, scale, gate) for every sub-block, zero-initialised, so each conditioned block starts as
the identity. It applies to these decoder layers only, which are always new (a warm start loads the encoder), so
nothing warm-started is silenced by a zero gate. MDLM trains without it (absorbing diffusion does not need t:
the share of mask tokens in the input tells it), hence off by default.

With self-attention the decoder must see every position (objective.masking.options.decode=all), since the
visible tokens are the context; without it positions are independent and decoding the targets alone is exact.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConceptModelConfig
from .decoders import DECODERS, TokenQueryDecoder
from .layers import Attention, sinusoidal_features


@dataclass
class DiffusionDecoderOptions:
    """model.decoder_options of model.decoder=diffusion."""

    time_conditioning: bool = False
    """AdaLN-Zero conditioning of every decoder layer on the masking level t (the batch's noise_level)."""
    self_attention: bool = False
    """A token self-attention block in every decoder layer, among the decoded positions: O(M^2) in time and
    memory, so it is refused above max_self_attention_length positions."""
    max_self_attention_length: int = 2048
    """Most decoded positions self-attention accepts (raise it knowingly: cost grows with its square)."""
    mask_token_id: Optional[int] = None
    """The mask token's id (training and the export fill it in from the tokenizer): a time-conditioned forward
    given no noise_level (fill-mask, the held-out probe) takes t = the share of mask tokens among its real positions."""

    def __post_init__(self) -> None:
        if self.max_self_attention_length < 1:
            raise ValueError(f"max_self_attention_length={self.max_self_attention_length} must be >= 1")


def with_mask_token(cfg: ConceptModelConfig, mask_token_id: int) -> ConceptModelConfig:
    """`cfg` with decoder_options.mask_token_id filled in for a diffusion decoder (unchanged otherwise)."""
    options = dict(cfg.decoder_options or {})
    if cfg.decoder != "diffusion" or options.get("mask_token_id") is not None:
        return cfg
    return replace(cfg, decoder_options={**options, "mask_token_id": int(mask_token_id)})


class TimestepEmbedder(nn.Module):
    """t (B,) in (0, 1] -> (B, D): DiT's sinusoidal features of 1000 t (256 of them) through Linear-SiLU-Linear."""

    def __init__(self, dim: int, frequencies: int = 256) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_features(levels.float() * 1000.0, self.frequencies, self.mlp[0].weight.dtype)
        return self.mlp(features)


class AdaLNZero(nn.Module):
    """cond (B, D) -> `blocks` triples (shift, scale, gate), each (B, 1, D). Plain zero parameters: generic
    re-initialisation (init_weights, HF's _init_weights) never touches them, so blocks start as the identity."""

    def __init__(self, dim: int, blocks: int) -> None:
        super().__init__()
        self.blocks = blocks
        self.weight = nn.Parameter(torch.zeros(3 * blocks * dim, dim))
        self.bias = nn.Parameter(torch.zeros(3 * blocks * dim))

    def forward(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        parts = F.linear(F.silu(cond), self.weight.to(cond.dtype), self.bias.to(cond.dtype))[:, None, :]
        chunks = parts.chunk(3 * self.blocks, dim=-1)
        return [tuple(chunks[3 * i:3 * i + 3]) for i in range(self.blocks)]


class TokenSelfAttention(nn.Module):
    """Pre-norm self-attention among the decoded positions (keys: those the key mask keeps)."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(cfg.concept_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.concept_dim, cfg.num_heads, cfg.attention)
        self.dropout = nn.Dropout(cfg.dropout)


def _residual(x: torch.Tensor, normed: torch.Tensor, fn, modulation: Optional[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """x + fn(norm(x)), or with AdaLN-Zero x + gate * fn(norm(x) * (1 + scale) + shift)."""
    if modulation is None:
        return x + fn(normed)
    shift, scale, gate = modulation
    return x + gate * fn(normed * (1 + scale) + shift)


class DiffusionDecoder(TokenQueryDecoder):
    """diffusion: TokenQueryDecoder's queries (position + noisy token), layers of [self-attention,] cross-attention
    to the concepts and MLP, each optionally AdaLN-Zero conditioned on t (see the module docstring)."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__(cfg)
        self.options = DECODERS.options("diffusion", cfg.decoder_options, "model.decoder_options")
        layers, d = cfg.decoder_layers, cfg.concept_dim
        self.self_attn = (nn.ModuleList(TokenSelfAttention(cfg) for _ in range(layers))
                          if self.options.self_attention else None)
        conditioned = self.options.time_conditioning
        self.time_embed = TimestepEmbedder(d) if conditioned else None
        blocks = 3 if self.options.self_attention else 2
        self.modulation = nn.ModuleList(AdaLNZero(d, blocks) for _ in range(layers)) if conditioned else None

    def query_modules(self) -> list[nn.Module]:
        return [*super().query_modules(), *([self.time_embed] if self.time_embed is not None else [])]

    def infer_noise_level(self, token_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """t (B,) for a forward given none: the share of mask tokens among the real positions of the ids the
        decoder reads (None when the decoder needs no t or does not know the mask id)."""
        if self.time_embed is None or self.options.mask_token_id is None:
            return None
        real = torch.ones_like(token_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        masked = (token_ids == self.options.mask_token_id) & real
        return masked.sum(dim=1).float() / real.sum(dim=1).clamp_min(1).float()

    def layer_modules(self, index: int) -> list[nn.Module]:
        return [m[index] for m in (self.self_attn, self.modulation) if m is not None]

    def layer_context(self, concepts: torch.Tensor, positions: torch.Tensor, noise_level: Optional[torch.Tensor],
                      attention_mask: Optional[torch.Tensor]) -> dict:
        """What every layer needs besides states and concepts: the condition (B, D) and the key mask (B, M)."""
        if self.self_attn is not None and positions.shape[1] > self.options.max_self_attention_length:
            raise ValueError(
                f"the diffusion decoder's token self-attention got {positions.shape[1]} positions, more than "
                f"model.decoder_options.max_self_attention_length={self.options.max_self_attention_length} (its cost "
                f"grows with the square); raise it knowingly or set model.decoder_options.self_attention=false")
        cond = None
        if self.time_embed is not None:
            if noise_level is None:
                raise ValueError("model.decoder_options.time_conditioning=true needs the batch's noise_level (B,): "
                                 "train with objective.masking.strategy=diffusion, or pass noise_level")
            cond = self.time_embed(noise_level).to(concepts.dtype)
        key_mask = None if attention_mask is None else attention_mask.gather(1, positions).bool()
        return {"cond": cond, "key_mask": key_mask}

    def layer(self, index: int, states: torch.Tensor, concepts: torch.Tensor, cond: Optional[torch.Tensor] = None,
              key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.time_embed is not None and cond is None:
            raise ValueError("model.decoder_options.time_conditioning=true needs noise_level in every forward "
                             "(pipeline parallelism does not carry it: run it with parallel.pipeline=1)")
        mods = self.modulation[index](cond) if self.modulation is not None else None
        blocks = iter(mods) if mods is not None else None
        if self.self_attn is not None:
            sa = self.self_attn[index]
            states = _residual(states, sa.norm(states), lambda h: sa.dropout(sa.attn(h, h, key_mask)),
                               next(blocks) if blocks else None)
        cross, mlp = self.cross[index], self.mlp[index]
        kv = cross.kv_norm(concepts)
        states = _residual(states, cross.query_norm(states), lambda h: cross.dropout(cross.attn(h, kv, None)),
                           next(blocks) if blocks else None)
        return _residual(states, mlp.norm(states), lambda h: mlp.dropout(mlp.mlp(h)), next(blocks) if blocks else None)


DECODERS.add("diffusion", DiffusionDecoder, DiffusionDecoderOptions)
