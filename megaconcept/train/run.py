"""Entry used by launchers/pretrain.py: start processes' context, train, report, shut down."""
from __future__ import annotations

import sys

from ..config import RunConfig
from ..config.deepspeed import DeepSpeedConfigError
from ..parallel import init_distributed, shutdown

# Problems a user can fix from the message alone: reported as one line instead of a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (DeepSpeedConfigError, FileNotFoundError, ValueError)


def run(cfg: RunConfig, ds_config_path: str) -> int:
    ctx = init_distributed()
    from ..data.shards import ShardError
    from .checkpointer import CheckpointError
    from .trainer import Trainer

    try:
        state = Trainer(cfg, ds_config_path, ctx).fit()
    except (*_USER_ERRORS, ShardError, CheckpointError) as exc:
        print(f"error (rank {ctx.rank}): {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutdown()
    if ctx.is_main:
        print(f"done: step {state.step}, {state.tokens_seen:,} tokens; run dir {cfg.run_dir} "
              f"(metrics.jsonl, config.yaml, checkpoints/)", flush=True)
    return 0
