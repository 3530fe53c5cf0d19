"""Resume a ZeRO-3 checkpoint at another data-parallel size (DeepSpeed universal checkpoint)."""
import json
import sys

from safetensors.torch import load_file

from megaconcept.checkpoint_format import read_layout

from _launch import TINY, losses, run, torchrun_cmd

LR = 3e-3  # TINY's peak learning rate


def test_dp2_checkpoint_resumes_on_one_process(tmp_path, tiny_shards):
    run_dir = tmp_path / "run"
    common = [o for o in TINY if not o.startswith("model.dropout")] + [
        "model.dropout=0.0", f"data.shards={tiny_shards}", f"run_dir={run_dir}", "checkpoint.interval=10",
        "checkpoint.keep_last=3", "train.warmup_steps=0", f"train.lr={LR}", "train.min_lr_ratio=1.0"]
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + ["train.max_steps=10"]))
    out = run(torchrun_cmd(1, "ds_configs/zero3.json", common + ["train.max_steps=11"]))
    assert "data-parallel size changed: the data stream restarts at epoch 1" in out.stdout
    assert sorted(losses(run_dir)) == list(range(1, 12))
    complete = json.loads((run_dir / "checkpoints" / "step_00000011" / "COMPLETE").read_text())
    assert read_layout(complete) == {"world_size": 1, "tensor": 1, "pipeline": 1, "data": 1}
    assert not (run_dir / "checkpoints" / "universal").exists()  # the converted copy is dropped after a save
    # Step 11 started from the DP=2 weights: one Adam step (at most ~lr per element) apart from them, where a
    # fresh initialization would differ by the init scale (0.02).
    for step in (10, 11):
        run([sys.executable, "-m", "megaconcept.export", str(run_dir / "checkpoints" / f"step_{step:08d}"),
             str(tmp_path / f"hf{step}")])
    before, after = (load_file(tmp_path / f"hf{s}" / "model.safetensors") for s in (10, 11))
    moved = max((before[k] - after[k]).abs().max().item() for k in before)
    assert 0 < moved < 2 * LR, moved
