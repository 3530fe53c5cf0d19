"""Masked diffusion through the user-facing CLIs: an MLM run, a diffusion run warm-starting its encoder from it
(time-conditioned decoder with token self-attention over every position), the export, and generation from it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
from _launch import TINY, env, run, torchrun_cmd  # noqa: E402

DIFFUSION = ["objective.terms={mlm: null, diffusion: {}}", "objective.masking.strategy=diffusion",
             "objective.masking.options={decode: all, t_min: 0.05}", "model.decoder=diffusion",
             "model.decoder_options={time_conditioning: true, self_attention: true}"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_diffusion_run_warm_starts_its_encoder_exports_and_generates(tiny_shards, tmp_path):
    common = TINY + [f"data.shards={tiny_shards}", "train.max_steps=3", "analysis.interval=3", "analysis.samples=8",
                     "model.dropout=0.0"]
    mlm, diffusion, export = tmp_path / "mlm", tmp_path / "diffusion", tmp_path / "export"
    run(torchrun_cmd(1, "ds_configs/zero3.json", common + [f"run_dir={mlm}"]))
    proc = run(torchrun_cmd(1, "ds_configs/zero3.json", common + DIFFUSION + [f"run_dir={diffusion}",
                                                                            f"train.init_from={mlm}"]))
    assert f"encoder warm-started from {mlm}" in proc.stdout
    rows = _rows(diffusion)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and all({"loss/diffusion", "diffusion/mean_t", "diffusion/targets"} <= set(r) for r in steps)
    assert all(0.05 <= r["diffusion/mean_t"] < 1 for r in steps) and "loss/mlm" not in steps[0]
    analysis = [r for r in rows if "heldout_mlm15" in r]
    assert analysis and analysis[-1]["heldout_mlm15"] > 0
    run([sys.executable, "-m", "megaconcept.export", str(diffusion), str(export)])
    config = json.loads((export / "config.json").read_text())
    assert config["decoder"] == "diffusion" and config["decoder_options"]["time_conditioning"] is True
    cmd = [sys.executable, "-m", "megaconcept.generate", "--model", str(export), "--prompt", "The", "--length", "8",
           "--steps", "4", "--temperature", "0.5", "--seed", "1"]
    outputs = [subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, check=True).stdout
               for _ in range(2)]
    assert outputs[0] == outputs[1] and outputs[0].startswith("The") and "<mask>" not in outputs[0]
