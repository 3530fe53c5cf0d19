"""Where an export may write, and the marker that lets `--overwrite` recognise a previous export.

An export deletes nothing it did not write: OUT_DIR may not be, or sit inside, a run dir, a checkpoint or a
shard dir, nor be the checkpoint or a folder above it; a non-empty OUT_DIR is replaced only when it carries
the marker an export writes and holds nothing but the files that marker lists. Paths are compared with
symlinks resolved.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from ..checkpoint_format import COMPLETE, CONFIG, LATEST, TAG_PREFIX
from .checkpoint import ExportError

MARKER = "megaconcept_export.json"
"""Written last into every exported folder; transformers ignores it when loading."""
MARKER_FORMAT = "megaconcept-export/1"
# The shard format's file names (megaconcept.data.shards MANIFEST_NAME / PROGRESS_NAME), spelled out because
# export depends on model/ only (DESIGN.md); tests/faults/test_export_safety.py guards them with real shards.
SHARD_MANIFEST, SHARD_PROGRESS = "manifest.json", ".progress.json"
RUN_METRICS, RUN_CHECKPOINTS = "metrics.jsonl", "checkpoints"
FIX = "choose a new or empty folder outside runs, checkpoints and shard dirs"


def _load_text(path: Path, parse: Any) -> Any:
    """`parse(text)` of a file that may be absent or not what its name suggests (then None)."""
    try:
        return parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return None


def _run_evidence(folder: Path) -> Optional[str]:
    """What marks `folder` as a training run's RUN_DIR, if anything."""
    checkpoints = folder / RUN_CHECKPOINTS
    if (checkpoints / LATEST).is_file() or next(checkpoints.glob(f"{TAG_PREFIX}*"), None):
        return f"{RUN_CHECKPOINTS}/"
    if (folder / RUN_METRICS).is_file():
        return RUN_METRICS
    run_config = _load_text(folder / CONFIG, yaml.safe_load)
    if isinstance(run_config, dict) and "run_dir" in run_config:
        return f"a run's {CONFIG}"
    return None


def protected(folder: Path) -> Optional[str]:
    """Why `folder` is a training or data artifact an export must never write into or over, else None.

    Generic file names (config.yaml, manifest.json) count only with the content megaconcept writes into them,
    so that an ordinary folder higher up the tree is not mistaken for a run.
    """
    if (folder / COMPLETE).is_file() or next(folder.glob("*model_states.pt"), None):
        return f"a checkpoint (it holds {COMPLETE} or DeepSpeed *model_states.pt files)"
    if (folder / LATEST).is_file() and next(folder.glob(f"{TAG_PREFIX}*"), None):
        return f"a checkpoints dir (it holds `{LATEST}` and {TAG_PREFIX}* checkpoints)"
    evidence = _run_evidence(folder)
    if evidence:
        return f"a run dir (it holds {evidence})"
    manifest = _load_text(folder / SHARD_MANIFEST, json.loads)
    if (isinstance(manifest, dict) and "shards" in manifest) or (folder / SHARD_PROGRESS).is_file():
        return f"a shard dir (it holds the {SHARD_MANIFEST} or {SHARD_PROGRESS} of data_prep.shard)"
    return None


def read_marker(folder: Path) -> Optional[dict[str, Any]]:
    """The marker of a previous export in `folder`, or None when there is none (or it is not ours)."""
    marker = _load_text(folder / MARKER, json.loads)
    if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT and isinstance(marker.get("files"), list):
        return marker
    return None


def _check_not_artifact(out: Path) -> None:
    for folder in (out, *out.parents):
        try:
            reason = protected(folder)
        except OSError as exc:
            raise ExportError(f"output {out}: cannot inspect {folder} ({exc.strerror}); {FIX}") from None
        if reason:
            where = "is" if folder == out else f"sits inside {folder}, which is"
            raise ExportError(f"output {out} {where} {reason}; an export never writes there: {FIX}")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse every OUT_DIR (resolved) whose replacement could delete something an export did not write."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory; pass a folder path")
    _check_not_artifact(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = read_marker(out)
    if marker is None:
        raise ExportError(f"output dir {out} is not empty and is not a megaconcept export (no {MARKER}), so it is "
                          f"never replaced, even with --overwrite; {FIX}")
    if not overwrite:
        raise ExportError(f"output dir {out} holds a previous export; pass --overwrite to replace it, "
                          f"or choose another folder")
    foreign = sorted({p.name for p in out.iterdir()} - {*marker["files"], MARKER})
    if foreign:
        raise ExportError(f"output dir {out} holds {', '.join(foreign[:5])}, which the previous export did not "
                          f"write; move them out of it or choose another folder")


def check_apart(out: Path, checkpoint: Path) -> None:
    """OUT_DIR (resolved) is neither the checkpoint path, nor a folder above it, nor inside it."""
    source = checkpoint.expanduser().resolve()
    if out == source or out in source.parents:
        raise ExportError(f"output {out} is the checkpoint {source} or a folder holding it; {FIX}")
    if source in out.parents:
        raise ExportError(f"output {out} is inside the checkpoint {source}; {FIX}")


def write_marker(folder: Path, checkpoint: str, step: Optional[int]) -> None:
    """Mark `folder` as an export, listing every file in it. It is pushed to the Hub with the folder, so it
    names the checkpoint by its tag only, never by a local path."""
    files = sorted(p.name for p in folder.iterdir())
    record = {"format": MARKER_FORMAT, "checkpoint": checkpoint, "step": step, "files": files}
    (folder / MARKER).write_text(json.dumps(record, indent=2) + "\n")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """An empty folder beside OUT_DIR to write the export into; gone afterwards unless `publish`ed.

    Its holder comes from mkdtemp, so its name collides with nothing of the user's; the folder itself is made
    with mkdir so it gets the user's umask (mkdtemp's 0700 mode would survive the rename).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        (holder / out.name).mkdir()
        yield holder / out.name
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def publish(folder: Path, out: Path, overwrite: bool) -> None:
    """Swap a `staged` folder into place. OUT_DIR is checked again first (it may have changed while the weights
    were consolidated); what it held (an empty folder or a previous export) moves into the staging holder,
    which `staged` deletes, so it is gone only after the new export is in place."""
    check_out_dir(out, overwrite)
    if out.exists():
        os.replace(out, folder.parent / f"{out.name}.old")
    os.replace(folder, out)
