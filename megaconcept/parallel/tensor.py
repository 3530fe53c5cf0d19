"""Tensor parallelism applied to a built plain model: the megatron-core layer factory.

Every rank builds (and warm-starts) the same full plain model, then keeps its shard of what each component
declares in its `tensor_parallel_plan` (megaconcept.model.sharding): column/row linears become megatron-core
Column/RowParallelLinear, a vocab embedding a VocabParallelEmbedding, an untied LM head and the bias keep
their vocabulary rows (the MLM objective then picks the vocab-parallel cross-entropy). Sharding after building
(rather than building sharded) keeps one init and one warm-start code path and makes TP=T start from exactly
the TP=1 weights. Parameter names do not change (megatron's layers also call their matrix `weight`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..model.sharding import planned_children
from .distributed import ParallelContext


def _megatron_layers() -> dict[str, type]:
    """Subclasses of megatron-core's layers that look like nn.Linear / nn.Embedding to plain model code."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    class _Plain:
        # megatron returns (output, bias) and registers an empty `_extra_state` entry; the model expects a
        # tensor and checkpoints hold canonical parameter names only.
        get_extra_state = nn.Module.get_extra_state
        set_extra_state = nn.Module.set_extra_state

        def _drop_extra_state_hooks(self) -> None:
            self._load_state_dict_pre_hooks.clear()

    class ColumnLinear(_Plain, ColumnParallelLinear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return ColumnParallelLinear.forward(self, x)[0]

    class RowLinear(_Plain, RowParallelLinear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return RowParallelLinear.forward(self, x)[0]

    class VocabEmbedding(_Plain, VocabParallelEmbedding):
        pass

    return {"column": ColumnLinear, "row": RowLinear, "vocab": VocabEmbedding}


def _mp_config(tensor: int, dtype: torch.dtype) -> Any:
    from megatron.core import ModelParallelConfig

    # Weights are copied in from the plain model: megatron allocates on CPU and initializes nothing.
    return ModelParallelConfig(tensor_model_parallel_size=tensor, use_cpu_initialization=True,
                               perform_initialization=False, params_dtype=dtype)


def _no_init(_: torch.Tensor) -> None:
    return None


def _load_shard(param: nn.Parameter, full: torch.Tensor, dim: int, ctx: ParallelContext) -> None:
    from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

    with torch.no_grad():
        param.copy_(full.chunk(ctx.tensor_parallel_size, dim)[ctx.tensor_parallel_rank])
    # DeepSpeed counts these in the gradient norm on every rank (replicated ones only on TP rank 0).
    set_tensor_model_parallel_attributes(param, True, dim, 1)


def _shard_linear(kind: str, linear: nn.Linear, layers: dict[str, type], ctx: ParallelContext) -> nn.Module:
    if linear.bias is not None:
        raise ValueError("tensor parallelism here shards bias-free linear layers only")
    config = _mp_config(ctx.tensor_parallel_size, linear.weight.dtype)
    common = dict(config=config, init_method=_no_init, bias=False, tp_group=ctx.tensor_group)
    if kind == "column":
        layer = layers["column"](linear.in_features, linear.out_features, gather_output=False, **common)
    else:
        layer = layers["row"](linear.in_features, linear.out_features, input_is_parallel=True,
                              skip_bias_add=False, **common)
    layer._drop_extra_state_hooks()
    _load_shard(layer.weight, linear.weight, 0 if kind == "column" else 1, ctx)
    return layer


def _shard_embedding(embed: nn.Embedding, layers: dict[str, type], ctx: ParallelContext) -> nn.Module:
    config = _mp_config(ctx.tensor_parallel_size, embed.weight.dtype)
    layer = layers["vocab"](embed.num_embeddings, embed.embedding_dim, init_method=_no_init, config=config,
                            tp_group=ctx.tensor_group)
    layer._drop_extra_state_hooks()
    _load_shard(layer.weight, embed.weight, 0, ctx)
    return layer


def _vocab_rows(param: nn.Parameter, ctx: ParallelContext) -> nn.Parameter:
    shard = nn.Parameter(torch.empty_like(param.chunk(ctx.tensor_parallel_size, 0)[0]))
    _load_shard(shard, param, 0, ctx)
    return shard


def _shard_vocab(target: nn.Module | nn.Parameter, layers: dict[str, type], ctx: ParallelContext) -> Any:
    """This rank's vocabulary rows of an embedding, an untied head (nn.Linear) or a (V,) parameter."""
    if isinstance(target, nn.Embedding):
        return _shard_embedding(target, layers, ctx)
    if isinstance(target, nn.Linear):  # the untied LM head: applied by the loss, rows only, no collective
        head = nn.Linear(target.in_features, target.out_features // ctx.tensor_parallel_size, bias=False)
        _load_shard(head.weight, target.weight, 0, ctx)
        return head
    return _vocab_rows(target, ctx)


def apply_tensor_parallel(model: nn.Module, ctx: ParallelContext) -> int:
    """Replace what `model`'s components declare in their tensor_parallel_plan by this rank's shards, in place
    (no-op at TP=1); returns the number of entries sharded."""
    if ctx.tensor_parallel_size == 1:
        return 0
    layers = _megatron_layers()
    count = 0
    for _, owner, name, kind in list(planned_children(model)):
        target = getattr(owner, name)
        if kind == "vocab":
            setattr(owner, name, _shard_vocab(target, layers, ctx))
        elif isinstance(target, nn.Linear):
            setattr(owner, name, _shard_linear(kind, target, layers, ctx))
        else:
            raise ValueError(f"{type(owner).__name__}.{name} is planned {kind}-parallel but is a "
                             f"{type(target).__name__}, not an nn.Linear")
        count += 1
    if not any(kind != "vocab" for *_, kind in planned_children(model)):
        raise ValueError("tensor parallelism found no attention/MLP projections to shard")
    return count
