"""Objective composition: config rules (one line each), weights and warm-ups, the weighting schemes' maths,
the refusal of uncertainty weighting for signed terms, and the version-1 decoder name."""
import math
from dataclasses import dataclass

import pytest
import torch

from megaconcept.config import ConfigError, load_config
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.registry import RegistryError
from megaconcept.objectives.base import OBJECTIVES, BuildContext, Objective, TermConfig
from megaconcept.objectives.compose import build_objectives, term_configs, warmed_weight
from megaconcept.objectives.weighting import UncertaintyOptions, UncertaintyWeighting


@pytest.mark.parametrize("overrides, fragment", [
    (["objective.terms.mlm={spam: 1}"], "objective.terms.mlm: unknown key(s) spam; valid: weight, warmup_steps"),
    (["objective.terms.x={kind: nope}"],
     f"objective.terms.x: 'nope' is not a known objective; valid: {', '.join(OBJECTIVES.keys())}"),
    (["objective.terms.mlm=null"], "objective.terms is empty"),
    (["objective.terms.mlm={weight: -1}"], "weight=-1.0 and warmup_steps=0 must be >= 0"),
    (["objective.terms.mlm=3"], "objective.terms.mlm must be a mapping"),
    (["objective.terms.mlm={weight: heavy}"], "objective.terms.mlm.weight='heavy' must be a number"),
    (["objective.terms.mlm={warmup_steps: 1.5}"], "objective.terms.mlm.warmup_steps=1.5 must be int"),
    (["objective.weighting.scheme=magic"], "objective.weighting.scheme='magic' is unknown; valid: fixed, uncertainty"),
    (["objective.weighting.scheme=uncertainty", "objective.weighting.options={min_log_var: 3, max_log_var: 1}"],
     "min_log_var=3.0 must be below max_log_var=1.0"),
    (["objective.weighting.options={spam: 1}"], "'fixed' takes no options"),
    (["objective.terms.gate={}"], "objective.terms.gate reads the decoder's gate, which model.decoder=perceiver_posonly"
                                  " does not produce; use model.decoder=sim_matrix"),
    (["objective.masking.strategy=span", "objective.masking.options={p: 2.0}"], "p=2.0 must be in (0, 1]"),
    (["objective.masking.options={p: 0.3}"], "'bert' takes no options"),
    (["objective.masking.schedule=linear"], "needs objective.masking.final_rate"),
    (["objective.masking.schedule=cubic", "objective.masking.final_rate=0.2"], "valid: constant, linear, step"),
    (["objective.cross_entropy=fast"], "objective.cross_entropy='fast' is not one of auto, apex, chunked, liger"),
])
def test_objective_config_errors_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_terms_compose_with_kinds_and_removal():
    cfg = load_config(None, ["model.decoder=sim_matrix", "objective.terms.push={kind: gate, weight: 0.5}",
                             "objective.terms.pull={kind: gate, target: 0.0, warmup_steps: 4}"])
    terms = term_configs(cfg.objective.terms)
    assert {n: k for n, (k, _) in terms.items()} == {"mlm": "mlm", "push": "gate", "pull": "gate"}
    assert terms["pull"][1].target == 0.0 and terms["push"][1].weight == 0.5


def test_warm_up_is_linear_to_the_full_weight():
    cfg = TermConfig(weight=2.0, warmup_steps=4)
    assert [warmed_weight(cfg, s) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert warmed_weight(TermConfig(weight=0.3), 0) == 0.3


def _model():
    torch.manual_seed(0)
    return ConceptMLM(ConceptModelConfig(vocab_size=40, num_concepts=4, concept_dim=16, num_heads=2,
                                         max_position_embeddings=32, decoder="sim_matrix"))


def test_fixed_total_is_the_weighted_sum_and_metrics_name_every_term():
    model = _model()
    objectives = build_objectives({"mlm": {"weight": 0.7}, "gate": {"weight": 0.2, "warmup_steps": 2}}, "fixed",
                                  None, BuildContext(model=model))
    ids = torch.randint(2, 40, (2, 12))
    positions, labels = torch.tensor([[1, 4], [0, 9]]), torch.randint(2, 40, (2, 2))
    outputs = model(ids, positions=positions)
    total, metrics = objectives(outputs, {"labels": labels})
    expected = 0.7 * metrics["loss/mlm"] + 0.2 * 0.5 * metrics["loss/gate"]  # warm-up: step 0 of 2
    torch.testing.assert_close(total, expected)
    assert set(metrics) == set(objectives.metric_names()) == {
        "loss/mlm", "weight/mlm", "loss/gate", "weight/gate", "mlm/targets", "decoder/gate_mean", "decoder/gate_entropy"}
    gate = outputs.aux["gate"]
    torch.testing.assert_close(metrics["decoder/gate_mean"], gate.mean())
    torch.testing.assert_close(metrics["loss/gate"], -gate.log().mean())  # BCE against target 1
    assert 0 < metrics["decoder/gate_entropy"] <= math.log(2)


def test_uncertainty_matches_kendall_gal_and_stays_bounded():
    weighting = UncertaintyWeighting(UncertaintyOptions(init_log_var=0.3, min_log_var=-2.0, max_log_var=5.0),
                                     {"a": Objective(), "b": Objective()})
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}
    total, weights = weighting(losses, {"a": 1.0, "b": 1.0})
    s = 0.3
    assert total.item() == pytest.approx((2.0 + 0.5) / (2 * math.exp(s)) + 2 * s / 2)
    assert weights["a"].item() == pytest.approx(0.5 * math.exp(-s))
    # Driving s far down cannot push the total below the clamp: the floor is min_log_var / 2 per term.
    with torch.no_grad():
        weighting.log_vars.fill_(-100.0)
    total, _ = weighting({"a": torch.tensor(0.0), "b": torch.tensor(0.0)}, {"a": 1.0, "b": 1.0})
    assert total.item() == pytest.approx(-2.0)


@dataclass
class _SignedConfig(TermConfig):
    pass


class _Signed(Objective):
    nonnegative = False

    def __init__(self, cfg, ctx):
        super().__init__()

    def forward(self, outputs, batch):
        return {"loss": -outputs.concepts.pow(2).mean()}


def test_uncertainty_refuses_a_signed_term(monkeypatch):
    monkeypatch.setitem(OBJECTIVES._entries, "signed", OBJECTIVES._entries["mlm"].__class__("signed", _Signed, _SignedConfig))
    with pytest.raises(ConfigError, match="scheme=uncertainty cannot weight term 'uniform': its loss can be negative"):
        load_config(None, ["objective.terms.uniform={kind: signed}", "objective.weighting.scheme=uncertainty"])
    with pytest.raises(RegistryError, match="cannot weight term 'uniform'"):
        build_objectives({"uniform": {"kind": "signed"}}, "uncertainty", None, BuildContext(model=_model()))
    load_config(None, ["objective.terms.uniform={kind: signed, warmup_steps: 100}"])  # fixed weights accept it


def test_version_1_configs_read_perceiver_mlm_as_the_position_only_decoder():
    old = ConceptModelConfig.from_dict({"vocab_size": 10, "decoder": "perceiver_mlm"})  # no config_version: v1
    assert old.decoder == "perceiver_posonly" and old.config_version == 2
    new = ConceptModelConfig.from_dict({"vocab_size": 10, "decoder": "perceiver_mlm", "config_version": 2})
    assert new.decoder == "perceiver_mlm"
    assert load_config(None, ["model.decoder=perceiver_mlm"]).model.decoder == "perceiver_mlm"
