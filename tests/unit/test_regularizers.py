"""Concept regularisers: values against hand-written loops on small explicit tensors, the shifted forms' bounds,
collapsed vs spread concepts, gradients, fp32 compute, option errors, and uncertainty weighting's refusal of the
signed (unshifted) forms."""
import math

import numpy as np
import pytest
import torch

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.concept_mlm import ConceptOutputs
from megaconcept.model.registry import RegistryError
from megaconcept.objectives.base import OBJECTIVES, BuildContext
from megaconcept.objectives.compose import build_objectives

NAMES = ("vicreg_variance", "vicreg_covariance", "orthogonality", "uniformity", "tregs")
# (B, C, D) = (2, 3, 2): small enough to check by hand, with unequal norms and no two concepts parallel.
EXPLICIT = torch.tensor([[[1.0, 0.0], [0.5, 2.0], [-1.0, 0.5]],
                         [[0.2, -0.3], [1.5, 1.0], [0.0, -2.5]]])


def _term(name: str, **options):
    return OBJECTIVES[name](OBJECTIVES.options(name, options), BuildContext(model=torch.nn.Identity()))


def _loss(name: str, concepts: torch.Tensor, **options) -> dict[str, torch.Tensor]:
    return _term(name, **options)(ConceptOutputs(concepts, None, {}), {})


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / math.sqrt(sum(x * x for x in vector))


def _hand_variance(z: np.ndarray, gamma: float, eps: float) -> float:
    batch, count, width = z.shape
    total = 0.0
    for b in range(batch):
        for d in range(width):
            mean = sum(z[b, c, d] for c in range(count)) / count
            var = sum((z[b, c, d] - mean) ** 2 for c in range(count)) / (count - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
    return total / (batch * width)


def _hand_covariance(z: np.ndarray) -> float:
    batch, count, width = z.shape
    total = 0.0
    for b in range(batch):
        mean = [sum(z[b, c, d] for c in range(count)) / count for d in range(width)]
        for d in range(width):
            for e in range(width):
                if d != e:
                    cov = sum((z[b, c, d] - mean[d]) * (z[b, c, e] - mean[e]) for c in range(count)) / (count - 1)
                    total += cov * cov / width
    return total / batch


def _hand_orthogonality(z: np.ndarray) -> float:
    batch, count, _ = z.shape
    total = 0.0
    for b in range(batch):
        unit = [_unit(z[b, c]) for c in range(count)]
        pairs = [(i, j) for i in range(count) for j in range(count) if i != j]
        total += sum(float(np.dot(unit[i], unit[j])) ** 2 for i, j in pairs) / len(pairs)
    return total / batch


def _hand_uniformity(z: np.ndarray, t: float) -> float:
    batch, count, _ = z.shape
    total = 0.0
    for b in range(batch):
        unit = [_unit(z[b, c]) for c in range(count)]
        pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
        potentials = [math.exp(-t * sum((unit[i] - unit[j]) ** 2)) for i, j in pairs]
        total += math.log(sum(potentials) / len(pairs))
    return total / batch


def test_variance_matches_hand_loops():
    z = EXPLICIT.double().numpy()
    for gamma, eps in [(1.0, 1e-4), (2.0, 0.5)]:
        out = _loss("vicreg_variance", EXPLICIT, gamma=gamma, eps=eps)
        assert out["loss"].item() == pytest.approx(_hand_variance(z, gamma, eps), rel=1e-6)
    # Sample 0 dimension 0 by hand: values 1, 0.5, -1 -> mean 1/6, variance (25/36+1/9+49/36)/2 = 13/12.
    assert _hand_variance(z[:1, :, :1], 2.0, 0.0) == pytest.approx(2.0 - math.sqrt(13 / 12))


def test_covariance_matches_hand_loops():
    z = EXPLICIT.double().numpy()
    assert _loss("vicreg_covariance", EXPLICIT)["loss"].item() == pytest.approx(_hand_covariance(z), rel=1e-5)
    wide = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(0))  # D > C: the Gram route matters
    out = _loss("vicreg_covariance", wide)
    assert out["loss"].item() == pytest.approx(_hand_covariance(wide.double().numpy()), rel=1e-5)
    assert out["mean_var"].item() == pytest.approx(wide.double().var(dim=1).mean().item(), rel=1e-5)


def test_orthogonality_and_uniformity_match_hand_loops():
    z = EXPLICIT.double().numpy()
    assert _loss("orthogonality", EXPLICIT)["loss"].item() == pytest.approx(_hand_orthogonality(z), rel=1e-5)
    for t in (2.0, 0.5):
        value = _hand_uniformity(z, t)
        assert _loss("uniformity", EXPLICIT, t=t)["loss"].item() == pytest.approx(value, rel=1e-5)
        assert _loss("uniformity", EXPLICIT, t=t, shifted=True)["loss"].item() == pytest.approx(value + 4 * t, rel=1e-5)


def test_tregs_on_a_half_circle():
    # Unit vectors at 0, 90 and 180 degrees: the tree keeps the two sqrt(2) edges and drops the length-2 one.
    points = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    assert _loss("tregs", points)["loss"].item() == pytest.approx(-math.sqrt(2), rel=1e-6)
    assert _loss("tregs", points, shifted=True)["loss"].item() == pytest.approx(2 - math.sqrt(2), rel=1e-6)
    # The tree is measured on the sphere: scaling changes only the sphere constraint, (3 - 1)^2 per concept.
    out = _loss("tregs", 3 * points, sphere_weight=0.5)
    assert out["loss"].item() == pytest.approx(-math.sqrt(2) + 0.5 * 4.0, rel=1e-6)
    assert out["mean_edge"].item() == out["min_edge"].item() == pytest.approx(math.sqrt(2), rel=1e-6)


