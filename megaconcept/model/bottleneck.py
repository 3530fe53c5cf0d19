"""Bottlenecks between the encoder's concepts and the decoder (registry keyed by `model.bottleneck`, options in
`model.bottleneck_options`).

    none  identity: the decoder reads the encoder's concepts (the model as it was before bottlenecks existed)
    vae   a Gaussian posterior per concept: mu (B, C, D) and logvar (B, C, D) from linear heads over the concepts;
          in training the decoder reads a sample z = mu + eps * exp(logvar / 2), in eval mode (and in every exported
          HF model and downstream head) z = mu. objective.terms.kl turns mu and logvar into KL(q || N(0, I)).

Every bottleneck maps the encoder's normed concepts (B, C, D) to a BottleneckResult: `concepts` (what
ConceptOutputs carries: the concepts heads, analysis and regularizers read, i.e. the deterministic mean),
`decoded` (what the decoder reads) and `aux` (tensors named by aux_names, for the objectives). Its pipeline units
wrap the decoder's, so what it hands the objectives reaches the last stage (megaconcept.model.units).
Shipped flat in exported folders: imports are torch and sibling files only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConceptModelConfig
from .registry import Registry
from .units import carry_past


class BottleneckResult(NamedTuple):
    concepts: torch.Tensor
    """(B, C, D) the deterministic concepts (ConceptOutputs.concepts): the posterior mean for vae."""
    decoded: torch.Tensor
    """(B, C, D) what the decoder cross-attends to: a posterior sample in training, else `concepts`."""
    aux: dict[str, torch.Tensor]
    """(B, C, D) tensors named by the bottleneck's aux_names."""


class IdentityBottleneck(nn.Module):
    """none: no parameters, no pipeline units, no RNG draws; the model computes exactly what it computed before."""

    aux_names: tuple[str, ...] = ()

    def __init__(self, cfg: ConceptModelConfig, options: None = None) -> None:
        super().__init__()

    def mean(self, concepts: torch.Tensor) -> torch.Tensor:
        """concepts (B, C, D) -> the deterministic concepts (B, C, D): themselves."""
        return concepts

    def forward(self, concepts: torch.Tensor, sample: bool = False) -> BottleneckResult:
        return BottleneckResult(concepts, concepts, {})

    def pipeline_units(self, decoder_units: list[nn.Module]) -> list[nn.Module]:
        """The decoder's units, unchanged."""
        return decoder_units

    @staticmethod
    def forward_flops(cfg: ConceptModelConfig) -> float:
        """Matmul FLOPs of one sample's forward (megaconcept.train.flops)."""
        return 0.0


@dataclass
class VAEOptions:
    """model.bottleneck_options for model.bottleneck=vae."""

    logvar_min: float = -8.0
    """Lower clamp of logvar (std >= e^-4): without a clamp logvar runs to -inf once the KL weight is small."""
    logvar_max: float = 8.0
    """Upper clamp of logvar (std <= e^4): keeps exp(logvar) finite in bf16."""
    init_logvar: float = -6.0
    """logvar at step 0 (std e^-3 ~ 0.05 against unit-RMS normed concepts): the decoder starts on nearly
    noise-free concepts, so the model starts as the deterministic one and the KL term opens the noise."""

    def __post_init__(self) -> None:
        if not self.logvar_min < self.logvar_max:
            raise ValueError(f"logvar_min={self.logvar_min} must be below logvar_max={self.logvar_max}")
        if not self.logvar_min <= self.init_logvar <= self.logvar_max:
            raise ValueError(f"init_logvar={self.init_logvar} must lie in [logvar_min, logvar_max]")


