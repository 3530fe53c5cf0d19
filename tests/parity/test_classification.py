"""Sequence classification from an exported MLM folder: AutoModelForSequenceClassification loads it, the
encoder (and, for decoder pooling, the decoder) are the pretrained weights, and each pooling computes what
its definition says."""
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from megaconcept.export.hf_folder import build_hf_model, write_hf_folder
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.config import BackboneConfig

CFG = ConceptModelConfig(vocab_size=1000, num_concepts=4, concept_dim=32, num_heads=2, num_layers=1,
                         max_position_embeddings=64, dropout=0.0)


@pytest.fixture(scope="module")
def mlm_folder(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ConceptMLM]:
    torch.manual_seed(0)
    native = ConceptMLM(CFG).eval()
    weights = {k: v.detach().clone() for k, v in native.state_dict().items()}
    out = tmp_path_factory.mktemp("mlm_export")
    write_hf_folder(out, build_hf_model(CFG, weights, "fp32"), AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)),
                    weights)
    return out, native


def _load(folder: Path, pooling: str, num_labels: int = 3):
    torch.manual_seed(1)
    return AutoModelForSequenceClassification.from_pretrained(
        str(folder), trust_remote_code=True, num_labels=num_labels, classifier_pooling=pooling).eval()


@pytest.mark.parametrize("pooling", ["mean", "attention", "decoder"])
def test_pooling_reads_the_pretrained_weights(mlm_folder, pooling):
    folder, native = mlm_folder
    model = _load(folder, pooling)
    for name, tensor in native.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name
    if pooling == "decoder":
        for name, tensor in native.decoder.state_dict().items():
            assert torch.equal(model.decoder.state_dict()[name], tensor), name
    else:
        assert model.decoder is None
    ids = torch.randint(0, 1000, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        concepts = native.encoder(ids, mask)
        pooled = model.pooled(ids, mask)
        if pooling == "mean":
            torch.testing.assert_close(pooled, concepts.mean(dim=1))
        if pooling == "decoder":
            # Decoded states at the real positions only, averaged: row 1 ignores its 4 padded positions.
            states = native(ids, mask).states
            torch.testing.assert_close(pooled[0], states[0].mean(dim=0))
            torch.testing.assert_close(pooled[1], states[1, :6].mean(dim=0))
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)


def test_regression_head_and_training_step(mlm_folder):
    model = _load(mlm_folder[0], "attention", num_labels=1).train()
    ids, mask = torch.randint(0, 1000, (4, 8)), torch.ones(4, 8, dtype=torch.long)
    labels = torch.tensor([0.5, 1.0, 4.2, 3.3])
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert model.classifier.out_proj.weight.grad is not None and model.pooler.query.grad is not None
    assert model.encoder.concepts.grad is not None  # fine-tuning reaches the encoder


def test_unknown_pooling_is_one_clear_error(mlm_folder):
    with pytest.raises(ValueError, match="classifier_pooling='cls' is unknown; valid: attention, decoder, mean"):
        _load(mlm_folder[0], "cls")


def test_backbone_model_classifies():
    from megaconcept.model.hf_configuration import MegaconceptConfig
    from megaconcept.model.hf_modeling import MegaconceptForSequenceClassification

    cfg = ConceptModelConfig(vocab_size=100, num_concepts=4, concept_dim=16, num_heads=2, max_position_embeddings=32,
                             backbone=BackboneConfig(num_layers=1, hidden_size=24, num_heads=2, num_kv_heads=1,
                                                     intermediate_size=32))
    config = MegaconceptConfig.from_model_config(cfg, num_labels=2, classifier_pooling="decoder")
    model = MegaconceptForSequenceClassification(config)
    logits = model(input_ids=torch.randint(0, 100, (2, 12)), attention_mask=torch.ones(2, 12)).logits
    assert logits.shape == (2, 2)
