"""Checkpoint atomicity and pruning, with a stand-in engine (the real one is covered in tests/distributed)."""
import json
from pathlib import Path

import pytest
import torch

from megaconcept.checkpoint_format import read_layout
from megaconcept.parallel import ParallelContext
from megaconcept.train.checkpointer import COMPLETE, CheckpointError, Checkpointer, latest_checkpoint
from megaconcept.train.state import TrainState

CTX = ParallelContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="gloo")


class FakeEngine:
    """Writes a file per save like DeepSpeed; can crash half-way."""

    def __init__(self):
        self.crash = False
        self.loaded = None

    def save_checkpoint(self, root, tag, save_latest):
        assert save_latest is False  # `latest` is ours to move, only after every rank finished
        path = Path(root) / tag
        path.mkdir(parents=True, exist_ok=True)
        (path / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if self.crash:
            raise KeyboardInterrupt("killed mid-save")

    def load_checkpoint(self, root, tag):
        self.loaded = tag
        return str(Path(root) / tag), {}


@pytest.fixture()
def tokenizer_dir(tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_text("{}")
    return str(d)


def test_crash_mid_save_keeps_latest_on_previous(tmp_path, tokenizer_dir):
    ck, engine = Checkpointer(str(tmp_path / "run"), keep_last=2, ctx=CTX), FakeEngine()
    ck.save(engine, TrainState(step=10, data_position={"a": 1}), "seed: 1\n", tokenizer_dir)
    engine.crash = True
    with pytest.raises(KeyboardInterrupt):
        ck.save(engine, TrainState(step=20), "seed: 1\n", tokenizer_dir)
    root = tmp_path / "run" / "checkpoints"
    assert latest_checkpoint(root).name == "step_00000010"
    assert not (root / "step_00000020" / COMPLETE).exists()
    state = ck.load(engine)
    assert engine.loaded == "step_00000010" and state.step == 10 and state.data_position == {"a": 1}
    engine.crash = False
    for step in (20, 30, 40):
        ck.save(engine, TrainState(step=step), "seed: 1\n", tokenizer_dir)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000030", "step_00000040"]
    assert (root / "step_00000040" / "tokenizer" / "tokenizer.json").is_file()
    assert (root / "step_00000040" / "config.yaml").read_text() == "seed: 1\n"


def test_data_parallel_size_change_is_a_reshard(tmp_path, tokenizer_dir):
    Checkpointer(str(tmp_path), 1, CTX).save(FakeEngine(), TrainState(step=1), "", tokenizer_dir)
    two = ParallelContext(0, 2, 0, 2, torch.device("cpu"), "gloo")
    assert Checkpointer(str(tmp_path), 1, CTX).resume_kind() == "same"
    assert Checkpointer(str(tmp_path), 1, two).resume_kind() == "reshard"


def test_tensor_parallel_change_is_refused(tmp_path, tokenizer_dir):
    tp2 = ParallelContext(0, 2, 0, 2, torch.device("cpu"), "gloo", tensor_parallel_size=2, data_parallel_size=1,
                          data_parallel_rank=0)
    Checkpointer(str(tmp_path), 1, tp2).save(FakeEngine(), TrainState(step=1), "", tokenizer_dir)
    saved = json.loads((tmp_path / "checkpoints" / "step_00000001" / "COMPLETE").read_text())
    assert read_layout(saved) == {"world_size": 2, "tensor": 2, "pipeline": 1, "data": 1}
    dp2 = ParallelContext(0, 2, 0, 2, torch.device("cpu"), "gloo")
    with pytest.raises(CheckpointError, match=r"tensor 2 x pipeline 1 x data 1\), this run has 2 processes \(tensor 1 "
                                              r"x pipeline 1 x data 2\); only the data-parallel size may change"):
        Checkpointer(str(tmp_path), 1, dp2).load(FakeEngine())


def test_pipeline_layout_changes_are_refused(tmp_path, tokenizer_dir):
    pp2 = ParallelContext(0, 4, 0, 4, torch.device("cpu"), "gloo", pipeline_parallel_size=2, data_parallel_size=2,
                          data_parallel_rank=0)
    Checkpointer(str(tmp_path), 1, pp2).save(FakeEngine(), TrainState(step=1), "", tokenizer_dir)
    pp2_dp1 = ParallelContext(0, 2, 0, 2, torch.device("cpu"), "gloo", pipeline_parallel_size=2,
                              data_parallel_size=1, data_parallel_rank=0)
    for other in (pp2_dp1, ParallelContext(0, 4, 0, 4, torch.device("cpu"), "gloo")):
        with pytest.raises(CheckpointError, match=r"resume with tensor 1 x pipeline 2 on 4 processes"):
            Checkpointer(str(tmp_path), 1, other).resume_kind()


def test_fresh_run_has_no_checkpoint(tmp_path):
    assert Checkpointer(str(tmp_path), 1, CTX).load(FakeEngine()) is None
