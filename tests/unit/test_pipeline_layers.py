"""The pipeline view of the trained module computes exactly what its plain forward computes, and cuts stages safely."""
import pytest
import torch

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.config import BackboneConfig
from megaconcept.model.decoders import DecoderLayerUnit
from megaconcept.model.units import BackboneUnit, ConceptUnit
from megaconcept.objectives.module import mlm_module
from megaconcept.parallel.pipeline import (PipelineLoss, canonical_names, layer_names, pipeline_layers, stage_bounds,
                                           _is_unit)


def _run_sequentially(layers, inputs):
    x = inputs
    for spec in layers:
        if isinstance(spec, torch.nn.Module):
            x = spec(x)
        else:  # a TiedLayerSpec: the embedding at the start, a pass-through at the end
            module = spec.build()
            x = module(x) if spec.forward_fn is None else spec.forward_fn(module, x)
    return x


def _config(**overrides):
    base = dict(vocab_size=60, num_concepts=4, concept_dim=16, num_heads=2, num_layers=3, decoder_layers=2,
                max_position_embeddings=32, dropout=0.0)
    return ConceptModelConfig(**{**base, **overrides})


BACKBONE = BackboneConfig(num_layers=3, hidden_size=24, num_heads=2, num_kv_heads=1, intermediate_size=32)


@pytest.mark.parametrize("cfg", [
    _config(),
    _config(tie_word_embeddings=False),
    _config(backbone=BACKBONE),
    _config(backbone=BackboneConfig(**{**BACKBONE.__dict__, "layout": "interleaved"})),
], ids=["plain", "untied", "backbone-last", "backbone-interleaved"])
def test_pipeline_view_reproduces_the_model(cfg):
    torch.manual_seed(0)
    module = mlm_module(ConceptMLM(cfg))
    ids, positions = torch.randint(0, 60, (2, 12)), torch.tensor([[1, 5, 7], [0, 3, 11]])
    labels = torch.randint(0, 60, (2, 3))
    ref = module(input_ids=ids, positions=positions, labels=labels)
    layers = pipeline_layers(module)
    states, concepts = _run_sequentially(layers, (ids, positions))
    torch.testing.assert_close(states, ref.outputs.states, rtol=0, atol=0)
    torch.testing.assert_close(concepts, ref.outputs.concepts, rtol=0, atol=0)  # concepts reach the last stage
    loss = PipelineLoss(module)((states, concepts), (labels,))
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=0)
    assert module.objectives.collected[-1].keys() == ref.metrics.keys()
    # Every tensor of the trained module is saved by exactly one pipeline layer, under a name mapped back to its own.
    saved = [name for names in layer_names(module, layers).values() for name in names.values()]
    assert sorted(saved) == sorted(module.state_dict())
    units = [type(s) for s in layers if _is_unit(s)]
    assert units.count(BackboneUnit) == cfg.backbone.num_layers and units.count(ConceptUnit) == cfg.num_layers
    assert units.count(DecoderLayerUnit) == cfg.decoder_layers


def test_interleaved_concept_layers_follow_the_depth_they_read():
    module = mlm_module(ConceptMLM(_config(backbone=BackboneConfig(**{**BACKBONE.__dict__, "layout": "interleaved"}))))
    kinds = [type(s).__name__[0] for s in pipeline_layers(module) if _is_unit(s)]
    assert "".join(kinds) == "BCBCBCDD"  # depths 1, 2, 3 for three concept layers over three backbone layers


def test_stage_bounds_cut_only_before_units_and_balance_them():
    flags = [False, False, True, True, True, False, True, True, False, False]
    assert stage_bounds(flags, 1) == [0, 10]
    assert stage_bounds(flags, 2) == [0, 6, 10]       # units 2,3,4 | 6,7 (+ light layers after each)
    assert stage_bounds(flags, 5) == [0, 3, 4, 6, 7, 10]
    with pytest.raises(ValueError, match="6 pipeline stages but only 5 layers"):
        stage_bounds(flags, 6)


def test_canonical_names_follow_identity():
    module = mlm_module(ConceptMLM(_config(backbone=BACKBONE)))
    stage = next(s for s in pipeline_layers(module) if isinstance(s, BackboneUnit))
    names = canonical_names(module, stage)
    assert names["layer.self_attn.q_proj.weight"] == "model.encoder.backbone.layers.0.self_attn.q_proj.weight"
