"""`python -m launchers.sweep`: a real sweep of two tiny runs, its summary files, and a re-run that skips them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
from _launch import TINY, env  # noqa: E402

DECODERS = ["perceiver_posonly", "sim_matrix"]


def _sweep(grid: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launchers.sweep", str(grid), "--out", str(out)]
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    return proc


def test_tiny_sweep_trains_summarizes_and_skips_finished_runs_on_rerun(tiny_shards, tmp_path):
    # Read as the training CLI reads them (its YAML takes 3e-3 for a float), then written into the grid file.
    base = {k: OmegaConf.from_dotlist([f"v={v}"]).v for k, v in (item.split("=", 1) for item in TINY)}
    base.update({"data.shards": str(tiny_shards), "train.max_steps": 3, "analysis.interval": 3,
                 "analysis.samples": 8})
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump({"name": "tiny", "ds_config": str(ROOT / "ds_configs" / "zero3.json"), "base": base,
                                    "grid": {"model.decoder": DECODERS}, "env": {"OMP_NUM_THREADS": "1"}}))
    out = tmp_path / "sweep"
    first = _sweep(grid, out)
    assert "2 runs, 2 to train" in first.stdout and "(2 of 2 finished)" in first.stdout
    names = [f"decoder={d}" for d in DECODERS]
    state = json.loads((out / "sweep_state.json").read_text())["runs"]
    assert all(state[n]["outcome"] == "finished" and state[n]["final_step"] == 3 for n in names)
    second = _sweep(grid, out)
    assert "2 runs, 0 to train" in second.stdout
    for name in names:  # one launch each: the re-run started nothing
        assert (out / name / "sweep.log").read_text().count("$ ") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == names
    for row in summary["runs"]:
        assert row["final_step"] == 3 and row["metrics"]["heldout_loss"]["step"] == 3
        assert row["metrics"]["concepts/effective_rank"]["value"] > 0
    md = (out / "summary.md").read_text()
    assert all(f"| {n} | {d} | finished | 3 |" in md for n, d in zip(names, DECODERS))
    assert (out / "plots.png").read_bytes()[:4] == b"\x89PNG"
