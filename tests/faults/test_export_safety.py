"""`python -m megaconcept.export` never deletes what it did not write, never exports a damaged or diverged
checkpoint, never unpickles anything but tensors, and pushes no local path.

The checkpoints come from one 2-rank torchrun of tests/parity/_make_checkpoint.py (ZeRO-3 and ZeRO-0).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from megaconcept import checkpoint_format
from megaconcept.export import __main__ as cli
from megaconcept.export.hf_folder import build_hf_model
from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.config import BackboneConfig

ROOT = Path(__file__).resolve().parents[2]
MAKE_CHECKPOINT = ROOT / "tests" / "parity" / "_make_checkpoint.py"
MARKER = "megaconcept_export.json"
TAG = "step_00000001"


@pytest.fixture(scope="session")
def runs(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUNS/zero3/ and RUNS/zero0/ run dirs, each with checkpoints/step_00000001 (2 ranks, one optimizer step)."""
    out = tmp_path_factory.mktemp("safety_runs")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(MAKE_CHECKPOINT), str(out), str(tiny_tokenizer_dir), "3,0"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _copy_run(runs: Path, stage: int, dest: Path) -> Path:
    shutil.copytree(runs / f"zero{stage}", dest)
    return dest


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its content digest: 'nothing deleted or changed' as one comparison."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture
def area(runs: Path, tiny_shards: Path, tmp_path: Path) -> Path:
    """tmp/area/ holding a run (ZeRO-3), a shard dir and an unrelated file, as a user's project would."""
    root = tmp_path / "area"
    _copy_run(runs, 3, root / "run")
    shutil.copytree(tiny_shards, root / "shards")
    (root / "notes.txt").write_text("not the export's")
    return root


DESTINATIONS = {
    "run_dir": "run",
    "parent_of_run": ".",
    "inside_run": "run/hf",
    "checkpoints_dir": "run/checkpoints",
    "checkpoint_tag_dir": f"run/checkpoints/{TAG}",
    "inside_checkpoint": f"run/checkpoints/{TAG}/hf",
    "shard_dir": "shards",
    "inside_shard_dir": "shards/hf",
}


@pytest.mark.slow
@pytest.mark.parametrize("where", [*DESTINATIONS, "symlink_to_run"])
def test_export_onto_training_or_data_artifacts_is_refused(where: str, area: Path, tmp_path: Path, capsys) -> None:
    if where == "symlink_to_run":
        out = tmp_path / "link"
        out.symlink_to(area / "run", target_is_directory=True)
    else:
        out = area / DESTINATIONS[where]
    before = _snapshot(area)
    assert cli.main([str(area / "run"), str(out), "--overwrite"]) == 2
    line = _error_line(capsys)
    assert str(out.resolve()) in line and "choose a new or empty folder" in line, line
    assert _snapshot(area) == before
    assert sorted(p.name for p in area.iterdir()) == ["notes.txt", "run", "shards"]  # no staging folder left


