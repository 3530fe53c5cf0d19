"""A training run meets faults: non-finite losses (an objective turning NaN, lr=1e20), preemption (SIGTERM from
inside and through the SLURM script's time-limit warning), a damaged checkpoint. Each run is a real CLI run
(tiny model, CPU, ZeRO-3) checked against an uninterrupted reference run."""
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
from _launch import TINY, env, free_port, losses  # noqa: E402

pytestmark = pytest.mark.slow
PLUGIN = ["--plugin", "tests.faults.fault_plugin"]
FAULTY = ["objective.terms.mlm=null", "objective.terms.faulty.weight=1"]
STEPS = 40
PREEMPTED_EXIT, DIVERGED_EXIT = 75, 3


def _pretrain(args, timeout=300):
    """launchers/pretrain.py in one process (no launcher in between: its exit status is the run's)."""
    cmd = [sys.executable, str(ROOT / "launchers" / "pretrain.py"), "--ds_config", str(ROOT / "ds_configs/zero3.json"),
           *args]
    return subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _common(shards, run_dir, *extra):
    return [*TINY, f"data.shards={shards}", f"run_dir={run_dir}", f"train.max_steps={STEPS}", "analysis.interval=0",
            *extra]


def _strict_records(run_dir):
    """metrics.jsonl parsed as strict JSON (NaN and Infinity are not JSON)."""
    def refuse(name):
        raise AssertionError(f"metrics.jsonl holds {name}")
    return [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _model_weights(tag_dir):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def _assert_same_losses(ref, res, steps):
    for step in steps:
        assert abs(ref[step] - res[step]) <= 1e-6 * max(1.0, abs(ref[step])), (step, ref[step], res[step])


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = _pretrain(_common(tiny_shards, run_dir, "checkpoint.interval=100"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return losses(run_dir)


def test_a_nan_objective_is_skipped_then_stops_the_run_keeping_the_last_good_checkpoint(tmp_path, tiny_shards):
    run_dir = tmp_path / "run"
    proc = _pretrain(PLUGIN + _common(tiny_shards, run_dir, *FAULTY, "objective.terms.faulty.nan_start=3",
                                      "checkpoint.interval=2", "checkpoint.keep_last=1",
                                      "guard.max_consecutive_skips=2"))
    assert proc.returncode == DIVERGED_EXIT, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "steps 4-6: 3 steps in a row" in errors[0] and "guard.max_consecutive_skips=2" in errors[0]
    assert "step_00000002" in errors[0]
    records = _strict_records(run_dir)
    assert [r["step"] for r in records if r.get("event") == "skipped_step"] == [4, 5, 6]
    assert max(r["step"] for r in records if "loss" in r and "event" not in r) == 3
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_00000002"  # steps 4 and 6 wrote none, 2 was not pruned
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000002"]
    assert "checkpoint at step 4 not written" in proc.stdout


def test_lr_1e20_stops_instead_of_training_on_nan(tmp_path, tiny_shards):
    run_dir = tmp_path / "run"
    proc = _pretrain(_common(tiny_shards, run_dir, "train.lr=1e20", "train.warmup_steps=0", "checkpoint.interval=1",
                             "checkpoint.keep_last=1"))
    assert proc.returncode == DIVERGED_EXIT, proc.stderr[-3000:]
    records = _strict_records(run_dir)
    skipped = [r for r in records if r.get("event") == "skipped_step"]
    assert len(skipped) == 4 and skipped[-1]["skipped_in_a_row"] == 4  # the default limit: more than 3 in a row
    latest = (run_dir / "checkpoints" / "latest").read_text()
    assert (run_dir / "checkpoints" / latest / "COMPLETE").is_file() and latest == f"step_{skipped[0]['step'] - 1:08d}"


def test_skipped_steps_leave_the_weights_alone_and_pruning_keeps_the_last_healthy(tmp_path, tiny_shards):
    """NaN from step 3 on; SIGTERM during step 5: the preempted checkpoint (written while skipping) holds exactly
    the weights of step 2, and pruning (keep_last=1) keeps step 2, the newest healthy one."""
    run_dir = tmp_path / "run"
    proc = _pretrain(PLUGIN + _common(tiny_shards, run_dir, *FAULTY, "objective.terms.faulty.nan_start=2",
                                      "objective.terms.faulty.signal_at=4", "checkpoint.interval=2",
                                      "checkpoint.keep_last=1", "guard.max_consecutive_skips=10"))
    assert proc.returncode == PREEMPTED_EXIT, proc.stderr[-3000:]
    assert "preempted: SIGTERM at step 5" in proc.stderr
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000002", "step_00000005"]
    assert json.loads((checkpoints / "step_00000005" / "COMPLETE").read_text())["healthy"] is False
    before, after = _model_weights(checkpoints / "step_00000002"), _model_weights(checkpoints / "step_00000005")
    assert before.keys() == after.keys()
    assert all(bool((before[k] == after[k]).all()) for k in before)
    assert json.loads((checkpoints / "step_00000005" / "trainer_state.json").read_text())["skipped_steps"] == 3


def test_sigterm_checkpoints_and_the_resumed_run_matches_the_uninterrupted_one(tmp_path, tiny_shards, reference):
    run_dir = tmp_path / "run"
    args = PLUGIN + _common(tiny_shards, run_dir, *FAULTY, "checkpoint.interval=100")
    proc = _pretrain(args + ["objective.terms.faulty.signal_at=4"])
    assert proc.returncode == PREEMPTED_EXIT, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000005"
    resumed = _pretrain(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    res = losses(run_dir)
    assert sorted(res) == list(range(1, STEPS + 1))
    _assert_same_losses(reference, res, range(1, STEPS + 1))


def test_a_truncated_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, tiny_shards, reference):
    run_dir = tmp_path / "run"
    common = PLUGIN + _common(tiny_shards, run_dir, *FAULTY, "checkpoint.interval=4", "checkpoint.keep_last=2")
    first = _pretrain(common + ["objective.terms.faulty.signal_at=7"])  # stops after step 8 (same schedule)
    assert first.returncode == PREEMPTED_EXIT, first.stderr[-3000:]
    victim = next((run_dir / "checkpoints" / "step_00000008").glob("*optim_states.pt"))
    victim.write_bytes(victim.read_bytes()[:100])
    resumed = _pretrain(common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{victim.name} has 100 bytes" in resumed.stdout and "resuming from step_00000004" in resumed.stdout
    assert len(list((run_dir / "checkpoints").glob("damaged-step_00000008-*"))) == 1  # moved aside, not deleted
    _assert_same_losses(reference, losses(run_dir), range(5, STEPS + 1))


def _tool(path, body):
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_time_limit_warning_checkpoints_requeues_and_resumes_exactly(tmp_path, tiny_shards, reference):
    """pretrain.sbatch gets SIGUSR1 (what `--signal=B:USR1@300` sends): the run checkpoints, the script asks
    scontrol to requeue, and the requeued script (run again) ends the run with the reference's losses."""
    bin_dir, run_dir = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    _tool(bin_dir / "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    _tool(bin_dir / "scontrol", f'echo "$@" >> {tmp_path / "scontrol.log"}\necho 127.0.0.1\n')
    e = dict(env(), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_NODELIST="localhost",
             SLURM_NNODES="1", SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(ROOT), GPUS_PER_NODE="1",
             PYTHON=sys.executable, MASTER_PORT=str(free_port()), SHUTDOWN_TIMEOUT="60")
    cmd = ["bash", str(ROOT / "launchers/slurm/pretrain.sbatch"),
           *_common(tiny_shards, run_dir, "checkpoint.interval=100")]
    job = subprocess.Popen(cmd, env=e, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert job.poll() is None and time.time() < deadline, "the job ended before the warning"
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=240)
    assert job.returncode == 0, out[-3000:]
    assert "requeue 4242" in (tmp_path / "scontrol.log").read_text() and "requeueing to resume" in out
    stopped = int((run_dir / "checkpoints" / "latest").read_text().split("_")[1])
    assert 2 <= stopped < STEPS and max(losses(run_dir)) == stopped
    requeued = subprocess.run(cmd, env=dict(e, MASTER_PORT=str(free_port())), cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
    assert requeued.returncode == 0, requeued.stdout[-3000:] + requeued.stderr[-3000:]
    res = losses(run_dir)
    assert sorted(res) == list(range(1, STEPS + 1))
    _assert_same_losses(reference, res, range(1, STEPS + 1))
