"""FLOP count against hand calculations, device peaks and MFU."""
from dataclasses import replace

import pytest

from megaconcept.model.config import BackboneConfig, ConceptModelConfig
from megaconcept.train.flops import count_flops, mfu, peak_flops

# C=4 concepts of width 8, 2 heads, MLP 64 (8 * 2.75 rounded up to 64), vocab 100; N=16 tokens, M=2 decoded.
TINY = ConceptModelConfig(vocab_size=100, num_concepts=4, concept_dim=8, num_heads=2, num_layers=1, decoder_layers=1)


def test_concept_encoder_by_hand():
    f = count_flops(TINY, seq_len=16, decoded=2)
    # cross-attention: q,o 2*(2*4*8*8) + k,v over the tokens 2*(2*16*8*8) + scores/values 2*(2*4*16*8)
    assert f.concept_cross == 1024 + 4096 + 2048
    # self-attention among concepts: 4 projections 4*(2*4*8*8) + scores/values 2*(2*4*4*8)
    assert f.concept_self == 2048 + 512
    assert f.concept_mlp == 3 * (2 * 4 * 8 * 64)
    # decoder: q,o over 2 positions 2*(2*2*8*8) + k,v over 4 concepts 2*(2*4*8*8) + attention 2*(2*2*4*8) + MLP
    assert f.decoder == 512 + 1024 + 256 + 3 * (2 * 2 * 8 * 64)
    assert f.lm_head == 2 * 2 * 8 * 100  # only the decoded positions
    assert f.backbone == 0
    assert f.forward == 33152 and f.train == 3 * 33152


def test_backbone_and_dimension_inversion_by_hand():
    cfg = ConceptModelConfig(vocab_size=100, num_concepts=4, concept_dim=8, num_heads=2, num_layers=1,
                             decoder_layers=1, backbone=BackboneConfig(num_layers=1, hidden_size=12, num_heads=3,
                                                                       num_kv_heads=1, intermediate_size=16))
    f = count_flops(cfg, seq_len=16, decoded=2)
    # q,o 2*(2*16*12*12) + k,v (1 kv head of 4) 2*(2*16*12*4) + N^2 attention 2*(2*16*16*12) + SwiGLU 3*(2*16*12*16)
    assert f.backbone == 9216 + 3072 + 12288 + 18432
    assert f.concept_cross == 1024 + 2 * (2 * 16 * 12 * 8) + 2048  # keys/values read the 12-wide token states
    assert f.decoder == 512 + 1024 + 256 + 3 * (2 * 2 * 8 * 64) + 2 * 2 * 8 * 12  # + out_proj back to 12
    assert f.lm_head == 2 * 2 * 12 * 100


def test_cost_grows_linearly_in_tokens_without_backbone():
    short, long = (count_flops(ConceptModelConfig(vocab_size=100), n, 1).forward for n in (1024, 8192))
    assert long / short < 8.0  # O(C*N): never the 64x of N^2


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0),
])
def test_device_peaks(name, tflops):
    assert peak_flops(name) == tflops * 1e12


def test_unknown_device_has_no_mfu_unless_told():
    assert peak_flops(None) is None and peak_flops("Some CPU") is None
    assert mfu(1e12, 10.0, 2, None) is None
    assert peak_flops(None, override_tflops=100.0) == 100e12
    assert mfu(1e12, 10.0, 2, 100e12) == pytest.approx(0.05)


