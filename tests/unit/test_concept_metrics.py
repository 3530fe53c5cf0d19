"""Concept-health metrics against known answers and straightforward numpy / scipy computations."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist
from scipy.stats import entropy

from megaconcept.analysis import concept_metrics, concept_metrics_varlen, concept_spectrum
from megaconcept.analysis.concept_metrics import twonn_dimension

KEYS = {"num_samples", "num_concepts", "num_vectors", "concept_dim", "effective_rank", "global_effective_rank",
        "participation_ratio", "mean_pairwise_cosine", "max_pairwise_cosine", "dims_for_95pct_variance",
        "top1_singular_share", "uniformity", "collapsed_dims", "twonn_dimension"}


def _erank(m: np.ndarray) -> float:
    s = np.linalg.svd(m, compute_uv=False)
    return float(np.exp(entropy(s / s.sum())))


def _cosines(m: np.ndarray) -> np.ndarray:
    return 1 - pdist(m, "cosine")  # i < j; the mean over i != j is the same


def _reference(samples: list[np.ndarray]) -> dict[str, float]:
    """Every metric, the plain way (float64 numpy / scipy), for samples of any concept counts."""
    x = np.concatenate(samples)
    lam = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    s_centered = np.linalg.svd(x - x.mean(0), compute_uv=False)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    var = x.var(axis=0)
    points = np.unique(x, axis=0)
    r = cKDTree(points).query(points, k=3)[0]  # itself, then the two nearest neighbours
    cosines = [_cosines(s) for s in samples if len(s) > 1]
    return {
        "effective_rank": np.mean([_erank(s) for s in samples]),
        "global_effective_rank": _erank(x),
        "participation_ratio": lam.sum() ** 2 / (lam ** 2).sum(),
        "mean_pairwise_cosine": np.mean([c.mean() for c in cosines]),
        "max_pairwise_cosine": max(c.max() for c in cosines),
        "dims_for_95pct_variance": int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.95) + 1),
        "top1_singular_share": s_centered[0] ** 2 / (s_centered ** 2).sum(),
        "uniformity": np.log(np.mean(np.exp(-2 * pdist(unit, "sqeuclidean")))),
        "collapsed_dims": int((var <= max(1e-3 * var.mean(), 1e-12)).sum()),
        "twonn_dimension": len(points) / np.log(r[:, 2] / r[:, 1]).sum() if (r[:, 2] > r[:, 1]).any() else math.inf,
    }


def _check(got: dict[str, float], want: dict[str, float], rel: float = 1e-9) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), key


def test_random_batch_matches_numpy_and_scipy():
    x = torch.randn(3, 6, 10, generator=torch.Generator().manual_seed(0))
    got = concept_metrics(x)
    assert set(got) == KEYS
    assert (got["num_samples"], got["num_concepts"], got["num_vectors"], got["concept_dim"]) == (3, 6, 18, 10)
    _check(got, _reference(list(x.double().numpy())))


def test_identical_concepts():
    x = torch.randn(8).expand(2, 5, 8).clone()
    got = concept_metrics(x)
    assert got["effective_rank"] == got["global_effective_rank"] == 1.0
    assert got["mean_pairwise_cosine"] == pytest.approx(1.0) and got["max_pairwise_cosine"] == pytest.approx(1.0)
    assert got["uniformity"] == pytest.approx(0.0, abs=1e-12)
    assert got["collapsed_dims"] == 8
    # No variance at all: the centered spectrum is empty, and all points coincide.
    assert got["participation_ratio"] == got["dims_for_95pct_variance"] == got["top1_singular_share"] == 0.0
    assert got["twonn_dimension"] == 0.0


def test_all_zero_concepts():
    got = concept_metrics(torch.zeros(2, 4, 6))
    assert got["effective_rank"] == got["global_effective_rank"] == 0.0
    assert got["mean_pairwise_cosine"] == got["max_pairwise_cosine"] == 0.0
    assert got["collapsed_dims"] == 6 and got["participation_ratio"] == 0.0 and got["twonn_dimension"] == 0.0
    assert all(not math.isnan(v) for v in got.values())


def test_orthogonal_concepts():
    x = 3 * torch.eye(4, 8)[None]  # one sample, 4 orthogonal concepts of equal norm in 8 dims
    got = concept_metrics(x)
    assert got["effective_rank"] == pytest.approx(4) and got["global_effective_rank"] == pytest.approx(4)
    assert got["mean_pairwise_cosine"] == 0.0 and got["max_pairwise_cosine"] == 0.0
    assert got["uniformity"] == pytest.approx(-4.0)  # every unit pair is sqrt(2) apart: log exp(-2 * 2)
    # Centering 4 orthonormal points leaves a regular 3-simplex: 3 equal variance directions.
    assert got["participation_ratio"] == pytest.approx(3) and got["dims_for_95pct_variance"] == 3
    assert got["top1_singular_share"] == pytest.approx(1 / 3)
    assert got["collapsed_dims"] == 4  # dims 4..7 are zero everywhere
    assert got["twonn_dimension"] == math.inf  # equidistant points: every r2 / r1 is 1
    _check(got, {k: v for k, v in _reference([x[0].double().numpy()]).items() if k != "twonn_dimension"})


@pytest.mark.parametrize("k", [1, 3, 5])
def test_rank_k_with_equal_singular_values(k):
    rng = np.random.default_rng(k)
    n, d = 12, 16
    # Orthonormal columns orthogonal to the ones vector: the rows are already centered, so the centered and
    # uncentered spectra are both k equal singular values.
    u = np.linalg.qr(np.c_[np.ones(n), rng.normal(size=(n, k))])[0][:, 1:]
    v = np.linalg.qr(rng.normal(size=(d, k)))[0]
    x = torch.from_numpy(5 * u @ v.T)[None]  # (1, n, d)
    got = concept_metrics(x)
    assert got["effective_rank"] == pytest.approx(k) and got["global_effective_rank"] == pytest.approx(k)
    assert got["participation_ratio"] == pytest.approx(k) and got["dims_for_95pct_variance"] == k
    assert got["top1_singular_share"] == pytest.approx(1 / k)
    assert concept_spectrum(x[0]).count_nonzero() == k


def test_isotropic_gaussian_uses_every_dimension():
    x = torch.randn(100, 8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = concept_metrics(x)
    # Sample covariance of n = 800 points: PR ~ D / (1 + D / n) (Marchenko-Pastur), i.e. ~15.7 of 16.
    assert 15 < got["participation_ratio"] <= 16
    assert got["global_effective_rank"] > 15.5 and got["collapsed_dims"] == 0
    assert abs(got["mean_pairwise_cosine"]) < 0.03
    _check(got, _reference(list(x.numpy())))


def test_twonn_finds_the_dimension_of_a_linear_subspace():
    gen = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(32, 4, generator=gen, dtype=torch.float64))[0]  # (D, k)
    x = torch.randn(1000, 4, generator=gen, dtype=torch.float64) @ basis.T  # 1000 points on a 4-dim plane
    got = concept_metrics(x.reshape(100, 10, 32))["twonn_dimension"]
    assert got == pytest.approx(4, rel=0.1)  # the MLE's standard error is d / sqrt(n) = 3%
    points = x.numpy()
    r = cKDTree(points).query(points, k=3)[0]
    assert got == pytest.approx(len(points) / np.log(r[:, 2] / r[:, 1]).sum(), rel=1e-9)
    # Exact duplicates are one point: appending copies changes nothing.
    assert twonn_dimension(torch.cat([x, x[:200], x[:10]])) == pytest.approx(got, rel=1e-12)


def test_mask_and_varlen_agree_and_ignore_padding():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 0, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
    padded = x.masked_fill(~mask[..., None], 1e6)  # garbage in the padding must not matter
    flat = x[mask]
    cu_seqlens = torch.tensor([0, 5, 7, 11])
    by_mask = concept_metrics(padded, mask)
    by_lengths = concept_metrics_varlen(flat, cu_seqlens.diff())
    assert by_mask == by_lengths and by_mask["num_concepts"] == pytest.approx(11 / 3)
    _check(by_mask, _reference([s.double().numpy() for s in torch.split(flat, [5, 2, 4])]))


def test_empty_samples_are_ignored_and_single_concepts_have_no_pairs():
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    got = concept_metrics_varlen(x, [0, 3, 0])
    assert got["num_samples"] == 1 and got == concept_metrics(x[None])
    lone = concept_metrics(torch.randn(4, 1, 8, generator=torch.Generator().manual_seed(5)))
    assert math.isnan(lone["mean_pairwise_cosine"]) and lone["effective_rank"] == pytest.approx(1)


def test_subset_for_pairwise_metrics_is_deterministic():
    x = torch.randn(40, 6, 8, generator=torch.Generator().manual_seed(6))
    first, second = concept_metrics(x, max_points=100), concept_metrics(x, max_points=100)
    assert first == second and first["uniformity"] != concept_metrics(x)["uniformity"]


@pytest.mark.parametrize("call, match", [
    (lambda: concept_metrics(torch.zeros(4, 8)), r"\(B, C, D\)"),
    (lambda: concept_metrics(torch.zeros(2, 3, 4), torch.ones(2, 4)), "does not match"),
    (lambda: concept_metrics_varlen(torch.zeros(5, 4), [2, 2]), "sum to"),
    (lambda: concept_metrics_varlen(torch.zeros(0, 4), []), "no concept vectors"),
])
def test_bad_shapes_are_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
