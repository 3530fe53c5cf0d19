"""Pipeline units: each model component cut into the layers a pipeline can place on stages.

Components declare their own units (`ConceptEncoder.pipeline_units`, a decoder's `pipeline_units`), built
from the component's own submodules and methods, so megaconcept.parallel lays a model out without restating
any forward, and a new decoder or concept layer runs under pipeline parallelism by declaring its units.
A test runs every registry entry's units in sequence against the plain forward (exact equality).

Between units flows a tuple of tensors. A pipeline sends one gradient back per floating-point tensor, so
every float tensor that crosses a stage boundary must be one the next unit uses; integers carry none:
    encoder (tokens (B, N, Dt), concepts (B, C, D), positions (B, M) int[, token inputs (B, M, Dt)][, key mask])
    decoder (states (B, M, D), concepts (B, C, D)[, token inputs])  -> (states, concepts[, aux...])
Concepts travel on to the last stage's objectives. The key mask (int) travels only when the batch has one
(mask-later masking, padded inputs): it is what the plain forward receives as attention_mask. Token inputs
(float) travel only for decoders that read the input tokens (their embeddings at the decoded positions,
looked up on the first stage, where the embedding is).
A bottleneck with aux tensors (model.bottleneck=vae) appends them to the decoder's carry and wraps the decoder's
units (`carry_past`), which never see them; its last unit leaves (states, concepts, *aux in ConceptMLM.aux_names
order) for the objectives.
Units that are `StageUnit`s are heavy (a layer); stages start only at one of them.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


def key_mask(rest: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """The optional key mask among a carry's extras: the integer one (extras for the decoder are float)."""
    return next((t for t in rest if not t.is_floating_point()), None)


def float_extras(rest: list[torch.Tensor]) -> list[torch.Tensor]:
    """A carry's float extras: the decoder's token inputs (B, M, Dt) when it uses them."""
    return [t for t in rest if t.is_floating_point()]


class StageUnit(nn.Module):
    """A heavy layer: pipeline stages start only at one of these."""


class EncoderInput(nn.Module):
    """(embeddings, positions) -> (tokens, concepts, positions): the encoder's input positions (when it has
    no backbone) and the learned concept queries broadcast over the batch."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = (encoder,)  # a tuple: the units own the submodules below, not the whole encoder
        self.concepts, self.position_embed, self.dropout = encoder.concepts, encoder.position_embed, encoder.dropout

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        tokens, positions, *mask = inputs
        tokens = self.encoder[0].add_positions(tokens)
        return (tokens, self.encoder[0].initial_concepts(tokens), positions, *mask)


class BackboneUnit(StageUnit):
    """One backbone layer over the token states; the last one applies the backbone's final norm."""

    def __init__(self, layer: nn.Module, rotary: nn.Module, norm: Optional[nn.Module]) -> None:
        super().__init__()
        self.layer, self.rotary, self.norm = layer, rotary, norm

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        tokens, concepts, positions, *mask = inputs
        tokens = self.layer(tokens, self.rotary(tokens.shape[1], tokens.device, tokens.dtype), key_mask(mask))
        # Backbone.forward hands the final-normed state to readers of the last depth; nothing reads the raw one after it.
        return ((tokens if self.norm is None else self.norm(tokens)), concepts, positions, *mask)


class ConceptUnit(StageUnit):
    """One concept layer: concepts read the current token states."""

    def __init__(self, layer: nn.Module, dropout: nn.Module) -> None:
        super().__init__()
        self.layer, self.dropout = layer, dropout

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        tokens, concepts, positions, *mask = inputs
        return (tokens, self.layer(concepts, self.dropout(tokens), key_mask(mask)), positions, *mask)


class EncoderOutput(nn.Module):
    """(tokens, concepts, positions) -> (normed concepts, positions): the encoder ends here."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        _, concepts, positions, *rest = inputs
        return (self.norm(concepts), positions, *float_extras(rest))


class CarryPast(nn.Module):
    """Runs `unit` on the carry without its last `count` tensors, then appends them unchanged: what a bottleneck
    hands the last stage's objectives travels past the decoder's units. Light, like most units it wraps."""

    def __init__(self, unit: nn.Module, count: int) -> None:
        super().__init__()
        self.unit, self.count = unit, count

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (*self.unit(inputs[:-self.count]), *inputs[-self.count:])


class CarryPastStage(CarryPast, StageUnit):
    """CarryPast around a heavy unit: stages may still start at it."""


def carry_past(unit: nn.Module, count: int) -> CarryPast:
    """`unit` wrapped to carry the last `count` tensors past it, heavy exactly when `unit` is."""
    return (CarryPastStage if isinstance(unit, StageUnit) else CarryPast)(unit, count)
