"""The pure half of ``launchers/sweep.py``: read and check a grid file, expand it into named runs, keep the
sweep state, and write the summary. Nothing here starts a process (the grid format is documented there)."""
from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import os
import re
import statistics
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf

from launchers.compare_runs import DEFAULT_METRICS, metric_series, plot, read_metrics

GRID_KEYS = ("name", "launcher", "ds_config", "config", "plugins", "base", "grid", "runs", "seeds", "env",
             "metrics", "every", "tail")
RUN_KEYS = ("name", "overrides")
STATE_FILE = "sweep_state.json"
MAX_NAME = 96
# Raising train.max_steps continues a finished run (the training CLI says "raise it to continue"), so it is no
# part of a run's identity; every other override is.
CONTINUABLE = ("train.max_steps",)


class SweepError(ValueError):
    """Bad input to the sweep (grid file, sweep dir, state), phrased as one line."""


@dataclass(frozen=True)
class Run:
    name: str
    """Directory name under the sweep dir; readable, derived from the run's own overrides."""
    group: str
    """The name without the seed: the runs of one configuration over the seeds share it."""
    labels: dict[str, Any]
    """Grid axis -> value (and seed), the columns of the summary."""
    overrides: dict[str, Any]
    """Every dotted override the run gets (base, then its own), run_dir aside."""

    def argv(self) -> list[str]:
        return [f"{key}={render(value)}" for key, value in self.overrides.items()]

    def identity(self) -> list[str]:
        return sorted(a for a in self.argv() if a.split("=", 1)[0] not in CONTINUABLE)


@dataclass(frozen=True)
class Grid:
    path: Path
    name: str
    launcher: list[str]
    ds_config: str
    config: Optional[str]
    plugins: list[str]
    axes: list[str]
    runs: list[Run]
    seeds: list[int]
    env: dict[str, str]
    metrics: list[str]
    every: int
    tail: int
    max_steps: dict[str, int] = field(default_factory=dict)
    """Run name -> its resolved train.max_steps (filled by :func:`check_configs`)."""