class StartedLinear(nn.Module):
    """y = x W^T + b (D -> D) starting from a fixed point instead of a random draw: W = I (identity) or 0, b = `bias`.

    A plain module, not nn.Linear, so generic re-initialisation (layers.init_weights, HF's generic init) never
    replaces the start (encoder.ReadPositions' reason); the HF wrappers call reset_parameters with their init.
    """

    def __init__(self, dim: int, identity: bool, bias: float) -> None:
        super().__init__()
        self.identity, self.start_bias = identity, bias
        self.weight = nn.Parameter(torch.empty(dim, dim))
        self.bias = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self, init: Any = nn.init) -> None:
        """The start; `init` is torch.nn.init or transformers.initialization (which skips loaded tensors)."""
        (init.eye_ if self.identity else init.zeros_)(self.weight)
        init.constant_(self.bias, self.start_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class VAEBottleneck(nn.Module):
    """vae: mu = W_mu c + b_mu, logvar = clamp(W_lv c + b_lv, logvar_min, logvar_max) per concept c (B, C, D).

    Starts close to the identity: W_mu = I, b_mu = 0 (mu is exactly the encoder's concepts at step 0) and
    W_lv = 0, b_lv = init_logvar (a small, input-independent noise), so a vae model starts as the none model
    with the same seed plus noise of std exp(init_logvar / 2). Building it draws nothing from the RNG.
    """

    aux_names = ("vae_mu", "vae_logvar")
    # Replicated under tensor parallelism on purpose: two (D, D) heads are small next to a layer, and a split
    # mu would have to be gathered again for the decoder's column-parallel k/v projections, which need whole
    # inputs. Every TP rank computes the same mu and logvar from the same (whole) concepts and draws the same
    # eps (every rank seeds its RNG with the run seed), so z agrees across the TP group.
    tensor_parallel_plan: dict[str, str] = {}

    def __init__(self, cfg: ConceptModelConfig, options: Optional[VAEOptions] = None) -> None:
        super().__init__()
        options = options or VAEOptions()
        self.logvar_min, self.logvar_max = options.logvar_min, options.logvar_max
        self.mu_proj = StartedLinear(cfg.concept_dim, identity=True, bias=0.0)
        self.logvar_proj = StartedLinear(cfg.concept_dim, identity=False, bias=options.init_logvar)

    def mean(self, concepts: torch.Tensor) -> torch.Tensor:
        """concepts (B, C, D) -> mu (B, C, D): what every exported model and downstream head reads."""
        return self.mu_proj(concepts)

    def posterior(self, concepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """concepts (B, C, D) -> (mu, logvar), both (B, C, D); logvar clamped (its gradient is 0 outside the range)."""
        return self.mu_proj(concepts), self.logvar_proj(concepts).clamp(self.logvar_min, self.logvar_max)

    def forward(self, concepts: torch.Tensor, sample: bool = False) -> BottleneckResult:
        """concepts (B, C, D) -> mu as the concepts, z = mu + eps * exp(logvar / 2) decoded when `sample` (eps from
        the torch RNG, whose state the trainer checkpoints, so a resumed run draws the same eps), else mu."""
        mu, logvar = self.posterior(concepts)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return BottleneckResult(mu, z, {"vae_mu": mu, "vae_logvar": logvar})

    def pipeline_units(self, decoder_units: list[nn.Module]) -> list[nn.Module]:
        """VAEInput, the decoder's units carrying (mu, logvar) past them, then VAEOutput (megaconcept.model.units)."""
        tail = len(self.aux_names)
        return [VAEInput(self), *(carry_past(unit, tail) for unit in decoder_units), VAEOutput()]

    @staticmethod
    def forward_flops(cfg: ConceptModelConfig) -> float:
        """The two (D, D) heads over C concepts: 2 * (2 * C * D * D); sampling is element-wise (not counted)."""
        return 2 * (2.0 * cfg.num_concepts * cfg.concept_dim * cfg.concept_dim)


class VAEInput(nn.Module):
    """(concepts, positions, *extras) -> (z, positions, *extras, mu, logvar): the decoder's input with z as its
    concepts; mu and logvar ride at the end of the carry to the last stage. Light (it stays on the stage of the
    last concept layer). Samples when the model is in training mode, like the plain forward."""

    def __init__(self, bottleneck: VAEBottleneck) -> None:
        super().__init__()
        self.bottleneck = bottleneck

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        concepts, positions, *extras = inputs
        result = self.bottleneck(concepts, sample=self.bottleneck.training)
        return (result.decoded, positions, *extras, *(result.aux[name] for name in self.bottleneck.aux_names))


class VAEOutput(nn.Module):
    """(states, z, *decoder aux, mu, logvar) -> (states, mu, *decoder aux, mu, logvar): the carry the last stage
    hands the objectives, (states, concepts, *aux in ConceptMLM.aux_names order), with mu as the concepts, as in
    the plain forward. Light, after the decoder's last unit, so it runs on the last stage and nothing it drops
    (z, already used by the decoder layers) crosses a stage boundary."""

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        states, _z, *decoder_aux, mu, logvar = inputs
        return (states, mu, *decoder_aux, mu, logvar)


BOTTLENECKS: Registry[Callable[[ConceptModelConfig, Any], nn.Module]] = Registry("model.bottleneck")
BOTTLENECKS.add("none", IdentityBottleneck)
BOTTLENECKS.add("vae", VAEBottleneck, VAEOptions)


def build_bottleneck(cfg: ConceptModelConfig) -> nn.Module:
    """The configured bottleneck; an unknown key or option is a one-line RegistryError."""
    options = BOTTLENECKS.options(cfg.bottleneck, cfg.bottleneck_options, "model.bottleneck_options")
    return BOTTLENECKS[cfg.bottleneck](cfg, options)
