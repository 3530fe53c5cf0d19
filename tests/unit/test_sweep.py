"""launchers/sweep.py: grid expansion, naming, value rendering, resumable state and the summary files.

Runs go through a fake launcher (a small script that writes metrics.jsonl like the trainer, resuming from
what is there), so every test takes well under a second of training."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from launchers import sweep
from launchers.sweep_grid import Run, check_configs, expand, load_grid, render, save_state, write_summary
from megaconcept.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DS_CONFIG = str(ROOT / "ds_configs" / "zero3.json")

FAKE_LAUNCHER = textwrap.dedent('''
    """Stands in for `python launchers/pretrain.py`: logs steps up to train.max_steps from where the run is."""
    import json, os, signal, sys, time
    from pathlib import Path

    args = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a and not a.startswith("--"))
    run_dir = Path(args["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "invocations", "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\\n")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    metrics = run_dir / "metrics.jsonl"
    done = [json.loads(l)["step"] for l in metrics.read_text().splitlines()] if metrics.exists() else []
    lr = float(args.get("train.lr", "0.001"))
    for step in range(max(done, default=0) + 1, int(args.get("train.max_steps", "300")) + 1):
        if lr > 1:  # "diverges": the project's one-line error, then a torchrun-like report
            print("error: 3 non-finite steps in a row; lower train.lr", file=sys.stderr)
            print("=====\\nRoot Cause:\\n  exitcode  : 3 (pid: 1)\\n=====", file=sys.stderr)
            sys.exit(1)
        with open(metrics, "a") as f:
            f.write(json.dumps({"step": step, "loss": 10.0 - step}) + "\\n")
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        if stop:
            print(f"preempted: SIGTERM at step {step}", file=sys.stderr)
            sys.exit(75)
    print("done")
''')


def _grid(tmp_path: Path, name: str = "grid.yaml", **fields) -> Path:
    fake = tmp_path / "fake_launcher.py"
    fake.write_text(FAKE_LAUNCHER)
    data = {"launcher": ["python", str(fake)], "ds_config": DS_CONFIG, **fields}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _state(out: Path) -> dict:
    return json.loads((out / "sweep_state.json").read_text())["runs"]


def _invocations(run_dir: Path) -> int:
    return len((run_dir / "invocations").read_text().splitlines())


def test_grid_expands_to_readable_names_with_base_and_seeds():
    runs = expand({"model.decoder": ["weighted", "sim_matrix"], "objective.masking.strategy": ["bert", "span"]},
                  [("mlm_only", {"objective.masking.strategy": "span"})], {"train.max_steps": 3}, [1, 2])
    assert [r.name for r in runs[:3]] == ["decoder=weighted,strategy=bert,seed=1",
                                          "decoder=weighted,strategy=bert,seed=2",
                                          "decoder=weighted,strategy=span,seed=1"]
    assert len(runs) == 10 and runs[-1].name == "mlm_only,seed=2" and runs[-1].group == "mlm_only"
    assert runs[0].overrides == {"train.max_steps": 3, "model.decoder": "weighted",
                                 "objective.masking.strategy": "bert", "seed": 1}
    assert runs[0].labels == {"model.decoder": "weighted", "objective.masking.strategy": "bert", "seed": 1}
    assert runs[-1].labels == {"objective.masking.strategy": "span", "seed": 2}
    assert runs[0].argv() == ["train.max_steps=3", "model.decoder=weighted", "objective.masking.strategy=bert",
                              "seed=1"]


def test_named_runs_alone_make_no_unnamed_grid_run():
    runs = expand({}, [("mlm_only", {}), ("tregs", {"objective.terms.tregs": {"shifted": True}})], {}, [7])
    assert [r.name for r in runs] == ["mlm_only,seed=7", "tregs,seed=7"]


def test_names_stay_unique_and_filesystem_safe():
    runs = expand({"model.dropout": [0.1], "objective.dropout": [0.2]}, [], {}, [])
    assert runs[0].name == "model.dropout=0.1,objective.dropout=0.2"  # a shared last part keeps the full key
    runs = expand({"data.shards": ["a/b", "a_b", "x" * 200]}, [], {}, [])
    names = [r.name for r in runs]
    assert len(set(names)) == 3 and all("/" not in n and len(n) <= 96 for n in names)
    assert names[0].startswith("shards=a_b-") and names[2].startswith("shards=xxx")
    assert expand({"train.betas": [[0.9, 0.95]]}, [], {}, [])[0].name == "betas=_0.9,_0.95_"


@pytest.mark.parametrize("key, value, read", [
    ("train.lr", 3e-4, lambda c: c.train.lr), ("model.decoder", "sim_matrix", lambda c: c.model.decoder),
    ("model.backbone.init_from", None, lambda c: c.model.backbone.init_from),
    ("train.betas", [0.9, 0.95], lambda c: c.train.betas), ("data.shuffle", False, lambda c: c.data.shuffle),
    ("data.shards", "1e-3", lambda c: c.data.shards), ("run_dir", "/tmp/s/decoder=a,seed=1", lambda c: c.run_dir),
])
def test_rendered_values_read_back_through_the_config_loader(key, value, read):
    assert read(load_config(None, [f"{key}={render(value)}"])) == value


def test_rendered_mapping_reads_back():
    cfg = load_config(None, ["model.decoder=sim_matrix", f"objective.terms={render({'gate': {'weight': 0.1}})}"])
    assert cfg.objective.terms["gate"] == {"weight": 0.1}


def test_launcher_gets_a_port_of_its_own_unless_it_picks_one():
    assert sweep.launcher_argv([]) == [sys.executable]
    assert sweep.launcher_argv(["python", "x.py"]) == [sys.executable, "x.py"]
    argv = sweep.launcher_argv(["torchrun", "--nproc_per_node", "2"])
    assert argv[1:3] == ["--nproc_per_node", "2"] and argv[3].startswith("--master_port=")
    assert sweep.launcher_argv(["torchrun", "--standalone"])[1:] == ["--standalone"]
    assert sweep.launcher_argv(["deepspeed", "--master_port=29511"])[1:] == ["--master_port=29511"]


def test_runs_train_failures_are_recorded_and_a_rerun_skips_finished_runs(tmp_path, capsys):
    grid = _grid(tmp_path, base={"train.max_steps": 4}, grid={"train.lr": [0.001, 10.0]})
    out = tmp_path / "sweep"
    assert sweep.main([str(grid), "--out", str(out), "--parallel", "2"]) == 1
    state = _state(out)
    ok, bad = state["lr=0.001"], state["lr=10.0"]
    assert (ok["outcome"], ok["status"], ok["final_step"]) == ("finished", 0, 4)
    assert (bad["outcome"], bad["status"]) == ("failed", 3)  # the worker's status, not the launcher's 1
    assert bad["reason"] == "error: 3 non-finite steps in a row; lower train.lr"
    assert "lower train.lr" in (out / "lr=10.0" / "sweep.log").read_text()
    summary = (out / "summary.md").read_text()
    assert "failed (3): error: 3 non-finite steps" in summary and "| lr=0.001 | 0.001 | finished | 4 | 6 |" in summary
    assert "not finished: lr=10.0" in capsys.readouterr().out
    assert sweep.main([str(grid), "--out", str(out)]) == 1
    assert _invocations(out / "lr=0.001") == 1 and _invocations(out / "lr=10.0") == 2


def test_edited_grid_keeps_runs_refuses_changed_overrides_and_continues_raised_max_steps(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = _grid(tmp_path, base={"train.max_steps": 2}, grid={"model.decoder": ["weighted"]})
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    grid = _grid(tmp_path, base={"train.max_steps": 2}, grid={"model.decoder": ["weighted", "sim_matrix"]})
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    assert _invocations(out / "decoder=weighted") == 1 and _invocations(out / "decoder=sim_matrix") == 1
    grid = _grid(tmp_path, base={"train.max_steps": 3}, grid={"model.decoder": ["weighted", "sim_matrix"]})
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    assert _state(out)["decoder=weighted"]["final_step"] == 3
    capsys.readouterr()
    grid = _grid(tmp_path, base={"train.max_steps": 3, "model.dropout": 0.2}, grid={"model.decoder": ["weighted"]})
    assert sweep.main([str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 'decoder=weighted'" in err and "now: model.dropout=0.2" in err
    (out / "decoder=perceiver_mlm").mkdir()
    grid = _grid(tmp_path, base={"train.max_steps": 3}, grid={"model.decoder": ["perceiver_mlm"]})
    assert sweep.main([str(grid), "--out", str(out)]) == 2
    assert "has no record of it" in capsys.readouterr().err


def test_dry_run_prints_commands_and_writes_nothing(tmp_path, capsys):
    grid = _grid(tmp_path, base={"train.max_steps": 2}, grid={"model.decoder": ["weighted", "sim_matrix"]},
                 config=None, plugins=["json"])
    assert sweep.main([str(grid), "--out", str(tmp_path / "sweep"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("run ") and "--plugin json" in lines[0]
    assert lines[1].endswith(f"model.decoder=sim_matrix run_dir={tmp_path}/sweep/decoder=sim_matrix")
    assert not (tmp_path / "sweep").exists()


def test_sigterm_stops_the_runs_with_a_checkpoint_and_the_sweep_resumes(tmp_path):
    out = tmp_path / "sweep"
    grid = _grid(tmp_path, base={"train.max_steps": 200}, grid={"train.lr": [0.001, 0.002]},
                 env={"FAKE_SLEEP": "0.05"})
    cmd = [sys.executable, "-m", "launchers.sweep", str(grid), "--out", str(out), "--parallel", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not all((out / n / "metrics.jsonl").exists() for n in ("lr=0.001", "lr=0.002")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stderr
    state = _state(out)
    for name in ("lr=0.001", "lr=0.002"):
        assert state[name]["outcome"] == "interrupted" and state[name]["status"] == 75
        assert state[name]["reason"].startswith("preempted: SIGTERM at step")
    grid = _grid(tmp_path, base={"train.max_steps": 200}, grid={"train.lr": [0.001, 0.002]})
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    assert _state(out)["lr=0.001"]["final_step"] == 200 and _invocations(out / "lr=0.001") == 2


def _metrics(run_dir: Path, records: list[dict]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_summary_holds_last_values_seed_statistics_and_equal_step_series(tmp_path):
    grid_file = _grid(tmp_path, base={"train.max_steps": 20}, grid={"model.decoder": ["weighted", "sim_matrix"]},
                      seeds=[1, 2], metrics=["loss", "heldout_loss"], every=10, tail=2)
    out = tmp_path / "sweep"
    grid = check_configs(load_grid(grid_file), out)
    losses = {"decoder=weighted,seed=1": 4.0, "decoder=weighted,seed=2": 6.0, "decoder=sim_matrix,seed=1": 3.0}
    for name, loss in losses.items():
        _metrics(out / name, [{"step": 10, "loss": loss + 2}, {"step": 20, "loss": loss},
                              {"step": 20, "event": "loss_spike", "loss": 99.0}, {"step": 20, "heldout_loss": loss}])
    _metrics(out / "decoder=sim_matrix,seed=2", [{"step": 10, "loss": 1.0}])  # stopped half way
    records = {run.name: {"identity": run.identity(), "outcome": "finished", "status": 0} for run in grid.runs}
    records["decoder=sim_matrix,seed=2"].update(outcome="failed", status=3, reason="error: diverged | badly")
    save_state(out, records)
    data = write_summary(grid, out, records)
    assert data == json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in data["runs"]}
    assert rows["decoder=weighted,seed=1"]["metrics"]["loss"] == {"step": 20, "value": 5.0}  # mean of last 2
    assert rows["decoder=weighted,seed=2"]["metrics"]["heldout_loss"] == {"step": 20, "value": 6.0}
    stopped = rows["decoder=sim_matrix,seed=2"]
    assert stopped["outcome"] == "failed" and stopped["final_step"] == 10
    weighted, sim = data["over_seeds"]
    assert weighted["seeds"] == [1, 2] and weighted["metrics"]["heldout_loss"]["mean"] == 5.0
    assert weighted["metrics"]["heldout_loss"]["std"] == pytest.approx(2 ** 0.5)
    assert sim["seeds"] == [1] and sim["metrics"]["heldout_loss"] == {"mean": 3.0, "n": 1, "std": None}
    assert data["at_equal_steps"]["loss"]["steps"] == [10, 20]
    assert data["at_equal_steps"]["loss"]["values"]["decoder=weighted,seed=2"] == [8.0, 6.0]
    md = (out / "summary.md").read_text()
    assert "| decoder=weighted | weighted | 2 | 6 ± 1.4 | 5 ± 1.4 |" in md
    assert "failed (3): error: diverged \\| badly" in md
    assert "| decoder=weighted,seed=2 | 8 | 6 | 7 |" in md
    assert (out / "plots.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("text, fragment", [
    (None, "not found"),
    ("grid: [a, b", "not valid YAML (line"),
    ("- a", "must be a YAML mapping"),
    ("grid: {model.decoder: [a]}\nepochs: 3", "unknown key 'epochs'"),
    ("grid: {model.decoder: weighted}", "key 'grid.model.decoder' must be a non-empty list"),
    ("grid: {model.decoder: []}", "key 'grid.model.decoder' must be a non-empty list"),
    ("grid: {}", "the grid is empty"),
    ("base: {train.max_steps: 3}", "the grid is empty"),
    ("grid: {model.decoder: [weighted]}\nbase: {run_dir: x}", "key 'base.run_dir' cannot be given"),
    ("grid: {seed: [1]}\nseeds: [1, 2]", "key 'grid.seed' cannot be given"),
    ("grid: {model.decoder: [weighted]}\nseeds: [a]", "key 'seeds' must be a non-empty list of integers"),
    ("runs: [{name: a, overides: {}}]", "unknown key 'runs[0].overides'"),
    ("runs: [{overrides: {}}]", "key 'runs[0]' must be a mapping with a name"),
    ("grid: {model.decoder: [weighted]}\nevery: 0", "'every' and 'tail' must be >= 1"),
    ("grid: {model.decoder: [weighted]}\nlauncher: torchrun", "key 'launcher' must be a list of strings"),
    ("grid: {model.decoder: [weighted]}\nmetrics: []", "key 'metrics' must be a non-empty list"),
    ("grid: {model.decodr: [weighted]}", "run 'decodr=weighted': unknown config key 'model.decodr'"),
    ("grid: {model.decoder: [weighted]}\nds_config: /nonexistent.json", "key 'ds_config': /nonexistent.json"),
])
def test_bad_grid_files_are_one_line_errors_naming_file_and_key(tmp_path, capsys, monkeypatch, text, fragment):
    monkeypatch.chdir(ROOT)  # the default ds_config, ds_configs/zero3.json, is relative
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    assert sweep.main([str(path), "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(path) in err and fragment in err, err


def test_a_run_is_its_overrides():
    run = Run("a", "a", {}, {"train.max_steps": 5, "train.lr": 0.01})
    assert run.identity() == ["train.lr=0.01"]  # raising max_steps continues the same run


def test_a_missing_launcher_is_bad_input(tmp_path, capsys):
    grid = _grid(tmp_path, grid={"model.decoder": ["weighted"]})
    grid.write_text(grid.read_text().replace("- python", "- no-such-launcher"))
    assert sweep.main([str(grid), "--out", str(tmp_path / "sweep")]) == 2
    assert "key 'launcher': no-such-launcher is not an executable" in capsys.readouterr().err


def test_a_damaged_state_file_is_bad_input(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep_state.json").write_text("{")
    assert sweep.main([str(_grid(tmp_path, grid={"model.decoder": ["weighted"]})), "--out", str(out)]) == 2
    assert "sweep_state.json is damaged" in capsys.readouterr().err
