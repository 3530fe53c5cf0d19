"""Concept regularisers: terms that keep the C concepts of a sample from collapsing onto a few directions.

Every term here works **per sample, over its C concepts** (concept diversity), never across the batch
(sample diversity): concepts (B, C, D) are read as B independent sets of C points in R^D, each set gives one
number, and the loss is the mean over the batch. So no term needs a collective: under data parallelism each
rank regularises its own samples, and under tensor parallelism the concepts are replicated, so every rank
computes the same value. (VICReg's published coefficients, 25/25/1, were tuned for its batch axis and
8192-d projections; they do not carry over to this axis.) Every term computes in fp32 whatever the model's
precision, and needs C >= 2.

    vicreg_variance    mean_{b,d} relu(gamma - sqrt(Var_c z[b, c, d] + eps))
    vicreg_covariance  mean_b  sum_{d != e} Cov_c(z[b])[d, e]^2 / D
    orthogonality      mean_b  sum_{i != j} cos(z[b, i], z[b, j])^2 / (C (C - 1))
    uniformity         mean_b  log mean_{i < j} exp(-t ||n[b, i] - n[b, j]||^2)     (+ 4t when shifted)
    tregs              mean_b -mean_{edges of MST(n[b])} ||n[b, i] - n[b, j]||       (+ 2 when shifted)

z are the raw concepts, n = z / ||z|| the concepts on the unit sphere. Var and Cov are the unbiased estimates
over the C concepts (divided by C - 1). uniformity and tregs are signed: only their `shifted` forms are
bounded below by 0, and only those may be weighted by objective.weighting.scheme=uncertainty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import OBJECTIVES, BuildContext, Objective, TermConfig
from .mst import mst_edge_lengths

MAX_CHORD = 2.0
"""The longest distance between two points of the unit sphere: the bound that shifts the T-REGS loss."""


def _concepts(outputs: Any) -> torch.Tensor:
    """outputs.concepts (B, C, D) in fp32 (a bf16 Gram matrix loses the small off-diagonal terms)."""
    concepts = outputs.concepts.float()
    if concepts.shape[1] < 2:
        raise ValueError(f"concept regularisers need at least 2 concepts per sample, got {concepts.shape[1]}")
    return concepts


def _cosines(concepts: torch.Tensor) -> torch.Tensor:
    """concepts (B, C, D) -> (B, C, C) cosine similarities between the concepts of each sample."""
    unit = F.normalize(concepts, dim=-1)
    return unit @ unit.transpose(1, 2)


def _off_diagonal_mean(matrix: torch.Tensor) -> torch.Tensor:
    """(B, C, C) -> (B,) mean of the C (C - 1) entries off the diagonal."""
    count = matrix.shape[-1]
    eye = torch.eye(count, dtype=torch.bool, device=matrix.device)
    return matrix.masked_fill(eye, 0.0).sum((1, 2)) / (count * (count - 1))


@dataclass
class VarianceConfig(TermConfig):
    """objective.terms.vicreg_variance: hinge on each dimension's spread over a sample's concepts."""

    gamma: float = 1.0
    """Target standard deviation: a dimension whose std over the C concepts reaches it costs nothing."""
    eps: float = 1e-4
    """Added to the variance under the square root (VICReg's value): keeps the gradient finite at collapse."""

    def __post_init__(self) -> None:
        if self.gamma <= 0 or self.eps <= 0:
            raise ValueError(f"gamma={self.gamma} and eps={self.eps} must be > 0")


class VarianceObjective(Objective):
    """VICReg's variance term on the concept axis: std_c over the C concepts of each (sample, dimension),
    loss = mean over (B, D) of relu(gamma - std). Collapsed concepts (all C equal) give the maximum,
    gamma - sqrt(eps); its stat mean_std is the std averaged over (B, D)."""

    stats = ("mean_std",)
    nonnegative = True

    def __init__(self, cfg: VarianceConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.gamma, self.eps = cfg.gamma, cfg.eps

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        std = (_concepts(outputs).var(dim=1) + self.eps).sqrt()  # (B, D)
        return {"loss": F.relu(self.gamma - std).mean(), "mean_std": std.mean()}


@dataclass
class CovarianceConfig(TermConfig):
    """objective.terms.vicreg_covariance: weight and warm-up only."""


class CovarianceObjective(Objective):
    """VICReg's covariance term on the concept axis: for each sample the (D, D) covariance of its C concepts,
    loss = mean over the batch of (sum of its squared off-diagonal entries) / D. When C - 1 < D that covariance
    has rank <= C - 1 and cannot be diagonal: at unit variance per dimension the loss is at least
    (D - C + 1) / (C - 1) (independent entries give about (D - 1) / (C - 1)). Identical concepts
    have no covariance at all: pair it with vicreg_variance, as VICReg does. Stats: mean_var, the diagonal
    (per-dimension variance) averaged over (B, D), to read the off-diagonal part against."""

    stats = ("mean_var",)
    nonnegative = True

    def __init__(self, cfg: CovarianceConfig, ctx: BuildContext) -> None:
        super().__init__()

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        concepts = _concepts(outputs)
        count, width = concepts.shape[1:]
        centred = concepts - concepts.mean(dim=1, keepdim=True)  # (B, C, D)
        # ||X^T X||_F = ||X X^T||_F: the (C, C) Gram gives the covariance's squared norm without a (B, D, D)
        # tensor (C is usually well below D). The subtraction loses precision only when the off-diagonal part is
        # tiny against the diagonal, i.e. where the loss is already near 0; the clamp absorbs the rounding.
        gram = centred @ centred.transpose(1, 2)  # (B, C, C)
        variance = centred.pow(2).sum(1) / (count - 1)  # (B, D) the covariance's diagonal
        squared_norm = gram.pow(2).sum((1, 2)) / (count - 1) ** 2  # (B,)
        off_diagonal = (squared_norm - variance.pow(2).sum(1)).clamp_min(0.0)
        return {"loss": (off_diagonal / width).mean(), "mean_var": variance.mean()}


@dataclass
class OrthogonalityConfig(TermConfig):
    """objective.terms.orthogonality: weight and warm-up only."""


class OrthogonalityObjective(Objective):
    """Soft orthogonality of each sample's concepts: with N the L2-normalised concepts (C, D),
    ||N N^T - I||_F^2 / (C (C - 1)), i.e. the mean squared cosine over the C (C - 1) ordered pairs (the diagonal
    of N N^T is 1 by construction, so only off-diagonal entries count), averaged over the batch. In [0, 1]:
    1 for collapsed concepts, 0 for orthogonal ones (reachable only when C <= D). Stat: mean_abs_cos."""

    stats = ("mean_abs_cos",)
    nonnegative = True

    def __init__(self, cfg: OrthogonalityConfig, ctx: BuildContext) -> None:
        super().__init__()

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cosines = _cosines(_concepts(outputs))  # (B, C, C)
        return {"loss": _off_diagonal_mean(cosines.pow(2)).mean(),
                "mean_abs_cos": _off_diagonal_mean(cosines.abs()).mean()}


class _ShiftableObjective(Objective):
    """A term whose natural loss is signed; `shifted` adds its bound so that the loss is >= 0.

    `nonnegative` is per instance (= shifted), and the weighting schemes read the built term, so uncertainty
    weighting refuses exactly the unshifted form; config validation asks `nonnegative_for(cfg)` the same.
    """

    nonnegative = False

    @classmethod
    def nonnegative_for(cls, cfg: TermConfig) -> bool:
        return bool(getattr(cfg, "shifted", False))

    def __init__(self, shifted: bool) -> None:
        super().__init__()
        self.shifted = shifted
        self.nonnegative = shifted


@dataclass
class UniformityConfig(TermConfig):
    """objective.terms.uniformity: Wang & Isola's uniformity over each sample's concepts."""

    t: float = 2.0
    """Temperature of the Gaussian potential exp(-t ||x - y||^2) (Wang & Isola use 2)."""
    shifted: bool = False
    """Add 4t, the bound of the log-potential, so the loss lies in [0, 4t] (required by scheme=uncertainty)."""

    def __post_init__(self) -> None:
        if self.t <= 0:
            raise ValueError(f"t={self.t} must be > 0")


class UniformityObjective(_ShiftableObjective):
    """log mean_{i<j} exp(-t ||n_i - n_j||^2) over the C (C - 1) / 2 pairs of a sample's unit concepts, averaged
    over the batch. In [-4t, 0]: 0 for collapsed concepts, lower the more evenly they cover the sphere.
    ||n_i - n_j||^2 is taken as 2 - 2 cos from the Gram matrix, not from pdist: pdist's sqrt has an infinite
    derivative at 0 (collapsed concepts). Stat: mean_sq_dist, the mean squared distance over the pairs."""

    stats = ("mean_sq_dist",)

    def __init__(self, cfg: UniformityConfig, ctx: BuildContext) -> None:
        super().__init__(cfg.shifted)
        self.t = cfg.t

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cosines = _cosines(_concepts(outputs))  # (B, C, C)
        count = cosines.shape[-1]
        upper = torch.triu_indices(count, count, offset=1, device=cosines.device)
        # The clamp keeps rounding (|cos| a hair above 1) from leaving [0, 4], the range the shift relies on.
        squared = (2.0 - 2.0 * cosines[:, upper[0], upper[1]]).clamp(0.0, 4.0)  # (B, C (C - 1) / 2)
        value = torch.logsumexp(-self.t * squared, dim=1) - math.log(squared.shape[1])  # (B,)
        loss = value.mean()
        if self.shifted:
            loss = (loss + 4.0 * self.t).clamp_min(0.0)  # the clamp only absorbs rounding at the bound
        return {"loss": loss, "mean_sq_dist": squared.mean()}


@dataclass
class TRegsConfig(TermConfig):
    """objective.terms.tregs: T-REGS, the length of the minimum spanning tree of each sample's concepts."""

    shifted: bool = False
    """Add 2 (the longest chord of the unit sphere) so the tree part of the loss lies in [0, 2] (required by
    scheme=uncertainty)."""
    sphere_weight: float = 0.0
    """lambda of the soft sphere constraint lambda * mean_{b,c} (||z[b, c]|| - 1)^2 on the raw concepts. 0 by
    default: the tree is measured on the concepts projected onto the unit sphere, so its length cannot grow by
    scaling them, and the encoder's concepts are normed already (their norm is set by the final norm, not 1)."""

    def __post_init__(self) -> None:
        if self.sphere_weight < 0:
            raise ValueError(f"sphere_weight={self.sphere_weight} must be >= 0")


class TRegsObjective(_ShiftableObjective):
    """Maximises the mean edge length of the Euclidean minimum spanning tree of each sample's C unit concepts
    (a true MST: Prim's algorithm without gradient, lengths recomputed with it; see megaconcept.objectives.mst).
    loss = -mean edge length (in [-2, 0]), or 2 - mean edge length when shifted, averaged over the batch, plus
    the sphere constraint. A short tree means concepts bunched together; unlike a nearest-neighbour proxy, the
    tree also spreads clusters apart. Stats: mean_edge, and min_edge (the shortest edge, averaged over the
    batch: near 0 when two concepts of a sample coincide)."""

    stats = ("mean_edge", "min_edge")

    def __init__(self, cfg: TRegsConfig, ctx: BuildContext) -> None:
        super().__init__(cfg.shifted)
        self.sphere_weight = cfg.sphere_weight

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        concepts = _concepts(outputs)
        lengths = mst_edge_lengths(F.normalize(concepts, dim=-1))  # (B, C - 1)
        mean_edge = lengths.mean()  # every sample has C - 1 edges: the mean of the per-sample means
        # The clamp absorbs rounding only: two exactly antipodal unit vectors can measure a hair over 2.
        loss = (MAX_CHORD - mean_edge).clamp_min(0.0) if self.shifted else -mean_edge
        if self.sphere_weight > 0:
            loss = loss + self.sphere_weight * (concepts.norm(dim=-1) - 1.0).pow(2).mean()
        return {"loss": loss, "mean_edge": mean_edge, "min_edge": lengths.min(dim=1).values.mean()}


OBJECTIVES.add("vicreg_variance", VarianceObjective, VarianceConfig)
OBJECTIVES.add("vicreg_covariance", CovarianceObjective, CovarianceConfig)
OBJECTIVES.add("orthogonality", OrthogonalityObjective, OrthogonalityConfig)
OBJECTIVES.add("uniformity", UniformityObjective, UniformityConfig)
OBJECTIVES.add("tregs", TRegsObjective, TRegsConfig)
