"""Objective features under model parallelism: TP=2 and PP=2 compute what TP=1 / PP=1 compute (CPU, gloo, fp32)."""
import json

import pytest

from _launch import losses, run, torchrun_cmd
from test_tensor_parallel import EXACT, _close

ZERO1, ZERO3 = "ds_configs/zero1.json", "ds_configs/zero3.json"
SPAN = ["objective.masking.strategy=span", "objective.masking.options={p: 0.2, max_words: 10}",
        "objective.masking.rate=0.3"]
MASK_LATER = ["objective.masking.mask_later=true", "objective.masking.strategy=whole_word"]
PIPE = ["train.grad_accum_steps=2", "model.num_layers=2", "model.decoder_layers=2"]


def _pair(tmp_path, tiny_shards, ds_config, extra, parallel, nproc=2):
    common = EXACT + extra + [f"data.shards={tiny_shards}"]
    run(torchrun_cmd(1, ds_config, common + [f"run_dir={tmp_path / 'one'}"]))
    run(torchrun_cmd(nproc, ds_config, common + [f"run_dir={tmp_path / 'split'}", parallel]))
    _close(losses(tmp_path / "one"), losses(tmp_path / "split"))


def test_span_masking_tp2_matches_tp1(tmp_path, tiny_shards):
    _pair(tmp_path, tiny_shards, ZERO3, SPAN, "parallel.tensor=2")


def test_span_masking_pp2_matches_pp1(tmp_path, tiny_shards):
    _pair(tmp_path, tiny_shards, ZERO1, SPAN + PIPE, "parallel.pipeline=2")


def test_mask_later_pp2_matches_pp1(tmp_path, tiny_shards):
    # The key mask travels through the stages with the token states.
    _pair(tmp_path, tiny_shards, ZERO1, MASK_LATER + PIPE, "parallel.pipeline=2")


SIM = ["model.decoder=sim_matrix", "objective.terms.gate={weight: 0.1, target: 1.0}"]


def test_sim_matrix_with_gate_term_tp2_matches_tp1(tmp_path, tiny_shards):
    _pair(tmp_path, tiny_shards, ZERO3, SIM, "parallel.tensor=2")
    rows = [r for r in _rows(tmp_path / "split") if "loss" in r]
    assert all(0 < r["decoder/gate_mean"] < 1 and r["loss/gate"] > 0 and r["weight/gate"] == pytest.approx(0.1) for r in rows)


def test_sim_matrix_pp2_matches_pp1(tmp_path, tiny_shards):
    # Token inputs are looked up on the first stage and travel with the carry; the gate comes back from the last.
    _pair(tmp_path, tiny_shards, ZERO1, SIM + PIPE, "parallel.pipeline=2")
    one, split = ([r for r in _rows(tmp_path / d) if "loss" in r] for d in ("one", "split"))
    assert [r["decoder/gate_mean"] for r in one] == pytest.approx([r["decoder/gate_mean"] for r in split], rel=1e-5)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


DIFFUSION = ["objective.terms={mlm: null, diffusion: {}}", "objective.masking.strategy=diffusion",
             "model.decoder=diffusion", "objective.masking.options={decode: all, t_min: 0.05}"]


def test_diffusion_tp2_matches_tp1(tmp_path, tiny_shards):
    # The 1/t-weighted, token-normalised ELBO through the vocab-parallel kernel; time-conditioned self-attention.
    _pair(tmp_path, tiny_shards, ZERO3, DIFFUSION + ["model.decoder_options={time_conditioning: true, "
                                                     "self_attention: true}"], "parallel.tensor=2")
    rows = [r for r in _rows(tmp_path / "split") if "loss" in r]
    assert rows and all(r["diffusion/targets"] > 0 and 0.05 <= r["diffusion/mean_t"] < 1 for r in rows)


def test_diffusion_pp2_matches_pp1(tmp_path, tiny_shards):
    # The decoder reads the noisy ids while the encoder reads the clean ones: both travel to the first stage.
    _pair(tmp_path, tiny_shards, ZERO1, DIFFUSION + PIPE + ["model.decoder_options={self_attention: true}"],
          "parallel.pipeline=2")
