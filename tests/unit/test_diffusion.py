"""Masked diffusion: the corruption (levels, independence, layout), the ELBO term against a hand computation,
the per-row weighted cross-entropy, the decoder (AdaLN-Zero, self-attention) and the config rules."""
import math

import pytest
import torch
import torch.nn.functional as F

from megaconcept.config import ConfigError, load_config
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.lm_loss import chunked_cross_entropy
from megaconcept.objectives.base import BuildContext
from megaconcept.objectives.compose import build_objectives
from megaconcept.objectives.diffusion_masking import (DiffusionOptions, diffusion_batch, diffusion_masking,
                                                      sample_levels)
from megaconcept.objectives.masking import MaskingSpec
from megaconcept.objectives.module import PretrainModule

V, N, MASK = 40, 12, 1


def spec(**options) -> MaskingSpec:
    return MaskingSpec(0.15, 0.8, 0.1, MASK, torch.arange(2, V), options=DiffusionOptions(**options))


def model(**overrides) -> ConceptMLM:
    torch.manual_seed(0)
    base = dict(vocab_size=V, num_concepts=4, concept_dim=16, num_heads=2, num_layers=1, decoder_layers=2,
                max_position_embeddings=32, decoder="diffusion")
    return ConceptMLM(ConceptModelConfig(**{**base, **overrides}))


@pytest.mark.parametrize("sampling", ["stratified", "antithetic"])
def test_levels_cover_every_stratum_of_the_batch(sampling):
    options = DiffusionOptions(t_min=0.1, sampling=sampling)
    for seed in range(5):
        t = sample_levels(8, options, torch.Generator().manual_seed(seed))
        strata = ((t - 0.1) / 0.9 * 8).floor().long()  # which eighth of [t_min, 1) each level lies in
        assert sorted(strata.tolist()) == list(range(8)) and t.min() >= 0.1 and t.max() < 1.0


def test_positions_are_masked_independently_with_probability_t_and_absorbed():
    ids = torch.randint(2, V, (4, 4096), generator=torch.Generator().manual_seed(0))
    batch = diffusion_masking(ids, spec(), torch.Generator().manual_seed(1))
    t, noisy, clean = batch["noise_level"], batch["decoder_input_ids"], batch["input_ids"]
    assert torch.equal(clean, ids)  # encoder_reads=clean (default): the encoder gets the clean text
    masked = noisy == MASK
    fraction = masked.float().mean(dim=1)
    assert torch.all((fraction - t).abs() < 4 * torch.sqrt(t * (1 - t) / 4096) + 1e-3)
    assert torch.equal(noisy[~masked], ids[~masked])  # unmasked tokens untouched, masked ones all [MASK]
    # Targets: exactly the masked positions, labelled with the clean ids, weighted 1/t; padding weight 0.
    valid = batch["labels"] >= 0
    assert torch.equal(valid.sum(dim=1), masked.sum(dim=1))
    rows = torch.arange(4)[:, None].expand_as(valid)
    assert torch.equal(batch["labels"][valid], ids[rows[valid], batch["positions"][valid]])
    assert torch.all(noisy[rows[valid], batch["positions"][valid]] == MASK)
    assert torch.allclose(batch["target_weights"], torch.where(valid, 1 / t[:, None], 0.0))
    noisy_batch = diffusion_masking(ids, spec(encoder_reads="noisy"), torch.Generator().manual_seed(1))
    assert torch.equal(noisy_batch["input_ids"], noisy) and "decoder_input_ids" not in noisy_batch


def test_decode_all_layout_and_max_weight():
    ids = torch.arange(2, 2 + N).repeat(2, 1)
    masked = torch.zeros(2, N, dtype=torch.bool)
    masked[0, [1, 5]] = True
    batch = diffusion_batch(ids, torch.tensor([0.5, 0.001]), masked, spec(decode="all", max_weight=10.0),
                            DiffusionOptions(decode="all", max_weight=10.0))
    assert torch.equal(batch["positions"], torch.arange(N).repeat(2, 1))
    assert batch["labels"][0].tolist() == [-100, 3, -100, -100, -100, 7] + [-100] * 6
    assert (batch["labels"][1] == -100).all() and batch["target_weights"][0, 1] == 2.0
    sparse = diffusion_batch(ids, torch.tensor([0.5, 0.001]), masked, spec(), DiffusionOptions())
    assert sparse["positions"].shape == (2, 2) and sparse["labels"][1].tolist() == [-100, -100]


