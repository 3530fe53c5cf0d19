"""Parallel layouts: valid ones are planned, impossible ones refused with a working alternative named."""
import pytest

from megaconcept.config import load_config
from megaconcept.model.config import BackboneConfig, ConceptModelConfig
from megaconcept.parallel.layout import Layout, LayoutError, plan_layout

SMOL = ConceptModelConfig(vocab_size=49155, concept_dim=384, num_heads=6, mlp_ratio=3.0,
                          backbone=BackboneConfig(num_layers=4))  # SmolLM2 shapes: 9 heads / 3 kv heads


def test_valid_layouts():
    assert plan_layout(8, 2, 2, 1, ConceptModelConfig(vocab_size=1000)) == Layout(8, 2, 2)
    assert Layout(8, 2, 2).data == 2
    assert plan_layout(6, 3, 1, 3, SMOL).data == 2


@pytest.mark.parametrize("world, tensor, pipeline, stage, model, message", [
    (3, 2, 1, 3, ConceptModelConfig(vocab_size=1000),
     r"3 processes cannot be split into parallel.tensor=2 x parallel.pipeline=1 groups; launch a multiple of 2 "
     r"processes, or use parallel.tensor in \[1, 3\]"),
    (4, 2, 1, 3, SMOL, r"parallel.tensor=2 does not divide model.backbone.num_heads=9; tensor-parallel degrees "
                       r"this model allows: \[1, 3\]"),
    (4, 4, 1, 3, ConceptModelConfig(vocab_size=1000, num_heads=2),
     r"parallel.tensor=4 does not divide model.num_heads=2; .* allows: \[1, 2\]"),
    (3, 3, 1, 3, ConceptModelConfig(vocab_size=49153, num_heads=6, concept_dim=384, mlp_ratio=3.0),
     r"model.vocab_size=49153 is not divisible by parallel.tensor=3; leave model.vocab_size unset .* or set it to 49155"),
    (2, 1, 2, 3, ConceptModelConfig(vocab_size=1000),
     r"parallel.pipeline=2 cannot run with ZeRO stage 3 .* use --ds_config ds_configs/zero1.json"),
    (2, 1, 2, 0, ConceptModelConfig(vocab_size=1000),
     r"parallel.pipeline=2 cannot run with ZeRO stage 0 \(pipelines run with ZeRO-1\)"),
    (8, 1, 8, 1, ConceptModelConfig(vocab_size=1000),
     r"parallel.pipeline=8 stages but the model has only 3 layers to place .* use parallel.pipeline <= 3"),
])
def test_impossible_layouts_are_refused(world, tensor, pipeline, stage, model, message):
    with pytest.raises(LayoutError, match=message):
        plan_layout(world, tensor, pipeline, stage, model)


def test_world_refusal_names_a_working_degree():
    with pytest.raises(LayoutError, match=r"or use parallel.pipeline in \[1\] with this tensor degree"):
        plan_layout(1, 1, 2, 1, ConceptModelConfig(vocab_size=1000))
    with pytest.raises(LayoutError, match=r"or use parallel.tensor=1 parallel.pipeline=1"):
        plan_layout(3, 2, 2, 1, ConceptModelConfig(vocab_size=1000))


def test_mlp_width_counts():
    # 384 * 2.75 rounds up to 1088 = 64 * 17: no TP degree but 1 (and 2^k) splits it.
    with pytest.raises(LayoutError, match=r"does not divide model.mlp_dim \(concept_dim\*mlp_ratio\)=1088"):
        plan_layout(3, 3, 1, 3, ConceptModelConfig(vocab_size=49155, num_heads=6, concept_dim=384))


def test_parallel_degrees_must_be_positive():
    with pytest.raises(Exception, match="parallel.tensor=0"):
        load_config(None, ["parallel.tensor=0"])


def test_rank_coordinates_put_tensor_ranks_innermost():
    layout = Layout(world_size=8, tensor=2, pipeline=2)
    coords = [layout.coordinates(r) for r in range(8)]
    assert coords == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    assert Layout(4, pipeline=2).coordinates(3) == (1, 1, 0)
