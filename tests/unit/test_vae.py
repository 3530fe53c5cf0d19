"""VAE bottleneck and its KL term: closed-form KL, the free-bits floor (also across data-parallel ranks), weight
schedules against the reference, sampling in training only, the pipeline view, the HF export round trip, the
config rules, and that bottleneck=none leaves the model exactly as it was."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributions import Normal, kl_divergence

from megaconcept.config import ConfigError, load_config
from megaconcept.export.hf_folder import AUTO_MAP, build_hf_model, copy_model_code
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.bottleneck import VAEBottleneck
from megaconcept.model.hf_configuration import MegaconceptConfig
from megaconcept.model.registry import RegistryError
from megaconcept.model.sharding import tensor_parallel_plan
from megaconcept.objectives.base import BuildContext, TermConfig
from megaconcept.objectives.compose import build_objectives, term_configs, warmed_weight
from megaconcept.objectives.module import PretrainModule
from megaconcept.objectives.vae import KLConfig, KLObjective, active_units, kl_per_concept
from megaconcept.parallel.pipeline import layer_names, pipeline_layers
from megaconcept.train.flops import count_flops
from test_registry_conformance import run_pipeline

VOCAB = 50


def _config(**overrides) -> ConceptModelConfig:
    base = dict(vocab_size=VOCAB, num_concepts=4, concept_dim=16, num_heads=2, num_layers=2, decoder_layers=2,
                max_position_embeddings=32, bottleneck="vae")
    return ConceptModelConfig(**{**base, **overrides})


def _model(seed: int = 0, **overrides) -> ConceptMLM:
    torch.manual_seed(seed)
    return ConceptMLM(_config(**overrides))


class _Outputs:
    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        self.aux = {"vae_mu": mu, "vae_logvar": logvar}


def _kl_term(free_bits: float = 0.0, group=None) -> KLObjective:
    return KLObjective(KLConfig(free_bits=free_bits), BuildContext(model=_model(), data_group=group))


def _posterior(b: int = 6, c: int = 3, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, d, generator=g), torch.randn(b, c, d, generator=g)


def test_kl_is_the_closed_form():
    mu, logvar = _posterior()
    reference = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)  # (B, C)
    torch.testing.assert_close(kl_per_concept(mu, logvar), reference)
    out = _kl_term()(_Outputs(mu, logvar), {})
    torch.testing.assert_close(out["loss"], reference.mean(0).mean())  # mean over batch, then concepts
    torch.testing.assert_close(out["kl"], reference.mean(0).sum())  # raw, summed over concepts: the ELBO's KL
    torch.testing.assert_close(out["kl_concept_max"], reference.mean(0).max())
    assert kl_per_concept(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)).abs().max() == 0  # q = prior: exactly 0


def test_free_bits_floor_is_exact_and_stops_the_gradient():
    mu, logvar = _posterior(c=2)
    mu[:, 0], logvar[:, 0] = 0.01, 0.0  # concept 0: KL 0.5 * 5 * 1e-4 nats, far below the floor
    kl = kl_per_concept(mu, logvar).mean(0)
    free_bits = 0.25
    assert kl[0] < free_bits < kl[1]
    mu, logvar = mu.requires_grad_(), logvar.requires_grad_()
    out = _kl_term(free_bits)(_Outputs(mu, logvar), {})
    assert out["loss"].item() == ((free_bits + kl[1]) / 2).item()  # the floor contributes exactly free_bits
    assert out["below_free_bits"] == 1 and out["kl"].item() == pytest.approx(kl.sum().item())  # stats stay raw
    out["loss"].backward()
    assert mu.grad[:, 0].abs().max() == 0 and logvar.grad[:, 0].abs().max() == 0
    free_mu, free_logvar = mu.detach().clone().requires_grad_(), logvar.detach().clone().requires_grad_()
    _kl_term(0.0)(_Outputs(free_mu, free_logvar), {})["loss"].backward()
    assert torch.equal(mu.grad[:, 1], free_mu.grad[:, 1]) and torch.equal(logvar.grad[:, 1], free_logvar.grad[:, 1])


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    mu, logvar = _posterior(b=4, c=3, seed=1)
    mu[:2, 0], logvar[:2, 0] = 0.1, 0.0  # concept 0: KL 0.025 on rank 0's half, 3.1 on rank 1's, 1.6 in all
    mine = slice(2 * rank, 2 * rank + 2)
    mu, logvar = mu[mine].clone().requires_grad_(), logvar[mine].clone().requires_grad_()
    out = _kl_term(free_bits=0.5, group=dist.group.WORLD)(_Outputs(mu, logvar), {})
    out["loss"].backward()
    torch.save({"out": {k: v.detach() for k, v in out.items()}, "grads": (mu.grad, logvar.grad)},
               os.path.join(out_dir, f"rank_{rank}.pt"))
    dist.destroy_process_group()


def test_free_bits_decide_on_the_data_parallel_mean():
    """Two gloo ranks, each with half of a batch: the floor is decided on the all-reduced batch mean, so both ranks
    report the single-process loss and stats, and their gradients (averaged, as data parallelism does) are the
    single-process gradients. Clamping each rank's own mean would floor concept 0 on rank 0 only."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank_{r}.pt")) for r in range(2)]
    mu, logvar = _posterior(b=4, c=3, seed=1)
    mu[:2, 0], logvar[:2, 0] = 0.1, 0.0
    mu, logvar = mu.requires_grad_(), logvar.requires_grad_()
    reference = _kl_term(free_bits=0.5)(_Outputs(mu, logvar), {})
    reference["loss"].backward()
    assert mu.grad[:2, 0].abs().min() > 0  # above the floor globally: rank 0's share of concept 0 is trained
    for rank, got in enumerate(ranks):
        for name, value in reference.items():
            torch.testing.assert_close(got["out"][name], value.detach(), rtol=1e-6, atol=1e-6)
        mine = slice(2 * rank, 2 * rank + 2)
        # Each rank's loss is the global mean over 2 ranks: its gradient is 2x the global one; DP averaging halves it.
        torch.testing.assert_close(got["grads"][0] / 2, mu.grad[mine])
        torch.testing.assert_close(got["grads"][1] / 2, logvar.grad[mine])


