"""`python -m launchers.bench`: cpu_tiny.yaml through the real trainer (torchrun) on the tiny shards, its figures
checked against the trainer's own log and the FLOP counter; bad input as one-line errors; failed runs as rows."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launchers import bench
from launchers.sweep_grid import render

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
from _launch import env  # noqa: E402

SPEC = ROOT / "launchers" / "configs" / "bench" / "cpu_tiny.yaml"


def _bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launchers.bench", *args], env=env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _expected_flops_per_step(overrides: dict, shards: Path) -> tuple[float, int]:
    """count_step_flops' training FLOPs x samples per step for these overrides, and the micro-batch size."""
    from megaconcept.config import load_config
    from megaconcept.data.shards import read_manifest
    from megaconcept.train.builders import decoded_positions, model_config, vocab_multiple
    from megaconcept.train.flops import count_step_flops

    cfg = load_config(None, [f"{k}={render(v)}" for k, v in overrides.items()] + [f"data.shards={shards}"])
    manifest = read_manifest(str(shards))
    seq = manifest.seq_len
    model_cfg = model_config(cfg.model, manifest.vocab_size, seq, vocab_multiple(cfg.parallel), manifest.mask_token_id)
    per_sample = count_step_flops(model_cfg, cfg.objective.terms, seq, decoded_positions(cfg.objective.masking, seq))
    return per_sample.train * cfg.train.micro_batch_size, cfg.train.micro_batch_size


def test_cpu_tiny_bench_agrees_with_the_trainer_log_and_the_flop_counter(tiny_shards, tmp_path):
    out = tmp_path / "bench"
    proc = _bench(str(SPEC), "--shards", str(tiny_shards), "--out", str(out), "--steps", "3", "--warmup", "1")
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    spec = yaml.safe_load(SPEC.read_text())
    data = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in data["runs"]] == [run["name"] for run in spec["runs"]]
    seq_len = json.loads((tiny_shards / "manifest.json").read_text())["seq_len"]
    for run, row in zip(spec["runs"], data["runs"]):
        assert row["status"] == "ok" and row["measured_steps"] == 3 and len(row["step_times_s"]) == 3
        assert math.isfinite(row["step_time_s"]) and row["step_time_s"] > 0
        flops, micro_batch = _expected_flops_per_step({**spec["base"], **run["overrides"]}, tiny_shards)
        tokens = micro_batch * seq_len * spec["nproc"]
        assert row["tokens_per_step"] == tokens
        assert row["tokens_per_sec"] == pytest.approx(tokens / row["step_time_s"], rel=1e-6)
        assert row["tokens_per_sec_per_device"] == pytest.approx(row["tokens_per_sec"] / spec["nproc"], rel=1e-6)
        assert row["flops_per_step"] == pytest.approx(flops, rel=1e-12)
        assert row["peak_rss_mib"] > 0
        # The trainer's own per-step figure, read independently: its median over the 3 measured steps.
        logged = [json.loads(line) for line in (out / "runs" / run["name"] / "metrics.jsonl").read_text().splitlines()]
        trainer = statistics.median(r["tokens_per_sec"] for r in logged if r.get("tokens_per_sec") and r["step"] > 1)
        assert row["tokens_per_sec"] == pytest.approx(trainer, rel=1e-6)
    first, second = data["runs"]
    assert first["step_time_vs_ref"] == 1.0 and first["flops_per_step_vs_ref"] == 1.0
    assert second["flops_per_step_vs_ref"] == pytest.approx(second["flops_per_step"] / first["flops_per_step"])
    md = (out / "results.md").read_text()
    assert all(f"| {run['name']} | ok |" in md for run in spec["runs"])


def test_a_failed_run_is_a_row_with_its_one_line_reason(tmp_path):
    spec = tmp_path / "failing.yaml"
    missing = {"data.shards": str(tmp_path / "missing")}
    spec.write_text(yaml.safe_dump({"runs": [{"name": "no_shards", "overrides": missing}], "steps": 1, "warmup": 0}))
    out = tmp_path / "bench"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    proc = _bench(str(spec), "--out", str(out))
    assert proc.returncode == 1, f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    row, = json.loads((out / "results.json").read_text())["runs"]
    assert row["status"] == "failed" and row["exit_status"] == 2  # the worker's status, not torchrun's 1
    assert row["reason"].startswith("error") and "missing" in row["reason"] and "\n" not in row["reason"]
    assert "| no_shards | failed (exit 2): error" in (out / "results.md").read_text()
    assert (out / "notes.txt").read_text() == "mine\n"  # the bench never removes what it did not write


def test_the_runs_after_a_failed_one_still_run(tiny_shards, tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "a"}, {"name": "b"}]}))
    launched = []

    def fail(spec, run, where):  # the real launch is the tests above; here only what follows a failure
        launched.append(run.name)
        return {"exit_status": 3, "reason": f"error: {run.name} diverged", "wall_s": 1.0, "peak_rss_mib": 1.0}
    monkeypatch.setattr(bench, "launch", fail)
    assert bench.main([str(spec), "--shards", str(tiny_shards), "--out", str(tmp_path / "out")]) == 1
    assert launched == ["a", "b"] and "failed: a, b" in capsys.readouterr().out
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| a | failed (exit 3): error: a diverged |" in md and "| b | failed (exit 3): error: b diverged |" in md


BAD_SPECS = {
    "malformed": ("runs: [{name: a, overrides: {}\n", "not valid YAML"),
    "unknown_run_key": ("runs: [{name: a, overide: {}}]\n", "unknown key 'runs[0].overide'"),
    "unknown_key": ("runs: [{name: a}]\nstep: 3\n", "unknown key 'step'"),
    "reserved": ("runs: [{name: a, overrides: {train.max_steps: 5}}]\n", "'runs[0].overrides.train.max_steps'"),
    "placeholder": ('runs: [{name: a, overrides: {objective.terms.mlsm: {dictionary: "{dictionary}"}}}]\n',
                    "pass --set dictionary=VALUE"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_one_line_error_exit_2(case, tmp_path, capsys):
    text, expected = BAD_SPECS[case]
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert bench.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_unknown_config_key_unknown_run_and_foreign_run_dir_are_refused(tiny_shards, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "a", "overrides": {"train.micro_batchsize": 4}}]}))
    assert bench.main([str(spec), "--shards", str(tiny_shards)]) == 2
    assert "run 'a'" in capsys.readouterr().err
    spec.write_text(yaml.safe_dump({"runs": [{"name": "a", "overrides": {}}]}))
    assert bench.main([str(spec), "--only", "b"]) == 2
    assert "--only b: no such run" in capsys.readouterr().err
    foreign = tmp_path / "out" / "runs" / "a"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine\n")
    assert bench.main([str(spec), "--shards", str(tiny_shards), "--out", str(tmp_path / "out")]) == 2
    assert "was not written by the bench" in capsys.readouterr().err
    assert (foreign / "keep.txt").read_text() == "mine\n"
