"""Run a grid of training runs, resumably, and summarize them side by side.

    python -m launchers.sweep GRID.yaml [--parallel N] [--dry-run] [--report-only] [--out DIR]

A grid file (YAML; relative paths are taken from the working directory, as with launchers/pretrain.py)::

    name: collapse              # sweep dir: runs/sweeps/<name> unless --out (default: the file's stem)
    launcher: [torchrun, --standalone, --nproc_per_node, "1"]   # default: python launchers/pretrain.py
    ds_config: ds_configs/zero3.json                            # the default
    config: null                # a recipe passed as --config
    plugins: []                 # modules passed as --plugin (their registry entries can be named below)
    base: {train.max_steps: 150, analysis.interval: 50}         # overrides every run gets
    grid:                       # the cartesian product of these axes, in this order
      model.decoder: [perceiver_posonly, sim_matrix]
      objective.masking.strategy: [bert, span]
    runs:                       # explicit override sets, added to the grid (or instead of it)
      - {name: high_lr, overrides: {train.lr: 3.0e-3}}
    seeds: [1234, 1235]         # every configuration once per seed; the summary adds mean ± std over seeds
    env: {OMP_NUM_THREADS: "1"} # added to the environment of each run
    metrics: [loss, heldout_loss, concepts/effective_rank]      # summary columns and plot panels (default)
    every: 50                   # the equal-step tables show steps divisible by this (default 1)
    tail: 1                     # summary columns: mean of the last `tail` logged values (default 1: the last)

Each run is named after its own values (``decoder=sim_matrix,strategy=span,seed=1234``: the last part of a
dotted key unless two axes share it; made filesystem-safe, a digest added when too long) and trains in
SWEEP_DIR/<name> with its output in SWEEP_DIR/<name>/sweep.log. Values reach the training CLI as
``key=value`` in YAML flow style, exactly as its dotlist loader reads them back. Every run's config is
resolved before the first one starts, so a typo fails at once. torchrun and deepspeed launchers get a free
``--master_port`` per run unless the launcher sets one (or ``--standalone``), so ``--parallel`` runs never
collide.

SWEEP_DIR/sweep_state.json (written atomically) records each run's overrides, outcome, exit status and the
stderr line that says why it failed (its last ``error: ...`` line, else its last line; under torchrun the
worker's own status is read from torchrun's report). Running the same command again resumes: runs whose metrics reached
train.max_steps are skipped, the others are re-run (the training CLI resumes them from their checkpoints),
and a failed run (3 = diverged, ...) never stops the others. An edited grid keeps the runs it still has;
a run name whose overrides changed is refused, so a run dir is never reused for other settings (raising
train.max_steps alone continues the runs). Ctrl-C / SIGTERM sends SIGTERM to every run (they checkpoint
and exit 75) and saves the state; a second one kills them. A lock file keeps a second sweep out of the same dir.

At the end (and with --report-only) SWEEP_DIR gets summary.md (a row per run: its axis values, outcome,
final step and metrics; mean ± std over seeds; launchers.compare_runs tables at equal steps),
summary.json (the same data) and plots.png (compare_runs' plot, a panel per metric, a line per run).
Exit status: 0 all runs finished (or the report is written), 1 some did not, 2 bad input, 75 stopped by a signal.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any, Iterator, Optional, Sequence

from launchers.sweep_grid import Grid, Run, SweepError, check_configs, last_step, load_grid, load_state, plan
from launchers.sweep_grid import render, save_state, write_summary

PRETRAIN = str(Path(__file__).resolve().parent / "pretrain.py")
PREEMPTED_EXIT = 75
"""What a run exits with after checkpointing on SIGTERM (megaconcept.train.preemption); the sweep's too."""
_PORT_FLAGS = ("--standalone", "--master_port", "--master-port", "--rdzv-endpoint", "--rdzv_endpoint")
# torchrun reports a failed worker's own status in its root-cause block; its own exit status is always 1.
WORKER_STATUS = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_argv(launcher: Sequence[str]) -> list[str]:
    """The launcher from this environment (a bare `torchrun` resolves next to this Python, e.g. in .venv/bin,
    so `make` works without an activated venv), with a port of its own when it would take a fixed one."""
    if not launcher or launcher[0] in ("python", "python3"):
        return [sys.executable, *launcher[1:]]
    sibling = Path(sys.executable).parent / launcher[0]
    argv = [str(sibling) if sibling.is_file() else launcher[0], *launcher[1:]]
    distributed = Path(launcher[0]).name in ("torchrun", "deepspeed") or "torch.distributed.run" in launcher
    if distributed and not any(a.split("=", 1)[0] in _PORT_FLAGS for a in launcher):
        argv.append(f"--master_port={_free_port()}")
    return argv


