"""Helpers to launch launchers/pretrain.py in subprocesses (torchrun or the deepspeed launcher) on CPU."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = str(ROOT / "launchers" / "pretrain.py")

# A tiny model and exact arithmetic: resumed and uninterrupted runs must agree to 1e-6.
TINY = [
    "model.num_concepts=8", "model.concept_dim=32", "model.num_heads=2", "model.num_layers=1",
    "model.max_position_embeddings=64", "model.dropout=0.1", "train.micro_batch_size=4",
    "train.precision=fp32", "train.log_interval=1", "train.warmup_steps=2", "train.lr=3e-3",
    "data.num_workers=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def torchrun_cmd(nproc: int, ds_config: str, overrides: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        PRETRAIN, "--ds_config", str(ROOT / ds_config), *overrides,
    ]


def deepspeed_cmd(nproc: int, ds_config: str, overrides: list[str]) -> list[str]:
    launcher = str(Path(sys.executable).parent / "deepspeed")
    return [launcher, "--num_gpus", str(nproc), "--master_port", str(free_port()), PRETRAIN,
            "--ds_config", str(ROOT / ds_config), *overrides]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}  # concept-analysis rows carry no loss


def kill_after(cmd: list[str], metrics: Path, min_step: int, last_step: int, timeout: float = 240) -> int:
    """Start `cmd`, SIGKILL its whole process tree once a step in [min_step, last_step) is logged; return the
    last logged step."""
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"run ended by itself (rc={proc.returncode}) before it could be killed")
            if metrics.is_file() and any(f'"step": {s},' in metrics.read_text() for s in range(min_step, last_step)):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("run never reached the kill step")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return max(losses(metrics.parent))
