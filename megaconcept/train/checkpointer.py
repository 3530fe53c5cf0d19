"""Atomic, pruned checkpoints: DeepSpeed engine state + train state + RNG + data position + config.

Layout of RUN_DIR/checkpoints:
    step_00000100/            DeepSpeed tag dir (model/optimizer/scheduler shards per rank)
        trainer_state.json    global counters (rank 0)
        rank_00000.pt         this rank's RNG streams and data position
        config.yaml           resolved run config
        tokenizer/            tokenizer the run trained with (export reads it from here)
        COMPLETE              written last, after every rank finished: {world_size, tensor, data}
    latest                    tag of the newest COMPLETE checkpoint (atomically replaced)
A crash mid-save leaves `latest` on the previous checkpoint; the partial dir is removed on the next save.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..parallel import ParallelContext, barrier
from .state import TrainState, capture_rng, restore_rng

COMPLETE = "COMPLETE"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    """The newest COMPLETE checkpoint dir, or None."""
    pointer = ckpt_root / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} to start over")
    return path


def layout_record(ctx: ParallelContext) -> dict[str, int]:
    """The process layout a checkpoint was written with (the export merges tensor-parallel shards by it)."""
    return {"world_size": ctx.world_size, "tensor": ctx.tensor_parallel_size, "data": ctx.data_parallel_size}


def check_resumable(path: Path, saved: dict[str, int], mine: dict[str, int]) -> None:
    """DeepSpeed restores ZeRO partitions and tensor-parallel shards only into the layout that wrote them."""
    saved = {"tensor": 1, "data": saved["world_size"], **saved}  # checkpoints from before layouts were recorded
    if saved == mine:
        return
    raise CheckpointError(
        f"{path} was written with {saved['world_size']} processes (tensor {saved['tensor']} x data "
        f"{saved['data']}), this run has {mine['world_size']} (tensor {mine['tensor']} x data {mine['data']}); "
        f"resume with the same layout"
    )


class Checkpointer:
    """Saves and restores everything a run needs to continue bit-for-bit."""

    def __init__(self, run_dir: str, keep_last: int, ctx: ParallelContext) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.ctx = ctx

    def has_checkpoint(self) -> bool:
        return latest_checkpoint(self.root) is not None

    def save(self, engine: Any, state: TrainState, config_yaml: str, tokenizer_dir: str) -> Path:
        tag = tag_for(state.step)
        path = self.root / tag
        if self.ctx.is_main:
            if path.exists():  # leftover of a save that crashed, never pointed to by `latest`
                shutil.rmtree(path)
            self.root.mkdir(parents=True, exist_ok=True)
        barrier()
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        torch.save({"rng": capture_rng(), "data_position": state.data_position}, path / f"rank_{self.ctx.rank:05d}.pt")
        if self.ctx.is_main:
            (path / "trainer_state.json").write_text(json.dumps(state.counters(), indent=2))
            (path / "config.yaml").write_text(config_yaml)
            shutil.copytree(tokenizer_dir, path / "tokenizer")
        barrier()
        if self.ctx.is_main:
            (path / COMPLETE).write_text(json.dumps(layout_record(self.ctx)))
            _atomic_write(self.root / "latest", tag)
            self._prune(keep=tag)
        barrier()
        return path

    def _prune(self, keep: str) -> None:
        tags = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        complete = [p for p in tags if (p / COMPLETE).is_file()]
        stale = complete[: max(0, len(complete) - self.keep_last)] + [p for p in tags if p not in complete]
        for path in stale:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)

    def load(self, engine: Any) -> Optional[TrainState]:
        """Restore the latest checkpoint into `engine` and RNG; None when the run starts fresh."""
        path = latest_checkpoint(self.root)
        if path is None:
            return None
        check_resumable(path, json.loads((path / COMPLETE).read_text()), layout_record(self.ctx))
        load_path, _ = engine.load_checkpoint(str(self.root), tag=path.name)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {path}; the checkpoint is damaged")
        counters = json.loads((path / "trainer_state.json").read_text())
        mine = torch.load(path / f"rank_{self.ctx.rank:05d}.pt", weights_only=False)
        restore_rng(mine["rng"])
        return TrainState(**counters, data_position=mine["data_position"])
