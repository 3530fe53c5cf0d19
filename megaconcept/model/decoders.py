"""Decoders: turn concepts back into per-position states (registry keyed by `model.decoder`).

    perceiver_posonly  position queries cross-attend to the concepts (no shortcut around the bottleneck)
    perceiver_mlm      the upstream design: query = the corrupted input's token embedding + its position; it
                       can copy visible tokens past the concepts (a known shortcut), kept to reproduce the research
    weighted           each position decodes a learned softmax-weighted mix of the concepts, then MLPs
    sim_matrix         a concept path (position queries over the concepts) and a simple token path (the input
                       token's embedding through an MLP), mixed per position by a sigmoid gate; the LM head is
                       linear, so mixing the states mixes the two paths' logits: g * concept + (1 - g) * token.
                       The gate's mean and entropy are logged; objective.terms.gate can push it.
    diffusion          masked diffusion (diffusion_decoder.py): perceiver_mlm's queries over the noisy tokens, optional
                       token self-attention and AdaLN-Zero timestep conditioning (model.decoder_options)

Every decoder takes (concepts (B, C, D), positions (B, M)[, token_inputs (B, M, Dt)]) and returns a
DecoderResult; positions never attend to each other, so decoding only the masked positions (sparse decoding)
gives exactly the states a full decode would give there. `token_inputs` (decoders with uses_tokens) are the
token embeddings of the model's input ids at the decoded positions.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from .config import ConceptModelConfig
from .layers import CrossAttentionBlock, MLPBlock, sinusoidal_features
from .registry import Registry
from .units import StageUnit, float_extras


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


class DecoderResult(NamedTuple):
    states: torch.Tensor
    """(B, M, Dout) decoded states at the LM head's width."""
    aux: dict[str, torch.Tensor]
    """Per-position auxiliary tensors (B, M) named by the decoder's aux_names."""


