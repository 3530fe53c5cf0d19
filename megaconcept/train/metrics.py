"""Metric logging: RUN_DIR/metrics.jsonl, a compact progress line, and optional wandb (rank 0 only)."""
from __future__ import annotations

import json
import os
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


def progress_line(record: dict[str, Any]) -> str:
    mfu = f" | MFU {record['mfu']:.1%}" if record.get("mfu") is not None else ""
    # With several objective terms, each one's unweighted loss and effective weight follow the total.
    terms = [k[len("loss/"):] for k in record if k.startswith("loss/") and record[k] is not None]
    parts = "".join(f" | {t} {record[f'loss/{t}']:.4f} (x{record.get(f'weight/{t}') or 0:.3g})" for t in terms
                    ) if len(terms) > 1 else ""
    return (f"step {record['step']:>6} | loss {record['loss']:.4f}{parts} | lr {record['lr']:.2e} | "
            f"gnorm {record['grad_norm']:.3f} | {record['tokens_per_sec']:,.0f} tok/s{mfu}")


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
                name=Path(run_dir).name, resume="allow", id=f"{Path(run_dir).resolve().name}",
            )

    def log(self, record: dict[str, Any], line: Optional[str] = None) -> None:
        """Append `record` (it has a "step"); print `line`, by default the training progress line."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
        print(line if line is not None else progress_line(record), flush=True)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
