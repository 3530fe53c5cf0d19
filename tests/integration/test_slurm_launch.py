"""launchers/slurm/pretrain.sbatch end to end on one CPU "node", with stand-ins for srun and scontrol."""
import os
import stat
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from _launch import ROOT, TINY, env, free_port, losses  # noqa: E402


def _tool(path, body):
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_sbatch_script_trains(tmp_path, tiny_shards):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun: drop its own --options and run the command once (this machine is the only node).
    _tool(bin_dir / "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    _tool(bin_dir / "scontrol", 'echo 127.0.0.1\n')
    run_dir = tmp_path / "run"
    e = dict(env(), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_NODELIST="localhost",
             SLURM_NNODES="1", SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(ROOT), GPUS_PER_NODE="2",
             PYTHON=sys.executable, MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(ROOT / "launchers/slurm/pretrain.sbatch"), *TINY, f"data.shards={tiny_shards}",
         f"run_dir={run_dir}", "train.max_steps=2"],
        env=e, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 node(s) x 2 GPU(s)" in proc.stdout
    assert sorted(losses(run_dir)) == [1, 2]
