"""The tensor-parallel split plan: which parameters are cut where, and the export's merge inverts the cut."""
import torch

from megaconcept.export.gather import merge_tensor_parallel
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.config import BackboneConfig
from megaconcept.model.sharding import tensor_parallel_plan


def _model(tied: bool) -> ConceptMLM:
    return ConceptMLM(ConceptModelConfig(
        vocab_size=64, num_concepts=4, concept_dim=16, num_heads=2, max_position_embeddings=32,
        tie_word_embeddings=tied, backbone=BackboneConfig(num_layers=1, hidden_size=24, num_heads=2,
                                                          num_kv_heads=2, intermediate_size=32)))


def test_plan_covers_every_projection_and_the_vocabulary():
    model = _model(tied=False)
    plan = tensor_parallel_plan(model)
    dims = {name: plan.get(name) for name, _ in model.named_parameters()}
    assert dims["encoder.backbone.layers.0.self_attn.k_proj.weight"] == 0
    assert dims["encoder.backbone.layers.0.mlp.down_proj.weight"] == 1
    assert dims["encoder.layers.0.cross.attn.o_proj.weight"] == 1
    assert dims["decoder.mlp.0.mlp.gate_proj.weight"] == 0
    assert dims["encoder.token_embed.weight"] == dims["lm_head.weight"] == dims["lm_bias"] == 0
    replicated = sorted(n for n, d in dims.items() if d is None)
    # Replicated on purpose: norms, concept queries, position tables and projections outside the attention/MLP
    # splits (their inputs and outputs are whole on every tensor-parallel rank).
    whole = ("encoder.concepts", "decoder.position_queries.weight", "decoder.out_proj.weight",
             "encoder.layers.0.read_positions.weight", "encoder.layers.1.read_positions.weight")
    assert all("norm" in n or n in whole for n in replicated), replicated


def test_merge_inverts_the_split():
    model = _model(tied=False)
    full, plan = model.state_dict(), tensor_parallel_plan(model)
    shards = [{k: v if k not in plan else v.chunk(2, plan[k])[r] for k, v in full.items()} for r in (0, 1)]
    merged = merge_tensor_parallel(shards, plan)
    assert merged.keys() == full.keys()
    assert all(torch.equal(merged[k], full[k]) for k in full)
