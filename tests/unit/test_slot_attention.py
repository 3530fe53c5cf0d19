"""Slot-attention concept layers (model.concept_layer=slot) and RoPE over the concept index (concept_positions).

The slot maths is checked against a numpy port of google-research's TF SlotAttention (inputs x slots layout,
softmax over the slot axis, +eps, renormalised over the inputs, GRU, residual MLP), written with the project's
RMSNorm and gated MLP and with padding columns zeroed, on copied weights.
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megaconcept.config import ConfigError, load_config
from megaconcept.export.hf_folder import build_hf_model, copy_model_code
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.concept_positions import ConceptRotary
from megaconcept.model.encoder import CONCEPT_LAYERS
from megaconcept.model.slot import SLOT_EPSILON, SlotAttention, SlotConceptLayer

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 50


def _config(**overrides) -> ConceptModelConfig:
    # A large init_std makes attention sharp, so a wrong axis or a dropped rotation cannot hide in uniform weights.
    base = dict(vocab_size=VOCAB, num_concepts=5, concept_dim=16, num_heads=2, num_layers=2, max_position_embeddings=32,
                concept_layer="slot", init_std=0.3)
    return ConceptModelConfig(**{**base, **overrides})


def _model(seed: int = 0, **overrides) -> ConceptMLM:
    torch.manual_seed(seed)
    return ConceptMLM(_config(**overrides)).eval()


def _inputs(batch: int = 3, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (batch, n), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a padded sample
    return ids, mask


# ---- the numpy reference --------------------------------------------------------------------------------------

def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _rms(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gru(x, h, gru):
    """torch.nn.GRUCell's equations (gate order r, z, n; reset applied after the hidden matmul, like TF2 Keras)."""
    gi = x @ _np(gru.weight_ih).T + _np(gru.bias_ih)
    gh = h @ _np(gru.weight_hh).T + _np(gru.bias_hh)
    (ir, iz, i_n), (hr, hz, hn) = np.split(gi, 3, -1), np.split(gh, 3, -1)
    r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
    return (1 - z) * np.tanh(i_n + r * hn) + z * h


def _mlp_block(x, block, eps):
    h = _rms(x, _np(block.norm.weight), eps)
    gate, up = h @ _np(block.mlp.gate_proj.weight).T, h @ _np(block.mlp.up_proj.weight).T
    return x + (gate * _sigmoid(gate) * up) @ _np(block.mlp.down_proj.weight).T


def reference_slot_attention(slots, inputs, mask, module: SlotAttention, heads: int, iterations: int, eps: float):
    """slots (B, C, D), inputs (B, N, Dt), mask (B, N) -> slots (B, C, D), attention (B, H, N, C) of the last step."""
    b, n, _ = inputs.shape
    c, d = slots.shape[1:]
    dh = d // heads
    inputs = _rms(inputs, _np(module.token_norm.weight), eps)
    k = (inputs @ _np(module.k_proj.weight).T).reshape(b, n, heads, dh).transpose(0, 2, 1, 3)  # (B, H, N, dh)
    v = (inputs @ _np(module.v_proj.weight).T).reshape(b, n, heads, dh).transpose(0, 2, 1, 3)
    keep = mask.astype(np.float64)[:, None, :, None]  # (B, 1, N, 1)
    for _ in range(iterations):
        slots_prev = slots
        q = _rms(slots, _np(module.query_norm.weight), eps) @ _np(module.q_proj.weight).T
        q = q.reshape(b, c, heads, dh).transpose(0, 2, 1, 3) * dh ** -0.5  # (B, H, C, dh)
        logits = np.einsum("bhnd,bhcd->bhnc", k, q)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn = attn / attn.sum(-1, keepdims=True)  # softmax over the slots
        softmax = attn * keep
        attn = (attn + SLOT_EPSILON) * keep
        attn = attn / np.maximum(attn.sum(-2, keepdims=True), np.finfo(np.float64).tiny)  # weighted mean
        updates = np.einsum("bhnc,bhnd->bhcd", attn, v).transpose(0, 2, 1, 3).reshape(b, c, d)
        updates = updates @ _np(module.o_proj.weight).T
        slots = _gru(updates.reshape(b * c, d), slots_prev.reshape(b * c, d), module.gru).reshape(b, c, d)
        slots = _mlp_block(slots, module.mlp, eps)
    return slots, softmax