class QueryDecoder(nn.Module):
    """Queries (from positions, and tokens when `uses_tokens`) -> decoder layers over the concepts -> output.

    Subclasses change `queries`, `layer` and `output`; forward and the pipeline units are shared, so a new
    decoder runs under pipeline parallelism by overriding those three.
    """

    uses_tokens = False
    """forward needs token_inputs: the token embeddings of the input ids at the decoded positions."""
    aux_names: tuple[str, ...] = ()
    stat_names: tuple[str, ...] = ()

    def __init__(self, cfg: ConceptModelConfig, cross_attention: bool = True) -> None:
        super().__init__()
        d = cfg.concept_dim
        self.position_queries = POSITION_QUERIES[cfg.decoder_positions](cfg)
        self.max_positions = cfg.max_position_embeddings if cfg.decoder_positions == "learned" else None
        self.cross = nn.ModuleList(
            CrossAttentionBlock(d, cfg.num_heads, cfg.norm_eps, cfg.dropout, cfg.attention)
            for _ in range(cfg.decoder_layers)
        ) if cross_attention else None
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

    def query_modules(self) -> list[nn.Module]:
        """Modules `queries` uses besides the position queries (the pipeline's input unit holds them)."""
        return []

    def output_modules(self) -> list[nn.Module]:
        """Modules `output` uses besides norm and out_proj (the pipeline's output unit holds them)."""
        return []

    def layer_modules(self, index: int) -> list[nn.Module]:
        """Modules layer `index` uses besides its cross-attention and MLP (its pipeline unit holds them)."""
        return []

    def layer_context(self, concepts: torch.Tensor, positions: torch.Tensor, noise_level: Optional[torch.Tensor],
                      attention_mask: Optional[torch.Tensor]) -> dict:
        """Keyword arguments every `layer` call of one forward gets besides (index, states, concepts); none here."""
        return {}

    def infer_noise_level(self, token_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The masking level (B,) to condition on when a forward passes none; None: this decoder needs none."""
        return None

    def queries(self, concepts: torch.Tensor, positions: torch.Tensor, token_inputs: Optional[torch.Tensor]) -> torch.Tensor:
        """-> queries (B, M, D): the position queries."""
        return self.position_queries(positions).to(concepts.dtype)

    def layer(self, index: int, states: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """Decoder layer `index`: cross-attention to the concepts, then the MLP."""
        return self.mlp[index](self.cross[index](states, concepts, None))

    def output(self, states: torch.Tensor, token_inputs: Optional[torch.Tensor]) -> DecoderResult:
        """Last layer's states (B, M, D) -> decoded states at the LM head's width."""
        states = self.norm(states)
        return DecoderResult(states if self.out_proj is None else self.out_proj(states), {})

    def statistics(self, aux: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scalars named by stat_names, from this decoder's aux tensors (logged as decoder/<name>)."""
        return {}

    def forward(self, concepts: torch.Tensor, positions: torch.Tensor, token_inputs: Optional[torch.Tensor] = None,
                noise_level: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None) -> DecoderResult:
        """concepts (B, C, D), positions (B, M) int[, token_inputs (B, M, Dt)] -> DecoderResult. noise_level (B,)
        (a diffusion batch's t) and attention_mask (B, N) reach decoders whose layer_context uses them."""
        if self.uses_tokens and token_inputs is None:
            raise ValueError(f"{type(self).__name__} needs token_inputs (the input token embeddings at the positions)")
        states = self.queries(concepts, positions, token_inputs)  # (B, M, D)
        context = self.layer_context(concepts, positions, noise_level, attention_mask)
        for index in range(len(self.mlp)):
            states = self.layer(index, states, concepts, **context)
        return self.output(states, token_inputs)

    def pipeline_units(self) -> list[nn.Module]:
        """(concepts, positions[, token_inputs]) -> ... -> (states, concepts[, aux...]) as pipeline units."""
        return [DecoderInput(self), *(DecoderLayerUnit(self, i) for i in range(len(self.mlp))), DecoderOutput(self)]


class DecoderInput(nn.Module):
    """(concepts, positions[, token_inputs]) -> (queries (B, M, D), concepts[, token_inputs])."""

    def __init__(self, decoder: QueryDecoder) -> None:
        super().__init__()
        self.decoder = (decoder,)  # a tuple: this unit owns only the query-side parameters below
        self.position_queries = decoder.position_queries
        self.query_parts = nn.ModuleList(decoder.query_modules())

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        concepts, positions, *rest = inputs
        tokens = float_extras(rest)
        queries = self.decoder[0].queries(concepts, positions, tokens[0] if tokens else None)
        return (queries, concepts, *tokens)


class DecoderLayerUnit(StageUnit):
    """One decoder layer."""

    def __init__(self, decoder: QueryDecoder, index: int) -> None:
        super().__init__()
        self.decoder, self.index = (decoder,), index
        self.cross = decoder.cross[index] if decoder.cross is not None else None
        self.mlp = decoder.mlp[index]
        self.layer_parts = nn.ModuleList(decoder.layer_modules(index))

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        states, concepts, *rest = inputs
        return (self.decoder[0].layer(self.index, states, concepts), concepts, *rest)


class DecoderOutput(nn.Module):
    """(states, concepts[, token_inputs]) -> (decoded states, concepts, *aux in aux_names order)."""

    def __init__(self, decoder: QueryDecoder) -> None:
        super().__init__()
        self.decoder = (decoder,)
        self.norm, self.out_proj = decoder.norm, decoder.out_proj
        self.output_parts = nn.ModuleList(decoder.output_modules())

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        states, concepts, *tokens = inputs
        result = self.decoder[0].output(states, tokens[0] if tokens else None)
        return (result.states, concepts, *(result.aux[name] for name in self.decoder[0].aux_names))


def _token_projection(cfg: ConceptModelConfig) -> Optional[nn.Linear]:
    """Token embeddings (Dt) into the concept width (D) when the two differ."""
    return nn.Linear(cfg.token_dim, cfg.concept_dim, bias=False) if cfg.token_dim != cfg.concept_dim else None


class PositionQueryDecoder(QueryDecoder):
    """perceiver_posonly: queries carry only *where* (a position vector), never the input token, so the
    decoder has no shortcut around the concept bottleneck."""


class TokenQueryDecoder(PositionQueryDecoder):
    """perceiver_mlm (upstream): query = position query + the (corrupted) input token's embedding at that
    position. Unmasked positions can copy their own token past the concepts: the shortcut the research found."""

    uses_tokens = True

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__(cfg)
        self.token_proj = _token_projection(cfg)

    def query_modules(self) -> list[nn.Module]:
        return [m for m in (self.token_proj,) if m is not None]

    def queries(self, concepts: torch.Tensor, positions: torch.Tensor, token_inputs: Optional[torch.Tensor]) -> torch.Tensor:
        tokens = token_inputs.to(concepts.dtype)
        tokens = tokens if self.token_proj is None else self.token_proj(tokens)
        return self.position_queries(positions).to(concepts.dtype) + tokens


class WeightedDecoder(PositionQueryDecoder):
    """weighted: position m decodes softmax(w_m) . concepts, with C mixing logits w_m learned per position
    (from its position query); then decoder_layers MLPs. No attention: which concept serves which position is a
    property of the model, not of the input."""

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__(cfg, cross_attention=False)
        self.mix_logits = nn.Linear(cfg.concept_dim, cfg.num_concepts, bias=False)

    def query_modules(self) -> list[nn.Module]:
        return [self.mix_logits]

    def queries(self, concepts: torch.Tensor, positions: torch.Tensor, token_inputs: Optional[torch.Tensor]) -> torch.Tensor:
        weights = self.mix_logits(self.position_queries(positions).to(concepts.dtype)).float().softmax(dim=-1)
        return (weights.to(concepts.dtype) @ concepts)  # (B, M, C) @ (B, C, D) -> (B, M, D)

    def layer(self, index: int, states: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        return self.mlp[index](states)


class SimMatrixDecoder(PositionQueryDecoder):
    """sim_matrix: gate g = sigmoid(w . [concept state; token state]) mixes a concept path (position queries
    over the concepts) and a token path (the input token's embedding through an MLP). Normed before mixing and
    followed only by linear maps, so the logits are exactly g * concept logits + (1 - g) * token logits + bias."""

    uses_tokens = True
    aux_names = ("gate",)
    stat_names = ("gate_mean", "gate_entropy")

    def __init__(self, cfg: ConceptModelConfig) -> None:
        super().__init__(cfg)
        d = cfg.concept_dim
        self.token_proj = _token_projection(cfg)
        self.token_mlp = MLPBlock(d, cfg.mlp_dim, cfg.norm_eps, cfg.dropout)
        self.token_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.gate_proj = nn.Linear(2 * d, 1)

    def output_modules(self) -> list[nn.Module]:
        return [m for m in (self.token_proj, self.token_mlp, self.token_norm, self.gate_proj) if m is not None]

    def output(self, states: torch.Tensor, token_inputs: Optional[torch.Tensor]) -> DecoderResult:
        concept_path = self.norm(states)  # (B, M, D)
        tokens = token_inputs.to(states.dtype)
        tokens = tokens if self.token_proj is None else self.token_proj(tokens)
        token_path = self.token_norm(self.token_mlp(tokens))
        gate = torch.sigmoid(self.gate_proj(torch.cat([concept_path, token_path], dim=-1)))  # (B, M, 1)
        mixed = gate * concept_path + (1 - gate) * token_path
        return DecoderResult(mixed if self.out_proj is None else self.out_proj(mixed), {"gate": gate.squeeze(-1)})

    def statistics(self, aux: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """gate_mean: share of the concept path; gate_entropy: mean binary entropy of the gate (nats; ln 2 =
        undecided everywhere, 0 = every position commits to one path)."""
        g = aux["gate"].float().clamp(1e-6, 1 - 1e-6)
        entropy = -(g * g.log() + (1 - g) * (1 - g).log())
        return {"gate_mean": g.mean(), "gate_entropy": entropy.mean()}


DECODERS: Registry[Callable[[ConceptModelConfig], nn.Module]] = Registry("model.decoder")
DECODERS.add("perceiver_posonly", PositionQueryDecoder)
DECODERS.add("perceiver_mlm", TokenQueryDecoder)
DECODERS.add("weighted", WeightedDecoder)
DECODERS.add("sim_matrix", SimMatrixDecoder)


def build_decoder(cfg: ConceptModelConfig) -> nn.Module:
    """The configured decoder; an unknown key or option (model.decoder_options) is a one-line RegistryError."""
    DECODERS.options(cfg.decoder, cfg.decoder_options, "model.decoder_options")
    return DECODERS[cfg.decoder](cfg)


# Registers `diffusion`. A `from .module import` line: transformers copies an exported folder's remote code by
# following exactly this form of import, and this file is shipped with the export.
from .diffusion_decoder import DiffusionDecoder as _DiffusionDecoder  # noqa: E402,F401
