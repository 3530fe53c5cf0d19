"""Atomic, verified, pruned checkpoints: DeepSpeed engine state + train state + RNG + data position + config.

The layout is megaconcept.checkpoint_format's. A crash mid-save leaves `latest` on the previous checkpoint;
the partial dir is removed on the next save. Every file's size and sha256 go into COMPLETE, and the data
reach the disk (fsync) before `latest` moves; a resume verifies them and falls back to the newest intact
checkpoint, moving a damaged one aside (renamed, never deleted).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from .. import checkpoint_format as fmt
from ..checkpoint_format import (COMPLETE, CONFIG, FILES, HEALTHY, LATEST, RANK_GLOB, TAG_PREFIX, TOKENIZER,
                                 TRAINER_STATE, rank_file, read_layout, tag_for)
from ..parallel import ParallelContext, barrier
from .resume_choice import all_ranks_agree, intact_or_problem, move_aside
from .state import TrainState, capture_rng, restore_rng


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from."""


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new file, also after a power loss."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fmt.fsync_dir(path.parent)


def _describe_failure(exc: OSError, root: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"the disk holding {root} is full (no space left on device); free space there"
    if exc.errno == errno.EDQUOT:
        return f"the disk quota for {root} is exhausted; free space there"
    return f"{exc.strerror or exc} ({exc.filename or root})"


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    """The checkpoint dir `latest` names when it is complete, else None (see Checkpointer.resume_path for the
    fallback to an earlier intact one)."""
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    return path if (path / COMPLETE).is_file() else None


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
             extra_files: Optional[dict[str, str]] = None, healthy: bool = True) -> Path:
        """Save everything; `extra_files` (name -> text) are written by the main rank next to config.yaml.
        `healthy=False`: written while steps were being skipped; pruning always keeps the newest healthy one."""
        tag = tag_for(state.step)
        path = self.root / tag
        if self.ctx.is_main:
            if path.exists():  # leftover of a save that crashed, never pointed to by `latest`
                shutil.rmtree(path)
            self.root.mkdir(parents=True, exist_ok=True)
        barrier()
        try:
            engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
            torch.save({"rng": capture_rng(), "data_position": state.data_position}, path / rank_file(self.ctx.rank))
            if self.ctx.is_main:
                (path / TRAINER_STATE).write_text(json.dumps(state.counters(), indent=2))
                (path / CONFIG).write_text(config_yaml)
                for name, text in (extra_files or {}).items():
                    (path / name).write_text(text)
                shutil.copytree(tokenizer_dir, path / TOKENIZER)
            failure = None
        except OSError as exc:
            failure = _describe_failure(exc, self.root)
        failure = all_ranks_agree(failure)  # every rank stops together instead of waiting in a barrier
        if failure is not None:
            self._abandon(path, failure)
        record = {**layout_record(self.ctx), HEALTHY: healthy, FILES: self._digests(path)}
        if self.ctx.is_main:
            fmt.fsync_tree(path)
            _atomic_write(path / COMPLETE, json.dumps(record))
            _atomic_write(self.root / LATEST, tag)
            self._prune(keep=tag)
        barrier()
        return path

    def _abandon(self, path: Path, failure: str) -> None:
        """Remove the partial checkpoint (it frees the space a full disk needs) and raise; `latest` and every
        complete checkpoint are untouched."""
        if self.ctx.is_main:
            shutil.rmtree(path, ignore_errors=True)
        barrier()
        previous = latest_checkpoint(self.root)
        kept = f"{LATEST} still names {previous.name}" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"saving checkpoint {path.name} failed: {failure}; {kept}; the partial {path.name} was "
                              "removed; resume with the same command once that is fixed")

    def _digests(self, path: Path) -> dict[str, dict[str, Any]]:
        """Every file's size and sha256, each rank hashing a share; local rank 0 of every node first flushes
        the node's writes (the files other ranks wrote there), so the digests describe what is on disk."""
        if self.ctx.local_rank == 0:
            os.sync()  # the files every rank of this node wrote, not only this process's
        barrier()
        mine = fmt.file_digests(path, self._share())
        if self._share()[1] == 1:
            return mine
        shares: list[Any] = [None] * self.ctx.world_size
        torch.distributed.all_gather_object(shares, mine)
        return {name: entry for share in shares for name, entry in sorted(share.items())}

    def _prune(self, keep: str) -> None:
        tags = sorted(p for p in self.root.glob(f"{TAG_PREFIX}*") if p.is_dir())
        complete = [p for p in tags if (p / COMPLETE).is_file()]
        healthy = [p for p in complete if _healthy(p)]
        stale = complete[: max(0, len(complete) - self.keep_last)] + [p for p in tags if p not in complete]
        stale = [p for p in stale if not healthy or p != healthy[-1]]
        for path in stale:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.root / UNIVERSAL, ignore_errors=True)  # only needed until the first new-layout save

    def resume_path(self) -> Optional[Path]:
        """The checkpoint a resume reads: the one `latest` names when it is intact, else the newest intact
        complete one (saying why); None for a fresh run. Damaged ones are moved aside. Collective: every rank
        checks a share of the files and all agree on the verdict. Decided once per run."""
        if not hasattr(self, "_resume_path"):
            self._resume_path = self._choose_resume()
        return self._resume_path

    def _choose_resume(self) -> Optional[Path]:
        pointer = self.root / LATEST
        named = self.root / pointer.read_text().strip() if pointer.is_file() else None
        complete = sorted((p for p in self.root.glob(f"{TAG_PREFIX}*") if (p / COMPLETE).is_file()), reverse=True)
        candidates = ([named] if named is not None else []) + [p for p in complete if p != named]
        if named is not None and not (named / COMPLETE).is_file():
            candidates = candidates[1:]
            self._say(f"{pointer} names {named.name}, which is incomplete; looking for an earlier checkpoint")
        problems = []
        for path in candidates:
            problem = all_ranks_agree(intact_or_problem(path, self._share()))
            if problem is None:
                if problems:
                    self._say(f"resuming from {path.name}, the newest intact checkpoint")
                return path
            problems.append(problem)
            self._say(f"{problem}; it is moved aside and the previous checkpoint is tried")
            if self.ctx.is_main:
                move_aside(path)
            barrier()
        if problems:
            raise CheckpointError(f"no intact checkpoint is left in {self.root} ({problems[0]}); "
                                  "start a new run_dir, or restore the checkpoint files from a copy")
        return None

    def resume_kind(self) -> Optional[str]:
        """None for a fresh run, else how the chosen checkpoint is resumed (see :func:`resume_kind`).
        Asked before the engine exists: a reshard needs DeepSpeed's `checkpoint.load_universal`."""
        path = self.resume_path()
        if path is None:
            return None
        return resume_kind(path, json.loads((path / COMPLETE).read_text()), layout_record(self.ctx))

    def _check_pickles(self, path: Path) -> None:
        """Open this rank's share of the DeepSpeed files safely before DeepSpeed unpickles them all with
        weights_only=False (its loader): a file pickling anything but tensors and bookkeeping is refused."""
        index, count = self._share()
        problem = None
        for file in fmt.deepspeed_files(path)[index::count]:
            try:
                fmt.load_deepspeed_file(file)
            except fmt.UnsafeCheckpointFile as exc:
                problem = str(exc)
                break
            except (RuntimeError, EOFError, OSError, ValueError, KeyError):
                continue  # unreadable, not unsafe: DeepSpeed's load names it
        problem = all_ranks_agree(problem)
        if problem is not None:
            raise CheckpointError(problem)

    def _share(self) -> tuple[int, int]:
        """(this rank, ranks) sharing the hashing of a checkpoint's files; all of them without process groups."""
        if torch.distributed.is_initialized():
            return self.ctx.rank, self.ctx.world_size
        return 0, 1

    def _say(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    def load(self, engine: Any) -> Optional[TrainState]:
        """Restore the chosen checkpoint into `engine` and RNG; None when the run starts fresh."""
        kind = self.resume_kind()
        if kind is None:
            return None
        path = self.resume_path()
        load_root = self.root
        if kind == "reshard":
            load_root = self.root / UNIVERSAL
            if self.ctx.is_main:
                load_root.mkdir(exist_ok=True)
                _universal_copy(path, load_root / path.name)
            barrier()
        self._check_pickles(path)
        load_path, _ = engine.load_checkpoint(str(load_root), tag=path.name)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {path}; the checkpoint is damaged")
        counters = json.loads((path / TRAINER_STATE).read_text())
        if kind == "reshard":
            return TrainState(**counters, restart_epoch=_next_epoch(path))
        mine = load_rank_file(path / rank_file(self.ctx.rank))
        restore_rng(mine["rng"])
        return TrainState(**counters, data_position=mine["data_position"])


UNIVERSAL = "universal"


def _healthy(tag_dir: Path) -> bool:
    """Whether the checkpoint's last step updated the weights (records without the field: yes)."""
    try:
        return bool(json.loads((tag_dir / COMPLETE).read_text()).get(HEALTHY, True))
    except (OSError, ValueError, AttributeError):
        return False


def _next_epoch(path: Path) -> int:
    """The data stream of a new data-parallel size starts at the first epoch no old rank had begun: shard
    assignments depend on the rank count, so no old position maps onto a new rank. The unread rest of the
    old ranks' current epoch is skipped, and no sample is seen twice within an epoch."""
    epochs = [w["epoch"] for f in sorted(path.glob(RANK_GLOB))
              for w in load_rank_file(f)["data_position"].get("workers", [])]
    return max(epochs, default=-1) + 1


def load_rank_file(path: Path) -> dict[str, Any]:
    """A rank's RNG streams and data position, read without unpickling code (weights_only). Files written
    before the RNG streams were stored as tensors hold numpy's state array: that one type is allowed too."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed the module
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True)
