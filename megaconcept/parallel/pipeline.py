"""Pipeline parallelism: the plain ConceptMLM laid out as a flat layer sequence for DeepSpeed's pipeline engine.

Nothing here defines model maths: each stage layer holds the model's own (possibly tensor-parallel)
submodules and calls them in the order `ConceptMLM.forward` does. Parameters keep their identity, so
`canonical_names` maps every pipeline parameter back to its plain name (optimizer groups, export).

Order: token embedding, encoder input (concept queries, learned positions), then backbone and concept
layers interleaved by the depth each concept layer reads (concept layer i runs right after the backbone
layer it reads; identical maths, since it reads nothing later), the encoder norm + decoder queries, the
decoder layers, the decoder output, the LM-head bias (and the tied embedding again when tied).

Between layers flows a tuple of tensors. DeepSpeed sends one gradient back per floating-point tensor, so
every float tensor that crosses a stage boundary is one the next layer uses; integers (positions) carry none:
    encoder (tokens (B, N, Dt), concepts (B, C, D), positions (B, M) int)
    decoder (states (B, M, D), concepts (B, C, D))
    output   states (B, M, Dout)  -> loss_fn(states, labels) with the LM head applied chunk by chunk
Stage boundaries fall only before heavy layers (backbone, concept, decoder), so light layers never sit
alone on a stage and nothing crosses a boundary unused.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..model import ConceptMLM
from ..model.encoder import read_depths
from .distributed import ParallelContext

EMBED_KEY = "token_embed"


class TokenEmbedding(nn.Module):
    """(input_ids, positions) -> (embeddings, positions). Also the tied LM head's weight at the last stage."""

    def __init__(self, token_embed: nn.Module) -> None:
        super().__init__()
        self.token_embed = token_embed

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, positions = inputs
        return self.token_embed(input_ids), positions


class EncoderInput(nn.Module):
    """(embeddings, positions) -> (tokens, concepts, positions): learned positions when there is no
    backbone, and the learned concept queries broadcast over the batch."""

    def __init__(self, model: ConceptMLM) -> None:
        super().__init__()
        enc = model.encoder
        self.concepts = enc.concepts
        self.position_embed, self.dropout = enc.position_embed, enc.dropout

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        tokens, positions = inputs
        if self.position_embed is not None:
            n = tokens.shape[1]
            tokens = self.dropout(tokens + self.position_embed(torch.arange(n, device=tokens.device)))
        concepts = self.concepts.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return tokens, concepts, positions


class StageUnit(nn.Module):
    """A heavy layer: pipeline stages start only at one of these."""


class BackboneStage(StageUnit):
    """One backbone layer over the token states; the last one applies the backbone's final norm."""

    def __init__(self, layer: nn.Module, rotary: nn.Module, norm: Optional[nn.Module]) -> None:
        super().__init__()
        self.layer, self.rotary, self.norm = layer, rotary, norm

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        tokens, concepts, positions = inputs
        tokens = self.layer(tokens, self.rotary(tokens.shape[1], tokens.device, tokens.dtype), None)
        # Backbone.forward hands the final-normed state to readers of the last depth; nothing reads the raw one after it.
        return (tokens if self.norm is None else self.norm(tokens)), concepts, positions


class ConceptStage(StageUnit):
    """One concept layer: concepts read the current token states."""

    def __init__(self, layer: nn.Module, dropout: nn.Module) -> None:
        super().__init__()
        self.layer, self.dropout = layer, dropout

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        tokens, concepts, positions = inputs
        return tokens, self.layer(concepts, self.dropout(tokens), None), positions


class DecoderInput(nn.Module):
    """(tokens, concepts, positions) -> (position queries, normed concepts): the encoder ends here."""

    def __init__(self, model: ConceptMLM) -> None:
        super().__init__()
        self.norm, self.position_queries = model.encoder.norm, model.decoder.position_queries

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        _, concepts, positions = inputs
        concepts = self.norm(concepts)
        return self.position_queries(positions).to(concepts.dtype), concepts


