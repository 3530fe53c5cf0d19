"""MLSM through the user-facing CLIs: a dictionary from a tiny Llama teacher on the tiny shards, a 3-step
MLSM-only run under ZeRO-3 (torchrun), a resume to step 4, and the export (no objective tensors; the card names
the dictionary and the teacher)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
from _launch import TINY, losses, run, torchrun_cmd  # noqa: E402


def _teacher(tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
                     ).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_mlsm_dictionary_train_resume_export(tiny_shards, tiny_tokenizer_dir, tmp_path):
    from data_prep import mlsm_dictionary

    teacher = _teacher(tiny_tokenizer_dir, tmp_path / "teacher")
    dictionary = tmp_path / "dictionary"
    assert mlsm_dictionary.main(["--teacher", str(teacher), "--layer", "2", "--shards", str(tiny_shards),
                                 "--atoms", "16", "--tokens", "2000", "--out", str(dictionary), "--batch-size", "250",
                                 "--fista-iterations", "30", "--device", "cpu"]) == 0
    run_dir, export = tmp_path / "run", tmp_path / "export"
    common = TINY + [f"data.shards={tiny_shards}", f"run_dir={run_dir}", "checkpoint.interval=3",
                     "analysis.interval=3", "analysis.samples=8",
                     f"objective.terms={{mlm: null, mlsm: {{dictionary: {dictionary}, fista_iterations: 30}}}}"]
    proc = run(torchrun_cmd(1, "ds_configs/zero3.json", common + ["train.max_steps=3"]))
    assert f"MLSM: dictionary {dictionary}" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and "loss/mlm" not in steps[0]
    assert all({"loss/mlsm", "mlsm/active_atoms", "mlsm/target_entropy", "mlsm/zero_code_rows"} <= set(r) for r in steps)
    assert all(r["loss/mlsm"] >= 0 and r["mlsm/active_atoms"] > 0 for r in steps)
    run(torchrun_cmd(1, "ds_configs/zero3.json", common + ["train.max_steps=4"]))  # resumes at step 3
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    run([sys.executable, "-m", "megaconcept.export", str(run_dir), str(export)])
    from safetensors import safe_open

    with safe_open(str(next(export.glob("*.safetensors"))), "pt") as handle:
        assert not any("objectives" in key or "mlsm" in key for key in handle.keys())
    card = (export / "README.md").read_text()
    assert "masked latent semantic modeling" in card and "to layer 2" in card
