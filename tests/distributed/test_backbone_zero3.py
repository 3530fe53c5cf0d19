"""Warm-started backbone under 2-process ZeRO-3: weights reach every partition, freezing holds them fixed,
resume continues, and the export carries the backbone. The model uses sinusoidal decoder queries, so it
trains on 64-token samples with an 8-row max_position_embeddings (no part of it is a position table)."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from _launch import TINY, losses, run, torchrun_cmd, ROOT  # noqa: F401

LLAMA = dict(vocab_size=1000, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
             num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(LlamaConfig(**LLAMA)).save_pretrained(path)
    return path


def _export(run_dir, out):
    run([__import__("sys").executable, "-m", "megaconcept.export", str(run_dir), str(out), "--overwrite"])
    return load_file(str(out / "model.safetensors"))


def test_warm_start_freeze_resume_export(tmp_path, tiny_shards, llama_dir):
    source = LlamaForCausalLM.from_pretrained(llama_dir).state_dict()
    run_dir = tmp_path / "run"
    common = TINY + [
        f"data.shards={tiny_shards}", f"run_dir={run_dir}", "checkpoint.interval=3",
        "model.backbone.num_layers=2", "model.backbone.hidden_size=48", "model.backbone.num_heads=6",
        "model.backbone.num_kv_heads=2", "model.backbone.intermediate_size=96", "model.backbone.rope_theta=10000",
        "model.backbone.source_layers=[0,2]", f"model.backbone.init_from={llama_dir}",
        "model.backbone.layout=interleaved", "model.num_layers=2", "train.backbone_freeze_steps=3",
        "train.backbone_lr_mult=0.5", "model.decoder_positions=sinusoidal", "model.max_position_embeddings=8",
    ]
    out = run(torchrun_cmd(2, "ds_configs/zero3.json", common + ["train.max_steps=3"]))
    assert "warm start from" in out.stdout and "0 source tensors unused" not in out.stdout
    frozen = _export(run_dir, tmp_path / "export3")
    for ours, theirs in (("layers.0", "layers.0"), ("layers.1", "layers.2")):
        for leaf in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(frozen[f"encoder.backbone.{ours}.{leaf}"], source[f"model.{theirs}.{leaf}"]), leaf
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + ["train.max_steps=5"]))
    trained = _export(run_dir, tmp_path / "export5")
    assert not torch.equal(trained["encoder.backbone.layers.0.self_attn.q_proj.weight"],
                           source["model.layers.0.self_attn.q_proj.weight"])
    assert sorted(losses(run_dir)) == [1, 2, 3, 4, 5]
    assert "decoder.position_queries.proj.weight" in trained and "decoder.position_queries.weight" not in trained
