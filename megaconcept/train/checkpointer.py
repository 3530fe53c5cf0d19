"""Atomic, pruned checkpoints: DeepSpeed engine state + train state + RNG + data position + config.

The layout is megaconcept.checkpoint_format's. A crash mid-save leaves `latest` on the previous checkpoint;
the partial dir is removed on the next save.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from .. import checkpoint_format as fmt
from ..checkpoint_format import (COMPLETE, CONFIG, LATEST, RANK_GLOB, TAG_PREFIX, TOKENIZER, TRAINER_STATE, rank_file,
                                 read_layout, tag_for)
from ..parallel import ParallelContext, barrier
from .state import TrainState, capture_rng, restore_rng


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    """The newest COMPLETE checkpoint dir, or None."""
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} to start over")
    return path


def layout_record(ctx: ParallelContext) -> dict[str, int]:
    """The process layout a checkpoint was written with (the export merges tensor-parallel shards by it)."""
    return fmt.layout_record(ctx.world_size, ctx.tensor_parallel_size, ctx.pipeline_parallel_size,
                             ctx.data_parallel_size)


def _describe(layout: dict[str, int]) -> str:
    return (f"{layout['world_size']} processes (tensor {layout['tensor']} x pipeline {layout['pipeline']} x "
            f"data {layout['data']})")


def resume_kind(path: Path, saved: dict[str, int], mine: dict[str, int]) -> str:
    """`same` layout, `reshard` (only the data-parallel size changed: ZeRO state is re-partitioned through
    DeepSpeed's universal checkpoint), or a CheckpointError naming both layouts."""
    saved = read_layout(saved)  # checkpoints from before layouts (or pipelines) were recorded: pure data parallel
    if saved == mine:
        return "same"
    if saved["tensor"] == mine["tensor"] == 1 and saved["pipeline"] == mine["pipeline"] == 1:
        return "reshard"
    raise CheckpointError(
        f"{path} was written with {_describe(saved)}, this run has {_describe(mine)}; only the data-parallel "
        f"size may change, and only without tensor or pipeline parallelism: resume with tensor "
        f"{saved['tensor']} x pipeline {saved['pipeline']} on {saved['world_size']} processes"
    )


def _universal_copy(tag_dir: Path, out: Path) -> Path:
    """DeepSpeed's universal (layout-free) form of a checkpoint, converted once by the main rank."""
    if out.is_dir():
        return out
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CheckpointError(f"converting {tag_dir} for a new data-parallel size failed: "
                              f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    os.replace(tmp, out)
    return out


class Checkpointer:
    """Saves and restores everything a run needs to continue bit-for-bit."""

    def __init__(self, run_dir: str, keep_last: int, ctx: ParallelContext) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.ctx = ctx

    def save(self, engine: Any, state: TrainState, config_yaml: str, tokenizer_dir: str,
             extra_files: Optional[dict[str, str]] = None) -> Path:
        """Save everything; `extra_files` (name -> text) are written by the main rank next to config.yaml."""
        tag = tag_for(state.step)
        path = self.root / tag
        if self.ctx.is_main:
            if path.exists():  # leftover of a save that crashed, never pointed to by `latest`
                shutil.rmtree(path)
            self.root.mkdir(parents=True, exist_ok=True)
        barrier()
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        torch.save({"rng": capture_rng(), "data_position": state.data_position}, path / rank_file(self.ctx.rank))
        if self.ctx.is_main:
            (path / TRAINER_STATE).write_text(json.dumps(state.counters(), indent=2))
            (path / CONFIG).write_text(config_yaml)
            for name, text in (extra_files or {}).items():
                (path / name).write_text(text)
            shutil.copytree(tokenizer_dir, path / TOKENIZER)
        barrier()
        if self.ctx.is_main:
            (path / COMPLETE).write_text(json.dumps(layout_record(self.ctx)))
            _atomic_write(self.root / LATEST, tag)
            self._prune(keep=tag)
        barrier()
        return path

    def _prune(self, keep: str) -> None:
        tags = sorted(p for p in self.root.glob(f"{TAG_PREFIX}*") if p.is_dir())
        complete = [p for p in tags if (p / COMPLETE).is_file()]
        stale = complete[: max(0, len(complete) - self.keep_last)] + [p for p in tags if p not in complete]
        for path in stale:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.root / UNIVERSAL, ignore_errors=True)  # only needed until the first new-layout save

    def resume_kind(self) -> Optional[str]:
        """None for a fresh run, else how the latest checkpoint is resumed (see :func:`resume_kind`).
        Asked before the engine exists: a reshard needs DeepSpeed's `checkpoint.load_universal`."""
        path = latest_checkpoint(self.root)
        if path is None:
            return None
        return resume_kind(path, json.loads((path / COMPLETE).read_text()), layout_record(self.ctx))

    def load(self, engine: Any) -> Optional[TrainState]:
        """Restore the latest checkpoint into `engine` and RNG; None when the run starts fresh."""
        kind = self.resume_kind()
        if kind is None:
            return None
        path = latest_checkpoint(self.root)
        load_root = self.root
        if kind == "reshard":
            load_root = self.root / UNIVERSAL
            if self.ctx.is_main:
                load_root.mkdir(exist_ok=True)
                _universal_copy(path, load_root / path.name)
            barrier()
        load_path, _ = engine.load_checkpoint(str(load_root), tag=path.name)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {path}; the checkpoint is damaged")
        counters = json.loads((path / TRAINER_STATE).read_text())
        if kind == "reshard":
            return TrainState(**counters, restart_epoch=_next_epoch(path))
        mine = torch.load(path / rank_file(self.ctx.rank), weights_only=False)
        restore_rng(mine["rng"])
        return TrainState(**counters, data_position=mine["data_position"])


UNIVERSAL = "universal"


def _next_epoch(path: Path) -> int:
    """The data stream of a new data-parallel size starts at the first epoch no old rank had begun: shard
    assignments depend on the rank count, so no old position maps onto a new rank. The unread rest of the
    old ranks' current epoch is skipped, and no sample is seen twice within an epoch."""
    epochs = [w["epoch"] for f in sorted(path.glob(RANK_GLOB))
              for w in torch.load(f, weights_only=False)["data_position"].get("workers", [])]
    return max(epochs, default=-1) + 1
