"""Checkpoint faults in process, with a stand-in engine: a full disk mid-save, truncated or altered files, a
damaged `latest`, pruning around unhealthy checkpoints, and the guard's and metric logger's rules."""
import errno
import json
from pathlib import Path

import pytest
import torch

from megaconcept.config.schema import GuardSection, LoggingSection
from megaconcept.parallel import ParallelContext
from megaconcept.train.checkpointer import CheckpointError, Checkpointer, latest_checkpoint, load_rank_file
from megaconcept.train.guard import DivergedError, StepGuard
from megaconcept.train.metrics import MetricLogger, wandb_run_id
from megaconcept.train.resume_choice import CheckpointMismatch, check_same_model
from megaconcept.train.state import TrainState

CTX = ParallelContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"),
                      backend="gloo")


class FakeEngine:
    """Writes model/optimizer files like DeepSpeed; can fail like a full disk."""

    def __init__(self):
        self.fail_with = None
        self.loaded = None

    def save_checkpoint(self, root, tag, save_latest):
        path = Path(root) / tag
        path.mkdir(parents=True, exist_ok=True)
        (path / "mp_rank_00_model_states.pt").write_bytes(b"m" * 4096)
        if self.fail_with is not None:
            raise OSError(self.fail_with, "No space left on device", str(path / "optim_states.pt"))
        (path / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 4096)

    def load_checkpoint(self, root, tag):
        self.loaded = tag
        return str(Path(root) / tag), {}


@pytest.fixture()
def saved(tmp_path):
    """A run dir with checkpoints at steps 10 and 20 (keep_last=3)."""
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    ck, engine = Checkpointer(str(tmp_path / "run"), keep_last=3, ctx=CTX), FakeEngine()
    for step in (10, 20):
        ck.save(engine, TrainState(step=step, data_position={"step": step}), "model: {}\n", str(tok))
    return tmp_path / "run" / "checkpoints", str(tok)


def test_complete_records_every_file_with_size_and_sha256(saved):
    root, _ = saved
    record = json.loads((root / "step_00000020" / "COMPLETE").read_text())
    names = {p.relative_to(root / "step_00000020").as_posix() for p in (root / "step_00000020").rglob("*")
             if p.is_file() and p.name != "COMPLETE"}
    assert set(record["files"]) == names and "rank_00000.pt" in names and "tokenizer/tokenizer.json" in names
    assert record["files"]["mp_rank_00_model_states.pt"]["size"] == 4096 and record["healthy"] is True


def test_disk_full_during_save_keeps_the_previous_checkpoint_and_says_so(saved):
    root, tok = saved
    ck, engine = Checkpointer(str(root.parent), keep_last=3, ctx=CTX), FakeEngine()
    engine.fail_with = errno.ENOSPC
    with pytest.raises(CheckpointError) as err:
        ck.save(engine, TrainState(step=30), "", tok)
    message = str(err.value)
    assert "disk holding" in message and "is full" in message and "latest still names step_00000020" in message
    assert "\n" not in message and not (root / "step_00000030").exists()  # the partial dir freed its space
    assert latest_checkpoint(root).name == "step_00000020"
    assert Checkpointer(str(root.parent), 3, CTX).load(FakeEngine()).step == 20


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "complete"])
def test_a_damaged_latest_falls_back_to_the_previous_intact_checkpoint(saved, damage, capsys):
    root, _ = saved
    victim = root / "step_00000020" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "flip":
        victim.write_bytes(b"x" + victim.read_bytes()[1:])
    elif damage == "delete":
        victim.unlink()
    else:
        (root / "step_00000020" / "COMPLETE").write_text("{not json")
    engine = FakeEngine()
    state = Checkpointer(str(root.parent), 3, CTX).load(engine)
    assert engine.loaded == "step_00000010" and state.step == 10 and state.data_position == {"step": 10}
    out = capsys.readouterr().out
    assert "step_00000020 is damaged" in out and "resuming from step_00000010" in out
    aside = list(root.glob("damaged-step_00000020-*"))
    assert len(aside) == 1 and not (root / "step_00000020").exists()  # renamed, nothing deleted


def test_latest_naming_an_incomplete_checkpoint_falls_back(saved, capsys):
    root, _ = saved
    (root / "step_00000020" / "COMPLETE").unlink()
    assert Checkpointer(str(root.parent), 3, CTX).load(FakeEngine()).step == 10
    assert "incomplete" in capsys.readouterr().out


def test_every_checkpoint_damaged_is_one_line(saved):
    root, _ = saved
    for tag in ("step_00000010", "step_00000020"):
        (root / tag / "rank_00000.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint is left") as err:
        Checkpointer(str(root.parent), 3, CTX).load(FakeEngine())
    assert "\n" not in str(err.value)


def test_pruning_never_removes_the_newest_healthy_checkpoint(saved):
    root, tok = saved
    ck = Checkpointer(str(root.parent), keep_last=1, ctx=CTX)
    for step in (30, 40):
        ck.save(FakeEngine(), TrainState(step=step), "", tok, healthy=False)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000020", "step_00000040"]


