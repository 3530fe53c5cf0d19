"""Pipeline parallelism: the trained module laid out as a flat layer sequence for DeepSpeed's pipeline engine.

Nothing here defines model maths: the model's components declare their pipeline units
(megaconcept.model.units); this module adds only what DeepSpeed needs around them: the token embedding as a
tied layer (on the first stage, and again on the last where the tied LM head reads it), a last layer holding
the LM head's own parameters and the objectives, the stage partitioning and the loss function. Parameters
keep their identity, so `canonical_names` maps every pipeline parameter back to its name in the trained module.

    token embedding -> model.pipeline_units() ... -> (states, concepts, *aux) -> objectives (last stage)
Stage boundaries fall only before heavy units (backbone, concept, decoder layers), so light layers never sit
alone on a stage and nothing crosses a boundary unused. The concepts travel to the last stage, so
concept-space objective terms work under a pipeline too.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..model.concept_mlm import ConceptOutputs
from ..model.units import StageUnit
from ..objectives.module import PretrainModule
from .distributed import ParallelContext

EMBED_KEY = "token_embed"


class TokenEmbedding(nn.Module):
    """(input_ids, positions[, decoder ids][, key mask]) -> (embeddings, positions[, decoder token inputs][, key mask]).
    Also the tied LM head's weight at the last stage. For a decoder that reads the input tokens, their
    embeddings at the decoded positions are looked up here, where the embedding is (model.units), from the decoder
    ids split_micro_batch sends (a diffusion batch's decoder_input_ids, else the input ids again)."""

    def __init__(self, token_embed: nn.Module, decoder_reads_tokens: bool = False) -> None:
        super().__init__()
        self.token_embed = token_embed
        self.decoder_reads_tokens = decoder_reads_tokens

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        input_ids, positions, *rest = inputs
        tokens, mask = (), rest
        if self.decoder_reads_tokens:
            decoder_ids, *mask = rest
            tokens = (self.token_embed(decoder_ids.gather(1, positions)),)
        return (self.token_embed(input_ids), positions, *tokens, *mask)


class HeadAndObjectives(nn.Module):
    """Holds, on the last stage, the LM head's own parameters (bias, and the matrix when untied) and the
    objectives (their own parameters, e.g. learned log-variances); the loss function applies them."""

    def __init__(self, module: PretrainModule) -> None:
        super().__init__()
        self.lm_bias, self.lm_head = module.model.lm_bias, module.model.lm_head
        self.objectives = module.objectives

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs


def _pass_through(_module: nn.Module, states: Any) -> Any:
    return states


def pipeline_layers(module: PretrainModule) -> list[Any]:
    """The trained module as DeepSpeed pipeline layers (nn.Modules and TiedLayerSpecs), in execution order."""
    from deepspeed.pipe import TiedLayerSpec

    model = module.model
    enc, tied = model.encoder, model.config.tie_word_embeddings
    tie = {"tied_weight_attr": ["token_embed.weight"]}
    reads = model.decoder.uses_tokens
    embed: Any = (TiedLayerSpec(EMBED_KEY, TokenEmbedding, enc.token_embed, reads, **tie) if tied
                  else TokenEmbedding(enc.token_embed, reads))
    layers: list[Any] = [embed, *model.pipeline_units(), HeadAndObjectives(module)]
    if tied:  # the embedding again, so DeepSpeed keeps the last stage's copy in sync (grads all-reduced)
        layers.append(TiedLayerSpec(EMBED_KEY, TokenEmbedding, enc.token_embed, reads, forward_fn=_pass_through, **tie))
    return layers


def stage_bounds(is_unit: list[bool], stages: int) -> list[int]:
    """Layer index where each stage starts (plus the end), cutting only before units and spreading the units
    as evenly as possible (earlier stages take the remainder: the last one also runs the objectives)."""
    units = [i for i, flag in enumerate(is_unit) if flag]
    if stages > len(units):
        raise ValueError(f"{stages} pipeline stages but only {len(units)} layers to place on them")
    per, extra = divmod(len(units), stages)
    bounds, taken = [0], 0
    for stage in range(stages - 1):
        taken += per + (1 if stage < extra else 0)
        bounds.append(units[taken])
    return bounds + [len(is_unit)]


def _is_unit(spec: Any) -> bool:
    return isinstance(spec, StageUnit)


def build_pipeline(module: PretrainModule, ctx: ParallelContext) -> nn.Module:
    """A DeepSpeed PipelineModule over `module` (already tensor-parallel, if at all) for this rank's stage."""
    from deepspeed.pipe import PipelineModule
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    class ConceptPipeline(PipelineModule):
        # DeepSpeed's own partition methods may cut between a light layer and the unit it feeds; this one
        # never does (see stage_bounds).
        def _partition_layers(self, method: str = "uniform") -> None:
            self.parts = stage_bounds([_is_unit(s) for s in self._layer_specs], self.num_stages)
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

    topology = PipeModelDataParallelTopology(num_pp=ctx.pipeline_parallel_size, num_mp=ctx.tensor_parallel_size,
                                             num_dp=ctx.data_parallel_size)
    # Built under no_grad: DeepSpeed broadcasts the tied embedding in place at construction, which autograd
    # must not record.
    with torch.no_grad():
        return ConceptPipeline(pipeline_layers(module), topology=topology, loss_fn=PipelineLoss(module))


class PipelineLoss:
    """The engine's loss_fn(outputs, labels) on the last stage: the objectives on (states, concepts) and the
    batch keys they read (sent as a tuple in `objectives.reads` order). Metrics go to `objectives.collected`."""

    def __init__(self, module: PretrainModule) -> None:
        self.objectives = module.objectives
        self.aux_names = module.model.aux_names  # the decoder's, then the bottleneck's

    def __call__(self, outputs: tuple[torch.Tensor, ...], labels: Any) -> torch.Tensor:
        states, concepts, *aux = outputs
        values = labels if isinstance(labels, (tuple, list)) else (labels,)
        batch = dict(zip(self.objectives.reads, values))
        # On the last stage the model's output embedding is the tied copy the pipeline registered (same object).
        outputs = ConceptOutputs(concepts, states, dict(zip(self.aux_names, aux)))
        loss, metrics = self.objectives(outputs, batch)
        self.objectives.collected.append(metrics)
        return loss


def canonical_names(module: nn.Module, pipeline: nn.Module) -> dict[str, str]:
    """Pipeline state-dict key -> the trained module's name for the same tensor (identity, not string rules)."""
    plain = {id(t): name for name, t in module.state_dict(keep_vars=True).items()}
    return {key: plain[id(t)] for key, t in pipeline.state_dict(keep_vars=True).items()}


def layer_names(module: nn.Module, layers: Iterable[Any]) -> dict[int, dict[str, str]]:
    """Per pipeline layer index: its checkpoint file's keys -> trained-module names (the export reads stage files
    by it). Layers saved by DeepSpeed are the nn.Modules and tied specs without a forward_fn."""
    out: dict[int, dict[str, str]] = {}
    for index, spec in enumerate(layers):
        layer = spec if isinstance(spec, nn.Module) else (spec.build() if spec.forward_fn is None else None)
        if layer is not None:
            out[index] = canonical_names(module, layer)
    return out


def split_micro_batch(batch: dict[str, torch.Tensor], reads: tuple[str, ...], decoder_reads_tokens: bool = False,
                      ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """A collated micro-batch as the engine takes it: (first-stage inputs, the last stage's objective inputs).
    First-stage inputs: input_ids, positions, for a decoder that reads tokens the ids it reads (decoder_input_ids
    when the batch has them, else input_ids), and, when the batch has one, attention_mask (the key mask); keys
    no objective reads (labels of a run without an MLM term) are not sent."""
    missing = sorted({"input_ids", "positions", *reads} - set(batch))
    if missing:
        raise ValueError(f"pipeline parallelism needs input_ids, positions and the objectives' {list(reads)}; "
                         f"the batch lacks {missing}")
    decoder_ids = (batch.get("decoder_input_ids", batch["input_ids"]),) if decoder_reads_tokens else ()
    mask = (batch["attention_mask"],) if "attention_mask" in batch else ()
    return (batch["input_ids"], batch["positions"], *decoder_ids, *mask), tuple(batch[k] for k in reads)
