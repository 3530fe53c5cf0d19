"""Build the DeepSpeed config: ZeRO knobs from ds_configs/*.json, everything else from the run config.

A ds_config JSON may repeat a run-config-owned value only if it agrees; a contradiction is an error so
that the run config stays the single source of truth.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .schema import TrainSection


class DeepSpeedConfigError(ValueError):
    """A ds_config file that is unreadable or contradicts the run config."""


def resolve_precision(requested: str) -> str:
    """auto -> bf16 on a GPU with bf16 support, fp32 otherwise."""
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def _owned(train: TrainSection, precision: str, dp_size: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * dp_size,
        "gradient_clipping": train.grad_clip,
        "bf16": {"enabled": precision == "bf16"},
    }


def _optimizer(train: TrainSection) -> dict[str, Any]:
    params: dict[str, Any] = {
        "lr": train.lr, "betas": list(train.betas), "eps": 1e-8, "weight_decay": train.weight_decay,
        # torch's AdamW: no JIT-compiled DeepSpeed op on CPU; its fused kernel on GPU.
        "torch_adam": True,
    }
    if torch.cuda.is_available():
        params["fused"] = True
    return {"type": "AdamW", "params": params}


def _check_conflicts(path: str, user: dict[str, Any], owned: dict[str, Any]) -> None:
    for key in ("optimizer", "scheduler", "fp16", "amp"):
        if key in user and not (key == "fp16" and not user[key].get("enabled", False)):
            raise DeepSpeedConfigError(
                f"{path} sets {key!r}; the optimizer, schedule and precision come from the run config "
                f"(train.*) — remove {key!r} from the JSON"
            )
    for key, value in owned.items():
        if key not in user or user[key] == "auto":
            continue
        mine = user[key]
        if key == "bf16":
            mine = {"enabled": bool(mine.get("enabled", False))}
        if mine != value:
            raise DeepSpeedConfigError(
                f"{path} sets {key}={json.dumps(user[key])} but the run config implies {json.dumps(value)}; "
                f"remove it from the JSON or change the run config (train.*)"
            )


def build_deepspeed_config(path: str, train: TrainSection, dp_size: int) -> dict[str, Any]:
    """Merge the ZeRO settings in `path` with the values the run config owns."""
    try:
        user = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DeepSpeedConfigError(f"ds_config {path!r} not found; e.g. --ds_config ds_configs/zero3.json") from None
    except json.JSONDecodeError as exc:
        raise DeepSpeedConfigError(f"ds_config {path!r} is not valid JSON: {exc}") from None
    if not isinstance(user, dict):
        raise DeepSpeedConfigError(f"ds_config {path!r} must be a JSON object")
    precision = resolve_precision(train.precision)
    owned = _owned(train, precision, dp_size)
    _check_conflicts(path, user, owned)
    merged = {**user, **owned, "optimizer": _optimizer(train)}
    merged.setdefault("zero_optimization", {"stage": 0})
    merged.setdefault("steps_per_print", 10**9)  # progress lines come from our metric logger
    merged.setdefault("wall_clock_breakdown", False)
    if precision == "bf16":
        # Accumulate gradients in fp32 even though weights and activations run in bf16.
        merged.setdefault("data_types", {"grad_accum_dtype": "fp32"})
    return merged


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))
