"""Entry used by launchers/pretrain.py: start processes' context, train, report, shut down."""
from __future__ import annotations

import sys

from ..config import RunConfig
from ..config.deepspeed import DeepSpeedConfigError, build_deepspeed_config, zero_stage
from ..parallel import init_distributed, shutdown
from ..parallel.distributed import launch_world_size
from ..parallel.layout import Layout, plan_layout

# Problems a user can fix from the message alone: reported as one line instead of a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (DeepSpeedConfigError, FileNotFoundError, ValueError)
BAD_INPUT_EXIT = 2
DIVERGED_EXIT = 3
"""Too many non-finite steps (megaconcept.train.guard); the last healthy checkpoint is kept."""


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error; DataLoader workers re-raise with the worker traceback inside."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def preflight(cfg: RunConfig, ds_config_path: str, world_size: int) -> Layout:
    """Everything checkable before process groups start: shards, ds_config, model vs data, parallel layout."""
    from ..data.shards import read_manifest
    from .builders import model_config, vocab_multiple

    from ..data.preflight import check_shards

    manifest = read_manifest(cfg.data.shards)
    check_shards(manifest)
    model = model_config(cfg.model, manifest.vocab_size, manifest.seq_len, vocab_multiple(cfg.parallel))
    stage = zero_stage(build_deepspeed_config(ds_config_path, cfg.train, 1))
    return plan_layout(world_size, cfg.parallel.tensor, cfg.parallel.pipeline, stage, model)


def run(cfg: RunConfig, ds_config_path: str) -> int:
    from ..data.shards import ShardError

    try:
        layout = preflight(cfg, ds_config_path, launch_world_size())
    except (*_USER_ERRORS, ShardError) as exc:
        # Every rank reaches the same verdict; the launcher prints each rank's line.
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return BAD_INPUT_EXIT
    ctx = init_distributed(layout)
    from .checkpointer import CheckpointError
    from .guard import DivergedError
    from .preemption import PREEMPTED_EXIT, Preempted
    from .trainer import Trainer

    try:
        state = Trainer(cfg, ds_config_path, ctx).fit()
    except (*_USER_ERRORS, ShardError, CheckpointError) as exc:
        print(f"error (rank {ctx.rank}): {one_line(exc)}", file=sys.stderr, flush=True)
        return BAD_INPUT_EXIT
    except DivergedError as exc:
        if ctx.is_main:  # every rank reaches it together; one line says it
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return DIVERGED_EXIT
    except Preempted as exc:
        if ctx.is_main:
            print(f"preempted: {exc}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    finally:
        shutdown()
    if ctx.is_main:
        print(f"done: step {state.step}, {state.tokens_seen:,} tokens; run dir {cfg.run_dir} "
              f"(metrics.jsonl, config.yaml, checkpoints/)", flush=True)
    return 0
