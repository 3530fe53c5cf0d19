"""Benchmark training configurations side by side with the real trainer, in one run.

    python -m launchers.bench SPEC.yaml [--out DIR] [--shards DIR] [--only NAME ...] [--set KEY=VALUE ...]
                                        [--steps N] [--warmup N] [--dry-run]

A spec file (YAML; see launchers/configs/bench/)::

    base: {model.num_concepts: 8, train.precision: fp32}   # dotted overrides every run gets
    runs:                                                  # one row each, in this order (the first is the reference)
      - {name: mb4, overrides: {train.micro_batch_size: 4}}
      - {name: mlsm, overrides: {objective.terms: {mlm: null, mlsm: {dictionary: "{dictionary}"}}}}
    steps: 10          # measured steps per run (default 10)
    warmup: 2          # steps before them, not measured (default 2): compile, allocator and loader warm-up
    nproc: 1           # processes per run (default 1)
    launcher: torchrun # or deepspeed (default torchrun), started exactly as a user starts launchers/pretrain.py
    ds_config: ds_configs/zero3.json                       # the default
    env: {OMP_NUM_THREADS: "1"}                            # added to each run's environment (OMP_NUM_THREADS=1 default)
    seq_len: 256       # sample length of generated shards (default 256)

Overrides are written exactly as in a sweep grid (launchers/sweep_grid.py parses both) and reach the training
CLI as ``key=value``; any config key may be set per run; relative paths are taken from the working directory.
The bench sets run_dir, train.max_steps (warmup + steps) and train.log_interval (1), and turns concept analysis
off (analysis.interval: 0; off the trainer's clock anyway, but wall time) unless base or a run sets it.
``--set KEY=VALUE`` replaces ``{KEY}`` in override strings (quote them in YAML: ``"{dictionary}"``, else YAML
reads a mapping); a placeholder without its --set, or a --set no override uses, is an error.

Shards: ``--shards DIR`` for every run (replacing base's data.shards); else base's data.shards; else synthetic
shards are generated once into OUT/shards (the first 3000 paragraphs of the embedded corpus, smollm2 tokenizer,
seq_len from the spec) and reused by later benches in the same OUT. A run's own data.shards wins over all three.

Each run trains in OUT/runs/<name> (its output in bench.log there); the runs go one after another, never at once,
so they do not share the machine. OUT gets results.json (every figure, each run's step times and FLOP parts) and
results.md (a table, a row per run: median step time, tokens/s, tokens/s per device, MFU, FLOPs per step, the
step time and FLOPs per step relative to the first run that finished, peak RSS), both for the runs of this
invocation (with --only: those), rewritten as each run ends. A run that fails is a row
with its one-line reason; the others still run. The bench replaces only what it wrote: run dirs holding its
marker file and results files it wrote; anything else in the way is an error, before any run starts.
No profiler option: the trainer has no hook for torch.profiler.
Exit status: 0 every run finished, 1 some failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from launchers.bench_report import PEAK_MEMORY_NOTE, measure, owned, step_flops, with_ratios, write_results
from launchers.sweep import PRETRAIN, WORKER_STATUS, failure_reason, launcher_argv, relay_output
from launchers.sweep_grid import (Run, SweepError, expand, explicit_runs, mapping_value, overrides_value, render,
                                  sanitise, scalar_value, yaml_problem)

SPEC_KEYS = ("base", "runs", "steps", "warmup", "nproc", "launcher", "ds_config", "env", "seq_len")
LAUNCHERS = ("torchrun", "deepspeed")
RESERVED = {"train.max_steps": "the bench sets it to warmup + steps",
            "train.log_interval": "the bench logs every step (1) to time each one"}
DEFAULTS = {"analysis.interval": 0}
"""Before base: concept analysis is off the trainer's clock, but it costs wall time a benchmark does not need."""
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
MARKER = ".bench_run"
"""In each run dir the bench made: only such a dir is replaced when the same run is benched again."""
CORPUS_PARAGRAPHS = 3000
SAMPLES_PER_SHARD = 64
"""Small shards: every rank x loader worker needs one per epoch."""
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class BenchError(SweepError):
    """Bad input to the bench, phrased as one line (a SweepError: the sweep's grid parsers raise those)."""


