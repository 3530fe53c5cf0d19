"""MLSM through the user-facing CLIs: a dictionary from a tiny Llama teacher on the tiny shards; a 2-process ZeRO-3
MLSM-only run (torchrun) that is SIGKILLed, resumes and matches the uninterrupted run's losses exactly; the export
(no objective tensors; the card names the dictionary and the teacher); then a linear probe on the frozen MLSM model
(train.init_from + trainable=[lm_head, lm_bias]) whose export fills masks in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
from _launch import TINY, kill_after, losses, run, torchrun_cmd  # noqa: E402
from test_decoders_export import FRESH  # noqa: E402

STEPS, PROBE_STEPS = 8, 6


def _teacher(tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
                     ).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_mlsm_two_ranks_kill_resume_export_then_a_linear_probe_fills_masks(tiny_shards, tiny_tokenizer_dir, tmp_path):
    from data_prep import mlsm_dictionary

    teacher = _teacher(tiny_tokenizer_dir, tmp_path / "teacher")
    dictionary = tmp_path / "dictionary"
    assert mlsm_dictionary.main(["--teacher", str(teacher), "--layer", "2", "--shards", str(tiny_shards),
                                 "--atoms", "16", "--tokens", "2000", "--out", str(dictionary), "--batch-size", "250",
                                 "--fista-iterations", "30", "--device", "cpu"]) == 0
    reference, resumed, export = tmp_path / "reference", tmp_path / "resumed", tmp_path / "export"
    common = TINY + [f"data.shards={tiny_shards}", "checkpoint.interval=2", "analysis.interval=0",
                     f"train.max_steps={STEPS}",
                     f"objective.terms={{mlm: null, mlsm: {{dictionary: {dictionary}, fista_iterations: 30}}}}"]
    proc = run(torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={reference}"]))
    assert f"MLSM: dictionary {dictionary}" in proc.stdout
    cmd = torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={resumed}"])
    assert kill_after(cmd, resumed / "metrics.jsonl", min_step=3, last_step=STEPS) < STEPS
    run(cmd)
    ref, res = losses(reference), losses(resumed)
    assert sorted(ref) == sorted(res) == list(range(1, STEPS + 1))
    for step in ref:
        assert abs(ref[step] - res[step]) <= 1e-6 * max(1.0, abs(ref[step])), (step, ref[step], res[step])
    steps = [r for r in _rows(resumed) if "loss" in r]
    assert "loss/mlm" not in steps[0]
    assert all({"loss/mlsm", "mlsm/active_atoms", "mlsm/target_entropy", "mlsm/zero_code_rows"} <= set(r) for r in steps)
    assert all(r["loss/mlsm"] >= 0 and r["mlsm/active_atoms"] > 0 for r in steps)

    run([sys.executable, "-m", "megaconcept.export", str(resumed), str(export)])
    mlsm_weights = _weights(export)
    assert not any("objectives" in key or "mlsm" in key for key in mlsm_weights)
    card = (export / "README.md").read_text()
    assert "masked latent semantic modeling" in card and "to layer 2" in card

    # The linear probe: the MLSM model frozen, only an untied vocabulary head (and its bias) learns, on MLM.
    probe, probe_export = tmp_path / "probe", tmp_path / "probe_export"
    proc = run(torchrun_cmd(2, "ds_configs/zero3.json", TINY + [
        f"data.shards={tiny_shards}", f"run_dir={probe}", f"train.max_steps={PROBE_STEPS}", "analysis.interval=0",
        "train.lr=2e-2", f"train.init_from={resumed}", "train.init_modules=[encoder,decoder]",
        "train.trainable=[lm_head,lm_bias]", "model.tie_word_embeddings=false"]))
    assert "encoder, decoder warm-started from" in proc.stdout and "trainable: lm_head, lm_bias (" in proc.stdout
    probe_losses = losses(probe)
    assert probe_losses[PROBE_STEPS] < probe_losses[1] - 0.05, probe_losses  # the head learns
    run([sys.executable, "-m", "megaconcept.export", str(probe), str(probe_export)])
    probe_weights = _weights(probe_export)
    frozen = [k for k in mlsm_weights if k.startswith(("encoder.", "decoder."))]
    assert frozen and all(torch.equal(probe_weights[k], mlsm_weights[k]) for k in frozen)  # nothing else moved
    assert "lm_head.weight" in probe_weights and "lm_head.weight" not in mlsm_weights

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    fill = subprocess.run([sys.executable, "-c", FRESH, str(probe_export)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert fill.returncode == 0, fill.stderr[-3000:]
