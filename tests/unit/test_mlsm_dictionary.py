"""The MLSM dictionary job on tiny shards with a tiny random Llama teacher saved as an HF folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from data_prep import mlsm_dictionary as job
from megaconcept.data.shards import read_manifest, read_shard
from megaconcept.objectives.mlsm_teacher import build_teacher


def make_teacher(tokenizer_dir: Path, out: Path, layers: int = 3, seed: int = 0) -> Path:
    """A random 3-layer Llama (hidden 32) with the tiny tokenizer, saved with save_pretrained."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def teacher_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    return make_teacher(tiny_tokenizer_dir, tmp_path_factory.mktemp("teacher") / "tiny-llama")


def _args(teacher, shards, out, **over) -> list[str]:
    opts = {"--teacher": str(teacher), "--layer": "2", "--shards": str(shards), "--atoms": "8", "--lambda": "0.05",
            "--tokens": "600", "--out": str(out), "--batch-size": "100", "--epochs": "2", "--teacher-batch": "8",
            "--fista-iterations": "30", "--save-every": "3", "--device": "cpu", **over}
    return [x for k, v in opts.items() for x in (k, v)]


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_teacher_stops_at_layer_l(teacher_dir, tiny_shards, layer):
    from transformers import LlamaForCausalLM

    manifest = read_manifest(str(tiny_shards))
    ids = torch.from_numpy(read_shard(manifest.shard_path(0), None, manifest.seq_len)[:2])
    teacher, identity = build_teacher(str(teacher_dir), layer)
    assert len(teacher.backbone.layers) == layer and identity["layer"] == layer  # later layers never built
    hf = LlamaForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(input_ids=ids, output_hidden_states=True).hidden_states[layer]
    torch.testing.assert_close(teacher(ids), expected, rtol=1e-4, atol=1e-4)


def test_job_writes_a_dictionary_and_resumes(teacher_dir, tiny_shards, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    out = tmp_path / "dict"
    assert job.main(_args(teacher_dir, tiny_shards, out)) == 0
    from safetensors.torch import load_file

    atoms = load_file(str(out / job.DICTIONARY_NAME))["atoms"]
    meta = json.loads((out / job.METADATA_NAME).read_text())
    assert atoms.shape == (8, 32)
    torch.testing.assert_close(atoms.norm(dim=1), torch.ones(8))
    manifest = read_manifest(str(tiny_shards))
    assert meta["tokenizer"]["sha256"] == manifest.tokenizer["sha256"] and meta["layer"] == 2
    assert meta["teacher"]["weights_sha256"] == build_teacher(str(teacher_dir), 2)[1]["weights_sha256"]
    assert meta["tokens"] == 600 and meta["lambda"] == 0.05 and meta["objective"] > 0
    assert not (out / job.CACHE_NAME).exists()
    # Interrupted after the first learning save, the re-run continues to the same dictionary.
    calls = {"n": 0}
    real_step = job.DictionaryLearner.step

    def dying_step(self, x):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real_step(self, x)

    again = tmp_path / "again"
    monkeypatch.setattr(job.DictionaryLearner, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        job.main(_args(teacher_dir, tiny_shards, again))
    monkeypatch.setattr(job.DictionaryLearner, "step", real_step)
    assert torch.load(again / job.STATE_NAME, weights_only=False)["step"] == 3
    assert job.main(_args(teacher_dir, tiny_shards, again)) == 0
    torch.testing.assert_close(load_file(str(again / job.DICTIONARY_NAME))["atoms"], atoms)
    assert job.main(_args(teacher_dir, tiny_shards, again)) == 0  # finished: nothing to do


def test_job_refusals(teacher_dir, tiny_shards, tmp_path, capsys):
    def error(args) -> str:
        assert job.main(args) == 2
        return capsys.readouterr().err.strip()

    assert "out of range" in error(_args(teacher_dir, tiny_shards, tmp_path / "a", **{"--layer": "4"}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not an MLSM dictionary" in error(_args(teacher_dir, tiny_shards, foreign))
    assert (foreign / "notes.txt").read_text() == "mine"
    # A teacher whose tokenizer differs from the shards' one.
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher_dir, other)
    vocab_file = json.loads((other / "tokenizer.json").read_text())
    model_vocab = vocab_file["model"]["vocab"]
    a, b = sorted(model_vocab, key=model_vocab.get)[300:302]
    model_vocab[a], model_vocab[b] = model_vocab[b], model_vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(vocab_file))
    message = error(_args(other, tiny_shards, tmp_path / "b"))
    assert "tokenizer differs" in message and "\n" not in message
    # Changed settings over an unfinished job.
    out = tmp_path / "c"
    out.mkdir()
    job.save_state(out, {"settings": {"atoms": 99}, "done": False})
    assert "other settings" in error(_args(teacher_dir, tiny_shards, out))
    # Too few states for --tokens at --positions-per-sample: refused before the teacher reads anything.
    for bad in ("-1", "1"):
        message = error(_args(teacher_dir, tiny_shards, tmp_path / "d", **{"--positions-per-sample": bad,
                                                                           "--tokens": "100000000"}))
        assert "--positions-per-sample" in message and "fewer than --tokens" in message
    assert not (tmp_path / "d").exists()


def test_positions_per_sample_reads_only_the_samples_it_needs(teacher_dir, tiny_shards, tmp_path):
    out = tmp_path / "dense"
    assert job.main(_args(teacher_dir, tiny_shards, out, **{"--positions-per-sample": "100", "--epochs": "1"})) == 0
    state = torch.load(out / job.STATE_NAME, weights_only=False)
    per_sample = min(100, read_manifest(str(tiny_shards)).seq_len)
    needed = -(-600 // per_sample)  # samples read, in teacher batches of 8; the default spreads over all of them
    assert state["rows_done"] == -(-needed // 8) * 8 < read_manifest(str(tiny_shards)).samples
    assert json.loads((out / job.METADATA_NAME).read_text())["tokens"] == 600