@pytest.mark.slow
def test_overwrite_replaces_only_a_previous_export(runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hf"
    assert cli.main([str(runs / "zero0"), str(out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    assert (marker["checkpoint"], marker["step"]) == (TAG, 1)
    assert set(marker["files"]) | {MARKER} == {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert cli.main([str(runs / "zero0"), str(out)]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert cli.main([str(runs / "zero0"), str(out), "--overwrite"]) == 0
    # A file the user added to the export is not the export's to delete.
    (out / "eval_notes.txt").write_text("mine")
    capsys.readouterr()
    assert cli.main([str(runs / "zero0"), str(out), "--overwrite"]) == 2
    assert "eval_notes.txt" in _error_line(capsys)
    assert (out / "eval_notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.slow
def test_overwrite_refuses_a_folder_that_is_not_an_export(runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("user data")
    (out / "sub" / "table.csv").write_text("a,b\n")
    before = _snapshot(out)
    assert cli.main([str(runs / "zero0"), str(out), "--overwrite"]) == 2
    line = _error_line(capsys)
    assert str(out) in line and MARKER in line, line
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def _record_digests(tag: Path) -> None:
    """Rewrite COMPLETE's per-file sizes and digests as the trainer writes them, so a checkpoint edited below
    reads as saved that way (a diverged run, a tampered file with a matching record) and reaches the check
    under test instead of failing the integrity check."""
    record = json.loads((tag / checkpoint_format.COMPLETE).read_text())
    record[checkpoint_format.FILES] = checkpoint_format.file_digests(tag)
    (tag / checkpoint_format.COMPLETE).write_text(json.dumps(record))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _alter_same_size(path: Path) -> None:
    text = path.read_text()
    altered = text.replace('"tokens_seen": 32', '"tokens_seen": 99')
    assert altered != text and len(altered) == len(text)
    path.write_text(altered)


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", [("rank_00000.pt", _truncate), ("trainer_state.json", _alter_same_size)])
def test_damaged_checkpoint_file_is_named(name: str, damage, runs: Path, tmp_path: Path, capsys) -> None:
    run = _copy_run(runs, 3, tmp_path / "run")
    tag = run / "checkpoints" / TAG
    _record_digests(tag)
    damage(tag / name)
    assert cli.main([str(run), str(tmp_path / "hf")]) == 2
    line = _error_line(capsys)
    assert str(tag / name) in line and "damaged" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_non_finite_weights_are_refused(runs: Path, tmp_path: Path, capsys) -> None:
    run = _copy_run(runs, 0, tmp_path / "run")
    model_file = run / "checkpoints" / TAG / "mp_rank_00_model_states.pt"
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    state["module"]["model.encoder.concepts"].view(-1)[:3] = float("nan")
    state["module"]["model.decoder.norm.weight"][0] = float("inf")
    torch.save(state, model_file)
    _record_digests(model_file.parent)
    assert cli.main([str(run), str(tmp_path / "hf")]) == 2
    line = _error_line(capsys)
    assert "encoder.concepts holds 3 NaN/Inf" in line and "2 of " in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


class _Canary:
    """Unpickling this object creates a directory: proof that a loader ran code from a checkpoint file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


@pytest.mark.slow
@pytest.mark.parametrize("stage, name", [(0, "mp_rank_00_model_states.pt"),  # read by the export itself
                                         (3, "zero_pp_rank_0_mp_rank_00_model_states.pt")])  # by zero_to_fp32
def test_pickled_objects_in_a_checkpoint_are_never_run(stage: int, name: str, runs: Path, tmp_path: Path,
                                                       capsys) -> None:
    run = _copy_run(runs, stage, tmp_path / "run")
    path = run / "checkpoints" / TAG / name
    canary = tmp_path / "code_ran"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["injected"] = _Canary(canary)
    torch.save(state, path)
    _record_digests(path.parent)
    assert cli.main([str(run), str(tmp_path / "hf")]) == 2
    line = _error_line(capsys)
    assert not canary.exists()
    assert str(path) in line and "mkdir" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_pushed_files_carry_no_local_path(runs: Path, tmp_path: Path, tmp_path_factory) -> None:
    run = _copy_run(runs, 0, tmp_path / "run")
    config = run / "checkpoints" / TAG / "config.yaml"
    resolved = yaml.safe_load(config.read_text())
    resolved["data"]["shards"] = str(tmp_path / "corpus" / "fineweb-v1")
    config.write_text(yaml.safe_dump(resolved))
    _record_digests(config.parent)
    out = tmp_path / "hf"
    assert cli.main([str(run), str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "`<local>/fineweb-v1`" in card and 'from_pretrained("hf", trust_remote_code=True)' in card
    local = str(tmp_path_factory.getbasetemp())
    for path in out.iterdir():
        assert local not in path.read_text(errors="replace"), path.name
    # Weights only as safetensors: nothing a loader would unpickle.
    assert not [p.name for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_config_json_keeps_only_the_name_of_a_local_warm_start(tmp_path: Path) -> None:
    backbone = BackboneConfig(num_layers=1, hidden_size=24, num_heads=3, num_kv_heads=1, intermediate_size=48,
                              init_from=str(tmp_path / "models" / "llama-1b"))
    cfg = ConceptModelConfig(vocab_size=40, num_concepts=4, concept_dim=12, num_layers=1, num_heads=3,
                             max_position_embeddings=8, decoder_positions="sinusoidal", backbone=backbone)
    build_hf_model(cfg, ConceptMLM(cfg).state_dict(), "fp32").save_pretrained(str(tmp_path / "hf"))
    text = (tmp_path / "hf" / "config.json").read_text()
    assert str(tmp_path) not in text
    assert json.loads(text)["backbone"]["init_from"] == "<local>/llama-1b"
