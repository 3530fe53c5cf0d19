"""2-process ZeRO-3 on CPU: train, checkpoint, SIGKILL mid-run, resume, match the uninterrupted losses."""
import json

from _launch import TINY, deepspeed_cmd, kill_after, losses, run, torchrun_cmd

STEPS = 40


def _concept_records(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in rows if "concepts/effective_rank" in r}


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, tiny_shards):
    # Concept analysis mid-run too: it must neither perturb training nor differ after the resume.
    common = TINY + [f"data.shards={tiny_shards}", f"train.max_steps={STEPS}", "checkpoint.interval=4",
                     "checkpoint.keep_last=2", "analysis.interval=15"]
    ref_dir, res_dir = tmp_path / "reference", tmp_path / "resumed"
    # Uninterrupted reference through the deepspeed launcher; the interrupted run through torchrun.
    run(deepspeed_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={ref_dir}"]))
    cmd = torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={res_dir}"])
    killed_at = kill_after(cmd, res_dir / "metrics.jsonl", min_step=10, last_step=STEPS)
    assert killed_at < STEPS
    out = run(cmd)
    assert "checkpoint" in out.stdout
    ref, res = losses(ref_dir), losses(res_dir)
    assert sorted(ref) == list(range(1, STEPS + 1)) and sorted(res) == sorted(ref)
    for step in ref:
        assert abs(ref[step] - res[step]) <= 1e-6 * max(1.0, abs(ref[step])), (step, ref[step], res[step])
    assert ref[STEPS] < ref[1]  # it learns
    ref_health, res_health = _concept_records(ref_dir), _concept_records(res_dir)
    assert sorted(ref_health) == sorted(res_health) == [15, 30, 40]
    for step, record in ref_health.items():
        assert 1.0 <= record["concepts/effective_rank"] <= record["concepts/num_concepts"]
        assert abs(record["concepts/effective_rank"] - res_health[step]["concepts/effective_rank"]) < 1e-6
        assert abs(record["heldout_loss"] - res_health[step]["heldout_loss"]) < 1e-6
    kept = sorted(p.name for p in (res_dir / "checkpoints").glob("step_*"))
    assert kept == ["step_00000036", "step_00000040"]
    assert (res_dir / "checkpoints" / "latest").read_text() == "step_00000040"


def test_raising_max_steps_continues_and_finished_run_is_a_no_op(tmp_path, tiny_shards):
    common = TINY + [f"data.shards={tiny_shards}", "checkpoint.interval=3", f"run_dir={tmp_path / 'run'}"]
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + ["train.max_steps=3"]))
    again = run(torchrun_cmd(2, "ds_configs/zero3.json", common + ["train.max_steps=3"]))
    assert "raise it to continue" in again.stdout
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + ["train.max_steps=5"]))
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3, 4, 5]