def test_slot_layers_and_the_diffusion_decoder_declare_their_extra_flops():
    from megaconcept.config.schema import MaskingSection
    from megaconcept.train.builders import decoded_positions

    base = ConceptModelConfig(vocab_size=100, num_concepts=8, concept_dim=32, num_heads=2, num_layers=1)
    c, d, n = 8, 32, 64
    slot = count_flops(replace(base, concept_layer="slot", slot_iterations=3), n, 10)
    # k, v once; per iteration q, o (2 C D^2 each), attention (2 x 2 C N D), GRU (2 x 2 C D 3D) and the MLP.
    per_iteration = 2 * (2 * c * d * d) + 2 * (2 * c * n * d) + 2 * (2 * c * d * 3 * d) + 3 * (2 * c * d * base.mlp_dim)
    assert slot.concept_cross == 2 * (2 * n * d * d) + 3 * per_iteration
    plain = count_flops(replace(base, decoder="diffusion"), n, 10).decoder
    both = count_flops(replace(base, decoder="diffusion", decoder_options={"self_attention": True}), n, 10).decoder
    assert both - plain == base.decoder_layers * (4 * (2 * 10 * d * d) + 2 * (2 * 10 * 10 * d))
    diffusion = MaskingSection(strategy="diffusion", options={"t_min": 0.2})
    assert decoded_positions(diffusion, 100) == 60 and decoded_positions(MaskingSection(rate=0.15), 100) == 15
    assert decoded_positions(MaskingSection(strategy="diffusion", options={"decode": "all"}), 100) == 100


def _mlsm_dictionary(folder, atoms=5, layer=2):
    """Only the metadata the counter reads (a teacher of width 12, 3 heads / 1 kv head, FFN 16)."""
    import json

    folder.mkdir(exist_ok=True)
    teacher = {"hidden_size": 12, "num_heads": 3, "num_kv_heads": 1, "intermediate_size": 16}
    (folder / "mlsm_dictionary.json").write_text(json.dumps({"teacher": teacher, "atoms": atoms, "layer": layer}))
    return str(folder)


def test_mlsm_step_by_hand(tmp_path):
    from megaconcept.train.flops import count_step_flops

    dictionary = _mlsm_dictionary(tmp_path / "d")
    mlm = count_step_flops(TINY, {"mlm": {}}, seq_len=16, decoded=2)
    assert mlm == count_flops(TINY, 16, 2)
    f = count_step_flops(TINY, {"mlm": None, "mlsm": {"dictionary": dictionary, "fista_iterations": 10}}, 16, 2)
    # the teacher's 2 layers over 16 tokens: the backbone-by-hand numbers above (same 12-wide layer), twice
    assert f.teacher == 2 * (9216 + 3072 + 12288 + 18432)
    # FISTA on the 2 decoded rows: x D^T 2*2*12*5 once + 10 iterations of (2, 5) x (5, 5)
    assert f.targets == 2 * 2 * 12 * 5 + 10 * (2 * 2 * 5 * 5)
    assert f.objective_heads == 2 * 2 * 8 * 5 and f.lm_head == 0  # d x k head, no d x V head
    assert f.forward == mlm.forward - mlm.lm_head + f.objective_heads
    assert f.train == 3 * f.forward + f.teacher + f.targets  # frozen parts run forward only
    both = count_step_flops(TINY, {"mlm": {}, "mlsm": {"dictionary": dictionary, "fista_iterations": 10}}, 16, 2)
    assert both.lm_head == mlm.lm_head and both.objective_heads == f.objective_heads


def test_mlsm_saves_the_vocabulary_head_at_smollm2_shape(tmp_path):
    # SmolLM2-135M shape (V 49152), a 512-wide encoder, 15% of 512 tokens decoded, teacher to layer 28 of 30,
    # k = 3000: the d x k head costs ~6% of the d x V one.
    from megaconcept.train.flops import count_step_flops

    cfg = ConceptModelConfig(vocab_size=49153, num_concepts=128, concept_dim=512, num_heads=8, num_layers=6,
                             decoder_layers=1)
    folder = tmp_path / "smol"
    folder.mkdir()
    import json

    (folder / "mlsm_dictionary.json").write_text(json.dumps(
        {"teacher": {"hidden_size": 576, "num_heads": 9, "num_kv_heads": 3, "intermediate_size": 1536},
         "atoms": 3000, "layer": 28}))
    mlm = count_step_flops(cfg, {"mlm": {}}, 512, 77)
    mlsm = count_step_flops(cfg, {"mlm": None, "mlsm": {"dictionary": str(folder)}}, 512, 77)
    assert mlsm.objective_heads / mlm.lm_head == pytest.approx(3000 / 49153)
    assert 3 * mlsm.forward < 3 * mlm.forward  # the trained part is cheaper; the frozen teacher is counted apart
