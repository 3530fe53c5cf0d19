"""Compare training runs side by side at equal steps, from their RUN_DIR/metrics.jsonl files.

    python -m launchers.compare_runs runs/warm runs/scratch [--every 100] [--metric loss heldout_loss ...]

Each metric gets one table: a row per step that every run logged, a column per run, and, for two runs, the
difference (second minus first) — e.g. the warm-started vs from-scratch comparison in the README. A closing
line gives the mean of each column over the shared steps (``--from-step`` drops the warmup). ``--plot PNG``
also draws one panel per metric, a line per run.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

DEFAULT_METRICS = ("loss", "heldout_loss", "concepts/effective_rank")


def read_metrics(run_dir: Path) -> dict[int, dict]:
    """``{step: record}`` with every logged key of that step merged (training and analysis lines).

    Warning records (an ``event`` key: skipped_step, loss_spike) are left out: they repeat the step's loss as
    the guard saw it (None for a skipped step), which would overwrite the logged mean of that step."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} not found: pass a run directory written by launchers/pretrain.py")
    text = path.read_text()
    lines = text.splitlines()
    by_step: dict[int, dict] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                continue  # a live run is writing this line right now
            raise ValueError(f"{path}:{number} is not JSON; the file is damaged (remove that line)") from None
        if "event" in record:
            continue
        by_step.setdefault(int(record["step"]), {}).update(record)
    return by_step


def metric_series(runs: dict[str, dict[int, dict]], metric: str, every: int = 1, from_step: int = 0
                  ) -> Optional[dict[str, Any]]:
    """The data of one metric's table: ``{"steps": [...], "values": {run: [...]}, "mean": {run: float}}`` over
    the steps every run logged it at, or None when they share none."""
    logged = ({s for s, r in rec.items() if r.get(metric) is not None} for rec in runs.values())
    steps = [s for s in sorted(set.intersection(*logged)) if s >= from_step and s % every == 0]
    if not steps:
        return None
    values = {name: [float(rec[s][metric]) for s in steps] for name, rec in runs.items()}
    return {"steps": steps, "values": values, "mean": {n: math.fsum(v) / len(v) for n, v in values.items()}}


def metric_table(runs: dict[str, dict[int, dict]], metric: str, every: int = 1, from_step: int = 0
                 ) -> Optional[list[str]]:
    """Text lines of one metric's table, or None when the runs share no step that logged it."""
    series = metric_series(runs, metric, every, from_step)
    if series is None:
        return None
    names = list(runs)
    pair = len(names) == 2
    width = max(12, *(len(n) for n in names))
    header = f"{'step':>7} " + " ".join(f"{n:>{width}}" for n in names) + (f" {'diff':>9}" if pair else "")
    lines = [f"== {metric}", header]
    for index, step in enumerate(series["steps"]):
        lines.append(_row(str(step), [series["values"][n][index] for n in names], width, pair))
    lines.append(_row("mean", [series["mean"][n] for n in names], width, pair))
    return lines


def _row(label: str, values: list[float], width: int, pair: bool) -> str:
    # 4 significant digits: losses read 7.446, learning rates 0.000999 (a fixed 3 decimals would show 0.001).
    diff = f" {values[1] - values[0]:>+9.3g}" if pair else ""
    return f"{label:>7} " + " ".join(f"{v:>{width}.4g}" for v in values) + diff


def plot(runs: dict[str, dict[int, dict]], metrics: Sequence[str], path: Path, from_step: int = 0) -> None:
    """One panel per metric, a line per run over the steps it logged the metric at."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for name, records in runs.items():
            points = sorted((s, float(r[metric])) for s, r in records.items()
                            if r.get(metric) is not None and s >= from_step)
            if points:
                axis.plot(*zip(*points), marker="." if len(points) < 20 else None, label=Path(name).name)
        axis.set_title(metric)
        axis.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (each holds metrics.jsonl)")
    parser.add_argument("--metric", nargs="+", default=list(DEFAULT_METRICS),
                        help=f"metrics.jsonl keys to compare (default: {' '.join(DEFAULT_METRICS)})")
    parser.add_argument("--every", type=int, default=1, help="show only steps divisible by this")
    parser.add_argument("--from-step", type=int, default=0, help="ignore steps before this (e.g. the warmup)")
    parser.add_argument("--plot", type=Path, default=None, help="also write a PNG: one panel per metric")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be >= 1")
    names = [str(d) for d in args.run_dirs]
    if len(set(names)) != len(names):
        parser.error("the same run directory is given twice")
    try:
        runs = {name: read_metrics(d) for name, d in zip(names, args.run_dirs)}
    except ValueError as error:
        parser.exit(2, f"compare_runs: error: {error}\n")
    shown = 0
    for metric in args.metric:
        lines = metric_table(runs, metric, args.every, args.from_step)
        if lines is None:
            print(f"== {metric}: not logged at a step shared by all runs")
            continue
        print("\n".join(lines))
        shown += 1
    if not shown:
        parser.exit(2, "compare_runs: error: no metric was logged at a shared step; check --metric and the runs\n")
    if args.plot is not None:
        plot(runs, args.metric, args.plot, args.from_step)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