def render(value: Any) -> str:
    """``value`` as YAML flow text that the config's dotlist loader parses back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30).strip()
    text = text[:-4].rstrip() if text.endswith("\n...") else text  # a bare scalar's end-of-document mark
    # OmegaConf's YAML reads some strings PyYAML leaves plain as numbers (1e-3): quote those (JSON is YAML).
    if isinstance(value, (str, list, dict)) and _parse(text) != value:
        text = json.dumps(value)
    return text


def _parse(text: str) -> Any:
    return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]))["v"]


def yaml_problem(exc: yaml.YAMLError) -> str:
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SweepError(f"grid file {path} not found; pass a YAML grid file (see launchers/configs/sweeps/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: must be a YAML mapping with a grid: or runs: key")
    unknown = [k for k in data if k not in GRID_KEYS]
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(GRID_KEYS)}")
    return data


def scalar_value(path: Path, data: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        what = {str: "a string", int: "an integer"}[kind] + (" or null" if default is None else "")
        raise SweepError(f"{path}: key {key!r} must be {what}, not {value!r}")
    return value


def _strings(path: Path, data: dict[str, Any], key: str, default: list[str], empty_ok: bool = True) -> list[str]:
    """A list of words (launcher arguments, module or metric names); YAML may read "1" as 1."""
    value = data.get(key, default)
    if not isinstance(value, list) or not (value or empty_ok) or not all(
            isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        what = "a list of strings" if empty_ok else "a non-empty list of strings"
        raise SweepError(f"{path}: key {key!r} must be {what}, not {value!r}")
    return [str(v) for v in value]


def mapping_value(path: Path, key: str, value: Any, example: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise SweepError(f"{path}: key {key!r} must be a mapping, e.g. {example}")
    return dict(value)


def overrides_value(path: Path, key: str, value: Any, seeds: bool) -> dict[str, Any]:
    """A mapping of dotted config keys; run_dir is the sweep's (and seed its `seeds:` axis's) to set."""
    value = mapping_value(path, key, value, "{train.lr: 1e-3}")
    for reserved, why in (("run_dir", "the sweep sets it to SWEEP_DIR/<run name>"), ("seed", "seeds: sets it")):
        if reserved in value and (reserved == "run_dir" or seeds):
            raise SweepError(f"{path}: key '{key}.{reserved}' cannot be given: {why}")
    return dict(value)


def _axes(path: Path, value: Any, seeds: bool) -> dict[str, list[Any]]:
    axes = overrides_value(path, "grid", value, seeds)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: key 'grid.{key}' must be a non-empty list of values, e.g. [a, b]")
    return axes


def explicit_runs(path: Path, value: Any, seeds: bool) -> list[tuple[str, dict[str, Any]]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SweepError(f"{path}: key 'runs' must be a list of {{name: ..., overrides: {{...}}}}")
    runs: list[tuple[str, dict[str, Any]]] = []
    for index, entry in enumerate(value):
        key = f"runs[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise SweepError(f"{path}: key {key!r} must be a mapping with a name: and optional overrides:")
        unknown = [k for k in entry if k not in RUN_KEYS]
        if unknown:
            raise SweepError(f"{path}: unknown key '{key}.{unknown[0]}'; valid keys: {', '.join(RUN_KEYS)}")
        if entry["name"] in (name for name, _ in runs):
            raise SweepError(f"{path}: key '{key}.name': {entry['name']!r} is used by an earlier run")
        runs.append((entry["name"], overrides_value(path, f"{key}.overrides", entry.get("overrides"), seeds)))
    return runs


def load_grid(path: Path) -> Grid:
    """Parse and check a grid file; every problem is a one-line SweepError naming the file and the key."""
    data = _read(path)
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in seeds)):
        raise SweepError(f"{path}: key 'seeds' must be a non-empty list of integers, not {seeds!r}")
    axes = _axes(path, data.get("grid"), bool(seeds))
    explicit = explicit_runs(path, data.get("runs"), bool(seeds))
    if not axes and not explicit:
        raise SweepError(f"{path}: the grid is empty; give grid: {{key: [values]}} and/or runs: [...]")
    env = mapping_value(path, "env", data.get("env"), '{OMP_NUM_THREADS: "1"}')
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in env.values()):
        raise SweepError(f"{path}: key 'env' must map variable names to strings or numbers")
    base = overrides_value(path, "base", data.get("base"), bool(seeds))
    name = scalar_value(path, data, "name", str, sanitise(path.stem))
    if sanitise(name) != name:
        raise SweepError(f"{path}: key 'name' must be a plain directory name (letters, digits, . _ = , + -)")
    every, tail = (scalar_value(path, data, k, int, 1) for k in ("every", "tail"))
    if min(every, tail) < 1:
        raise SweepError(f"{path}: keys 'every' and 'tail' must be >= 1")
    return Grid(
        path=path, name=name, launcher=_strings(path, data, "launcher", []),
        ds_config=scalar_value(path, data, "ds_config", str, "ds_configs/zero3.json"),
        config=scalar_value(path, data, "config", str, None), plugins=_strings(path, data, "plugins", []),
        axes=list(axes), runs=expand(axes, explicit, base, seeds or []), seeds=seeds or [],
        env={k: str(v) for k, v in env.items()},
        metrics=_strings(path, data, "metrics", list(DEFAULT_METRICS), empty_ok=False),
        every=every, tail=tail)


def sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).lstrip(".-") or "_"


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The last dotted part names an axis (decoder=...), unless two axes share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: short if last.count(short) == 1 else k for k, short in zip(keys, last)}


def _digest(overrides: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]


def expand(axes: dict[str, list[Any]], explicit: list[tuple[str, dict[str, Any]]], base: dict[str, Any],
           seeds: list[int]) -> list[Run]:
    """The cartesian product of the axes, then the explicit runs, each once per seed (once without seeds)."""
    short = _short_keys(list(axes))
    configs = [(",".join(f"{short[k]}={v if isinstance(v, str) else render(v)}" for k, v in zip(axes, values)),
                dict(zip(axes, values)), dict(zip(axes, values))) for values in itertools.product(*axes.values())
               ] if axes else []  # no axes: only the explicit runs (the empty product would be one unnamed run)
    configs += [(name, {k: own[k] for k in axes if k in own}, own) for name, own in explicit]
    runs = []
    for label, labels, own in configs:
        for seed in seeds or [None]:
            extra = {} if seed is None else {"seed": seed}
            overrides = {**base, **own, **extra}
            name = sanitise(label + (f",seed={seed}" if seed is not None else ""))
            if len(name) > MAX_NAME:  # keep it a readable prefix; the digest keeps it unique
                name = f"{name[:MAX_NAME - 9]}-{_digest(overrides)}"
            runs.append(Run(name, sanitise(label), {**labels, **extra}, overrides))
    names = [r.name for r in runs]
    # Two runs whose names sanitise alike (a/b and a_b) are told apart by their overrides' digest.
    return [Run(f"{r.name}-{_digest(r.overrides)}", r.group, r.labels, r.overrides) if names.count(r.name) > 1
            else r for r in runs]


def check_configs(grid: Grid, sweep_dir: Path) -> Grid:
    """Resolve every run's config now, so a typo fails before hours of training, and learn its max_steps."""
    from megaconcept.config import ConfigError, load_config  # here: it imports torch, which --help needs not

    if not Path(grid.ds_config).is_file():
        raise SweepError(f"{grid.path}: key 'ds_config': {grid.ds_config} not found")
    for module in grid.plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SweepError(f"{grid.path}: key 'plugins': {module} cannot be imported ({exc})") from None
    max_steps = {}
    for run in grid.runs:
        try:
            cfg = load_config(grid.config, [*run.argv(), f"run_dir={render(str(sweep_dir / run.name))}"])
        except ConfigError as exc:
            raise SweepError(f"{grid.path}: run {run.name!r}: {exc}") from None
        max_steps[run.name] = cfg.train.max_steps
    return replace(grid, max_steps=max_steps)


