"""launchers/compare_runs.py: side-by-side tables at the steps every run logged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launchers.compare_runs import main, metric_series, metric_table, read_metrics


def _run(tmp_path: Path, name: str, records: list[dict]) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    warm = _run(tmp_path, "warm", [
        {"step": 10, "loss": 8.0}, {"step": 20, "loss": 7.0},
        {"step": 20, "heldout_loss": 7.5, "concepts/effective_rank": 30.0}, {"step": 30, "loss": 6.0}])
    scratch = _run(tmp_path, "scratch", [
        {"step": 10, "loss": 9.0}, {"step": 20, "loss": 7.5}, {"step": 20, "heldout_loss": 8.0}])
    return warm, scratch


def test_records_of_one_step_merge(runs):
    assert read_metrics(runs[0])[20] == {"step": 20, "loss": 7.0, "heldout_loss": 7.5,
                                         "concepts/effective_rank": 30.0}


def test_table_rows_are_the_shared_steps_with_difference_and_mean(runs):
    data = {"warm": read_metrics(runs[0]), "scratch": read_metrics(runs[1])}
    lines = metric_table(data, "loss")
    rows = [line.split() for line in lines[2:]]
    assert rows == [["10", "8", "9", "+1"], ["20", "7", "7.5", "+0.5"],
                    ["mean", "7.5", "8.25", "+0.75"]]  # step 30 exists in one run only
    assert [r[0] for r in (line.split() for line in metric_table(data, "loss", every=20)[2:])] == ["20", "mean"]
    assert [r[0] for r in (line.split() for line in metric_table(data, "loss", from_step=15)[2:])] == ["20", "mean"]
    assert metric_table(data, "concepts/effective_rank") is None  # logged by one run only


def test_cli_prints_each_metric(runs, capsys):
    main([str(runs[0]), str(runs[1]), "--metric", "loss", "heldout_loss", "concepts/effective_rank"])
    out = capsys.readouterr().out
    assert "== loss" in out and "== heldout_loss" in out and "+0.5" in out
    assert "concepts/effective_rank: not logged at a step shared by all runs" in out


def test_small_values_keep_their_digits(tmp_path):
    a = read_metrics(_run(tmp_path, "a", [{"step": 1, "lr": 9.99e-4}]))
    b = read_metrics(_run(tmp_path, "b", [{"step": 1, "lr": 1.0e-3}]))
    assert metric_table({"a": a, "b": b}, "lr")[2].split() == ["1", "0.000999", "0.001", "+1e-06"]


def test_bad_inputs_are_one_line_errors(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs[0]), str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "metrics.jsonl not found" in capsys.readouterr().err
    damaged = _run(tmp_path, "damaged", [{"step": 10, "loss": 1.0}])
    with (damaged / "metrics.jsonl").open("a") as f:
        f.write('{"step": 20, "lo')
    assert set(read_metrics(damaged)) == {10}  # a line a live run is still writing is left out
    with (damaged / "metrics.jsonl").open("a") as f:
        f.write('\n')
    with pytest.raises(SystemExit):
        main([str(runs[0]), str(damaged)])
    err = capsys.readouterr().err
    assert "metrics.jsonl:2 is not JSON" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs[0]), str(runs[1]), "--metric", "nothing"])
    assert exit_info.value.code == 2


def test_plot_writes_one_panel_per_metric(runs, tmp_path, capsys):
    out = tmp_path / "plots" / "cmp.png"
    main([str(runs[0]), str(runs[1]), "--metric", "loss", "heldout_loss", "--plot", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {out}" in capsys.readouterr().out
    from PIL import Image

    width, height = Image.open(out).size
    assert width > 1.8 * height  # two panels side by side


def test_warning_records_and_missing_values_stay_out_of_the_tables(tmp_path):
    a = read_metrics(_run(tmp_path, "a", [{"step": 1, "loss": 2.0, "mfu": None},
                                          {"step": 1, "event": "skipped_step", "loss": None}]))
    b = read_metrics(_run(tmp_path, "b", [{"step": 1, "loss": 3.0, "mfu": None}]))
    assert a[1]["loss"] == 2.0  # the warning record does not overwrite the step's logged loss
    assert metric_series({"a": a, "b": b}, "loss") == {"steps": [1], "values": {"a": [2.0], "b": [3.0]},
                                                       "mean": {"a": 2.0, "b": 3.0}}
    assert metric_series({"a": a, "b": b}, "mfu") is None
