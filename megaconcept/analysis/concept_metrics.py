"""Concept-health metrics: are the C concept vectors of a sample distinct, and does the batch use many directions?

Collapse is the known failure of concept encoders (a predecessor of this project reached an effective rank
of ~5 of 128), so the definitions here are the standard ones, written out, and computed in float64:

* ``effective_rank`` - Roy & Vetterli (2007) entropy effective rank ``exp(H(p))``, ``p_i = s_i / sum_j s_j``
  over the singular values ``s`` of ONE sample's (C, D) concept matrix, **not centered** (a direction every
  concept shares counts as a direction), averaged over samples. Bounded by ``1 <= erank <= rank``.
* ``global_effective_rank`` - the same for all concept vectors of the batch stacked, (sum of C, D), not centered.
* ``participation_ratio`` - ``(sum lambda)^2 / sum lambda^2`` over the eigenvalues of the covariance of all
  concept vectors (centered): the number of directions the variance is spread over, in [1, D].
* ``mean_pairwise_cosine`` / ``max_pairwise_cosine`` - cosine similarity of distinct concepts i != j of the
  same sample: the mean per sample averaged over samples / the largest anywhere in the batch.
* ``dims_for_95pct_variance`` - principal components (centered, all concept vectors) needed to reach 95% of
  the total variance.
* ``top1_singular_share`` - explained-variance share of the first principal component,
  ``s_1^2 / sum s^2`` over the singular values of the centered (all vectors, D) matrix.
* ``uniformity`` - Wang & Isola (2020): ``log E exp(-t ||x - y||^2)``, t = 2, over distinct pairs of
  L2-normalized concept vectors (all vectors of the batch, across samples). 0 = all equal, -4 = orthogonal.
* ``collapsed_dims`` - feature dims whose variance over all concept vectors (population variance) is at most
  ``max(1e-3 * mean per-dim variance, 1e-12)``; the absolute floor makes an all-constant batch count all D.
* ``twonn_dimension`` - TwoNN intrinsic dimension (Facco et al. 2017) by its maximum-likelihood form
  ``d = n / sum_i log(r2_i / r1_i)`` (r1, r2 = distances to the first and second nearest neighbour; no 10%
  discard, unlike the paper's linear fit). Exact duplicate vectors are collapsed to one point first (r1 = 0
  has no ratio).
* ``num_samples`` (samples with at least one concept), ``num_concepts`` (mean concepts per sample, C when
  unmasked), ``num_vectors`` (all concept vectors), ``concept_dim`` (D).

Degenerate inputs, by convention rather than NaN where a value makes sense:
* Squared singular values at most ``max(rows, D) * eps64 * s_max^2`` count as zero (see
  :func:`concept_spectrum`); the centered spectrum uses the *uncentered* ``s_max`` as its scale, so identical
  concepts (whose centered matrix is float noise) have no variance. Hence identical non-zero concepts:
  effective rank 1, cosine 1, uniformity 0, collapsed_dims D, participation ratio / dims_for_95 / top1
  share / twonn 0.
* An all-zero matrix has effective rank 0 (rank 0: no direction at all); zero vectors have cosine 0 with
  everything (they are normalized to zero, as ``F.normalize`` does, also in uniformity); a centered
  spectrum without variance gives participation ratio 0, dims_for_95 0 and top1 share 0.
* NaN only where nothing can be measured: pairwise cosines when no sample has two concepts, uniformity with
  fewer than 2 vectors, TwoNN with exactly 2 distinct points. TwoNN is ``inf`` when every ratio is 1
  (equidistant points such as a regular simplex: the estimator diverges).

Uniformity and TwoNN cost O(n^2 D); above ``max_points`` vectors they use a fixed random subset (seed 0).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

VARIANCE_TARGET = 0.95
UNIFORMITY_T = 2.0
COLLAPSE_REL_TOL = 1e-3
COLLAPSE_ABS_TOL = 1e-12
MAX_POINTS = 4096
_BLOCK = 1024  # rows per block of pairwise distances: bounds memory at _BLOCK * n float64s


def concept_metrics(concepts: torch.Tensor, concept_mask: Optional[torch.Tensor] = None,
                    max_points: int = MAX_POINTS) -> dict[str, float]:
    """Concept-health metrics of a padded batch (definitions in the module docstring).

    Args:
        concepts: (B, C, D) concept vectors.
        concept_mask: (B, C), nonzero/True = a valid concept; None = all valid. Padded concepts are ignored
            exactly as if they had never been there (same result as :func:`concept_metrics_varlen`).
        max_points: cap on the vectors uniformity and TwoNN see (a fixed random subset above it).
    """
    if concepts.dim() != 3:
        raise ValueError(f"concepts must be (B, C, D), got shape {tuple(concepts.shape)}")
    if concept_mask is None:
        return concept_metrics_varlen(concepts.flatten(0, 1), [concepts.shape[1]] * concepts.shape[0], max_points)
    if concept_mask.shape != concepts.shape[:2]:
        raise ValueError(f"concept_mask {tuple(concept_mask.shape)} does not match concepts (B, C) "
                         f"{tuple(concepts.shape[:2])}")
    keep = concept_mask.bool()
    return concept_metrics_varlen(concepts[keep], keep.sum(dim=1).tolist(), max_points)


def concept_metrics_varlen(flat: torch.Tensor, lengths: Union[Sequence[int], torch.Tensor],
                           max_points: int = MAX_POINTS) -> dict[str, float]:
    """Concept-health metrics of samples with different numbers of concepts, stored without padding.

    Args:
        flat: (total, D) concept vectors of all samples, sample after sample.
        lengths: concepts per sample, summing to ``total`` (from flash-attention style ``cu_seqlens``:
            ``cu_seqlens.diff()``). Samples of length 0 are ignored.
        max_points: cap on the vectors uniformity and TwoNN see (a fixed random subset above it).
    """
    lengths = [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
    if flat.dim() != 2:
        raise ValueError(f"flat must be (total, D), got shape {tuple(flat.shape)}")
    if any(n < 0 for n in lengths) or sum(lengths) != flat.shape[0]:
        raise ValueError(f"lengths (sum {sum(lengths)}) must be non-negative and sum to flat's {flat.shape[0]} rows")
    if flat.shape[0] == 0:
        raise ValueError("no concept vectors to measure")
    x = flat.detach().to(torch.float64)
    samples = [s for s in torch.split(x, lengths) if s.shape[0] > 0]
    uncentered = concept_spectrum(x)
    # The uncentered scale: identical concepts center to float noise, which must not count as variance.
    centered = concept_spectrum(x, center=True, scale=float(uncentered[0]))
    points = _subset(x, max_points)
    groups = _by_length(samples)
    mean_cos, max_cos = pairwise_cosine(groups)
    ranks = [effective_rank(row) for stacked in groups.values() for row in concept_spectrum(stacked)]
    return {
        "num_samples": float(len(samples)),
        "num_concepts": x.shape[0] / len(samples),
        "num_vectors": float(x.shape[0]),
        "concept_dim": float(x.shape[1]),
        "effective_rank": sum(ranks) / len(ranks),
        "global_effective_rank": effective_rank(uncentered),
        "participation_ratio": participation_ratio(centered),
        "mean_pairwise_cosine": mean_cos,
        "max_pairwise_cosine": max_cos,
        "dims_for_95pct_variance": float(dims_for_variance(centered, VARIANCE_TARGET)),
        "top1_singular_share": top1_share(centered),
        "uniformity": uniformity(points, UNIFORMITY_T),
        "collapsed_dims": float(collapsed_dims(x)),
        "twonn_dimension": twonn_dimension(points),
    }


def concept_spectrum(x: torch.Tensor, center: bool = False, scale: Optional[float] = None) -> torch.Tensor:
    """Singular values (descending, float64) of x (..., n, D), centered over rows if asked; batched over (...).

    Computed as the square roots of the eigenvalues of the smaller Gram matrix (x x^T or x^T x): on CPU,
    LAPACK's batched SVD of small matrices is ~50x slower. Eigenvalues at most ``max(n, D) * eps64 * scale^2``
    count as 0 (scale: the largest singular value itself by default, per matrix), so the float noise of a
    rank-deficient matrix is no direction; this zeroes singular values below ~sqrt(max(n, D) * eps64) * scale
    (2.4e-7 of it for D = 256), far too small to move any metric here.
    """
    x = x.to(torch.float64)
    if center:
        x = x - x.mean(dim=-2, keepdim=True)
    gram = x @ x.mT if x.shape[-2] <= x.shape[-1] else x.mT @ x
    lam = torch.linalg.eigvalsh(gram).flip(-1)  # descending
    top = lam[..., :1] if scale is None else torch.full_like(lam[..., :1], scale ** 2)
    tol = max(x.shape[-2:]) * torch.finfo(torch.float64).eps * top
    return torch.where(lam > tol, lam, torch.zeros_like(lam)).sqrt()


def _by_length(samples: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Samples of equal concept count stacked, (G, c, D) per count c: one batched kernel per group."""
    lists: dict[int, list[torch.Tensor]] = {}
    for s in samples:
        lists.setdefault(s.shape[0], []).append(s)
    return {c: torch.stack(group) for c, group in lists.items()}


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli entropy effective rank exp(-sum p log p), p = s / sum(s); 0 for an all-zero spectrum."""
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def participation_ratio(s: torch.Tensor) -> float:
    """(sum lambda)^2 / sum lambda^2 with lambda = s^2 (covariance eigenvalues up to a common factor)."""
    lam = s.square()
    denom = float(lam.square().sum())
    return float(lam.sum()) ** 2 / denom if denom > 0 else 0.0


def dims_for_variance(s: torch.Tensor, target: float) -> int:
    """Fewest leading principal components whose variance share reaches ``target``; 0 without variance."""
    lam = s.square()
    total = float(lam.sum())
    if total <= 0:
        return 0
    # A 1e-9 slack so k equal eigenvalues reaching the target exactly (e.g. 19 of 20 for 95%) count as reached.
    reached = torch.cumsum(lam, dim=0) / total >= target - 1e-9
    return int(reached.nonzero()[0]) + 1


def top1_share(s: torch.Tensor) -> float:
    """s_1^2 / sum s^2: the explained-variance share of the first principal component; 0 without variance."""
    lam = s.square()
    total = float(lam.sum())
    return float(lam[0]) / total if total > 0 else 0.0


def pairwise_cosine(groups: dict[int, torch.Tensor]) -> tuple[float, float]:
    """Mean (per sample, then over samples) and max cosine over distinct concept pairs i != j within a sample.

    groups: samples stacked by concept count (:func:`_by_length`). A sample with one concept has no pair and
    is left out; NaN when no sample has two.
    """
    means, peak = [], -math.inf
    for c, stacked in groups.items():
        if c < 2:
            continue
        unit = F.normalize(stacked, dim=-1)  # (G, c, D)
        cos = unit @ unit.transpose(1, 2)  # (G, c, c)
        off = ~torch.eye(c, dtype=torch.bool, device=cos.device)
        pairs = cos[:, off]  # (G, c*(c-1))
        means += pairs.mean(dim=1).tolist()
        peak = max(peak, float(pairs.max()))
    if not means:
        return math.nan, math.nan
    return sum(means) / len(means), peak


def _subset(x: torch.Tensor, max_points: int) -> torch.Tensor:
    if x.shape[0] <= max_points:
        return x
    generator = torch.Generator().manual_seed(0)  # the same subset every call: metrics comparable across steps
    return x[torch.randperm(x.shape[0], generator=generator)[:max_points].to(x.device)]


def uniformity(x: torch.Tensor, t: float = UNIFORMITY_T) -> float:
    """Wang & Isola: log of the mean of exp(-t ||u_i - u_j||^2) over pairs i < j of unit vectors u = x / |x|.

    Computed blockwise with logsumexp (no n x n matrix); NaN for fewer than 2 vectors.
    """
    n = x.shape[0]
    if n < 2:
        return math.nan
    unit = F.normalize(x.to(torch.float64), dim=-1)
    sq_norm = unit.square().sum(dim=-1)  # 1, or 0 for a zero vector
    chunks = []
    for start in range(0, n, _BLOCK):
        block = unit[start:start + _BLOCK]
        sq = (sq_norm[start:start + block.shape[0], None] + sq_norm - 2 * block @ unit.T).clamp(min=0)  # (b, n)
        rows = torch.arange(start, start + block.shape[0], device=x.device)[:, None]
        upper = torch.arange(n, device=x.device)[None, :] > rows  # distinct pairs, each once
        chunks.append(torch.logsumexp(-t * sq[upper], dim=0))
    return float(torch.logsumexp(torch.stack(chunks), dim=0)) - math.log(n * (n - 1) / 2)


def collapsed_dims(x: torch.Tensor, rel_tol: float = COLLAPSE_REL_TOL, abs_tol: float = COLLAPSE_ABS_TOL) -> int:
    """Feature dims whose population variance over the rows of x is <= max(rel_tol * mean variance, abs_tol)."""
    var = x.to(torch.float64).var(dim=0, unbiased=False)
    return int((var <= max(rel_tol * float(var.mean()), abs_tol)).sum())


def twonn_dimension(x: torch.Tensor) -> float:
    """TwoNN intrinsic dimension, MLE form n / sum log(r2 / r1) over the distinct rows of x.

    0 for a single distinct point (all vectors equal); NaN for two; inf when every r2 == r1.
    """
    points = torch.unique(x.to(torch.float64), dim=0)
    n = points.shape[0]
    if n == 1:
        return 0.0
    if n == 2:
        return math.nan
    log_ratio = torch.empty(n, dtype=torch.float64, device=x.device)
    for start in range(0, n, _BLOCK):
        block = points[start:start + _BLOCK]
        rows = torch.arange(block.shape[0], device=x.device)
        dist = torch.cdist(block, points)  # (b, n), by the fast |a|^2 + |b|^2 - 2ab form
        dist[rows, rows + start] = math.inf  # a point is not its own neighbour
        nearest = dist.topk(2, dim=1, largest=False).indices  # (b, 2)
        # Exact distances to the two chosen neighbours: the fast form's cancellation can make r1 of two close
        # distinct points 0. r1 > 0 since the points are distinct.
        r = (points[nearest] - block[:, None, :]).norm(dim=-1).sort(dim=1).values  # (b, 2): r1 <= r2
        log_ratio[start:start + block.shape[0]] = (r[:, 1] / r[:, 0]).log()
    total = float(log_ratio.sum())
    return n / total if total > 0 else math.inf
