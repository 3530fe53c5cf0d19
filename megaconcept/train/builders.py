"""Turn config sections into the objects the trainer composes (narrow inputs, no root config)."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from ..checkpoint_format import MODEL_PREFIX
from ..config.schema import MaskingSection, ParallelSection
from ..model import ConceptMLM, ConceptModelConfig
from ..model.diffusion_decoder import with_mask_token
from ..model.warmstart import warm_start
from ..data.shards import Manifest
from ..data.vocab import VocabularyTables, special_ids, vocabulary_tables
from ..hub_env import enable_fast_downloads
from ..objectives.masking import MASK_SCHEDULES, MASKING, BatchMaker, MaskingCollator, MaskingSpec, num_targets


class DataModelMismatch(ValueError):
    """The shards and the model config disagree (vocabulary, sequence length)."""


def padded_vocab(tokens: int, multiple: int) -> int:
    """The tokenizer's size rounded up to `multiple` (Megatron's make-vocab-size-divisible-by). Padded rows are
    never a target (labels come from the shards) nor a random replacement (drawn from ordinary tokens)."""
    return -(-tokens // multiple) * multiple


def vocab_multiple(parallel: ParallelSection) -> int:
    """What the vocabulary must divide into: the asked-for multiple and the tensor-parallel degree."""
    return math.lcm(parallel.vocab_multiple, parallel.tensor)


def model_config(section: ConceptModelConfig, shard_vocab: int, seq_len: int, multiple: int = 1,
                 mask_token_id: Optional[int] = None) -> ConceptModelConfig:
    """The architecture for these shards: vocab from the tokenizer (padded to `multiple`) unless set (then checked);
    a diffusion decoder learns the shards' mask token id (diffusion_decoder.with_mask_token)."""
    vocab = section.vocab_size or padded_vocab(shard_vocab, multiple)
    if vocab < shard_vocab:
        raise DataModelMismatch(
            f"model.vocab_size={vocab} is smaller than the shards' tokenizer ({shard_vocab} ids incl. mask); "
            f"leave model.vocab_size unset"
        )
    if section.max_length is not None and seq_len > section.max_length:
        raise DataModelMismatch(
            f"shards hold samples of {seq_len} tokens but model.max_position_embeddings="
            f"{section.max_position_embeddings}; raise it to at least {seq_len} (with a backbone, "
            f"model.decoder_positions=sinusoidal removes the limit)"
        )
    section = section if mask_token_id is None else with_mask_token(section, mask_token_id)
    return replace(section, vocab_size=vocab)


def build_model(cfg: ConceptModelConfig) -> ConceptMLM:
    return ConceptMLM(cfg)


# The token path: what a warm start loads (backbone layers and the token embedding, which the tied LM head
# shares). It gets the backbone lr multiplier and freeze as one unit: a pretrained embedding trained at the
# concept layers' full lr drifts away from the backbone that reads it within a few hundred steps.
TOKEN_PATH_PREFIXES = ("encoder.backbone.", "encoder.token_embed.")


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float, lr: float,
                 backbone_lr_mult: float) -> list[dict]:
    """Decay matrices only (norm weights and biases stay undecayed); token-path parameters (backbone and
    token embedding) get the backbone lr multiplier and a `backbone` flag the schedule uses to freeze them.
    Names are the trained module's (model.*, objectives.*; a pipeline stage passes its parameters under them)
    or the plain model's; objective-owned parameters are never on the token path."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in named_parameters:
        if p.requires_grad:
            plain = name[len(MODEL_PREFIX):] if name.startswith(MODEL_PREFIX) else name
            groups.setdefault((plain.startswith(TOKEN_PATH_PREFIXES), p.ndim >= 2), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0,
         "lr": lr * (backbone_lr_mult if backbone else 1.0), "backbone": backbone}
        for (backbone, decay), params in sorted(groups.items())
    ]


def split_groups(groups: list[dict], count: int) -> list[dict]:
    """`groups` split (largest first, halves with the same settings) into `count` groups.

    Pipeline stages hold different parameters, hence different numbers of groups, but DeepSpeed's optimizer
    reduces the gradient norm across stages once per group: the counts must match or the step deadlocks.
    Splitting a group changes no update and no global norm (that combines every group's squares anyway).
    """
    groups = list(groups)
    while len(groups) < count:
        largest = max(range(len(groups)), key=lambda i: len(groups[i]["params"]))
        params = groups[largest]["params"]
        if len(params) < 2:
            raise ValueError(f"cannot form {count} optimizer groups from {len(groups)} on this pipeline stage; "
                             f"use fewer pipeline stages")
        half = len(params) // 2
        groups[largest:largest + 1] = [{**groups[largest], "params": params[:half]},
                                       {**groups[largest], "params": params[half:]}]
    return groups


def warm_start_backbone(model: ConceptMLM, is_main: bool) -> None:
    """Load the configured source weights (before DeepSpeed partitions anything, so every ZeRO-3
    partition is cut from loaded tensors)."""
    backbone = model.config.backbone
    if not backbone.init_from:
        return
    enable_fast_downloads()  # a hub id downloads through hf_transfer when it is installed
    report = warm_start(model, backbone, backbone.init_from)
    if is_main:
        print(report.summary(), flush=True)


def vocabulary_for(manifest: Manifest) -> VocabularyTables:
    """The shards' vocabulary tables: specials from the manifest (older manifests: from DIR/tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(manifest.tokenizer_dir)
    specials = manifest.special_token_ids if manifest.special_token_ids is not None else special_ids(tokenizer)
    if manifest.mask_token_id not in specials:
        specials = sorted({*specials, manifest.mask_token_id})
    return vocabulary_tables(tokenizer, specials)


def masking_spec(section: MaskingSection, mask_token_id: int, tables: VocabularyTables) -> MaskingSpec:
    return MaskingSpec(section.rate, section.mask_prob, section.random_prob, mask_token_id,
                       replacement_ids=torch.from_numpy(tables.ordinary_ids).long(),
                       word_start=torch.from_numpy(tables.word_start), special=torch.from_numpy(tables.special),
                       options=MASKING.options(section.strategy, section.options, "objective.masking.options"),
                       mask_later=section.mask_later)


def build_collator(section: MaskingSection, mask_token_id: int, tables: VocabularyTables, grad_accum_steps: int = 1,
                   first_step: int = 0, extras: Sequence[BatchMaker] = ()) -> MaskingCollator:
    """The masking collator; `first_step` is the optimizer step at which the data stream's batch 0 was drawn;
    `extras` are the objectives' batch makers (ObjectiveSet.batch_makers)."""
    schedule = MASK_SCHEDULES.options(section.schedule, {"final_rate": section.final_rate,
                                                         "steps": section.schedule_steps})
    return MaskingCollator(section.strategy, masking_spec(section, mask_token_id, tables), section.schedule,
                           schedule, grad_accum_steps, first_step, extras)


def decoded_positions(section: MaskingSection, seq_len: int) -> int:
    """Targets decoded per sample, for FLOPs and MFU: M for the fixed-count strategies; for diffusion N with
    options.decode=all, else the expected masked count N (1 + t_min) / 2 (padding rows are not model FLOPs)."""
    if section.strategy == "diffusion":
        options = MASKING.options("diffusion", section.options)
        return seq_len if options.decode == "all" else max(1, round(seq_len * (1 + options.t_min) / 2))
    return num_targets(seq_len, section.rate)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
