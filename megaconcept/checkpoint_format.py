"""The checkpoint format, in one place: file names, markers, the layout record and parameter-name rules.

Written by megaconcept.train.checkpointer, read by megaconcept.export (and nothing else re-derives it):

    RUN_DIR/checkpoints/latest            tag of the newest complete checkpoint (atomically replaced)
    RUN_DIR/checkpoints/step_XXXXXXXX/    DeepSpeed tag dir (model/optimizer/scheduler shards per rank)
        trainer_state.json                global counters (rank 0)
        rank_XXXXX.pt                     each rank's RNG streams and data position
        config.yaml                       resolved run config
        tokenizer/                        the tokenizer the run trained with
        pipeline_layers.json              pipeline runs: {layer index: {key in its file: parameter name}}
        COMPLETE                          written last, after every rank finished: the layout record and
                                          every file's size and sha256 (`files`), checked on resume and export

Parameter names are the trained module's: `model.<canonical model name>` and `objectives.<term or weighting
state>`. The export keeps `model.*` (prefix removed) and drops `objectives.*` by rule. Checkpoints written
before objectives composed hold the model's names without a prefix; they read the same way.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

COMPLETE = "COMPLETE"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
PIPELINE_LAYERS = "pipeline_layers.json"
TAG_PREFIX = "step_"
MODEL_PREFIX = "model."
OBJECTIVES_PREFIX = "objectives."

V = TypeVar("V")


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


RANK_GLOB = "rank_*.pt"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def layout_record(world_size: int, tensor: int, pipeline: int, data: int) -> dict[str, int]:
    """What COMPLETE holds: the process layout the checkpoint was written with."""
    return {"world_size": world_size, "tensor": tensor, "pipeline": pipeline, "data": data}


def read_layout(record: Mapping[str, Any]) -> dict[str, int]:
    """A COMPLETE record with the defaults of older checkpoints (pure data parallel) filled in."""
    world = int(record["world_size"])
    return layout_record(world, int(record.get("tensor", 1)), int(record.get("pipeline", 1)),
                         int(record.get("data", world)))


def split_trained_names(weights: Mapping[str, V]) -> tuple[dict[str, V], list[str]]:
    """Trained-module weights -> (the model's weights under canonical names, the objective-owned names dropped)."""
    model: dict[str, V] = {}
    dropped: list[str] = []
    for name, value in weights.items():
        if name.startswith(OBJECTIVES_PREFIX):
            dropped.append(name)
        else:
            model[name[len(MODEL_PREFIX):] if name.startswith(MODEL_PREFIX) else name] = value
    return model, sorted(dropped)


HEALTHY = "healthy"
"""The COMPLETE record's key: False when the checkpoint was written while steps were being skipped."""
FILES = "files"
"""The COMPLETE record's key for {relative path: {"size": bytes, "sha256": hex}} of every file in the tag dir."""


class DamagedCheckpoint(ValueError):
    """A checkpoint whose files differ from what its COMPLETE record says was written."""


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_files(tag_dir: Path) -> list[Path]:
    """Every file of a tag dir except COMPLETE itself, in a fixed order."""
    return sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != COMPLETE)


def file_digests(tag_dir: Path, part: tuple[int, int] = (0, 1)) -> dict[str, dict[str, Any]]:
    """{path relative to the tag dir: {"size", "sha256"}} for the COMPLETE record; `part=(i, n)`: every n-th
    file from the i-th (n ranks hash a share each and merge)."""
    index, count = part
    return {p.relative_to(tag_dir).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in checkpoint_files(tag_dir)[index::count]}


def verify_checkpoint(tag_dir: Path, record: Mapping[str, Any], part: tuple[int, int] = (0, 1)) -> None:
    """Raise DamagedCheckpoint naming the first file that is missing, cut short or altered. Checkpoints written
    before digests were recorded carry no `files` and pass. Every file's size is checked before any hash is
    computed (a truncation, the common damage, is found without reading gigabytes); `part=(i, n)` hashes only
    every n-th file from the i-th, so n ranks share the reading."""
    files = record.get(FILES)
    if not files:
        return
    for name, want in files.items():
        path = tag_dir / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{path} is missing; checkpoint {tag_dir.name} is damaged")
        size = path.stat().st_size
        if size != want["size"]:
            raise DamagedCheckpoint(f"{path} has {size} bytes, {want['size']} were written; "
                                    f"checkpoint {tag_dir.name} is damaged (truncated or overwritten)")
    index, count = part
    for name in sorted(files)[index::count]:
        if _sha256(tag_dir / name) != files[name]["sha256"]:
            raise DamagedCheckpoint(f"{tag_dir / name} does not match the sha256 recorded when it was written; "
                                    f"checkpoint {tag_dir.name} is damaged")


def fsync_tree(root: Path) -> None:
    """Flush every file and directory entry under `root` (and root's own entry in its parent) to the disk, so
    that a pointer written afterwards never names data still in the page cache when the node dies."""
    for path in [*checkpoint_files(root), *(p for p in root.rglob(COMPLETE) if p.is_file())]:
        with path.open("rb") as f:
            os.fsync(f.fileno())
    for directory in [*sorted({p for p in root.rglob("*") if p.is_dir()}), root, root.parent]:
        fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UnsafeCheckpointFile(ValueError):
    """A checkpoint file that pickles more than tensors and DeepSpeed's bookkeeping (loading it could run code)."""


def _deepspeed_globals(path: Path) -> list[type]:
    """The only non-tensor classes DeepSpeed pickles into *_optim_states.pt (found by loading ZeRO-1/3 checkpoints,
    DeepSpeed 0.19): the loss scaler (an attribute holder, saved in fp32 and bf16 runs too), the ZeRO stage enum,
    and ZeRO-1/2's and bf16's parameter slice maps. Model and pipeline-layer files hold only tensors, containers
    and numbers, which weights_only allows."""
    if not path.name.endswith("optim_states.pt"):
        return []
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_deepspeed_file(path: Path) -> Any:
    """torch.load of a DeepSpeed checkpoint file that unpickles nothing but tensors and DeepSpeed's bookkeeping.
    DeepSpeed's own loaders unpickle with weights_only=False; opening each file through this first (export and
    resume do) keeps a tampered file from running code. Raises UnsafeCheckpointFile naming what it pickles."""
    import pickle

    import torch

    allowed = _deepspeed_globals(path)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:
        try:
            found = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError):
            found = set()
        names = sorted(found - {f"{c.__module__}.{c.__qualname__}" for c in allowed})
        raise UnsafeCheckpointFile(
            f"{path} pickles {', '.join(names) or 'objects other than tensors'}, which unpickling would run; "
            "refused (a checkpoint may hold only tensors and DeepSpeed's bookkeeping): use a checkpoint written "
            "by megaconcept's trainer") from None


def deepspeed_files(tag_dir: Path) -> list[Path]:
    """The DeepSpeed state files of a tag dir (model, optimizer, pipeline layers), in a fixed order."""
    return sorted(tag_dir.glob("*_states.pt"))
