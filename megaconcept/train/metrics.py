"""Metric logging: RUN_DIR/metrics.jsonl, a compact progress line, and optional wandb (rank 0 only)."""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Optional

from ..config.schema import LoggingSection


def truncate_after(path: Path, step: int) -> None:
    """Drop lines logged after `step` (by a run killed before its next checkpoint), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


WANDB_ID_FILE = "wandb_run_id"


def wandb_run_id(run_dir: Path) -> str:
    """The run's own W&B id, made once and kept in the run dir: two runs whose folders share a name never
    resume into one W&B run, and a resumed run continues its own."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:16]
    path.write_text(run_id + "\n")
    return run_id


def json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with NaN and infinities as null: metrics.jsonl stays valid JSON for every reader."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def progress_line(record: dict[str, Any]) -> str:
    mfu = f" | MFU {record['mfu']:.1%}" if record.get("mfu") is not None else ""
    # With several objective terms, each one's unweighted loss and effective weight follow the total.
    terms = [k[len("loss/"):] for k in record if k.startswith("loss/") and record[k] is not None]
    parts = "".join(f" | {t} {record[f'loss/{t}']:.4f} (x{record.get(f'weight/{t}') or 0:.3g})" for t in terms
                    ) if len(terms) > 1 else ""
    return (f"step {record['step']:>6} | loss {_number(record['loss'], '.4f')}{parts} | lr {record['lr']:.2e} | "
            f"gnorm {_number(record['grad_norm'], '.3f')} | {record['tokens_per_sec']:,.0f} tok/s{mfu}")


def _number(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


class MetricLogger:
    """Writes one JSON object per logged step; no-op on ranks other than 0."""

    def __init__(self, run_dir: str, enabled: bool, cfg: LoggingSection, run_config: dict[str, Any], resume_step: int) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb: Optional[Any] = None
        if not enabled:
            return
        truncate_after(self.path, resume_step)
        if cfg.wandb and cfg.wandb_mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=cfg.wandb_project, dir=run_dir, mode=cfg.wandb_mode, config=run_config,
                name=Path(run_dir).name, resume="allow", id=wandb_run_id(Path(run_dir)),
            )

    def log(self, record: dict[str, Any], line: Optional[str] = None) -> None:
        """Append `record` (it has a "step"); print `line`, by default the training progress line."""
        if not self.enabled:
            return
        record = json_safe(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
        print(line if line is not None else progress_line(record), flush=True)

    def warn(self, record: dict[str, Any], line: str) -> None:
        """A warning record (it has "event"): to metrics.jsonl and wandb like any record, `line` to stdout."""
        self.log(record, line)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
