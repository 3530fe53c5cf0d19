"""What the model card reports besides the architecture, read from files the run left (never from training code:
export/ imports no train/ or data/ module): the shards' manifest, the last held-out measurement in the run's
metrics log, and the process layout of the checkpoint. A file that is gone (a checkpoint copied away from its run,
shards deleted) makes the card say so instead of failing the export."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from .checkpoint import CheckpointInfo

METRICS_LOG = "metrics.jsonl"
"""RUN_DIR/metrics.jsonl, written by megaconcept.train.metrics; concept-analysis records carry `heldout_loss`."""
MANIFEST = "manifest.json"
"""SHARDS/manifest.json, written by data_prep.shard (megaconcept.data.shards.Manifest)."""


def run_dir_of(info: CheckpointInfo) -> Path:
    """RUN_DIR of RUN_DIR/checkpoints/step_XXXXXXXX."""
    return info.tag_dir.parent.parent


def heldout_record(info: CheckpointInfo) -> Optional[dict[str, Any]]:
    """The run's last held-out measurement at or before the exported step (the latest written wins: a resumed
    run logs its rewound steps again), or None when the run logged none or the log is not beside the checkpoint."""
    path, step = run_dir_of(info) / METRICS_LOG, info.trainer_state.get("step", 0)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    found: Optional[dict[str, Any]] = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a crash mid-write
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        value = record.get("heldout_loss")
        if isinstance(value, (int, float)) and math.isfinite(value) and record["step"] <= step:
            found = record
    return found


def shard_manifest(run_config: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The manifest of the run's `data.shards` (as given: relative to where the export runs, like training), or
    None when it is not there any more."""
    shards = (run_config.get("data") or {}).get("shards")
    if not shards:
        return None
    try:
        manifest = json.loads((Path(str(shards)).expanduser() / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def parallel_layout(info: CheckpointInfo, stage: int) -> str:
    """'2 processes: tensor 1 x pipeline 1 x data 2, ZeRO stage 3' (the layout the checkpoint was written with)."""
    return (f"{info.world_size} process{'es' if info.world_size != 1 else ''}: tensor {info.tensor} x pipeline "
            f"{info.pipeline} x data {info.data}, ZeRO stage {stage}")