def test_active_units_count_the_dims_whose_mean_varies():
    mu = torch.zeros(5, 2, 3)
    mu[:, 0, 0] = torch.tensor([0.0, 0.2, 0.4, 0.0, 0.1])  # variance 0.027 >= 0.01
    mu[:, 1, 2] = torch.tensor([0.0, 0.05, 0.0, 0.05, 0.0])  # variance 0.00075 < 0.01
    mu[:, 1, 1] = torch.arange(5.0)
    assert active_units(mu, 0.01, None).item() == int((mu.var(dim=0) >= 0.01).sum()) == 2
    assert active_units(mu[:1], 0.01, None).item() == 0  # one sample: no variance


def _reference_cyclical(n_iter: int, n_cycle: int, ratio: float) -> np.ndarray:
    """haofuml/cyclical_annealing frange_cycle_linear(n_iter, 0, 1, n_cycle, ratio), verbatim in effect."""
    values = np.ones(n_iter)
    period = n_iter / n_cycle
    step = 1.0 / (period * ratio)
    for c in range(n_cycle):
        v, i = 0.0, 0
        while v <= 1.0 and int(i + c * period) < n_iter:
            values[int(i + c * period)] = v
            v += step
            i += 1
    return values


def _cyclical(weight: float = 1.0, **options) -> TermConfig:
    return TermConfig(weight=weight, schedule="cyclical", schedule_options=options)


