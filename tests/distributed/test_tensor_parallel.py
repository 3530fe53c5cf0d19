"""megatron-core tensor parallelism on CPU/gloo: TP=2 computes what TP=1 computes, under ZeRO-3, with resume."""
import json
import shutil
import sys

from safetensors.torch import load_file

from _launch import TINY, losses, run, torchrun_cmd

STEPS = 6
# Exact arithmetic for the comparison: no dropout, fp32. The backbone makes every TP-sharded kind of layer
# (GQA attention, SwiGLU, vocab-parallel embedding and loss) take part.
EXACT = [o for o in TINY if not o.startswith("model.dropout")] + [
    "model.dropout=0.0", f"train.max_steps={STEPS}", "checkpoint.interval=3",
    "model.backbone.num_layers=2", "model.backbone.hidden_size=48", "model.backbone.num_heads=4",
    "model.backbone.num_kv_heads=2", "model.backbone.intermediate_size=64",
]


def _close(a: dict, b: dict, rel: float = 1e-5) -> None:
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert abs(a[step] - b[step]) <= rel * abs(a[step]), (step, a[step], b[step])


def test_tp2_matches_tp1_under_zero3(tmp_path, tiny_shards):
    common = EXACT + [f"data.shards={tiny_shards}"]
    run(torchrun_cmd(1, "ds_configs/zero3.json", common + [f"run_dir={tmp_path / 'tp1'}"]))
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={tmp_path / 'tp2'}", "parallel.tensor=2"]))
    _close(losses(tmp_path / "tp1"), losses(tmp_path / "tp2"))
    complete = json.loads((tmp_path / "tp2" / "checkpoints" / "step_00000006" / "COMPLETE").read_text())
    assert complete["tensor"] == 2 and complete["data"] == 1
    # Export merges the tensor-parallel shards into the same HF model the TP=1 run exports.
    for name in ("tp1", "tp2"):
        run([sys.executable, "-m", "megaconcept.export", str(tmp_path / name), str(tmp_path / f"{name}_hf")])
    one, two = (load_file(tmp_path / f"{n}_hf" / "model.safetensors") for n in ("tp1", "tp2"))
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-5, worst


def test_tp2_matches_tp1_with_slot_layers(tmp_path, tiny_shards):
    # Slot attention splits its heads like cross-attention (softmax over concepts and mean over tokens are per
    # head), its GRU reads o_proj's summed output and stays replicated; RoPE over concepts rotates within heads.
    common = EXACT + [f"data.shards={tiny_shards}", "model.concept_layer=slot", "model.concept_positions=rope"]
    run(torchrun_cmd(1, "ds_configs/zero3.json", common + [f"run_dir={tmp_path / 'tp1'}"]))
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={tmp_path / 'tp2'}", "parallel.tensor=2"]))
    _close(losses(tmp_path / "tp1"), losses(tmp_path / "tp2"))
    for name in ("tp1", "tp2"):
        run([sys.executable, "-m", "megaconcept.export", str(tmp_path / name), str(tmp_path / f"{name}_hf")])
    one, two = (load_file(tmp_path / f"{n}_hf" / "model.safetensors") for n in ("tp1", "tp2"))
    assert one.keys() == two.keys() and "encoder.layers.0.slot.gru.weight_ih" in one
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-5, worst


def test_tp2_resume_after_crash_matches_uninterrupted(tmp_path, tiny_shards):
    common = EXACT + [f"data.shards={tiny_shards}", "parallel.tensor=2"]
    ref, res = tmp_path / "reference", tmp_path / "resumed"
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={ref}"]))
    # A run killed after step 5, before its final checkpoint: only step 3's checkpoint is left, and
    # metrics.jsonl holds steps past it (the resume truncates them).
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={res}"]))
    shutil.rmtree(res / "checkpoints" / "step_00000006")
    (res / "checkpoints" / "latest").write_text("step_00000003")
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={res}"]))
    _close(losses(ref), losses(res), rel=1e-6)


def test_tp2_by_dp2_matches_dp2(tmp_path, tiny_shards):
    common = EXACT + [f"data.shards={tiny_shards}"]
    run(torchrun_cmd(2, "ds_configs/zero3.json", common + [f"run_dir={tmp_path / 'dp2'}"]))
    run(torchrun_cmd(4, "ds_configs/zero3.json", common + [f"run_dir={tmp_path / 'tp2dp2'}", "parallel.tensor=2"]),
        timeout=600)
    _close(losses(tmp_path / "dp2"), losses(tmp_path / "tp2dp2"))
