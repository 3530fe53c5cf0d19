"""Which checkpoint a resume may trust: integrity checks shared by the ranks, and moving a damaged one aside."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint_format import COMPLETE, CONFIG, DamagedCheckpoint, verify_checkpoint

DAMAGED_PREFIX = "damaged-"
"""A damaged tag dir is renamed `damaged-<tag>-<time>`: out of `step_*` (never resumed or pruned), kept for a look."""


def intact_or_problem(tag_dir: Path, part: tuple[int, int]) -> Optional[str]:
    """None when this rank's share of `tag_dir` matches its COMPLETE record, else a one-line problem."""
    try:
        record = json.loads((tag_dir / COMPLETE).read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        verify_checkpoint(tag_dir, record, part)
    except DamagedCheckpoint as exc:
        return str(exc)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{tag_dir / COMPLETE} is unreadable ({exc}); checkpoint {tag_dir.name} is damaged"
    return None


def all_ranks_agree(problem: Optional[str]) -> Optional[str]:
    """The first rank's problem when any rank found one, on every rank (one verdict for the whole job)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return problem
    problems: list[Optional[str]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(problems, problem)
    return next((p for p in problems if p is not None), None)


def move_aside(tag_dir: Path) -> Path:
    """Rename a damaged checkpoint out of the way; nothing is deleted."""
    target = tag_dir.with_name(f"{DAMAGED_PREFIX}{tag_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(tag_dir, target)
    return target


# Model fields a resume may change: they shape no parameter (regularization, kernels) or only the first
# initialization, which the checkpoint's weights replace.
RESUMABLE_CHANGES = frozenset({"dropout", "attention", "init_std", "concept_init_std", "backbone.init_from",
                               "backbone.source_layers"})


def model_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """`model.<field>: saved X, now Y` for every architecture field that differs (nested sections flattened)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        was, now = saved.get(key), current.get(key)
        if isinstance(was, dict) and isinstance(now, dict):
            out += model_differences(was, now, f"{name}.")
        elif name not in RESUMABLE_CHANGES and key != "config_version" and was != now:
            out.append(f"model.{name}: checkpoint {was!r}, now {now!r}")
    return out


def with_defaults(section: dict[str, Any]) -> dict[str, Any]:
    """A model section as this code reads it: fields a checkpoint predates take their defaults (the values the
    model it trained had), older names are upgraded (ConceptModelConfig.from_dict). A section with fields this
    code does not know (a newer checkpoint) is compared as written."""
    from ..model.config import ConceptModelConfig

    try:
        return ConceptModelConfig.from_dict(dict(section)).to_dict()
    except (TypeError, ValueError):
        return section


def check_same_model(tag_dir: Path, current: dict[str, Any]) -> None:
    """Refuse (CheckpointMismatch, one line) to resume a checkpoint of another model shape into this config."""
    import yaml

    try:
        saved = (yaml.safe_load((tag_dir / CONFIG).read_text()) or {}).get("model")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise CheckpointMismatch(f"{tag_dir / CONFIG} is unreadable ({exc}); the checkpoint is damaged") from None
    if not isinstance(saved, dict):
        return  # written before configs were stored: nothing to compare
    differences = model_differences(with_defaults(saved), with_defaults(current))
    if differences:
        raise CheckpointMismatch(f"{tag_dir} holds another model than this config ({'; '.join(differences)}); "
                                 "resume with the checkpoint's values or start a new run_dir")


class CheckpointMismatch(ValueError):
    """The run's config describes another model than the checkpoint it would resume."""