@pytest.mark.parametrize("steps, cycles, ratio", [(8, 2, 0.5), (16, 4, 0.25), (12, 3, 1.0), (32, 4, 0.5)])
def test_cyclical_schedule_is_the_reference(steps, cycles, ratio):
    cfg = _cyclical(cycle_steps=steps, n_cycles=cycles, ratio=ratio)
    got = [warmed_weight(cfg, s) for s in range(steps)]
    assert got == _reference_cyclical(steps, cycles, ratio).tolist()


def test_schedules_by_hand():
    assert [warmed_weight(_cyclical(0.1, cycle_steps=8, n_cycles=2), s) for s in range(10)] == [
        0.0, 0.05, 0.1, 0.1, 0.0, 0.05, 0.1, 0.1, 0.1, 0.1]  # after cycle_steps the weight stays full
    # A period of 10/3 steps: cycles start at floor(c * 10 / 3) = 0, 3, 6, as the reference's int(c * period).
    got = [warmed_weight(_cyclical(cycle_steps=10, n_cycles=3, ratio=0.5), s) for s in range(10)]
    assert got == pytest.approx([0.0, 0.6, 1.0, 0.0, 0.6, 1.0, 0.0, 0.6, 1.0, 1.0])
    assert got == pytest.approx(_reference_cyclical(10, 3, 0.5).tolist())
    linear = TermConfig(weight=2.0, warmup_steps=4)
    assert [warmed_weight(linear, s) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert warmed_weight(TermConfig(weight=0.3, schedule="linear"), 0) == 0.3


@pytest.mark.parametrize("options, fragment", [
    ({"schedule": "cosine"}, "objective.terms.kl.schedule='cosine' is unknown; valid: cyclical, linear"),
    ({"schedule": "cyclical"}, "objective.terms.kl.schedule_options: cycle_steps=0 and n_cycles=4 must satisfy"),
    ({"schedule": "cyclical", "schedule_options": {"cycle_steps": 10, "ratio": 0.0}}, "ratio=0.0 must be in (0, 1]"),
    ({"schedule": "cyclical", "schedule_options": {"cycle_steps": 10, "spam": 1}}, "unknown key(s) spam"),
    ({"schedule": "cyclical", "warmup_steps": 5, "schedule_options": {"cycle_steps": 10}},
     "warmup_steps=5 is the linear schedule's"),
    ({"schedule_options": {"cycle_steps": 10}}, "'linear' takes no options"),
    ({"free_bits": -1.0}, "free_bits=-1.0 must be finite and >= 0"),
])
def test_term_schedule_and_kl_errors_are_one_line(options, fragment):
    with pytest.raises(RegistryError) as info:
        term_configs({"kl": options})
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_eval_is_deterministic_and_training_samples():
    model = _model().eval()
    ids = torch.randint(2, VOCAB, (3, 12))
    with torch.no_grad():
        first, second = model(ids), model(ids)
        assert torch.equal(first.concepts, second.concepts) and torch.equal(first.states, second.states)
        model.train()
        a, b = model(ids), model(ids)
    assert torch.equal(a.concepts, first.concepts)  # the concepts are the mean, in training too
    assert not torch.equal(a.states, b.states)  # the decoder read two different samples
    torch.manual_seed(3)
    again = model(ids).states
    torch.manual_seed(3)
    assert torch.equal(again, model(ids).states)  # eps comes from the torch RNG: a resumed RNG state redraws it


def test_training_decodes_a_sample_around_mu():
    model = _model()
    seen = []
    model.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    ids = torch.randint(2, VOCAB, (64, 12))
    with torch.no_grad():
        out = model(ids)
    noise = seen[0] - out.aux["vae_mu"]  # z - mu = eps * exp(init_logvar / 2)
    assert noise.var() > 0
    assert noise.std().item() == pytest.approx(np.exp(-3.0), rel=0.05)
    assert torch.equal(out.aux["vae_mu"], out.concepts) and torch.all(out.aux["vae_logvar"] == -6.0)


def test_step_zero_is_the_none_model():
    # Same seed: every weight but the bottleneck's equals the none model's, and mu = concepts exactly.
    vae, none = _model(), _model(bottleneck="none")
    shared = none.state_dict()
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in shared.items())
    assert sorted(set(vae.state_dict()) - set(shared)) == [
        "bottleneck.logvar_proj.bias", "bottleneck.logvar_proj.weight", "bottleneck.mu_proj.bias",
        "bottleneck.mu_proj.weight"]
    ids = torch.randint(2, VOCAB, (2, 12))
    with torch.no_grad():
        assert torch.equal(vae.eval()(ids).states, none.eval()(ids).states)


