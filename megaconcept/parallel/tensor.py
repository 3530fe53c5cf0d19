"""Tensor parallelism applied to a built plain model: the megatron-core layer factory.

Every rank builds (and warm-starts) the same full plain model, then keeps its shard: linear layers become
megatron-core Column/RowParallelLinear, the token embedding a VocabParallelEmbedding, the LM head and bias
keep their vocabulary rows, and the loss becomes vocab-parallel cross-entropy. Sharding after building (rather
than building sharded) keeps one init and one warm-start code path and makes TP=T start from exactly the
TP=1 weights. Parameter names do not change (megatron's layers also call their matrix `weight`), and
`megaconcept.model.sharding` says which dimension each one is cut along.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from ..model import ConceptMLM
from ..model.lm_loss import chunked_cross_entropy
from ..model.sharding import COLUMN_PARALLEL, ROW_PARALLEL
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


def vocab_parallel_cross_entropy_sum(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                     labels: torch.Tensor) -> torch.Tensor:
    """One chunk's summed CE with this rank's vocabulary rows: states (T, D) replicated, weight (V/TP, D)."""
    import torch.nn.functional as F
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    logits = F.linear(states, weight, bias).float()  # (T, V/TP), fp32 for a stable log-softmax
    return vocab_parallel_cross_entropy(logits, labels).sum()


def vocab_parallel_chunked_cross_entropy(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                         labels: torch.Tensor, chunk_size: int = 4096, group: Any = None) -> torch.Tensor:
    """Sparse, chunked CE over a vocabulary split across the tensor-parallel group (never gathers logits)."""
    from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

    # Identity forward; backward sums the states' gradient over the ranks' vocabulary slices.
    states = copy_to_tensor_model_parallel_region(states, group=group)
    return chunked_cross_entropy(states, weight, bias, labels, chunk_size, chunk_loss=vocab_parallel_cross_entropy_sum)


def _swap_linears(model: nn.Module, layers: dict[str, type], ctx: ParallelContext) -> int:
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            kind = "column" if name in COLUMN_PARALLEL else "row" if name in ROW_PARALLEL else None
            if kind and isinstance(child, nn.Linear):
                setattr(module, name, _shard_linear(kind, child, layers, ctx))
                swapped += 1
    return swapped


def apply_tensor_parallel(model: ConceptMLM, ctx: ParallelContext) -> None:
    """Replace `model`'s layers by this rank's tensor-parallel shards, in place (no-op at TP=1)."""
    if ctx.tensor_parallel_size == 1:
        return
    layers = _megatron_layers()
    if _swap_linears(model, layers, ctx) == 0:
        raise ValueError("tensor parallelism found no attention/MLP projections to shard")
    model.encoder.token_embed = _shard_embedding(model.encoder.token_embed, layers, ctx)
    model.lm_bias = _vocab_rows(model.lm_bias, ctx)
    if model.lm_head is not None:
        head = nn.Linear(model.lm_head.in_features, model.lm_head.out_features // ctx.tensor_parallel_size, bias=False)
        _load_shard(head.weight, model.lm_head.weight, 0, ctx)
        model.lm_head = head
    model.cross_entropy = partial(vocab_parallel_chunked_cross_entropy, group=ctx.tensor_group)