@dataclass(frozen=True)
class Spec:
    path: Path
    runs: list[Run]
    own: dict[str, list[str]]
    """Run name -> its own overrides as key=value (the table's column; base is shared)."""
    steps: int
    warmup: int
    nproc: int
    launcher: str
    ds_config: str
    env: dict[str, str]
    seq_len: int

    @property
    def max_steps(self) -> int:
        return self.warmup + self.steps


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BenchError(f"spec file {path} not found; pass a YAML bench spec (see launchers/configs/bench/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BenchError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict) or not data.get("runs"):
        raise BenchError(f"{path}: must be a YAML mapping with a non-empty runs: [{{name: ..., overrides: ...}}]")
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise BenchError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(SPEC_KEYS)}")
    _no_run_dir(path, data)
    return data


def _no_run_dir(path: Path, data: dict[str, Any]) -> None:
    """run_dir is the bench's to set; checked before the sweep's parsers, whose message would name the sweep."""
    runs = data["runs"] if isinstance(data["runs"], list) else []
    maps = [("base", data.get("base")), *((f"runs[{i}].overrides", r.get("overrides")) for i, r in enumerate(runs)
                                          if isinstance(r, dict))]
    for where, overrides in maps:
        if isinstance(overrides, dict) and "run_dir" in overrides:
            raise BenchError(f"{path}: key '{where}.run_dir' cannot be given: the bench sets it to OUT/runs/<name>")


def _substitute(value: Any, sets: dict[str, str], path: Path, where: str, used: set[str]) -> Any:
    """`value` with each {KEY} in its strings replaced by --set KEY=VALUE, recursively; `where` is its key."""
    if isinstance(value, dict):
        return {k: _substitute(v, sets, path, f"{where}.{k}", used) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, sets, path, f"{where}[{i}]", used) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        key = match.group(1)
        if key not in sets:
            raise BenchError(f"{path}: key '{where}' uses {{{key}}}; pass --set {key}=VALUE")
        used.add(key)
        return sets[key]
    return _PLACEHOLDER.sub(one, value)


def _checked(path: Path, where: str, overrides: dict[str, Any], sets: dict[str, str], used: set[str]
             ) -> dict[str, Any]:
    for key, why in RESERVED.items():
        if key in overrides:
            raise BenchError(f"{path}: key '{where}.{key}' cannot be given: {why}")
    return {k: _substitute(v, sets, path, f"{where}.{k}", used) for k, v in overrides.items()}


def _at_least(path: Path, data: dict[str, Any], key: str, default: int, least: int) -> int:
    value = scalar_value(path, data, key, int, default)
    if value < least:
        raise BenchError(f"{path}: key {key!r} must be >= {least}, not {value}")
    return value


def load_spec(path: Path, sets: dict[str, str], shards: Optional[str], generated: Path) -> Spec:
    """Parse and check a spec file; every problem is a one-line BenchError naming the file and the key."""
    data = _read(path)
    used: set[str] = set()
    base = {**DEFAULTS, **_checked(path, "base", overrides_value(path, "base", data.get("base"), False), sets, used)}
    explicit = [(name, _checked(path, f"runs[{i}].overrides", own, sets, used))
                for i, (name, own) in enumerate(explicit_runs(path, data["runs"], False))]
    unused = sorted(set(sets) - used)
    if unused:
        raise BenchError(f"{path}: --set {unused[0]}: no override uses {{{unused[0]}}}; check the key's spelling")
    if shards is not None:
        base["data.shards"] = shards
    base.setdefault("data.shards", str(generated))
    runs = expand({}, explicit, base, [])
    launcher = scalar_value(path, data, "launcher", str, "torchrun")
    if launcher not in LAUNCHERS:
        raise BenchError(f"{path}: key 'launcher' must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")
    env = mapping_value(path, "env", data.get("env"), '{OMP_NUM_THREADS: "1"}')
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in env.values()):
        raise BenchError(f"{path}: key 'env' must map variable names to strings or numbers")
    return Spec(path=path, runs=runs,
                own={run.name: [f"{k}={render(v)}" for k, v in own.items()] for run, (_, own) in zip(runs, explicit)},
                steps=_at_least(path, data, "steps", 10, 1), warmup=_at_least(path, data, "warmup", 2, 0),
                nproc=_at_least(path, data, "nproc", 1, 1), launcher=launcher,
                ds_config=scalar_value(path, data, "ds_config", str, "ds_configs/zero3.json"),
                env={k: str(v) for k, v in env.items()}, seq_len=_at_least(path, data, "seq_len", 256, 2))


def select(spec: Spec, only: Sequence[str]) -> Spec:
    """The runs named by --only, in the spec's order."""
    names = [run.name for run in spec.runs]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise BenchError(f"--only {unknown[0]}: no such run in {spec.path}; runs: {', '.join(names)}")
    return replace(spec, runs=[run for run in spec.runs if not only or run.name in only])


