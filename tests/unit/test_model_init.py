"""train.init_from / init_modules: the named parts (and only those) come from another model of the same shape;
padded vocabulary rows are allowed, any other mismatch is refused by name. train.trainable freezes the rest."""
import pytest
import torch
from safetensors.torch import save_file

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.train.builders import param_groups
from megaconcept.train.model_init import ModelInitError, check_trainable, freeze_all_but, load_parts

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
    report = load_parts(target, str(tmp_path), ["encoder"])
    assert "encoder warm-started" in report and "decoder" in report.split(";")[1]
    for key, value in source.encoder.state_dict().items():
        loaded = target.encoder.state_dict()[key]
        assert torch.equal(loaded[:value.shape[0]], value), key
    assert torch.equal(target.encoder.token_embed.weight[40:], padding_before)
    assert all(torch.equal(v, decoder_before[k]) for k, v in target.decoder.state_dict().items())


def test_encoder_and_decoder_are_copied_for_a_probe_and_the_untied_head_starts_fresh(tmp_path):
    source = _saved(tmp_path)  # tied: it has no lm_head
    torch.manual_seed(3)
    target = ConceptMLM(ConceptModelConfig(**{**BASE, "tie_word_embeddings": False}))
    head_before = target.lm_head.weight.clone()
    load_parts(target, str(tmp_path), ["encoder", "decoder"])
    for key, value in source.state_dict().items():
        if key.startswith(("encoder.", "decoder.")):
            assert torch.equal(target.state_dict()[key], value), key
    assert torch.equal(target.lm_head.weight, head_before)
    with pytest.raises(ModelInitError, match="lacks 1 of the weights of lm_head .*first: lm_head.weight"):
        load_parts(target, str(tmp_path), ["lm_head"])
    with pytest.raises(ModelInitError, match="init_modules names 'decodr'.*choose from .*decoder.*encoder"):
        load_parts(target, str(tmp_path), ["decodr"])


def test_a_folder_saved_under_the_hf_prefix_loads_too(tmp_path):
    source = ConceptMLM(ConceptModelConfig(**BASE))
    save_file({f"megaconcept.{k}": v.contiguous() for k, v in source.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    target = ConceptMLM(ConceptModelConfig(**BASE))
    load_parts(target, str(tmp_path), ["encoder"])
    assert all(torch.equal(target.encoder.state_dict()[k], v) for k, v in source.encoder.state_dict().items())


def test_another_shape_is_refused_by_name(tmp_path):
    _saved(tmp_path, concept_dim=32)
    with pytest.raises(ModelInitError, match=r"encoder\.\S+ is \(\d+, 32\), this run's is \(\d+, 16\)"):
        load_parts(ConceptMLM(ConceptModelConfig(**BASE)), str(tmp_path), ["encoder"])
    _saved(tmp_path, num_layers=1)
    with pytest.raises(ModelInitError, match="lacks .* weights of encoder .*encoder.layers.1"):
        load_parts(ConceptMLM(ConceptModelConfig(**{**BASE, "num_layers": 2})), str(tmp_path), ["encoder"])


def test_a_missing_source_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelInitError, match="does not exist"):
        load_parts(ConceptMLM(ConceptModelConfig(**BASE)), str(tmp_path / "nowhere"), ["encoder"])


def test_trainable_freezes_everything_else_and_the_optimizer_sees_only_the_head():
    model = ConceptMLM(ConceptModelConfig(**{**BASE, "tie_word_embeddings": False}))
    named = [(f"model.{n}", p) for n, p in model.named_parameters()]
    report = freeze_all_but(named, ["lm_head", "lm_bias"])
    head = model.lm_head.weight.numel() + model.lm_bias.numel()
    assert f"({head:,} of" in report
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"lm_head.weight", "lm_bias"}
    grouped = [p for g in param_groups(named, 0.01, 1e-3, 1.0) for p in g["params"]]
    assert {id(p) for p in grouped} == {id(model.lm_head.weight), id(model.lm_bias)}


def test_trainable_prefixes_must_name_parameters():
    tied = ConceptMLM(ConceptModelConfig(**BASE))
    with pytest.raises(ModelInitError, match="'lm_head', which matches no parameter.*tie_word_embeddings=false"):
        check_trainable(tied, ["lm_head"])
    with pytest.raises(ModelInitError, match="'decoder.lay', which"):  # a prefix is a whole name part, not a stem
        check_trainable(tied, ["decoder.lay"])
    check_trainable(tied, ["decoder", "encoder.concepts"])
