"""DeepSpeed pipeline parallelism on CPU/gloo: PP=2 computes what PP=1 computes (alone, with TP and with DP),
resumes exactly, and exports the same HF model."""
import json
import shutil
import subprocess
import sys

from safetensors.torch import load_file

from megaconcept.checkpoint_format import read_layout

from _launch import env, losses, run, torchrun_cmd
from test_tensor_parallel import EXACT, STEPS, _close

# Two micro-batches per step, so the 1F1B schedule really interleaves stages.
PIPE = EXACT + ["train.grad_accum_steps=2", "model.num_layers=2", "model.decoder_layers=2"]
ZERO1 = "ds_configs/zero1.json"


def _export(run_dir, out):
    run([sys.executable, "-m", "megaconcept.export", str(run_dir), str(out)])
    return load_file(out / "model.safetensors")


def _same_weights(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < tol, worst


def test_pp2_matches_pp1_and_exports_the_same_model(tmp_path, tiny_shards):
    common = PIPE + [f"data.shards={tiny_shards}"]
    run(torchrun_cmd(1, ZERO1, common + [f"run_dir={tmp_path / 'pp1'}"]))
    run(torchrun_cmd(2, ZERO1, common + [f"run_dir={tmp_path / 'pp2'}", "parallel.pipeline=2"]))
    _close(losses(tmp_path / "pp1"), losses(tmp_path / "pp2"))
    complete = json.loads((tmp_path / "pp2" / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").read_text())
    assert read_layout(complete) == {"world_size": 2, "tensor": 1, "pipeline": 2, "data": 1}
    assert "layer_03-model_00-model_states.pt" in complete["files"]  # every stage's files are in the record
    _same_weights(_export(tmp_path / "pp1", tmp_path / "pp1_hf"), _export(tmp_path / "pp2", tmp_path / "pp2_hf"))
    # A stage file gone: the export names it instead of writing a model with random layers.
    (tmp_path / "pp2" / "checkpoints" / f"step_{STEPS:08d}" / "layer_03-model_00-model_states.pt").unlink()
    proc = subprocess.run([sys.executable, "-m", "megaconcept.export", str(tmp_path / "pp2"), str(tmp_path / "bad")],
                          env=env(), capture_output=True, text=True)
    assert proc.returncode != 0 and "layer_03-model_00-model_states.pt is missing" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "bad").exists()


def test_pp2_resume_after_crash_matches_uninterrupted(tmp_path, tiny_shards):
    common = PIPE + [f"data.shards={tiny_shards}", "parallel.pipeline=2"]
    ref, res = tmp_path / "reference", tmp_path / "resumed"
    run(torchrun_cmd(2, ZERO1, common + [f"run_dir={ref}"]))
    run(torchrun_cmd(2, ZERO1, common + [f"run_dir={res}"]))
    shutil.rmtree(res / "checkpoints" / f"step_{STEPS:08d}")
    (res / "checkpoints" / "latest").write_text("step_00000003")
    run(torchrun_cmd(2, ZERO1, common + [f"run_dir={res}"]))
    _close(losses(ref), losses(res), rel=1e-6)


def test_pp2_by_tp2_matches_tp2_and_exports_the_same_model(tmp_path, tiny_shards):
    common = PIPE + [f"data.shards={tiny_shards}", "parallel.tensor=2"]
    run(torchrun_cmd(2, ZERO1, common + [f"run_dir={tmp_path / 'tp2'}"]))
    run(torchrun_cmd(4, ZERO1, common + [f"run_dir={tmp_path / 'tp2pp2'}", "parallel.pipeline=2"]), timeout=600)
    _close(losses(tmp_path / "tp2"), losses(tmp_path / "tp2pp2"))
    _same_weights(_export(tmp_path / "tp2", tmp_path / "tp2_hf"), _export(tmp_path / "tp2pp2", tmp_path / "pp_hf"))