def argv(spec: Spec, run: Run, where: Path) -> list[str]:
    """The run's training overrides: its own and base's, then what the bench sets."""
    return [*run.argv(), f"run_dir={render(str(where))}", f"train.max_steps={spec.max_steps}",
            "train.log_interval=1"]


def command(spec: Spec, run: Run, where: Path) -> list[str]:
    width = ["--standalone", "--nproc_per_node", str(spec.nproc)] if spec.launcher == "torchrun" else [
        "--num_gpus", str(spec.nproc)]
    return [*launcher_argv([spec.launcher, *width]), PRETRAIN, "--ds_config", spec.ds_config,
            *argv(spec, run, where)]


def check(spec: Spec, out: Path) -> None:
    """Resolve every run's config and find the launcher now, so a typo fails before the first run starts."""
    from megaconcept.config import ConfigError, load_config  # here: it imports torch, which --help needs not

    if not Path(spec.ds_config).is_file():
        raise BenchError(f"{spec.path}: key 'ds_config': {spec.ds_config} not found")
    program = command(spec, spec.runs[0], out)[0]
    if shutil.which(program) is None:
        raise BenchError(f"{spec.path}: key 'launcher': {program} is not an executable here")
    for run in spec.runs:
        try:
            load_config(None, argv(spec, run, run_dir(out, run)))
        except ConfigError as exc:
            raise BenchError(f"{spec.path}: run {run.name!r}: {exc}") from None


def run_dir(out: Path, run: Run) -> Path:
    return out / "runs" / run.name


def claim(spec: Spec, out: Path) -> None:
    """Refuse (before any run) to replace what the bench did not write: foreign run dirs and results files."""
    for name in ("results.json", "results.md"):
        if not owned(out / name):
            raise BenchError(f"{out / name} exists and was not written by the bench; move it or pass another --out")
    for run in spec.runs:
        where = run_dir(out, run)
        if where.exists() and not (where / MARKER).is_file():
            raise BenchError(f"{where} exists and was not written by the bench (no {MARKER} in it); move it or "
                             "pass another --out")


def _job(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, errors="replace", env={**os.environ, **ENV})
    if proc.returncode != 0:
        why = failure_reason([line for line in proc.stderr.splitlines() if line.strip()])
        raise BenchError(f"{what} failed ({why}); pass --shards DIR (shards of data_prep.shard)")


def ensure_shards(shards: Path, seq_len: int) -> None:
    """Synthetic shards in OUT/shards, made once with the project's own CLIs; reused when they match."""
    from megaconcept.data.shards import read_manifest

    if (shards / "manifest.json").is_file():
        made = read_manifest(str(shards)).seq_len
        if made != seq_len:
            raise BenchError(f"{shards} holds shards of seq_len {made}, not the spec's {seq_len}; pass another "
                             "--out or --shards")
        return
    corpus = shards.parent / "corpus" / "paragraphs.txt"
    print(f"bench: generating synthetic shards in {shards} (embedded corpus, smollm2, seq_len {seq_len})", flush=True)
    if not corpus.is_file():  # else an earlier bench wrote it (atomically) and was stopped while sharding
        _job([sys.executable, "-m", "data_prep.embedded", "--out", str(corpus), "--limit", str(CORPUS_PARAGRAPHS)],
             "the embedded corpus (python -m data_prep.embedded)")
    _job([sys.executable, "-m", "data_prep.shard", "--input", str(corpus), "--tokenizer", "smollm2", "--seq-len",
          str(seq_len), "--samples-per-shard", str(SAMPLES_PER_SHARD), "--workers", "1", "--out", str(shards)],
         "sharding (python -m data_prep.shard)")


def _fresh(where: Path) -> None:
    if where.exists():  # claim() checked it carries the marker: the bench made it
        shutil.rmtree(where)
    where.mkdir(parents=True)
    (where / MARKER).write_text("made by python -m launchers.bench; a re-run of the same bench replaces it\n")


def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Exit status and peak RSS (MiB): wait4's rusage is the launcher's own, with its reaped workers folded in."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return proc.returncode, usage.ru_maxrss * scale / 2**20


