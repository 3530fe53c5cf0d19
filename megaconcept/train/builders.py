"""Turn config sections into the objects the trainer composes (narrow inputs, no root config)."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..config.schema import MaskingSection
from ..model import ConceptMLM, ConceptModelConfig
from ..objectives.masking import MaskingCollator, MaskingSpec


class DataModelMismatch(ValueError):
    """The shards and the model config disagree (vocabulary, sequence length)."""


def model_config(section: ConceptModelConfig, shard_vocab: int, seq_len: int) -> ConceptModelConfig:
    """The architecture for these shards: vocab from the tokenizer unless set (and then checked)."""
    vocab = section.vocab_size or shard_vocab
    if vocab < shard_vocab:
        raise DataModelMismatch(
            f"model.vocab_size={vocab} is smaller than the shards' tokenizer ({shard_vocab} ids incl. mask); "
            f"leave model.vocab_size unset"
        )
    if seq_len > section.max_position_embeddings:
        raise DataModelMismatch(
            f"shards hold samples of {seq_len} tokens but model.max_position_embeddings="
            f"{section.max_position_embeddings}; raise it to at least {seq_len}"
        )
    return replace(section, vocab_size=vocab)


def build_model(cfg: ConceptModelConfig) -> ConceptMLM:
    return ConceptMLM(cfg)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norm weights and biases stay undecayed."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_collator(section: MaskingSection, mask_token_id: int, random_vocab_size: int) -> MaskingCollator:
    spec = MaskingSpec(section.rate, section.mask_prob, section.random_prob, mask_token_id, random_vocab_size)
    return MaskingCollator(section.strategy, spec)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
