"""Objective plumbing through the CLI: objective-owned state is trained, checkpointed, resumed and left out of
the export; term metrics reach metrics.jsonl; the vocabulary is padded for the layout and unpadded on export."""
import json
import shutil
import sys

import torch
from safetensors.torch import load_file

from _launch import TINY, losses, run, torchrun_cmd

STEPS = 6
COMMON = TINY + ["model.dropout=0.0", f"train.max_steps={STEPS}", "checkpoint.interval=3", "analysis.interval=0"]
UNCERTAINTY = ["objective.weighting.scheme=uncertainty", "objective.weighting.options={min_log_var: -1.0}"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _log_vars(run_dir, tag):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=tag)
    return weights["objectives.weighting.log_vars"]


def test_uncertainty_state_trains_resumes_and_stays_out_of_the_export(tmp_path, tiny_shards):
    common = COMMON + UNCERTAINTY + [f"data.shards={tiny_shards}"]
    ref, res = tmp_path / "reference", tmp_path / "resumed"
    run(torchrun_cmd(1, "ds_configs/zero3.json", common + [f"run_dir={ref}"]))
    rows = [r for r in _rows(ref) if "loss" in r]
    # The learned log-variance moves, and the logged weight is 1 / (2 e^s) of it.
    first, last = _log_vars(ref, "step_00000003"), _log_vars(ref, "step_00000006")
    assert first.shape == (1,) and not torch.equal(first, last)
    assert abs(rows[-1]["weight/mlm"] - 0.5 * torch.exp(-last).item()) < 0.05
    assert all({"loss/mlm", "weight/mlm", "mlm/targets"} <= set(r) for r in rows)
    # The total is the weighted term plus s/2, not the MLM loss itself.
    assert all(abs(r["loss"] - r["loss/mlm"]) > 1e-3 for r in rows)
    # A run killed after step 3 resumes its log-variance from the checkpoint: losses as uninterrupted.
    run(torchrun_cmd(1, "ds_configs/zero3.json", common + [f"run_dir={res}"]))
    shutil.rmtree(res / "checkpoints" / "step_00000006")
    (res / "checkpoints" / "latest").write_text("step_00000003")
    run(torchrun_cmd(1, "ds_configs/zero3.json", common + [f"run_dir={res}"]))
    a, b = losses(ref), losses(res)
    assert all(abs(a[s] - b[s]) <= 1e-6 * abs(a[s]) for s in a) and sorted(a) == sorted(b)
    proc = run([sys.executable, "-m", "megaconcept.export", str(ref), str(tmp_path / "hf")])
    assert "objectives.weighting.log_vars" in proc.stdout  # said, not silently dropped
    assert not any(k.startswith(("objectives.", "model.")) for k in load_file(tmp_path / "hf" / "model.safetensors"))


def test_vocabulary_is_padded_for_training_and_trimmed_on_export(tmp_path, tiny_shards):
    run_dir = tmp_path / "padded"
    run(torchrun_cmd(1, "ds_configs/zero3.json", COMMON + [f"data.shards={tiny_shards}", f"run_dir={run_dir}",
                                                          "parallel.vocab_multiple=96", "train.max_steps=3"]))
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    trained = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="step_00000003")
    tokens = json.loads((tiny_shards / "manifest.json").read_text())["vocab_size"]
    padded = -(-tokens // 96) * 96
    assert padded > tokens and trained["model.encoder.token_embed.weight"].shape[0] == padded
    run([sys.executable, "-m", "megaconcept.export", str(run_dir), str(tmp_path / "hf")])
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    assert exported["encoder.token_embed.weight"].shape[0] == exported["lm_bias"].shape[0] == tokens
    torch.testing.assert_close(exported["encoder.token_embed.weight"], trained["model.encoder.token_embed.weight"][:tokens])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == tokens


def test_contrastive_and_a_regularizer_train_with_mlm_through_the_cli(tmp_path, tiny_shards):
    """Two ranks, ZeRO-3: the contrastive term (views made in the data workers, negatives gathered over both
    ranks), a concept regularizer and MLM train together; each term's loss and statistics are logged, the
    projection head is checkpointed under objectives.* and left out of the export."""
    run_dir = tmp_path / "run"
    run(torchrun_cmd(2, "ds_configs/zero3.json", COMMON + [
        f"data.shards={tiny_shards}", f"run_dir={run_dir}", "train.max_steps=3",
        "objective.terms.contrastive={weight: 0.5, min_tokens: 8}", "objective.terms.tregs={weight: 0.1, shifted: true}"]))
    rows = [r for r in _rows(run_dir) if "loss" in r]
    assert len(rows) == 3
    for r in rows:
        assert r["contrastive/pairs"] > 0 and 0 <= r["contrastive/accuracy"] <= 1 and r["loss/contrastive"] > 0
        assert 0 <= r["loss/tregs"] <= 2 and r["weight/contrastive"] == 0.5
        expected = r["loss/mlm"] + 0.5 * r["loss/contrastive"] + 0.1 * r["loss/tregs"]
        assert abs(r["loss"] - expected) < 1e-4 * expected
    proc = run([sys.executable, "-m", "megaconcept.export", str(run_dir), str(tmp_path / "hf")])
    assert "objectives.terms.contrastive.projection" in proc.stdout