def _slot_module(seed: int = 0, dim: int = 16, heads: int = 2, kv_dim: int = 12, iterations: int = 3):
    torch.manual_seed(seed)
    module = SlotAttention(dim, heads, 32, 1e-5, 0.0, iterations, kv_dim=kv_dim)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.4)  # norm weights and GRU biases random too: every weight must be used as ported
    return module.eval()


@pytest.mark.parametrize("iterations", [1, 3])
def test_matches_the_numpy_port_of_the_reference(iterations):
    module = _slot_module(iterations=iterations).double()
    g = torch.Generator().manual_seed(1)
    slots, tokens = torch.randn(3, 5, 16, generator=g).double(), torch.randn(3, 9, 12, generator=g).double()
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2] = 0  # nothing to read: the weighted mean of no token is 0, the slots stay finite
    with torch.no_grad():
        out, weights = module(slots, tokens, mask)
    ref, ref_softmax = reference_slot_attention(_np(slots), _np(tokens), mask.numpy(), module, 2, iterations, 1e-5)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(weights.numpy(), ref_softmax.transpose(0, 1, 3, 2), rtol=0, atol=1e-6)
    assert torch.isfinite(out).all()


def test_fp32_matches_the_reference():
    module = _slot_module()
    g = torch.Generator().manual_seed(1)
    slots, tokens = torch.randn(2, 5, 16, generator=g), torch.randn(2, 9, 12, generator=g)
    with torch.no_grad():
        out, _ = module(slots, tokens, None)
    ref, _ = reference_slot_attention(_np(slots), _np(tokens), np.ones((2, 9)), module, 2, 3, 1e-5)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5)


# ---- invariants -----------------------------------------------------------------------------------------------

def test_each_token_spreads_one_unit_over_the_concepts_and_padding_none():
    model = _model()
    ids, mask = _inputs()
    with torch.no_grad():
        trace = model.encoder.trace(ids, mask)
    for weights in trace.attentions:  # (B, H, C, N)
        assert weights.shape == (3, 2, 5, 12) and weights.dtype == torch.float32
        over_concepts = weights.sum(dim=2)  # (B, H, N)
        torch.testing.assert_close(over_concepts, mask[:, None, :].float().expand_as(over_concepts))
        assert (weights[1, :, :, 7:] == 0).all()
    with torch.no_grad():
        assert torch.equal(trace.concepts, model.encoder(ids, mask))


def test_each_concept_takes_a_weighted_mean_over_the_real_tokens():
    from megaconcept.model.slot import slot_weights, token_means

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 4, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]).bool()[:, None, None, :]
    means = token_means(slot_weights(q, k, keep), keep)
    torch.testing.assert_close(means.sum(-1), torch.ones(2, 2, 4))
    assert (means[1, ..., 2:] == 0).all()
    empty = torch.zeros_like(keep)  # a sample with no real token: all-zero weights, not NaN
    assert torch.equal(token_means(slot_weights(q, k, empty), empty), torch.zeros(2, 2, 4, 6))


def test_padding_does_not_change_the_concepts():
    # fp64: in fp32 the sums over 12 vs 7 tokens round differently, and the sharp test weights amplify that.
    model = _model().double()
    ids, mask = _inputs()
    with torch.no_grad():
        padded = model.encoder(ids[1:2], mask[1:2])
        cut = model.encoder(ids[1:2, :7], mask[1:2, :7])
    torch.testing.assert_close(padded, cut, rtol=0, atol=1e-10)


def test_more_iterations_change_the_concepts():
    ids, mask = _inputs()
    one, three = _model(slot_iterations=1), _model(slot_iterations=3)
    three.load_state_dict(one.state_dict())  # K is not a weight: one set of weights serves every K
    with torch.no_grad():
        a, b = one.encoder(ids, mask), three.encoder(ids, mask)
        assert not torch.allclose(a, b, atol=1e-4)
        assert torch.equal(one.encoder(ids, mask, slot_iterations=3), b)  # the override is the config's K


