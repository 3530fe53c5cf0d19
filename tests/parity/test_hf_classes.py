"""The HF classes follow transformers' base-model/head convention, in process (the fresh-process, remote-code view of
the same behaviour is tests/integration/test_hf_conformance.py).

MegaconceptModel is the base model; every head holds one under `base_model_prefix`, so transformers itself moves
weights between them (adding or stripping the prefix) and reports what is new and what is unused.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megaconcept.export.hf_folder import build_hf_model, hf_names, write_hf_folder
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.config import BackboneConfig
from megaconcept.model.hf_configuration import MegaconceptConfig, model_fields
from megaconcept.model.hf_modeling import (MegaconceptForMaskedLM, MegaconceptForQuestionAnswering,
                                           MegaconceptForSequenceClassification, MegaconceptModel)

CFG = ConceptModelConfig(vocab_size=40, num_concepts=4, concept_dim=16, num_layers=1, num_heads=2,
                         max_position_embeddings=12)
HEADS = (MegaconceptForMaskedLM, MegaconceptForSequenceClassification, MegaconceptForQuestionAnswering)
CLASSES = (MegaconceptModel, *HEADS)


def _config(**extra) -> MegaconceptConfig:
    return MegaconceptConfig.from_model_config(CFG, num_labels=3, **extra)


def _info(cls, folder: Path, **kwargs):
    model, info = cls.from_pretrained(str(folder), output_loading_info=True, **kwargs)
    return model.eval(), {k: set(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys")}


def _outputs(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).to_tuple()


def test_base_model_prefix_names_the_base_model() -> None:
    for cls in HEADS:
        model = cls(_config())
        assert model.base_model_prefix == "megaconcept" and isinstance(model.megaconcept, MegaconceptModel)
        assert model.base_model is model.megaconcept and model.encoder is model.megaconcept.encoder
        assert model.get_input_embeddings() is model.megaconcept.encoder.token_embed
        assert all(k.startswith("megaconcept.") for k in model.state_dict() if k.split(".")[0] in ("encoder",
                                                                                                    "bottleneck"))
        assert not any(k.startswith(("encoder.", "bottleneck.")) for k in model.state_dict())
    base = MegaconceptModel(_config())
    assert base.base_model is base and sorted({k.split(".")[0] for k in base.state_dict()}) == ["encoder"]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_save_pretrained_from_pretrained_round_trips(cls, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cls(_config(classifier_pooling="decoder")).eval()
    model.save_pretrained(str(tmp_path))
    loaded, info = _info(cls, tmp_path)
    assert type(loaded) is cls and info == {"missing_keys": set(), "unexpected_keys": set()}
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(model.state_dict())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    ids = torch.randint(0, 40, (2, 12))
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, ids), _outputs(loaded, ids)))


@pytest.mark.parametrize("head", HEADS, ids=lambda c: c.__name__)
def test_base_model_checkpoint_loads_into_a_head_and_back(head, tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = MegaconceptModel(_config()).eval()
    base.save_pretrained(str(tmp_path / "base"))
    model, info = _info(head, tmp_path / "base", num_labels=3)
    # transformers adds the prefix: every base weight lands; the head's own weights are reported new.
    assert info["unexpected_keys"] == set()
    assert info["missing_keys"] == set(model.state_dict()) - {f"megaconcept.{k}" for k in base.state_dict()}
    assert info["missing_keys"] and not any(k.startswith("megaconcept.") for k in info["missing_keys"])
    assert all(torch.equal(v, model.megaconcept.state_dict()[k]) for k, v in base.state_dict().items())
    model.save_pretrained(str(tmp_path / "head"))
    back, info = _info(MegaconceptModel, tmp_path / "head")
    # ... and strips it: the head's weights are the unused ones.
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(model.state_dict()) - {
        f"megaconcept.{k}" for k in base.state_dict()}
    ids = torch.randint(0, 40, (2, 12))
    assert torch.equal(_outputs(back, ids)[0], _outputs(base, ids)[0])


def test_fine_tuned_classifier_loads_into_the_mlm_class(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = MegaconceptForSequenceClassification(_config()).eval()
    with torch.no_grad():
        classifier.megaconcept.encoder.concepts.add_(1.0)  # "fine-tuned": differs from any fresh init
    classifier.save_pretrained(str(tmp_path))
    mlm, info = _info(MegaconceptForMaskedLM, tmp_path)
    assert info["unexpected_keys"] == {k for k in classifier.state_dict() if k.startswith(("classifier.", "pooler."))}
    assert info["missing_keys"] == {k for k in mlm.state_dict() if k.startswith("decoder.")} | {"lm_bias"}
    assert torch.equal(mlm.encoder.concepts, classifier.encoder.concepts)


def test_an_export_loads_into_every_class(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    """An export's model.safetensors holds the native names (encoder.*, decoder.*, lm_bias): the base model
    reads its part as is, every head after transformers adds the prefix to the base model's keys."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    cfg = ConceptModelConfig(**{**CFG.to_dict(), "vocab_size": len(tokenizer), "backbone": BackboneConfig()})
    torch.manual_seed(0)
    native = ConceptMLM(cfg).eval()
    weights = {k: v.detach().clone() for k, v in native.state_dict().items()}
    write_hf_folder(tmp_path, build_hf_model(cfg, weights, "fp32"), tokenizer, weights)
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(weights)
    for cls in CLASSES:
        model, info = _info(cls, tmp_path, **({} if cls is MegaconceptModel else {"num_labels": 3}))
        head_only = set(model.state_dict()) - set(hf_names(weights, model))
        assert info["missing_keys"] == head_only, cls.__name__
        assert info["unexpected_keys"] == set(hf_names(weights, model)) - set(model.state_dict()), cls.__name__
        assert torch.equal(model.encoder.concepts, native.encoder.concepts)
    ids = torch.randint(0, len(tokenizer), (2, 12))
    mlm = MegaconceptForMaskedLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(mlm(ids).logits, native.logits(native(ids).states))


def test_config_fields_are_the_model_config_fields() -> None:
    """MegaconceptConfig declares no model field by hand: each ConceptModelConfig field is one, with its type
    and default; only vocab_size (always known in an export) and the nested backbone (a dict) differ."""
    native = {f.name: f for f in fields(ConceptModelConfig)}
    assert list(model_fields()) == list(native)
    hf_fields = {f.name for f in fields(MegaconceptConfig)}
    assert set(native) <= hf_fields and {"classifier_pooling", "classifier_dropout"} <= hf_fields
    defaults, hf = ConceptModelConfig(), MegaconceptConfig()
    differ = {name for name in native if getattr(hf, name) != getattr(defaults, name)}
    assert differ == {"vocab_size", "backbone"} and hf.backbone is None and hf.vocab_size == 32000
    assert hf.to_model_config().backbone == BackboneConfig()
    cfg = ConceptModelConfig(vocab_size=77, num_concepts=3, tie_word_embeddings=False, decoder_options={"a": 1})
    assert MegaconceptConfig.from_model_config(cfg).to_model_config() == cfg
    with_backbone = ConceptModelConfig(vocab_size=77, backbone=BackboneConfig(num_layers=2, hidden_size=48, num_heads=3,
                                                                            num_kv_heads=1, layout="interleaved"))
    assert MegaconceptConfig.from_model_config(with_backbone).to_model_config() == with_backbone
