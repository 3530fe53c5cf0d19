"""MLSM sparse coding against sklearn on the same objective: FISTA codes and the dictionary learner."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from megaconcept.objectives.mlsm_coding import DictionaryLearner, LearnerConfig, fista, lipschitz, objective, unit_rows

sklearn_decomposition = pytest.importorskip("sklearn.decomposition")
LAM = 0.05


def _data(n: int = 300, h: int = 16, k: int = 24, seed: int = 0) -> torch.Tensor:
    """L2-normalised rows that are sparse non-negative mixtures of k directions plus noise."""
    g = torch.Generator().manual_seed(seed)
    atoms = unit_rows(torch.randn(k, h, generator=g))
    codes = torch.rand(n, k, generator=g) * (torch.rand(n, k, generator=g) < 0.15)
    return unit_rows(codes @ atoms + 0.05 * torch.randn(n, h, generator=g))


def _sklearn_codes(x: torch.Tensor, d: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its duality-gap tolerance warnings at float precision
        return sklearn_decomposition.sparse_encode(x.double().numpy(), d.double().numpy(), algorithm="lasso_cd",
                                                   alpha=LAM, positive=True, max_iter=10000)


def test_sklearn_lasso_cd_solves_the_same_problem():
    # sklearn's Lasso divides the squared error by n_features and its alpha by n_features alike: same minimiser.
    x, d = _data(40), unit_rows(torch.randn(24, 16, generator=torch.Generator().manual_seed(3)))
    codes = torch.tensor(_sklearn_codes(x, d))
    perturbed = (codes + 1e-3 * torch.rand_like(codes)).clamp(min=0)
    assert objective(x.double(), codes, d.double(), LAM) < objective(x.double(), perturbed, d.double(), LAM)


@pytest.mark.parametrize("iterations", [100, 300])
def test_fista_matches_sklearn_objective(iterations):
    torch.set_num_threads(1)
    x, d = _data(), unit_rows(torch.randn(24, 16, generator=torch.Generator().manual_seed(3)))
    ours = fista(x, d, LAM, iterations)
    theirs = torch.tensor(_sklearn_codes(x, d))
    assert (ours >= 0).all()
    mine, ref = float(objective(x, ours, d, LAM)), float(objective(x.double(), theirs, d.double(), LAM))
    assert abs(mine - ref) <= 1e-4 * abs(ref), (mine, ref)
    # The cached step gives the same codes; L is the top eigenvalue of D D^T.
    torch.testing.assert_close(fista(x, d, LAM, iterations, lipschitz(d)), ours)
    assert float(lipschitz(d)) == pytest.approx(float(torch.linalg.eigvalsh(d @ d.T)[-1]), rel=1e-5)


def test_learner_is_as_good_as_sklearn_minibatch_dictionary_learning():
    torch.set_num_threads(1)
    x, k, epochs, batch = _data(), 24, 8, 50
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = sklearn_decomposition.MiniBatchDictionaryLearning(
            n_components=k, alpha=LAM, fit_algorithm="cd", positive_code=True, transform_algorithm="lasso_cd",
            transform_alpha=LAM, batch_size=batch, max_iter=epochs, random_state=0).fit(x.numpy())
    theirs_d = torch.tensor(reference.components_).float()
    g = torch.Generator().manual_seed(0)
    learner = DictionaryLearner(LearnerConfig(atoms=k, lam=LAM), x[torch.randperm(x.shape[0], generator=g)[:k]])
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for start in range(0, x.shape[0], batch):
            learner.step(x[order[start:start + batch]])
    norms = learner.dictionary.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    ours = learner.evaluate(x)
    # Both dictionaries scored with the same encoder and objective.
    theirs = float(objective(x, fista(x, theirs_d, LAM, 100), theirs_d, LAM))
    print(f"objective: ours {ours:.6f}, sklearn {theirs:.6f}")
    assert ours <= theirs * (1 + 1e-4), (ours, theirs)


def test_learner_state_resumes_exactly():
    torch.set_num_threads(1)
    x = _data(120)
    first = DictionaryLearner(LearnerConfig(atoms=8, lam=LAM, iterations=30), x[:8])
    for start in range(0, 60, 20):
        first.step(x[start:start + 20])
    resumed = DictionaryLearner(LearnerConfig(atoms=8, lam=LAM, iterations=30), x[8:16])
    resumed.load_state_dict({k: v.clone() for k, v in first.state_dict().items()})
    for start in range(60, 120, 20):
        torch.manual_seed(start)
        a = first.step(x[start:start + 20])
        torch.manual_seed(start)
        assert resumed.step(x[start:start + 20]) == a
    torch.testing.assert_close(resumed.dictionary, first.dictionary, rtol=0, atol=0)
    with pytest.raises(ValueError, match="--atoms"):
        DictionaryLearner(LearnerConfig(atoms=4, lam=LAM), x[:4]).load_state_dict(first.state_dict())