def test_slot_attention_is_equivariant_to_permuting_concepts():
    module = _slot_module()
    g = torch.Generator().manual_seed(2)
    slots, tokens = torch.randn(2, 5, 16, generator=g), torch.randn(2, 9, 12, generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out, weights = module(slots, tokens, None)
        out_p, weights_p = module(slots[:, perm], tokens, None)
    torch.testing.assert_close(out_p, out[:, perm], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights_p, weights[:, :, perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("positions, equivariant", [("none", True), ("rope", False)])
def test_layer_equivariance_holds_without_positions_only(positions, equivariant):
    torch.manual_seed(0)
    layer = SlotConceptLayer(_config(concept_positions=positions)).eval().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(2)
    concepts, tokens = torch.randn(2, 5, 16, generator=g).double(), torch.randn(2, 9, 16, generator=g).double()
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out, out_p = layer(concepts, tokens, None), layer(concepts[:, perm], tokens, None)
    assert torch.allclose(out_p, out[:, perm], rtol=0, atol=1e-10) == equivariant


def test_iterations_must_be_positive():
    with pytest.raises(ValueError, match="slot_iterations=0 must be an integer >= 1"):
        _model(slot_iterations=0)
    with pytest.raises(ValueError, match="slot_iterations=0"):
        _model().encoder(*_inputs(), slot_iterations=0)
    with pytest.raises(ValueError, match="applies to model.concept_layer=slot only"):
        _model(concept_layer="cross_attention").encoder(*_inputs(), slot_iterations=2)


# ---- RoPE over the concept index ------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", CONCEPT_LAYERS.keys())
def test_rope_changes_outputs_and_is_the_identity_for_one_concept(layer):
    ids, mask = _inputs()
    none, rope = _model(concept_layer=layer), _model(concept_layer=layer, concept_positions="rope")
    assert none.state_dict().keys() == rope.state_dict().keys()  # RoPE adds no parameter
    rope.load_state_dict(none.state_dict())
    with torch.no_grad():
        assert not torch.allclose(none.encoder(ids, mask), rope.encoder(ids, mask), atol=1e-4)
    one, one_rope = _model(concept_layer=layer, num_concepts=1), _model(concept_layer=layer, num_concepts=1,
                                                                         concept_positions="rope")
    one_rope.load_state_dict(one.state_dict())
    with torch.no_grad():  # the rotation at index 0 is cos 1, sin 0
        assert torch.equal(one.encoder(ids, mask), one_rope.encoder(ids, mask))


def test_rope_scores_depend_on_the_index_distance_only():
    rotary = ConceptRotary(8)
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 6, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 6, 8)
    qr, kr = rotary(q, k)
    scores = (qr @ kr.transpose(-1, -2))[0, 0]  # (C, C): the same vector at every index
    for shift in range(-5, 6):
        diagonal = torch.diagonal(scores, offset=shift)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="even head dim"):
        ConceptRotary(7)


# ---- config ---------------------------------------------------------------------------------------------------

def test_old_configs_read_as_cross_attention_without_positions():
    old = {k: v for k, v in _config().to_dict().items()
           if k not in ("concept_layer", "slot_iterations", "concept_positions")}
    cfg = ConceptModelConfig.from_dict(old)
    assert (cfg.concept_layer, cfg.slot_iterations, cfg.concept_positions) == ("cross_attention", 3, "none")


@pytest.mark.parametrize("override, fragment", [
    ("model.concept_layer=spam", "model.concept_layer='spam' is unknown; valid: cross_attention, slot"),
    ("model.slot_iterations=0", "model.slot_iterations=0 must be positive"),
    ("model.concept_positions=alibi", "model.concept_positions='alibi' is not one of none, rope"),
    ("model.concept_positions=rope model.concept_dim=20 model.num_heads=4", "needs an even head dim"),
])
def test_config_errors_are_one_line(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, override.split(" "))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_cli_values_reach_the_model_config():
    cfg = load_config(None, ["model.concept_layer=slot", "model.slot_iterations=5", "model.concept_positions=rope"])
    assert (cfg.model.concept_layer, cfg.model.slot_iterations, cfg.model.concept_positions) == ("slot", 5, "rope")


# ---- export ---------------------------------------------------------------------------------------------------

def _native_logits(model: ConceptMLM, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model(ids, mask).states)


def test_export_round_trip_and_inference_time_iterations(tmp_path):
    from transformers import AutoModelForMaskedLM

    ids, mask = _inputs()
    native = _model(concept_positions="rope")
    hf = build_hf_model(native.config, dict(native.state_dict()), "fp32")
    with torch.no_grad():
        three = hf(input_ids=ids, attention_mask=mask).logits
        five_kwarg = hf(input_ids=ids, attention_mask=mask, slot_iterations=5).logits
        torch.testing.assert_close(three, _native_logits(native, ids, mask), rtol=1e-5, atol=1e-5)
        out = hf(input_ids=ids, attention_mask=mask, output_attentions=True, slot_iterations=5)
    assert not torch.allclose(three, five_kwarg, atol=1e-4)
    torch.testing.assert_close(out.logits, five_kwarg, rtol=0, atol=0)
    assert out.attentions[-1].sum(dim=2)[0].allclose(torch.ones(2, 12))
    # An export folder (config.json with auto_map + the model code), loaded through trust_remote_code with K=5.
    hf.save_pretrained(str(tmp_path))
    copy_model_code(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(str(tmp_path), trust_remote_code=True, slot_iterations=5).eval()
    assert loaded.config.slot_iterations == 5 and type(loaded).__module__.startswith("transformers_modules")
    at_five = _model(concept_positions="rope", slot_iterations=5)
    at_five.load_state_dict(native.state_dict())
    with torch.no_grad():
        from_folder = loaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(from_folder, _native_logits(at_five, ids, mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_folder, five_kwarg, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_cli_trains_slot_layers_and_exports(tmp_path, tiny_shards):
    sys.path.insert(0, str(ROOT / "tests" / "distributed"))
    from _launch import TINY, run, torchrun_cmd

    from transformers import AutoModelForMaskedLM

    run_dir = tmp_path / "run"
    run(torchrun_cmd(1, "ds_configs/zero3.json", TINY + [
        f"data.shards={tiny_shards}", f"run_dir={run_dir}", "train.max_steps=3", "analysis.interval=0",
        "model.concept_layer=slot", "model.slot_iterations=2", "model.concept_positions=rope"]))
    run([sys.executable, "-m", "megaconcept.export", str(run_dir), str(tmp_path / "hf")])
    ids = torch.randint(2, 100, (2, 16))
    with torch.no_grad():
        model = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True).eval()
        assert (model.config.concept_layer, model.config.slot_iterations) == ("slot", 2)
        two, four = model(input_ids=ids).logits, model(input_ids=ids, slot_iterations=4).logits
        four_config = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True,
                                                           slot_iterations=4).eval()(input_ids=ids).logits
    assert torch.isfinite(two).all() and not torch.allclose(two, four, atol=1e-5)
    torch.testing.assert_close(four_config, four, rtol=0, atol=0)


def test_concept_usage_reads_slot_weights_per_token_and_entropy_per_concept_row():
    from evals.concepts import Usage

    # Slot weights: each real token's column sums to 1 over C=2; padding (last token) is 0.
    weights = torch.tensor([[[0.9, 0.2, 0.5, 0.0], [0.1, 0.8, 0.5, 0.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    usage = Usage(2)
    usage.add(weights, mask)
    assert usage.top_tokens == [2, 1]  # ties go to the lowest index
    rows = weights[0, :, :3] / weights[0, :, :3].sum(dim=1, keepdim=True)
    expected = (-(rows * rows.log()).sum(dim=1) / math.log(3)).tolist()
    assert usage.entropy_sum == pytest.approx(expected)


def test_residual_slot_update_keeps_each_concept_and_exports():
    from megaconcept.export.hf_folder import build_hf_model
    from megaconcept.model import ConceptMLM, ConceptModelConfig

    base = dict(vocab_size=50, num_concepts=8, concept_dim=32, num_heads=2, num_layers=2, max_position_embeddings=32,
                concept_layer="slot")
    torch.manual_seed(0)
    gru = ConceptMLM(ConceptModelConfig(**base)).eval()
    torch.manual_seed(0)
    residual = ConceptMLM(ConceptModelConfig(**base, slot_update="residual")).eval()
    assert not any("gru" in k for k in residual.state_dict()) and any("gru" in k for k in gru.state_dict())
    ids = torch.randint(2, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    # At init the assignment is uniform, so every concept gets the same update: the GRU's bounded state pulls
    # the concepts together, the residual add keeps them apart.
    def mean_cosine(model):
        c = torch.nn.functional.normalize(model.encoder(ids), dim=-1)
        sims = c @ c.transpose(1, 2)
        return (sims.sum() - sims.diagonal(dim1=1, dim2=2).sum()) / (4 * 8 * 7)
    with torch.no_grad():
        assert mean_cosine(residual) < 0.1 < mean_cosine(gru)
        hf = build_hf_model(residual.config, dict(residual.state_dict()), "fp32")
        torch.testing.assert_close(hf(input_ids=ids).logits, residual.logits(residual(ids).states), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="slot_update"):
        ConceptMLM(ConceptModelConfig(**base, slot_update="lstm"))
