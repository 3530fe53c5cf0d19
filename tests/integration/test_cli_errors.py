"""The pretraining CLI turns bad input into one-line errors (exit 2) and never a traceback."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
from _launch import TINY, env, torchrun_cmd  # noqa: E402


def _pretrain(args, timeout=180):
    cmd = [sys.executable, str(ROOT / "launchers" / "pretrain.py"), *args]
    return subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _error_line(proc):
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train.max_step=3"], "unknown config key 'train.max_step'"),
        (["train.precision=fp8"], "train.precision='fp8'"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["analysis.collapse_fraction=2"], "analysis.collapse_fraction=2.0 in [0, 1]"),
        (["model.backbone.read_positions=learned"], "model.backbone.read_positions='learned' must be one of"),
    ],
)
def test_config_errors(args, fragment):
    assert fragment in _error_line(_pretrain(args))


def test_help_config_lists_keys():
    out = _pretrain(["--help-config"])
    assert out.returncode == 0
    for key in ("run_dir=", "seed=", "data.shards=", "train.max_steps=", "train.log_interval=",
                "train.precision=", "model.dropout=", "checkpoint.interval="):
        assert key in out.stdout


def test_missing_shards_and_bad_ds_config(tmp_path, tiny_shards):
    line = _error_line(_pretrain([f"data.shards={tmp_path / 'none'}", f"run_dir={tmp_path / 'r'}"]))
    assert "does not exist" in line and "data_prep.shard" in line
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 99}))
    line = _error_line(_pretrain(["--ds_config", str(ds), f"data.shards={tiny_shards}", f"run_dir={tmp_path / 'r'}"]))
    assert "train_micro_batch_size_per_gpu=99" in line


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_shard_names_the_shard(tmp_path, tiny_shards, workers):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    victims = sorted(shards.glob("shard-*.tar"))
    for victim in victims:  # every shard, so whichever is read first is damaged
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
    cmd = torchrun_cmd(1, "ds_configs/zero3.json", TINY + [f"data.shards={shards}", f"run_dir={tmp_path / 'r'}",
                                                          f"data.num_workers={workers}", "train.max_steps=2"])
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "shard-" in lines[0] and "data_prep.shard" in lines[0], proc.stderr[-3000:]
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()


@pytest.mark.parametrize("args, fragment", [
    (["parallel.tensor=2"], "1 processes cannot be split into parallel.tensor=2 x parallel.pipeline=1 groups"),
    (["parallel.pipeline=2"], "cannot run with ZeRO stage 3 (pipelines run with ZeRO-1); "
                              "use --ds_config ds_configs/zero1.json"),
])
def test_impossible_layouts_refused_before_any_process_group(tmp_path, tiny_shards, args, fragment):
    run_dir = tmp_path / "r"
    line = _error_line(_pretrain(TINY + [f"data.shards={tiny_shards}", f"run_dir={run_dir}", *args]))
    assert fragment in line
    assert not run_dir.exists()  # nothing started, nothing written