def _collapsed(batch: int = 2, count: int = 6, width: int = 8) -> torch.Tensor:
    """Every concept of a sample the same vector."""
    return torch.randn(batch, 1, width, generator=torch.Generator().manual_seed(1)).expand(batch, count, width)


def _spread(batch: int = 2, count: int = 6, width: int = 8) -> torch.Tensor:
    """Orthogonal concepts of norm 4 (C <= D), rotated differently per sample (their per-dimension std is ~1.4)."""
    bases = [torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(b)))[0]
             for b in range(batch)]
    return 4.0 * torch.stack([q[:count] for q in bases])


@pytest.mark.parametrize("name, collapsed, spread", [
    ("vicreg_variance", 1.0 - 1e-2, 0.05),     # gamma - sqrt(eps); orthogonal rows of norm 4 spread each dim
    ("orthogonality", 1.0, 1e-6),             # every cosine 1; every cosine 0
    ("uniformity", 0.0, -3.99),               # t=2: all distances 0; all squared distances 2 -> -2t = -4
    ("tregs", 0.0, -1.41),                    # edges of length sqrt(1e-12); edges sqrt(2)
])
def test_collapsed_concepts_get_the_largest_penalty(name, collapsed, spread):
    assert _loss(name, _collapsed())["loss"].item() == pytest.approx(collapsed, abs=1e-5)
    assert _loss(name, _spread())["loss"].item() < spread
    random = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(2))
    assert _loss(name, _collapsed())["loss"] >= _loss(name, random)["loss"] >= _loss(name, _spread())["loss"] - 1e-6


def test_covariance_penalises_concepts_on_one_line():
    # Covariance sees correlation, not sameness: identical concepts have none; concepts spread along one
    # direction (rank 1, a collapse to few directions) have a large off-diagonal part, +-e_d ones none.
    assert _loss("vicreg_covariance", _collapsed())["loss"].item() == pytest.approx(0.0, abs=1e-6)
    scales = torch.linspace(-2, 2, 6)[None, :, None]
    line = scales * torch.ones(2, 1, 8)
    assert _loss("vicreg_covariance", line)["loss"].item() > 1.0
    axes = torch.cat([torch.eye(4), -torch.eye(4)])[None].expand(2, 8, 4)  # (2, 8, 4): centred, diagonal covariance
    assert _loss("vicreg_covariance", axes)["loss"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["uniformity", "tregs"])
def test_shifted_forms_are_nonnegative(name):
    antipodal = torch.tensor([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]])  # the bound itself for both terms
    inputs = [_collapsed(), _spread(), antipodal] + [torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(s))
                                                    for s in range(20)]
    for concepts in inputs:
        assert _loss(name, concepts, shifted=True)["loss"].item() >= 0.0
    assert _term(name, shifted=True).nonnegative and not _term(name).nonnegative


@pytest.mark.parametrize("name", NAMES)
def test_terms_have_finite_gradients_and_compute_in_fp32(name):
    for concepts in (torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3)), _collapsed().clone()):
        concepts.requires_grad_()
        out = _loss(name, concepts)
        out["loss"].backward()
        assert torch.isfinite(concepts.grad).all()
        assert set(out) == {"loss", *_term(name).stats}
    concepts = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3)).requires_grad_()
    _loss(name, concepts)["loss"].backward()
    assert concepts.grad.abs().sum() > 0
    assert _loss(name, concepts.detach().bfloat16())["loss"].dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_one_concept_is_refused(name):
    with pytest.raises(ValueError, match="at least 2 concepts"):
        _loss(name, torch.randn(2, 1, 4))


@pytest.mark.parametrize("name, options, fragment", [
    ("vicreg_variance", {"gamma": 0}, "gamma=0.0 and eps=0.0001 must be > 0"),
    ("vicreg_variance", {"eps": -1}, "must be > 0"),
    ("uniformity", {"t": 0}, "t=0.0 must be > 0"),
    ("tregs", {"sphere_weight": -1}, "sphere_weight=-1.0 must be >= 0"),
    ("tregs", {"shifted": 1}, "shifted=1 must be bool"),
])
def test_option_errors_are_one_line(name, options, fragment):
    with pytest.raises(RegistryError, match=fragment):
        OBJECTIVES.options(name, options, f"objective.terms.{name}")


def _model() -> ConceptMLM:
    torch.manual_seed(0)
    return ConceptMLM(ConceptModelConfig(vocab_size=40, num_concepts=4, concept_dim=16, num_heads=2,
                                         max_position_embeddings=32))


@pytest.mark.parametrize("name", ["uniformity", "tregs"])
def test_uncertainty_weighting_takes_only_the_shifted_forms(name):
    model = _model()
    with pytest.raises(RegistryError, match=f"cannot weight term {name!r}: its loss can be negative"):
        build_objectives({"mlm": {}, name: {}}, "uncertainty", None, BuildContext(model=model))
    objectives = build_objectives({"mlm": {}, name: {"shifted": True, "weight": 0.1}}, "uncertainty", None,
                                  BuildContext(model=model))
    outputs = model(torch.randint(2, 40, (2, 12)), positions=torch.tensor([[1, 4], [0, 9]]))
    total, metrics = objectives(outputs, {"labels": torch.randint(2, 40, (2, 2))})
    total.backward()
    assert metrics[f"loss/{name}"] >= 0 and set(metrics) == set(objectives.metric_names())
    assert build_objectives({name: {}}, "fixed", None, BuildContext(model=model)).terms[name].nonnegative is False