def load_state(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Run name -> record (identity, outcome, status, reason, ...); empty for a new sweep."""
    path = sweep_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["runs"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SweepError(f"{path} is damaged ({exc}); fix it, or remove it together with the run dirs") from None


def save_state(sweep_dir: Path, records: dict[str, dict[str, Any]]) -> None:
    """Write-then-rename, so an interrupted sweep never leaves half a state file."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=sweep_dir, prefix=f".{STATE_FILE}.")
    with os.fdopen(fd, "w") as f:
        json.dump({"version": 1, "runs": records}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, sweep_dir / STATE_FILE)


def last_step(run_dir: Path) -> Optional[int]:
    try:
        steps = read_metrics(run_dir)
    except ValueError:
        return None
    return max(steps) if steps else None


def plan(grid: Grid, sweep_dir: Path, records: dict[str, dict[str, Any]]) -> list[Run]:
    """The runs still to train. A run dir is never reused for other overrides: a refusal names the run."""
    todo = []
    for run in grid.runs:
        record, run_dir = records.get(run.name), sweep_dir / run.name
        if record is None:
            if run_dir.exists():
                raise SweepError(f"run {run.name!r}: {run_dir} exists but {STATE_FILE} has no record of it; "
                                 "remove it or give the sweep another --out")
        elif record.get("config") != grid.config:
            raise SweepError(f"run {run.name!r} in {sweep_dir} was started with config {record.get('config')}, "
                             f"not {grid.config}; restore it or give the sweep another --out")
        elif record.get("identity") != run.identity():
            then = sorted(set(record.get("identity", [])) - set(run.identity()))
            now = sorted(set(run.identity()) - set(record.get("identity", [])))
            raise SweepError(f"run {run.name!r} in {sweep_dir} was started with other overrides (then: "
                             f"{' '.join(then) or '-'}; now: {' '.join(now) or '-'}); restore them or give the "
                             "sweep another --out")
        step = last_step(run_dir)
        if step is None or step < grid.max_steps[run.name]:
            todo.append(run)
    return todo


def _tail(records: dict[int, dict], metric: str, tail: int) -> Optional[dict[str, float]]:
    """The mean of the metric's last `tail` logged values, and the step of the last one."""
    points = [(s, float(r[metric])) for s, r in sorted(records.items()) if r.get(metric) is not None][-tail:]
    if not points:
        return None
    return {"step": points[-1][0], "value": math.fsum(v for _, v in points) / len(points)}


def _run_row(grid: Grid, run: Run, record: dict[str, Any], records: dict[int, dict]) -> dict[str, Any]:
    step = max(records) if records else None
    # The metrics decide "finished"; the state alone would trust a run dir someone emptied since.
    reached = step is not None and step >= grid.max_steps[run.name]
    recorded = record.get("outcome", "not run")
    outcome = "finished" if reached else "not run" if recorded == "finished" else recorded
    return {"name": run.name, "labels": run.labels, "overrides": run.argv(), "outcome": outcome,
            "status": record.get("status"), "reason": record.get("reason", ""), "final_step": step,
            "max_steps": grid.max_steps[run.name], "seconds": record.get("seconds"),
            "metrics": {m: _tail(records, m, grid.tail) for m in grid.metrics}}


def _over_seeds(grid: Grid, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std of each metric over the finished seeds of each configuration."""
    groups: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run, row in zip(grid.runs, rows):
        groups.setdefault(run.group, []).append((run, row))
    out = []
    for group, members in groups.items():
        done = [row for _, row in members if row["outcome"] == "finished"]
        stats: dict[str, Optional[dict[str, Any]]] = {}
        for metric in grid.metrics:
            values = [row["metrics"][metric]["value"] for row in done if row["metrics"][metric] is not None]
            stats[metric] = {"mean": statistics.fmean(values), "n": len(values),
                             "std": statistics.stdev(values) if len(values) > 1 else None} if values else None
        out.append({"group": group, "labels": {k: v for k, v in members[0][0].labels.items() if k != "seed"},
                    "seeds": [row["labels"]["seed"] for row in done], "metrics": stats})
    return out


def summarize(grid: Grid, records: dict[str, dict[str, Any]], metrics: dict[str, dict[int, dict]]
              ) -> dict[str, Any]:
    """Everything summary.json holds: a row per run, the seed aggregates and the equal-step series."""
    rows = [_run_row(grid, run, records.get(run.name, {}), metrics.get(run.name, {})) for run in grid.runs]
    finished = {row["name"]: metrics[row["name"]] for row in rows if row["outcome"] == "finished"}
    return {"sweep": grid.name, "grid_file": str(grid.path), "axes": [*grid.axes, *(["seed"] if grid.seeds else [])],
            "metrics": grid.metrics, "tail": grid.tail, "runs": rows,
            "over_seeds": _over_seeds(grid, rows) if grid.seeds else [],
            "at_equal_steps": {m: metric_series(finished, m, grid.every) if finished else None for m in grid.metrics}}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else value if isinstance(value, str) else render(value)
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def _outcome(row: dict[str, Any]) -> str:
    if row["outcome"] in ("finished", "not run"):
        return row["outcome"]
    return f"{row['outcome']} ({row['status']}): {row['reason']}" if row["reason"] else row["outcome"]


def _markdown(data: dict[str, Any], every: int) -> list[str]:
    axes, metrics, rows = data["axes"], data["metrics"], data["runs"]
    counts = {o: sum(r["outcome"] == o for r in rows) for o in dict.fromkeys(r["outcome"] for r in rows)}
    what = "the last logged value" if data["tail"] == 1 else f"the mean of the last {data['tail']} logged values"
    lines = [f"# Sweep {data['sweep']}", "", f"Grid file `{data['grid_file']}`: {len(rows)} runs, "
             + ", ".join(f"{n} {o}" for o, n in counts.items()) + f". Metric columns: {what}.", ""]
    lines += _table(["run", *axes, "outcome", "step", *metrics],
                    [[r["name"], *(r["labels"].get(a) for a in axes), _outcome(r), r["final_step"],
                      *((r["metrics"][m] or {}).get("value") for m in metrics)] for r in rows])
    if data["over_seeds"]:
        lines += ["", "## Mean ± std over seeds (finished runs)", ""]
        lines += _table(["configuration", *axes[:-1], "seeds", *metrics], [
            [g["group"], *(g["labels"].get(a) for a in axes[:-1]), len(g["seeds"]),
             *(_mean_std(g["metrics"][m]) for m in metrics)] for g in data["over_seeds"]])
    lines += ["", "## At equal steps (finished runs" + (f", every {every} steps)" if every > 1 else ")"), ""]
    for metric, series in data["at_equal_steps"].items():
        if series is None:
            lines += [f"{metric}: not logged at a step shared by the finished runs", ""]
            continue
        # A row per run and a column per step: eight runs with long names fit a page this way round.
        lines += [f"### {metric}", "", *_table(["run", *map(str, series["steps"]), "mean"], [
            [name, *values, series["mean"][name]] for name, values in series["values"].items()]), ""]
    return [*lines, "![metrics vs step](plots.png)", ""]


def _mean_std(stats: Optional[dict[str, Any]]) -> Optional[str]:
    if stats is None:
        return None
    return f"{stats['mean']:.4g}" + (f" ± {stats['std']:.2g}" if stats["std"] is not None else "")


def write_summary(grid: Grid, sweep_dir: Path, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """summary.md, summary.json and plots.png in the sweep dir, from the state and each run's metrics.jsonl."""
    metrics = {}
    for run in grid.runs:
        try:
            metrics[run.name] = read_metrics(sweep_dir / run.name)
        except ValueError:  # never started, or failed before its first log line
            continue
    data = summarize(grid, records, metrics)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "summary.json").write_text(json.dumps(data, indent=1) + "\n")
    (sweep_dir / "summary.md").write_text("\n".join(_markdown(data, grid.every)))
    if any(metrics.values()):
        plot({n: m for n, m in metrics.items() if m}, grid.metrics, sweep_dir / "plots.png")
    return data
