"""Document views for contrastive terms, and the InfoNCE term in one process."""
import pytest
import torch

from megaconcept.config import ConfigError, load_config
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.objectives.base import BuildContext
from megaconcept.objectives.contrastive import ContrastiveConfig, ContrastiveObjective
from megaconcept.objectives.views import DocumentViews, longest_document

EOS = 0


def test_views_are_adjacent_halves_of_the_longest_document():
    ids = torch.tensor([[5, 6, 7, EOS, 8, 9, 10, 11, 12, 13, EOS, 14],
                        [EOS, 3, EOS, 4, EOS, 5, 6, EOS, 7, EOS, 8, EOS]])
    views = DocumentViews(EOS, view_tokens=2, min_tokens=4)(ids)
    assert views["view_a_ids"][0].tolist() == [9, 10] and views["view_b_ids"][0].tolist() == [11, 12]
    assert views["view_a_mask"][0].tolist() == [1, 1] and views["view_valid"].tolist() == [True, False]
    assert views["view_a_mask"][1].sum() == 0  # no document of 4 tokens: no pair, nothing filled
    assert longest_document(torch.tensor([EOS, EOS]), EOS) == (0, 0)
    assert longest_document(torch.tensor([1, 2, EOS, 3, 4]), EOS) == (0, 2)  # the first on ties


def test_short_views_are_padded_and_masked():
    views = DocumentViews(EOS, view_tokens=4, min_tokens=2)(torch.tensor([[1, 2, 3, 4, 5, EOS, 6, 7]]))
    assert views["view_a_ids"].tolist() == [[1, 2, 0, 0]] and views["view_b_ids"].tolist() == [[3, 4, 5, 0]]
    assert views["view_a_mask"].tolist() == [[1, 1, 0, 0]] and views["view_b_mask"].tolist() == [[1, 1, 1, 0]]


def _term(**options) -> ContrastiveObjective:
    torch.manual_seed(0)
    model = ConceptMLM(ConceptModelConfig(vocab_size=64, num_concepts=4, concept_dim=16, num_heads=2, num_layers=1,
                                          max_position_embeddings=32))
    return ContrastiveObjective(ContrastiveConfig(**options), BuildContext(model=model))


def _views(rows: int = 6, length: int = 24) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 64, (rows, length), generator=torch.Generator().manual_seed(3))
    return DocumentViews(EOS, length // 2, 4)(ids)


def test_identical_views_score_near_zero_and_unrelated_negatives_are_hard_to_beat():
    term = _term(temperature=0.05, projection=False)
    views = _views()
    same = dict(views, view_b_ids=views["view_a_ids"], view_b_mask=views["view_a_mask"])
    assert term(None, same)["loss"] < term(None, views)["loss"]
    assert term(None, same)["accuracy"] == 1.0


def test_invalid_samples_are_neither_anchors_nor_negatives():
    term = _term(projection=False)
    views = _views()
    full = term(None, views)
    views["view_valid"][2] = False
    dropped = term(None, views)
    kept = {k: torch.cat([v[:2], v[3:]]) for k, v in views.items()}
    torch.testing.assert_close(dropped["loss"], term(None, kept)["loss"])
    assert dropped["pairs"] == 5 and full["pairs"] == 6
    views["view_valid"][:] = False
    empty = term(None, views)
    assert empty["loss"] == 0 and empty["loss"].requires_grad  # every rank still runs the same graph


def test_loss_is_infonce_of_the_pooled_projected_concepts():
    term = _term(temperature=0.1, symmetric=False)
    views = _views(rows=3)
    a = term.embed(views["view_a_ids"], views["view_a_mask"])
    b = term.embed(views["view_b_ids"], views["view_b_mask"])
    expected = torch.nn.functional.cross_entropy(a @ b.T / 0.1, torch.arange(3))
    torch.testing.assert_close(term(None, views)["loss"], expected)
    assert sum(p.numel() for p in term.parameters()) == 2 * (16 * 16 + 16)  # the projection, no model weights


def test_contrastive_under_a_pipeline_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"objective.terms.contrastive runs the encoder itself.*parallel.pipeline=1"):
        load_config(None, ["objective.terms.contrastive={}", "parallel.pipeline=2", "model.num_layers=2"])


@pytest.mark.parametrize("options, fragment", [({"temperature": 0.0}, "temperature=0.0 must be > 0"),
                                               ({"min_tokens": 1}, "min_tokens=1 >= 2")])
def test_bad_options_are_refused(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        ContrastiveConfig(**options)
