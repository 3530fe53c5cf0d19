"""Read a training checkpoint written by megaconcept.train.checkpointer: locate it, check it is whole,
read its metadata (architecture, counters, tokenizer path). The layout is megaconcept.checkpoint_format's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint_format import (COMPLETE, CONFIG, LATEST, PIPELINE_LAYERS, TOKENIZER, TRAINER_STATE,
                                 DamagedCheckpoint, read_layout, verify_checkpoint)

EXPECTED = (
    "expected a checkpoint tag dir (step_XXXXXXXX/ holding COMPLETE, config.yaml, tokenizer/ and DeepSpeed "
    "*_model_states.pt files), or a run dir / checkpoints dir with a `latest` file"
)


class ExportError(RuntimeError):
    """A checkpoint or output location that cannot be exported; the message is one line naming the fix."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What the export needs to know about one checkpoint besides its weights."""

    tag_dir: Path
    world_size: int
    tensor: int
    """Tensor-parallel degree the checkpoint was written with (its shards are merged on export)."""
    data: int
    """Data-parallel degree (number of ZeRO partitions per tensor-parallel rank)."""
    pipeline: int
    """Pipeline-parallel degree: > 1 means per-layer files named by PIPELINE_LAYERS."""
    model_section: dict[str, Any]
    """The run config's `model:` section (architecture; vocab_size may be null = from the tokenizer)."""
    run_config: dict[str, Any]
    """The whole resolved run config, as plain YAML data (for the model card)."""
    trainer_state: dict[str, int]
    """step, tokens_seen, samples_seen."""

    @property
    def tokenizer_dir(self) -> Path:
        return self.tag_dir / TOKENIZER


def resolve_tag_dir(path: str) -> Path:
    """A tag dir, a checkpoints dir or a run dir -> the tag dir to export (following `latest`)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ExportError(f"checkpoint {path!r} does not exist; {EXPECTED}")
    for pointer in (root / LATEST, root / "checkpoints" / LATEST):
        if pointer.is_file():
            tag_dir = pointer.parent / pointer.read_text().strip()
            if not tag_dir.is_dir():
                raise ExportError(f"{pointer} names {tag_dir.name!r}, which does not exist; {EXPECTED}")
            return tag_dir
    return root


def _complete_record(tag_dir: Path) -> dict[str, Any]:
    """The COMPLETE record, after checking every file against the sizes and digests it lists: weights are read
    only from a checkpoint that is byte for byte what the trainer wrote."""
    try:
        record = json.loads((tag_dir / COMPLETE).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{tag_dir / COMPLETE} is unreadable ({exc}); the checkpoint is damaged") from None
    if not isinstance(record, dict):
        raise ExportError(f"{tag_dir / COMPLETE} holds no layout record; the checkpoint is damaged")
    try:
        verify_checkpoint(tag_dir, record)
    except DamagedCheckpoint as exc:
        raise ExportError(f"{exc}; export another checkpoint") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"{tag_dir / COMPLETE}: malformed `files` record ({exc!r}); the checkpoint is damaged") from None
    return record


def read_checkpoint_info(tag_dir: Path) -> CheckpointInfo:
    """Check the non-weight files of a tag dir and parse them."""
    if not (tag_dir / COMPLETE).is_file():
        if not any(tag_dir.glob("*model_states.pt")):
            raise ExportError(f"{tag_dir} is not a megaconcept checkpoint; {EXPECTED}")
        raise ExportError(f"{tag_dir} has no {COMPLETE} marker: its save did not finish; export an earlier checkpoint")
    record = _complete_record(tag_dir)
    missing = [name for name in (CONFIG, TRAINER_STATE, TOKENIZER) if not (tag_dir / name).exists()]
    if missing:
        raise ExportError(f"{tag_dir} lacks {', '.join(missing)}; {EXPECTED}")
    try:
        layout = read_layout(record)
        world_size, tensor, data, pipeline = layout["world_size"], layout["tensor"], layout["data"], layout["pipeline"]
        run_config = yaml.safe_load((tag_dir / CONFIG).read_text()) or {}
        trainer_state = json.loads((tag_dir / TRAINER_STATE).read_text())
    except (ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ExportError(f"{tag_dir}: unreadable COMPLETE/config.yaml/trainer_state.json ({exc})") from None
    if not isinstance(run_config.get("model"), dict):
        raise ExportError(f"{tag_dir / 'config.yaml'} has no `model:` section; it was not written by megaconcept")
    if pipeline > 1 and not (tag_dir / PIPELINE_LAYERS).is_file():
        raise ExportError(f"{tag_dir} was written by a pipeline but lacks {PIPELINE_LAYERS}; the checkpoint is damaged")
    return CheckpointInfo(tag_dir, world_size, tensor, data, pipeline, run_config["model"], run_config, trainer_state)