def test_rank_files_load_without_unpickling_code(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "rank_00000.pt"
    torch.save({"rng": Payload()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load_rank_file(evil)


def test_a_checkpoint_file_pickling_code_is_refused_before_deepspeed_loads_it(saved, tmp_path):
    from megaconcept.checkpoint_format import file_digests

    class Payload:
        def __reduce__(self):
            return (Path.mkdir, (tmp_path / "code_ran",))

    root, _ = saved
    tag = root / "step_00000020"
    torch.save({"module": {}, "extra": Payload()}, tag / "mp_rank_00_model_states.pt")
    record = json.loads((tag / "COMPLETE").read_text())
    (tag / "COMPLETE").write_text(json.dumps({**record, "files": file_digests(tag)}))  # digests match the file
    engine = FakeEngine()
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt pickles .*pathlib") as err:
        Checkpointer(str(root.parent), 3, CTX).load(engine)
    assert engine.loaded is None and not (tmp_path / "code_ran").exists() and "\n" not in str(err.value)


def test_resuming_another_model_shape_is_a_one_line_diff(saved):
    root, _ = saved
    (root / "step_00000020" / "config.yaml").write_text("model:\n  num_concepts: 32\n  concept_dim: 256\n"
                                                        "  dropout: 0.0\n")
    check_same_model(root / "step_00000020", {"num_concepts": 32, "concept_dim": 256, "dropout": 0.1})
    with pytest.raises(CheckpointMismatch) as err:
        check_same_model(root / "step_00000020", {"num_concepts": 64, "concept_dim": 256, "dropout": 0.0})
    assert "model.num_concepts: checkpoint 32, now 64" in str(err.value) and "concept_dim" not in str(err.value)


def test_fields_a_checkpoint_predates_read_as_their_defaults(saved):
    # A checkpoint written before concept_layer / slot_update / decoder_options existed trained the default model:
    # it resumes into a config at those defaults, and a config that changes one of them is refused by name.
    from megaconcept.model.config import ConceptModelConfig

    root, _ = saved
    (root / "step_00000020" / "config.yaml").write_text("model:\n  num_concepts: 32\n  decoder: perceiver_mlm\n")
    current = ConceptModelConfig(num_concepts=32).to_dict()
    check_same_model(root / "step_00000020", current)  # also: config_version 1's perceiver_mlm is posonly now
    with pytest.raises(CheckpointMismatch, match="model.concept_layer: checkpoint 'cross_attention', now 'slot'"):
        check_same_model(root / "step_00000020", {**current, "concept_layer": "slot"})


def test_guard_counts_skips_and_stops_past_the_limits():
    guard = StepGuard(GuardSection(max_consecutive_skips=2, max_total_skips=3))
    assert guard.after_step(1, True, 2.0, 1.0) is None
    record = guard.after_step(2, False, float("nan"), float("inf"))
    assert record == {"step": 2, "event": "skipped_step", "loss": None, "grad_norm": None, "skipped_in_a_row": 1,
                      "skipped_steps": 1}
    guard.check_limits(2)
    guard.after_step(3, False, float("nan"), None)
    guard.check_limits(3)
    assert guard.after_step(4, True, 2.0, 1.0) is None and not guard.skipping  # a healthy step ends the streak
    guard.after_step(5, False, 1.0, float("nan"))
    guard.check_limits(5)
    guard.after_step(6, False, 1.0, float("nan"))
    with pytest.raises(DivergedError, match=r"4 steps of this run .*guard.max_total_skips=3"):
        guard.check_limits(6)
    with pytest.raises(DivergedError, match="applied the update"):
        StepGuard(GuardSection()).after_step(1, True, float("nan"), float("nan"))


def test_loss_spikes_are_flagged_against_the_running_median():
    guard = StepGuard(GuardSection(spike_factor=3.0, spike_window=10))
    assert all(guard.spike(s, 2.0) is None for s in range(5))
    assert guard.spike(5, 5.9) is None
    spike = guard.spike(6, 7.0)
    assert spike["event"] == "loss_spike" and spike["running_median"] == 2.0 and spike["factor"] == 3.5
    assert StepGuard(GuardSection(spike_factor=0)).spike(1, 1e9) is None


def test_metrics_stay_valid_json_and_wandb_ids_are_per_run(tmp_path):
    logger = MetricLogger(str(tmp_path), True, LoggingSection(), {}, 0)
    logger.log({"step": 1, "loss": float("nan"), "lr": 1e-3, "grad_norm": float("inf"), "tokens_per_sec": 1.0})
    def refuse(name):
        raise AssertionError(name)
    record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert record["loss"] is None and record["grad_norm"] is None
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"  # same folder name, two runs
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert wandb_run_id(a) != wandb_run_id(b) and wandb_run_id(a) == wandb_run_id(a)