class DecoderStage(StageUnit):
    """One decoder layer: position queries cross-attend to the concepts, then the MLP."""

    def __init__(self, cross: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.cross, self.mlp = cross, mlp

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        states, concepts = inputs
        return self.mlp(self.cross(states, concepts, None)), concepts


class DecoderOutput(nn.Module):
    """(states, concepts) -> decoded states at the LM head's width."""

    def __init__(self, model: ConceptMLM) -> None:
        super().__init__()
        self.norm, self.out_proj = model.decoder.norm, model.decoder.out_proj

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        states = self.norm(inputs[0])
        return states if self.out_proj is None else self.out_proj(states)


class HeadParameters(nn.Module):
    """Holds the LM head's own parameters on the last stage (bias, and the matrix when untied); the loss
    function applies them. Passes the states through unchanged."""

    def __init__(self, model: ConceptMLM) -> None:
        super().__init__()
        self.lm_bias, self.lm_head = model.lm_bias, model.lm_head

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return states


def _pass_through(_module: nn.Module, states: torch.Tensor) -> torch.Tensor:
    return states


def pipeline_layers(model: ConceptMLM) -> list[Any]:
    """The model as DeepSpeed pipeline layers (nn.Modules and TiedLayerSpecs), in execution order."""
    from deepspeed.pipe import TiedLayerSpec

    enc, dec, tied = model.encoder, model.decoder, model.config.tie_word_embeddings
    tie = {"tied_weight_attr": ["token_embed.weight"]}
    embed: Any = (TiedLayerSpec(EMBED_KEY, TokenEmbedding, enc.token_embed, **tie) if tied
                  else TokenEmbedding(enc.token_embed))
    layers: list[Any] = [embed, EncoderInput(model)]
    concept_after = read_depths(model.config) if enc.backbone is not None else [0] * len(enc.layers)
    backbone = list(enc.backbone.layers) if enc.backbone is not None else []
    pending = list(zip(concept_after, enc.layers))
    # Backbone reads get dropout as they reach a concept layer; embeddings without a backbone already had it.
    read_dropout = enc.dropout if enc.backbone is not None else nn.Identity()
    for depth in range(len(backbone) + 1):
        if depth > 0:
            last = depth == len(backbone)
            layers.append(BackboneStage(backbone[depth - 1], enc.backbone.rotary, enc.backbone.norm if last else None))
        while pending and pending[0][0] == depth:
            layers.append(ConceptStage(pending.pop(0)[1], read_dropout))
    layers.append(DecoderInput(model))
    layers += [DecoderStage(cross, mlp) for cross, mlp in zip(dec.cross, dec.mlp)]
    layers += [DecoderOutput(model), HeadParameters(model)]
    if tied:  # the embedding again, so DeepSpeed keeps the last stage's copy in sync (grads all-reduced)
        layers.append(TiedLayerSpec(EMBED_KEY, TokenEmbedding, enc.token_embed, forward_fn=_pass_through, **tie))
    return layers


def stage_bounds(is_unit: list[bool], stages: int) -> list[int]:
    """Layer index where each stage starts (plus the end), cutting only before units and spreading the units
    as evenly as possible (earlier stages take the remainder: the last one also runs the LM-head loss)."""
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


def build_pipeline(model: ConceptMLM, ctx: ParallelContext, ce_chunk_size: int) -> nn.Module:
    """A DeepSpeed PipelineModule over `model` (already tensor-parallel, if at all) for this rank's stage."""
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
    # The engine calls loss_fn(outputs, labels) on the last stage; labels arrive as a 1-tuple. Built under
    # no_grad: DeepSpeed broadcasts the tied embedding in place at construction, which autograd must not record.
    with torch.no_grad():
        return ConceptPipeline(pipeline_layers(model), topology=topology,
                               loss_fn=partial(_pipeline_loss, model, ce_chunk_size=ce_chunk_size))


def _pipeline_loss(model: ConceptMLM, states: torch.Tensor, labels: Any, ce_chunk_size: int) -> torch.Tensor:
    # On the last stage model.output_embedding() is the tied copy the pipeline registered (same object).
    return model.lm_loss(states, labels[0] if isinstance(labels, (tuple, list)) else labels, ce_chunk_size)


def canonical_names(model: nn.Module, pipeline: nn.Module) -> dict[str, str]:
    """Pipeline state-dict key -> the plain model's name for the same tensor (identity, not string rules)."""
    plain = {id(t): name for name, t in model.state_dict(keep_vars=True).items()}
    return {key: plain[id(t)] for key, t in pipeline.state_dict(keep_vars=True).items()}


def layer_names(model: ConceptMLM, layers: Iterable[Any]) -> dict[int, dict[str, str]]:
    """Per pipeline layer index: its checkpoint file's keys -> plain names (the export reads stage files by it).
    Layers saved by DeepSpeed are the nn.Modules and tied specs without a forward_fn."""
    out: dict[int, dict[str, str]] = {}
    for index, spec in enumerate(layers):
        module = spec if isinstance(spec, nn.Module) else (spec.build() if spec.forward_fn is None else None)
        if module is not None:
            out[index] = canonical_names(model, module)
    return out


def split_micro_batch(batch: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor]]:
    """A collated micro-batch as the engine takes it: (first-stage inputs, last-stage labels)."""
    extra = sorted(set(batch) - {"input_ids", "positions", "labels"})
    if extra:
        raise ValueError(f"pipeline parallelism takes input_ids/positions/labels batches; got also {extra}")
    return (batch["input_ids"], batch["positions"]), (batch["labels"],)
