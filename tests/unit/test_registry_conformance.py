"""Every entry of every registry goes through the same checks (HF ModelTesterMixin's idea): build, forward,
backward, the pipeline view equal to the plain module, an HF export round trip, and a state-dict resume.

Parameters come from the registries' own keys, so a new entry is tested the moment it is registered, and
`test_every_registry_is_covered` fails when a new registry appears without a conformance check here.
"""
import importlib
import pkgutil

import pytest
import torch

import megaconcept
from megaconcept.config.schema import MaskingSection
from megaconcept.export.hf_folder import build_hf_model
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.bottleneck import BOTTLENECKS
from megaconcept.model.classification import POOLINGS
from megaconcept.model.concept_positions import CONCEPT_POSITIONS
from megaconcept.model.decoders import DECODERS, POSITION_QUERIES
from megaconcept.model.encoder import CONCEPT_LAYERS
from megaconcept.model.hf_configuration import MegaconceptConfig
from megaconcept.model.hf_modeling import MegaconceptForSequenceClassification
from megaconcept.model.layers import ATTENTION
from megaconcept.model.registry import Registry
from megaconcept.objectives.base import OBJECTIVES, BuildContext
from megaconcept.objectives.compose import WEIGHT_SCHEDULES, build_objectives, warmed_weight
from megaconcept.objectives.cross_entropy import CROSS_ENTROPY, available, select_cross_entropy
from megaconcept.data.vocab import VocabularyTables
from megaconcept.objectives.masking import MASK_SCHEDULES, MASKING
from megaconcept.objectives.module import PretrainModule
from megaconcept.objectives.weighting import WEIGHTING
from megaconcept.parallel.pipeline import PipelineLoss, pipeline_layers, split_micro_batch
from megaconcept.train.builders import build_collator

VOCAB, N = 64, 16
TESTED = {"model.decoder": DECODERS, "model.decoder_positions": POSITION_QUERIES, "model.attention": ATTENTION,
          "model.concept_layer": CONCEPT_LAYERS,
          "objective.masking.strategy": MASKING, "objective.terms": OBJECTIVES, "objective.weighting.scheme": WEIGHTING,
          "classifier_pooling": POOLINGS, "objective.cross_entropy": CROSS_ENTROPY,
          "objective.masking.schedule": MASK_SCHEDULES, "model.bottleneck": BOTTLENECKS,
          "objective.terms.schedule": WEIGHT_SCHEDULES}


def _config(**overrides) -> ConceptModelConfig:
    base = dict(vocab_size=VOCAB, num_concepts=4, concept_dim=16, num_heads=2, num_layers=2, decoder_layers=2,
                max_position_embeddings=32, dropout=0.0)
    return ConceptModelConfig(**{**base, **overrides})


def term_options(kind: str) -> dict:
    """Options a term cannot be built without (its defaults otherwise): mlsm needs a dictionary folder."""
    if kind == "mlsm":
        from test_mlsm import tiny_dictionary  # tests/unit is on sys.path: a tiny teacher + dictionary, made once

        return {"dictionary": tiny_dictionary(VOCAB)}
    return {"min_tokens": 4} if kind == "contrastive" else {}


def _module(cfg: ConceptModelConfig, terms=None, scheme="fixed", seed=0) -> PretrainModule:
    torch.manual_seed(seed)
    model = ConceptMLM(cfg)
    objectives = build_objectives(terms or {"mlm": {}}, scheme, None, BuildContext(model=model, ce_chunk_size=7))
    return PretrainModule(model, objectives)


# Ids 0, 1 special (eos, mask); every third id starts a word, so words are 1-3 tokens long.
TABLES = VocabularyTables(special=torch.arange(VOCAB).lt(2).numpy(), word_start=(torch.arange(VOCAB) % 3 == 0).numpy(),
                          family="byte_level")


def _batch(strategy: str = "bert", schedule: str = "constant", extras=(), **masking) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, VOCAB, (3, N), generator=torch.Generator().manual_seed(1))
    ids[0, 11] = 0  # an eos: sample 0 packs two documents
    section = MaskingSection(strategy=strategy, schedule=schedule, final_rate=0.3, schedule_steps=4, **masking)
    collate = build_collator(section, mask_token_id=1, tables=TABLES, extras=extras)
    return collate(ids, torch.Generator().manual_seed(2), batch_index=2)