def test_none_computes_encoder_then_decoder_exactly():
    model = _model(bottleneck="none").eval()
    ids, positions = torch.randint(2, VOCAB, (2, 12)), torch.tensor([[1, 4], [0, 9]])
    with torch.no_grad():
        out = model(ids, positions=positions)
        concepts = model.encoder(ids)
        assert torch.equal(out.concepts, concepts) and out.aux == {}
        assert torch.equal(out.states, model.decoder(concepts, positions).states)
    assert not any("bottleneck" in k for k in model.state_dict())


def test_logvar_is_clamped():
    model = _model(bottleneck_options={"logvar_min": -3.0, "logvar_max": 2.0, "init_logvar": -3.0})
    with torch.no_grad():
        model.bottleneck.logvar_proj.bias.fill_(100.0)
        assert torch.all(model(torch.randint(2, VOCAB, (2, 8))).aux["vae_logvar"] == 2.0)


def _perturbed(seed: int = 0, **overrides) -> ConceptMLM:
    """A vae model whose bottleneck left its start (identity) behind, so an export that skipped it would show."""
    model = _model(seed, **overrides)
    with torch.no_grad():
        for p in model.bottleneck.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("decoder", ["sim_matrix", "perceiver_posonly"])
def test_pipeline_view_carries_the_posterior_to_the_last_stage(decoder):
    model = _perturbed(decoder=decoder)
    terms = {"mlm": {}, "kl": {"free_bits": 0.1}} | ({"gate": {}} if decoder == "sim_matrix" else {})
    module = PretrainModule(model, build_objectives(terms, "fixed", None, BuildContext(model=model)))
    ids = torch.randint(2, VOCAB, (2, 12))
    batch = {"input_ids": ids, "positions": torch.tensor([[1, 5, 7], [0, 3, 11]]), "labels": ids[:, :3]}
    with torch.no_grad():
        torch.manual_seed(4)
        carry, loss = run_pipeline(module, batch)
        torch.manual_seed(4)
        ref = module(**batch)
    states, concepts, *aux = carry
    assert len(aux) == len(model.aux_names) and model.aux_names[-2:] == ("vae_mu", "vae_logvar")
    assert torch.equal(states, ref.outputs.states) and torch.equal(concepts, ref.outputs.concepts)
    assert all(torch.equal(t, ref.outputs.aux[name]) for name, t in zip(model.aux_names, aux))
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=0)
    saved = [name for names in layer_names(module, pipeline_layers(module)).values() for name in names.values()]
    assert sorted(saved) == sorted(module.state_dict())  # every tensor saved once by exactly one layer


def test_bottleneck_is_replicated_under_tensor_parallelism_and_counted_in_flops():
    plan = tensor_parallel_plan(_model())
    assert not any(name.startswith("bottleneck.") for name in plan)
    vae, none = count_flops(_config(), 64, 8), count_flops(_config(bottleneck="none"), 64, 8)
    assert vae.bottleneck == 2 * (2 * 4 * 16 * 16) and none.bottleneck == 0
    assert vae.forward - none.forward == vae.bottleneck


