"""train.init_encoder_from: the encoder (and only the encoder) comes from another model of the same encoder shape;
padded vocabulary rows are allowed, any other mismatch is refused by name."""
import pytest
import torch
from safetensors.torch import save_file

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.train.encoder_init import EncoderInitError, load_encoder

BASE = dict(vocab_size=40, num_concepts=4, concept_dim=16, num_heads=2, num_layers=1, max_position_embeddings=32)


def _saved(tmp_path, **overrides):
    torch.manual_seed(1)
    source = ConceptMLM(ConceptModelConfig(**{**BASE, **overrides}))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    return source


def test_encoder_is_copied_and_the_decoder_starts_fresh(tmp_path):
    source = _saved(tmp_path)
    torch.manual_seed(2)
    target = ConceptMLM(ConceptModelConfig(**{**BASE, "vocab_size": 48, "decoder": "diffusion"}))  # padded vocab
    decoder_before = {k: v.clone() for k, v in target.decoder.state_dict().items()}
    padding_before = target.encoder.token_embed.weight[40:].clone()
    report = load_encoder(target, str(tmp_path))
    assert "warm-started" in report
    for key, value in source.encoder.state_dict().items():
        loaded = target.encoder.state_dict()[key]
        assert torch.equal(loaded[:value.shape[0]], value), key
    assert torch.equal(target.encoder.token_embed.weight[40:], padding_before)
    assert all(torch.equal(v, decoder_before[k]) for k, v in target.decoder.state_dict().items())


def test_another_encoder_shape_is_refused_by_name(tmp_path):
    _saved(tmp_path, concept_dim=32)
    with pytest.raises(EncoderInitError, match=r"encoder\.\S+ is \(\d+, 32\), this run's is \(\d+, 16\)"):
        load_encoder(ConceptMLM(ConceptModelConfig(**BASE)), str(tmp_path))
    _saved(tmp_path, num_layers=1)
    with pytest.raises(EncoderInitError, match="lacks .* encoder weights .*encoder.layers.1"):
        load_encoder(ConceptMLM(ConceptModelConfig(**{**BASE, "num_layers": 2})), str(tmp_path))


def test_a_missing_source_is_a_one_line_error(tmp_path):
    with pytest.raises(EncoderInitError, match="does not exist"):
        load_encoder(ConceptMLM(ConceptModelConfig(**BASE)), str(tmp_path / "nowhere"))