def check_launcher(grid: Grid) -> None:
    program = launcher_argv(grid.launcher)[0]
    if shutil.which(program) is None:
        raise SweepError(f"{grid.path}: key 'launcher': {program} is not an executable here (nor next to "
                         f"{sys.executable})")


def command(grid: Grid, run: Run, run_dir: Path) -> list[str]:
    config = ["--config", grid.config] if grid.config else []
    plugins = [a for module in grid.plugins for a in ("--plugin", module)]
    return [*launcher_argv(grid.launcher), PRETRAIN, "--ds_config", grid.ds_config, *config, *plugins,
            *run.argv(), f"run_dir={render(str(run_dir))}"]


def failure_reason(lines: list[str]) -> str:
    """The line that says why: the project's one-line `error: ...` (torchrun appends its own report after
    it), else the last line."""
    for prefix in ("error", "preempted"):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[-1]
    return lines[-1] if lines else ""


class Runner:
    """Starts runs as subprocesses and stops them all on request; safe to call from worker threads."""

    def __init__(self, grid: Grid, sweep_dir: Path) -> None:
        self.grid, self.sweep_dir = grid, sweep_dir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **grid.env}
        self.stopping = threading.Event()
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def run(self, run: Run) -> dict[str, Any]:
        run_dir = self.sweep_dir / run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd, start = command(self.grid, run, run_dir), time.monotonic()
        with open(run_dir / "sweep.log", "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            try:
                # Its own session: a terminal's Ctrl-C reaches the sweep only, which stops the runs with SIGTERM
                # (what they checkpoint on) instead of SIGINT.
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, env=self.env, text=True,
                                        errors="replace", start_new_session=True)
            except OSError as exc:  # the other runs still go on
                return {"outcome": "failed", "status": None, "reason": f"cannot start: {exc}", "seconds": 0.0,
                        "final_step": last_step(run_dir)}
            with self._lock:
                self._procs[run.name] = proc
            if self.stopping.is_set():
                proc.terminate()
            lines = relay_output(proc.stderr, log)
            code = proc.wait()
        with self._lock:
            del self._procs[run.name]
        return self._outcome(run, run_dir, code, lines, time.monotonic() - start)

    def _outcome(self, run: Run, run_dir: Path, code: int, lines: list[str], seconds: float) -> dict[str, Any]:
        statuses = [int(m.group(1)) for line in lines if (m := WORKER_STATUS.match(line))]
        status = statuses[-1] if code != 0 and statuses else code
        step = last_step(run_dir)
        if code == 0 and step is not None and step >= self.grid.max_steps[run.name]:
            outcome, reason = "finished", ""
        else:
            outcome = "interrupted" if self.stopping.is_set() or status == PREEMPTED_EXIT else "failed"
            reason = failure_reason(lines) if code != 0 else f"exited 0 at step {step}, before train.max_steps"
        return {"outcome": outcome, "status": status, "reason": reason, "seconds": round(seconds, 1),
                "final_step": step}

    def stop(self, hard: bool) -> int:
        """SIGTERM to each launcher (torchrun forwards it to its workers); SIGKILL to their groups if hard."""
        self.stopping.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL) if hard else proc.terminate()
            except ProcessLookupError:
                continue  # it ended in between
        return len(procs)


def relay_output(stream: Optional[IO[str]], log: IO[str]) -> list[str]:
    """Copy the run's stderr into its log, keeping the lines for the failure reason."""
    lines: deque[str] = deque(maxlen=200)
    for line in stream or ():
        log.write(line)
        log.flush()  # the child appends its stdout to the same file
        if line.strip():
            lines.append(line.rstrip("\n"))
    return list(lines)