def test_elbo_equals_a_hand_computed_reference():
    # Two samples with 3 and 1 targets (one padded row): loss = sum_b sum_i CE_bi / t_b / (B * N).
    m = model()
    objectives = build_objectives({"diffusion": {}}, "fixed", None, BuildContext(model=m, ce_chunk_size=2))
    ids = torch.randint(2, V, (2, N), generator=torch.Generator().manual_seed(3))
    masked = torch.zeros(2, N, dtype=torch.bool)
    masked[0, [0, 4, 9]] = True
    masked[1, 7] = True
    t = torch.tensor([0.3, 0.8])
    batch = diffusion_batch(ids, t, masked, spec(), DiffusionOptions())
    module = PretrainModule(m, objectives)
    out = module(**batch)
    logits = m.logits(m(batch["input_ids"], positions=batch["positions"],
                        decoder_input_ids=batch["decoder_input_ids"]).states)
    total = 0.0
    for b, i in [(0, 0), (0, 1), (0, 2), (1, 0)]:
        total += -F.log_softmax(logits[b, i].double(), -1)[batch["labels"][b, i]] / t[b].double()
    assert math.isclose(out.metrics["loss/diffusion"].item(), total.item() / (2 * N), rel_tol=1e-5)
    assert out.metrics["diffusion/targets"].item() == 2.0  # (3 + 1) real targets / 2 samples
    # The padded row's state changes nothing; the MLM term on the same batch averages the 4 real targets only.
    mlm = build_objectives({"mlm": {}}, "fixed", None, BuildContext(model=m))(out.outputs, batch)[1]["loss/mlm"]
    reference = sum(-F.log_softmax(logits[b, i], -1)[batch["labels"][b, i]] for b, i in [(0, 0), (0, 1), (0, 2), (1, 0)])
    assert math.isclose(mlm.item(), reference.item() / 4, rel_tol=1e-5)


def test_weighted_chunked_cross_entropy_is_exact_and_ignores_weight_zero_rows():
    g = torch.Generator().manual_seed(0)
    states, weight, bias = torch.randn(7, 8, generator=g), torch.randn(V, 8, generator=g), torch.randn(V, generator=g)
    labels, w = torch.randint(0, V, (7,), generator=g), torch.tensor([1.0, 2.0, 0.0, 0.5, 0.0, 3.0, 1.0])
    rows = F.cross_entropy(states @ weight.T + bias, labels, reduction="none")
    got = chunked_cross_entropy(states, weight, bias, labels, chunk_size=3, row_weights=w, normalizer=11.0)
    assert torch.allclose(got, (rows * w).sum() / 11.0)
    states2 = states.clone()
    states2[[2, 4]] = 100.0
    assert torch.allclose(got, chunked_cross_entropy(states2, weight, bias, labels, 3, row_weights=w, normalizer=11.0))


def test_plain_diffusion_decoder_is_perceiver_mlm_and_adaln_zero_starts_as_identity():
    ids = torch.randint(2, V, (2, N), generator=torch.Generator().manual_seed(4))
    plain, reference = model(), model(decoder="perceiver_mlm")
    reference.load_state_dict(plain.state_dict())
    assert torch.equal(plain(ids).states, reference(ids).states)
    timed = model(decoder_options={"time_conditioning": True, "self_attention": True})
    assert all(p.abs().sum() == 0 for p in timed.decoder.modulation.parameters())
    t = torch.tensor([0.2, 0.9])
    # Zero gates: every decoder block is the identity, so the states are the normed queries whatever t is.
    out = timed(ids, noise_level=t).states
    assert torch.equal(out, timed(ids, noise_level=1 - t).states)
    queries = timed.decoder.queries(timed.encoder(ids), torch.arange(N).expand(2, N),
                                    timed.encoder.token_embed(ids))
    assert torch.allclose(out, timed.decoder.norm(queries), atol=1e-6)
    with torch.no_grad():
        timed.decoder.modulation[0].weight.normal_()
    assert not torch.allclose(timed(ids, noise_level=t).states, timed(ids, noise_level=1 - t).states)
    with pytest.raises(ValueError, match="noise_level"):
        timed(ids)


def test_self_attention_sees_other_positions_and_is_refused_past_its_length():
    m = model(decoder_options={"self_attention": True, "max_self_attention_length": 8})
    ids = torch.randint(2, V, (1, 8), generator=torch.Generator().manual_seed(5))
    other = ids.clone()
    other[0, 7] = MASK
    # Position 0's state depends on the token at position 7 through self-attention (the encoder reads neither).
    a = m(ids, positions=torch.arange(8)[None], decoder_input_ids=ids).states[0, 0]
    b = m(ids, positions=torch.arange(8)[None], decoder_input_ids=other).states[0, 0]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="max_self_attention_length=8"):
        m(torch.randint(2, V, (1, 9)))


@pytest.mark.parametrize("overrides, message", [
    (["objective.terms={diffusion: {}}"], "objective.masking.strategy=diffusion"),
    (["objective.terms={diffusion: {}}", "objective.masking.strategy=diffusion", "objective.masking.mask_later=true"],
     "no mask_later"),
    (["model.decoder=diffusion", "model.decoder_options={self_attention: true}", "objective.masking.strategy=diffusion"],
     "decode=all"),
    (["model.decoder=diffusion", "model.decoder_options={time_conditioning: true}"], "strategy=diffusion"),
    (["model.decoder=diffusion", "model.decoder_options={time_conditioning: true}",
      "objective.masking.strategy=diffusion", "parallel.pipeline=2"], "parallel.pipeline"),
    (["model.decoder=diffusion", "model.decoder_options={bogus: 1}"], "bogus"),
    (["model.decoder=perceiver_posonly", "model.decoder_options={self_attention: true}"], "takes no options"),
    (["objective.masking.strategy=diffusion", "objective.masking.options={t_min: 0}"], "t_min"),
])
def test_config_rules_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value).strip(), str(error.value)
