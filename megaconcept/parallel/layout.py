"""Parallel layout: how the world splits into tensor x pipeline x data parallel groups.

Checked before any process group starts, so an impossible layout costs one line, not a hung collective.
Every refusal names a layout (or setting) that would work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..model.config import ConceptModelConfig


class LayoutError(ValueError):
    """A parallel layout that cannot run this model on this many processes."""


@dataclass(frozen=True)
class Layout:
    world_size: int
    tensor: int = 1
    pipeline: int = 1

    @property
    def data(self) -> int:
        return self.world_size // (self.tensor * self.pipeline)

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """(pipeline stage, data-parallel rank, tensor-parallel rank) of a global rank. Tensor ranks are
        consecutive, then data, then pipeline: the order of both megatron-core ("tp-dp-pp") and DeepSpeed's
        pipe/data/model topology, so their groups coincide."""
        return rank // (self.tensor * self.data), (rank // self.tensor) % self.data, rank % self.tensor


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tensor_split_sizes(model: ConceptModelConfig) -> dict[str, int]:
    """Every dimension tensor parallelism cuts, by config key (all must be divisible by the TP degree).

    The vocabulary is cut too (vocab-parallel embedding and cross-entropy); the concept count and the
    token/concept widths are not (they are the replicated residual streams).
    """
    sizes = {"model.num_heads": model.num_heads, "model.mlp_dim (concept_dim*mlp_ratio)": model.mlp_dim}
    b = model.backbone
    if b.enabled:
        sizes.update({"model.backbone.num_heads": b.num_heads, "model.backbone.num_kv_heads": b.num_kv_heads,
                      "model.backbone.intermediate_size": b.intermediate_size})
    return sizes


def pipeline_units(model: ConceptModelConfig) -> int:
    """Layers a pipeline can place on stages: backbone layers, concept layers, decoder layers."""
    return model.backbone.num_layers + model.num_layers + model.decoder_layers


def _check_world(world_size: int, tensor: int, pipeline: int) -> Optional[str]:
    if tensor < 1 or pipeline < 1:
        return f"parallel.tensor={tensor} and parallel.pipeline={pipeline} must be >= 1"
    if world_size % (tensor * pipeline):
        tensors = [t for t in _divisors(world_size) if world_size % (t * pipeline) == 0]
        pipelines = [p for p in _divisors(world_size) if world_size % (tensor * p) == 0]
        alternative = (f"parallel.tensor in {tensors} with this pipeline degree" if tensors
                       else f"parallel.pipeline in {pipelines} with this tensor degree" if pipelines
                       else "parallel.tensor=1 parallel.pipeline=1")
        return (f"{world_size} processes cannot be split into parallel.tensor={tensor} x parallel.pipeline="
                f"{pipeline} groups; launch a multiple of {tensor * pipeline} processes, or use {alternative}")
    return None


def _check_tensor(model: ConceptModelConfig, tensor: int) -> Optional[str]:
    if tensor == 1:
        return None
    sizes = tensor_split_sizes(model)
    bad = {k: v for k, v in sizes.items() if v % tensor}
    if bad:
        common = math.gcd(*sizes.values())
        name, value = next(iter(bad.items()))
        return (f"parallel.tensor={tensor} does not divide {name}={value}; tensor-parallel degrees this model "
                f"allows: {_divisors(common)}")
    vocab = model.vocab_size or 0
    if vocab % tensor:
        padded = math.ceil(vocab / tensor) * tensor
        return (f"model.vocab_size={vocab} is not divisible by parallel.tensor={tensor}; leave model.vocab_size "
                f"unset (the tokenizer's size is padded automatically) or set it to {padded}")
    return None


def _check_pipeline(model: ConceptModelConfig, pipeline: int, zero_stage: int) -> Optional[str]:
    if pipeline == 1:
        return None
    if zero_stage != 1:
        # DeepSpeed's pipeline engine rejects ZeRO-2/3, and its bf16 ZeRO-0 checkpoints fail to load.
        return (f"parallel.pipeline={pipeline} cannot run with ZeRO stage {zero_stage} (pipelines run with "
                f"ZeRO-1); use --ds_config ds_configs/zero1.json")
    units = pipeline_units(model)
    if pipeline > units:
        return (f"parallel.pipeline={pipeline} stages but the model has only {units} layers to place "
                f"(backbone {model.backbone.num_layers} + concept {model.num_layers} + decoder "
                f"{model.decoder_layers}); use parallel.pipeline <= {units}")
    return None


def plan_layout(world_size: int, tensor: int, pipeline: int, zero_stage: int, model: ConceptModelConfig) -> Layout:
    """The layout for `world_size` processes, or a LayoutError naming the problem and a fix.

    `model.vocab_size` must already be resolved (from the shards' tokenizer).
    """
    for problem in (_check_pipeline(model, pipeline, zero_stage), _check_world(world_size, tensor, pipeline),
                    _check_tensor(model, tensor)):
        if problem:
            raise LayoutError(problem)
    return Layout(world_size, tensor, pipeline)