@contextmanager
def _stop_on_signals(runner: Runner) -> Iterator[None]:
    """The first Ctrl-C / SIGTERM stops the runs gracefully; the next one kills them."""
    def handle(signum: int, frame: Optional[FrameType]) -> None:
        hard = runner.stopping.is_set()
        count = runner.stop(hard)
        print(f"sweep: {signal.Signals(signum).name}: " + (f"killed {count} runs" if hard else
              f"SIGTERM sent to {count} runs; they checkpoint and exit (signal again to kill them)"), flush=True)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def execute(grid: Grid, sweep_dir: Path, todo: list[Run], records: dict[str, dict[str, Any]],
            parallel: int) -> bool:
    """Train `todo`, `parallel` at a time, saving the state as each run starts and ends; False if stopped."""
    runner = Runner(grid, sweep_dir)
    queue, total = list(todo), len(todo)
    pending: dict[Future, Run] = {}
    with ThreadPoolExecutor(max_workers=parallel) as pool, _stop_on_signals(runner):
        while queue or pending:
            while queue and len(pending) < parallel and not runner.stopping.is_set():
                run = queue.pop(0)
                # Recorded before the run dir exists: a dir the state does not know was not made by this sweep.
                records[run.name] = {"identity": run.identity(), "config": grid.config, "outcome": "running",
                                     "status": None, "reason": "", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
                save_state(sweep_dir, records)
                pending[pool.submit(runner.run, run)] = run
            if not pending:
                break
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                _finish(pending.pop(future), future, records, sweep_dir, total - len(queue) - len(pending), total)
    return not runner.stopping.is_set()


def _finish(run: Run, future: Future, records: dict[str, dict[str, Any]], sweep_dir: Path, index: int,
            total: int) -> None:
    records[run.name].update(future.result())
    save_state(sweep_dir, records)
    record = records[run.name]
    why = "" if record["outcome"] == "finished" else f" (status {record['status']}): {record['reason']}"
    print(f"[{index}/{total}] {run.name}: {record['outcome']} at step {record['final_step']}, "
          f"{record['seconds']:.0f} s{why}", flush=True)


@contextmanager
def _exclusive(sweep_dir: Path) -> Iterator[None]:
    """Two sweeps on one dir would train the same run dirs twice at once."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another sweep is running in {sweep_dir}; wait for it or stop it first") from None
        yield


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launchers.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path, help="grid file (YAML)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="check the grid and print each run's command")
    parser.add_argument("--report-only", action="store_true", help="write the summary without training")
    parser.add_argument("--out", type=Path, default=None, help="sweep dir (default runs/sweeps/<name>)")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        grid = load_grid(args.grid)
        sweep_dir = args.out or Path("runs") / "sweeps" / grid.name
        grid = check_configs(grid, sweep_dir)
        check_launcher(grid)
        if args.dry_run:
            todo = plan(grid, sweep_dir, load_state(sweep_dir))
            for run in grid.runs:
                print(f"{'run ' if run in todo else 'done'} {shlex.join(command(grid, run, sweep_dir / run.name))}")
            return 0
        with _exclusive(sweep_dir):
            records = load_state(sweep_dir)
            todo = plan(grid, sweep_dir, records)  # refuses changed overrides for a report too
            todo = [] if args.report_only else todo
            print(f"sweep {grid.name}: {len(grid.runs)} runs, {len(todo)} to train; dir {sweep_dir}", flush=True)
            completed = execute(grid, sweep_dir, todo, records, args.parallel)
            data = write_summary(grid, sweep_dir, records)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    unfinished = [r["name"] for r in data["runs"] if r["outcome"] != "finished"]
    print(f"summary: {sweep_dir / 'summary.md'} ({len(data['runs']) - len(unfinished)} of {len(data['runs'])} "
          "finished" + (f"; not finished: {', '.join(unfinished)}" if unfinished else "") + ")")
    if not completed:
        print("sweep: stopped; run the same command to resume", file=sys.stderr)
        return PREEMPTED_EXIT
    return 0 if args.report_only or not unfinished else 1


if __name__ == "__main__":
    sys.exit(main())