def test_export_round_trip_is_deterministic_and_matches_native(tmp_path):
    from transformers import AutoModel, AutoModelForMaskedLM

    native = _perturbed(decoder="sim_matrix").eval()
    hf = build_hf_model(native.config, dict(native.state_dict()), "fp32")
    hf.save_pretrained(str(tmp_path))
    copy_model_code(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["bottleneck"] == "vae" and saved["auto_map"] == AUTO_MAP
    loaded = AutoModelForMaskedLM.from_pretrained(str(tmp_path), trust_remote_code=True)
    # The remote code's own classes (loaded from the folder), so compare the values.
    assert loaded.config.to_model_config().to_dict() == native.config.to_dict()
    ids = torch.randint(2, VOCAB, (2, 12))
    with torch.no_grad():
        expected = native.logits(native(ids).states)
        loaded.train()  # even in training mode an exported model reads the mean
        first, second = loaded(input_ids=ids).logits, loaded(input_ids=ids).logits
        assert torch.equal(first, second)
        torch.testing.assert_close(first, expected, rtol=1e-6, atol=1e-6)
        encoder = AutoModel.from_pretrained(str(tmp_path), trust_remote_code=True).eval()
        torch.testing.assert_close(encoder(input_ids=ids).last_hidden_state, native(ids, decode=False).concepts)


def test_fresh_hf_model_starts_the_bottleneck_at_identity():
    config = MegaconceptConfig.from_model_config(_config())
    from megaconcept.model.hf_modeling import MegaconceptForMaskedLM

    bottleneck = MegaconceptForMaskedLM(config).bottleneck
    assert isinstance(bottleneck, VAEBottleneck)
    assert torch.equal(bottleneck.mu_proj.weight, torch.eye(16)) and torch.all(bottleneck.logvar_proj.bias == -6.0)


def test_configs_without_the_fields_read_as_none():
    old = ConceptModelConfig.from_dict({"vocab_size": 10, "config_version": 2})
    assert old.bottleneck == "none" and old.bottleneck_options is None
    assert MegaconceptConfig(vocab_size=10).to_model_config().bottleneck == "none"
    assert load_config(None, []).model.bottleneck == "none"


@pytest.mark.parametrize("overrides, fragment", [
    (["model.bottleneck=magic"], "model.bottleneck='magic' is unknown; valid: none, vae"),
    (["model.bottleneck=vae", "model.bottleneck_options={spam: 1}"],
     "model.bottleneck_options: unknown key(s) spam; valid: logvar_min, logvar_max, init_logvar"),
    (["model.bottleneck=vae", "model.bottleneck_options={logvar_min: 3, logvar_max: 1}"],
     "logvar_min=3.0 must be below logvar_max=1.0"),
    (["model.bottleneck=vae", "model.bottleneck_options={init_logvar: .nan}"],
     "model.bottleneck_options.init_logvar=nan must be finite"),
    (["model.bottleneck_options={init_logvar: -1}"], "'none' takes no options"),
    (["objective.terms.kl={}"], "objective.terms.kl reads the bottleneck's vae_logvar, vae_mu, which "
                                "model.bottleneck=none does not produce; use model.bottleneck=vae"),
    (["model.bottleneck=vae", "parallel.pipeline=2"], "model.bottleneck=vae with parallel.pipeline=2 needs a term "
                                                      "reading its vae_logvar, vae_mu (e.g. objective.terms.kl={})"),
])
def test_config_errors_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_recipe_from_the_readme_loads():
    cfg = load_config(None, ["model.bottleneck=vae", "parallel.pipeline=2",
                             "objective.terms.kl={weight: 0.1, free_bits: 0.25, schedule: cyclical, "
                             "schedule_options: {cycle_steps: 10000, n_cycles: 4, ratio: 0.5}}"])
    kind, kl = term_configs(cfg.objective.terms)["kl"]
    assert kind == "kl" and kl.free_bits == 0.25 and warmed_weight(kl, 0) == 0.0 and warmed_weight(kl, 1250) == 0.1
    with pytest.raises(RegistryError, match="objective.terms.kl needs a posterior"):
        KLObjective(KLConfig(), BuildContext(model=_model(bottleneck="none")))