def launch(spec: Spec, run: Run, where: Path) -> dict[str, Any]:
    """Train one run to warmup + steps; its exit status, failure line, wall time and peak RSS."""
    _fresh(where)
    cmd, start = command(spec, run, where), time.monotonic()
    with open(where / "bench.log", "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, env={**os.environ, **ENV, **spec.env},
                                    text=True, errors="replace")
        except OSError as exc:
            return {"exit_status": None, "reason": f"cannot start: {exc}", "wall_s": 0.0, "peak_rss_mib": None}
        lines = relay_output(proc.stderr, log)
        code, rss = _wait(proc)
    # torchrun exits 1 for any failed worker; the worker's own status is in its report.
    statuses = [int(m.group(1)) for line in lines if (m := WORKER_STATUS.match(line))]
    return {"exit_status": statuses[-1] if code != 0 and statuses else code,
            "reason": failure_reason(lines) if code else "",
            "wall_s": time.monotonic() - start, "peak_rss_mib": rss}


def bench_run(spec: Spec, run: Run, out: Path) -> dict[str, Any]:
    """One row of the results: the launch's outcome, then the figures read from the run's own files."""
    where = run_dir(out, run)
    row = {"name": run.name, "overrides": spec.own[run.name], "run_dir": str(where), **launch(spec, run, where)}
    if row["exit_status"] != 0:
        return {**row, "status": "failed"}
    try:
        figures = measure(where, spec.warmup)
        if figures["measured_steps"] < spec.steps:
            raise ValueError(f"only {figures['measured_steps']} of {spec.steps} measured steps were logged")
        figures.update(step_flops(where, figures["tokens_per_step"]))
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        return {**row, "status": "failed", "reason": f"exited 0 but its files do not add up: {exc}"}
    return {**row, "status": "ok", **figures}


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU, {os.cpu_count()} cores (torch {torch.__version__})"


def execute(spec: Spec, out: Path) -> dict[str, Any]:
    """Every run in turn, each printed as it ends; the results files are rewritten after each."""
    rows: list[dict[str, Any]] = []
    data = {"name": spec.path.stem, "spec": str(spec.path), "device": _device(), "launcher": spec.launcher,
            "nproc": spec.nproc, "warmup": spec.warmup, "steps": spec.steps, "ds_config": spec.ds_config,
            "peak_memory": PEAK_MEMORY_NOTE}
    for index, run in enumerate(spec.runs, 1):
        row = bench_run(spec, run, out)
        rows.append(row)
        rows, ref = with_ratios(rows)
        data.update(reference=ref, runs=rows)
        write_results(out, data)
        said = (f"median step {row['step_time_s']:.4g} s, {row['tokens_per_sec']:,.0f} tok/s" if row["status"] == "ok"
                else f"failed (exit {row['exit_status']}): {row['reason']}")
        print(f"[{index}/{len(spec.runs)}] {run.name}: {said}; {row['wall_s']:.0f} s", flush=True)
    return data


def _assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (KEY: letters, digits, _)")
    return key, value


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launchers.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="bench spec (YAML)")
    parser.add_argument("--out", type=Path, default=None, help="results dir (default runs/bench/<spec name>)")
    parser.add_argument("--shards", default=None, help="shards for every run (default: base's, else generated)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="bench only this run; repeatable")
    parser.add_argument("--set", action="append", default=[], type=_assignment, metavar="KEY=VALUE",
                        help="replace {KEY} in the spec's override strings; repeatable")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default: the spec's)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: the spec's)")
    parser.add_argument("--dry-run", action="store_true", help="check the spec and print each run's command")
    args = parser.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    out = args.out or Path("runs") / "bench" / sanitise(args.spec.stem)
    try:
        spec = select(load_spec(args.spec, dict(args.set), args.shards, out / "shards"), args.only)
        spec = replace(spec, steps=args.steps or spec.steps,
                       warmup=spec.warmup if args.warmup is None else args.warmup)
        check(spec, out)
        if args.dry_run:
            for run in spec.runs:
                print(shlex.join(command(spec, run, run_dir(out, run))))
            return 0
        claim(spec, out)
        if any(run.overrides["data.shards"] == str(out / "shards") for run in spec.runs):
            ensure_shards(out / "shards", spec.seq_len)
        data = execute(spec, out)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached the run too (same process group): it stops
        print(f"bench: interrupted; the runs that ended are in {out / 'results.md'}", file=sys.stderr)
        return 130
    failed = [row["name"] for row in data["runs"] if row["status"] != "ok"]
    print(f"results: {out / 'results.md'} ({len(data['runs']) - len(failed)} of {len(data['runs'])} finished"
          + (f"; failed: {', '.join(failed)})" if failed else ")"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