def run_pipeline(module: PretrainModule, batch: dict[str, torch.Tensor]) -> tuple[tuple, torch.Tensor]:
    """The module's pipeline layers run in one process: (what reaches the last stage, the loss there)."""
    inputs, labels = split_micro_batch(batch, module.objectives.reads, module.model.decoder.uses_tokens)
    x = inputs
    for spec in pipeline_layers(module):
        if isinstance(spec, torch.nn.Module):
            x = spec(x)
        else:
            built = spec.build()
            x = built(x) if spec.forward_fn is None else spec.forward_fn(built, x)
    return x, PipelineLoss(module)(x, labels)


def conformance(module: PretrainModule, batch: dict[str, torch.Tensor]) -> None:
    """The checks every entry passes (the pipeline view only for terms that can run on a last stage)."""
    out = module(**batch)
    assert torch.isfinite(out.loss) and set(out.metrics) == set(module.objectives.metric_names())
    out.loss.backward()
    trained = [n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any(n.startswith("model.encoder.layers.") for n in trained), "no gradient reaches the concept layers"
    with torch.no_grad():
        # Each pair of forwards starts from one RNG state: a training-mode vae bottleneck samples its concepts.
        if all(type(term).runs_in_pipeline for term in module.objectives.terms.values()):
            torch.manual_seed(5)
            piped = run_pipeline(module, batch)[1]
            torch.manual_seed(5)
            torch.testing.assert_close(piped, module(**batch).loss, rtol=0, atol=0)
        # Resume: a fresh module loaded from the state dict computes the same loss.
        fresh = _module(module.model.config, seed=99, terms={n: {"kind": k, **term_options(k)} for n, k in module.objectives.kinds.items()},
                        scheme=next(k for k in WEIGHTING.keys() if isinstance(module.objectives.weighting, WEIGHTING[k])))
        fresh.load_state_dict(module.state_dict())
        torch.manual_seed(6)
        resumed = fresh(**batch).loss
        torch.manual_seed(6)
        torch.testing.assert_close(resumed, module(**batch).loss, rtol=0, atol=0)
        # Export round trip: the HF model from the model's weights gives the native logits at every position.
        model = module.model.eval()
        hf = build_hf_model(model.config, dict(model.state_dict()), "fp32")
        ids = batch["input_ids"]
        torch.testing.assert_close(hf(input_ids=ids).logits, model.logits(model(ids).states), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", DECODERS.keys())
def test_decoder_entries(name):
    conformance(_module(_config(decoder=name)), _batch())


@pytest.mark.parametrize("name", POSITION_QUERIES.keys())
def test_position_query_entries(name):
    conformance(_module(_config(decoder_positions=name)), _batch())


@pytest.mark.parametrize("name", ATTENTION.keys())
def test_attention_entries(name):
    conformance(_module(_config(attention=name)), _batch())


@pytest.mark.parametrize("name", CONCEPT_LAYERS.keys())
def test_concept_layer_entries(name):
    conformance(_module(_config(concept_layer=name)), _batch())
    # Padded keys (mask-later) through the pipeline view too: slot attention zeroes their columns itself.
    conformance(_module(_config(concept_layer=name)), _batch(mask_later=True))


@pytest.mark.parametrize("name", CONCEPT_POSITIONS)
def test_concept_position_entries(name):
    for layer in CONCEPT_LAYERS.keys():
        conformance(_module(_config(concept_layer=layer, concept_positions=name)), _batch())


@pytest.mark.parametrize("name", MASKING.keys())
def test_masking_entries(name):
    batch = _batch(name)
    assert batch["positions"].shape == batch["labels"].shape and batch["input_ids"].shape == (3, N)
    conformance(_module(_config()), batch)


@pytest.mark.parametrize("name", MASK_SCHEDULES.keys())
def test_masking_schedule_entries(name):
    conformance(_module(_config()), _batch(schedule=name))


def test_mask_later_batches_conform():
    batch = _batch(mask_later=True)
    assert (batch["attention_mask"].gather(1, batch["positions"]) == 0).all()
    conformance(_module(_config()), batch)


@pytest.mark.parametrize("name", OBJECTIVES.keys())
def test_objective_entries(name):
    # A term that reads model aux outputs runs on the first decoder (and bottleneck) producing them.
    needs = set(OBJECTIVES[name].needs_aux)
    decoder, bottleneck = next((d, b) for b in BOTTLENECKS.keys() for d in DECODERS.keys()
                               if needs <= {*DECODERS[d].aux_names, *BOTTLENECKS[b].aux_names})
    module = _module(_config(decoder=decoder, bottleneck=bottleneck),
                     terms={name: term_options(name)})
    # Terms that add batch keys (document views) get them from the collator, as in training.
    conformance(module, _batch(OBJECTIVES[name].requires_masking or "bert",
                               extras=module.objectives.batch_makers(separator_id=0, seq_len=N)))


@pytest.mark.parametrize("name", BOTTLENECKS.keys())
def test_bottleneck_entries(name):
    # With the terms reading its aux tensors (a pipeline needs a gradient for each: config.validate._bottleneck).
    readers = {k: term_options(k) for k in OBJECTIVES.keys() if set(OBJECTIVES[k].needs_aux) & set(BOTTLENECKS[name].aux_names)}
    conformance(_module(_config(bottleneck=name), terms={"mlm": {}, **readers}), _batch())


WEIGHT_SCHEDULE_OPTIONS = {"cyclical": {"cycle_steps": 8, "n_cycles": 2}}


@pytest.mark.parametrize("name", WEIGHT_SCHEDULES.keys())
def test_weight_schedule_entries(name):
    # A schedule is a pure function of the (resumed) step: factors in [0, 1], the logged weight is warmed_weight,
    # and a rebuilt module at the same step computes the same loss.
    terms = {"mlm": {"weight": 0.5, "schedule": name, "schedule_options": WEIGHT_SCHEDULE_OPTIONS.get(name)}}
    module = _module(_config(), terms=terms)
    cfg = module.objectives.configs["mlm"]
    assert all(0.0 <= warmed_weight(cfg, s) <= 0.5 for s in range(20)) and warmed_weight(cfg, 50) == 0.5
    module.set_step(3)
    out = module(**_batch())
    assert out.metrics["weight/mlm"].item() == warmed_weight(cfg, 3) > 0
    out.loss.backward()
    fresh = _module(_config(), terms=terms)
    fresh.load_state_dict(module.state_dict())
    fresh.set_step(3)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**_batch()).loss, module(**_batch()).loss, rtol=0, atol=0)


