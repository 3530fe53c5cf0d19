"""Entry used by launchers/pretrain.py: start processes' context, train, report, shut down."""
from __future__ import annotations

import sys

from ..config import RunConfig
from ..config.deepspeed import DeepSpeedConfigError
from ..parallel import init_distributed, shutdown

# Problems a user can fix from the message alone: reported as one line instead of a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (DeepSpeedConfigError, FileNotFoundError, ValueError)


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error; DataLoader workers re-raise with the worker traceback inside."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def run(cfg: RunConfig, ds_config_path: str) -> int:
    ctx = init_distributed()
    from ..data.shards import ShardError
    from .checkpointer import CheckpointError
    from .trainer import Trainer

    try:
        state = Trainer(cfg, ds_config_path, ctx).fit()
    except (*_USER_ERRORS, ShardError, CheckpointError) as exc:
        print(f"error (rank {ctx.rank}): {one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutdown()
    if ctx.is_main:
        print(f"done: step {state.step}, {state.tokens_seen:,} tokens; run dir {cfg.run_dir} "
              f"(metrics.jsonl, config.yaml, checkpoints/)", flush=True)
    return 0
