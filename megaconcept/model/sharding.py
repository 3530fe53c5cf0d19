"""Which dimension each parameter is cut along under tensor parallelism (Megatron's scheme), by declaration.

Every module that holds shardable weights declares a class attribute `tensor_parallel_plan`: child or
parameter name -> kind. Kinds:
    column  a linear whose output features (heads, MLP hidden units) are split: weight rows, dim 0
    row     a linear whose input features are split: weight columns, dim 1; outputs summed across ranks
    vocab   vocabulary rows split (an embedding's or untied head's weight, or a (V,) parameter): dim 0
A new component declares its own plan; nothing is inferred from names. Plain data, no collectives:
megaconcept.parallel shards a built model by it and the export merges checkpoint shards by it, so the two
never disagree.
"""
from __future__ import annotations

from typing import Iterator

from torch import nn

KINDS = {"column": 0, "row": 1, "vocab": 0}
"""Plan kind -> the weight dimension it splits."""


def planned_children(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, str]]:
    """(qualified owner name, owner module, child or parameter name, kind) for every planned entry present."""
    for owner_name, owner in model.named_modules():
        for name, kind in getattr(type(owner), "tensor_parallel_plan", {}).items():
            if kind not in KINDS:
                raise ValueError(f"{type(owner).__name__}.tensor_parallel_plan[{name!r}]={kind!r}; valid: {sorted(KINDS)}")
            if getattr(owner, name, None) is not None:
                yield owner_name, owner, name, kind


def _planned_parameters(model: nn.Module) -> Iterator[tuple[str, str]]:
    for owner_name, owner, name, kind in planned_children(model):
        prefix = f"{owner_name}.{name}" if owner_name else name
        yield (prefix if isinstance(getattr(owner, name), nn.Parameter) else f"{prefix}.weight"), kind


def tensor_parallel_plan(model: nn.Module) -> dict[str, int]:
    """Parameter name (as in `model.state_dict()`) -> the dimension it is split along; absent = replicated."""
    return {name: KINDS[kind] for name, kind in _planned_parameters(model)}


def vocabulary_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters with one row per vocabulary id (embedding, untied head, LM bias)."""
    return [name for name, kind in _planned_parameters(model) if kind == "vocab"]