@pytest.mark.parametrize("name", WEIGHTING.keys())
def test_weighting_entries(name):
    conformance(_module(_config(), scheme=name), _batch())


@pytest.mark.parametrize("name", POOLINGS.keys())
def test_pooling_entries(name):
    torch.manual_seed(0)
    config = MegaconceptConfig.from_model_config(_config(), classifier_pooling=name, num_labels=3)
    model = MegaconceptForSequenceClassification(config)
    ids = _batch()["input_ids"]
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    assert out.logits.shape == (3, 3) and model.encoder.layers[0].cross.attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CROSS_ENTROPY.keys())
def test_cross_entropy_entries(name):
    # Each kernel either runs here and matches the chunked reference, or is refused in one line (fused GPU ones).
    g = torch.Generator().manual_seed(0)
    states, weight, labels = torch.randn(9, 8, generator=g), torch.randn(20, 8, generator=g), torch.randint(0, 20, (9,))
    if not available(name, cuda=torch.cuda.is_available()):
        with pytest.raises(ValueError, match=f"objective.cross_entropy={name} needs"):
            select_cross_entropy(name, cuda=torch.cuda.is_available(), tensor_parallel=False)
        return
    ref = CROSS_ENTROPY["chunked"](states, weight, None, labels, 4)
    torch.testing.assert_close(CROSS_ENTROPY[name](states, weight, None, labels, 4), ref, rtol=1e-5, atol=1e-5)


def test_every_registry_is_covered():
    found = {}
    for info in pkgutil.walk_packages(megaconcept.__path__, "megaconcept."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found.update({value.key: value for value in vars(module).values() if isinstance(value, Registry)})
    assert set(found) == set(TESTED), sorted(set(found) ^ set(TESTED))
    assert all(found[k] is TESTED[k] for k in found)
