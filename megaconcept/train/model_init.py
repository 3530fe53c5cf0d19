"""Warm start from another trained model (train.init_from / train.init_modules) and freezing (train.trainable).

The source is an exported HF folder (its model.safetensors has the native keys) or a run / checkpoint directory
(consolidated the way the export does). Only the named top-level parts of the model are copied (`encoder` by
default: e.g. a diffusion run starting from an MLM run's encoder; `[encoder, decoder]` for a linear probe on a
frozen model); every key of a part must exist with the same shape, so a different architecture is refused by name
instead of half-loaded. Vocabulary rows may differ only by padding: a run pads its vocabulary parameters
(parallel.vocab_multiple) and an export trims them, so the source's rows fill the first rows of the target and the
padding rows keep their initialisation (no token id reaches them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..checkpoint_format import MODEL_PREFIX
from ..model.sharding import vocabulary_parameters


class ModelInitError(ValueError):
    """train.init_from / init_modules / trainable cannot be used; the message names the path, the key and the fix."""


def source_weights(path: str) -> dict[str, torch.Tensor]:
    """Canonical model weights of an exported folder or a run / checkpoint directory."""
    folder = Path(path).expanduser()
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        from ..export.hf_folder import native_names

        # An export stores native names; a folder a user saved with save_pretrained has them under the base
        # model's prefix (MegaconceptModel's `megaconcept.`).
        return native_names(load_file(str(folder / "model.safetensors")), "megaconcept")
    if not folder.exists():
        raise ModelInitError(f"train.init_from={path} does not exist; give an exported folder or a run directory")
    from ..export.checkpoint import ExportError, read_checkpoint_info, resolve_tag_dir
    from ..export.gather import consolidate

    try:
        return consolidate(read_checkpoint_info(resolve_tag_dir(str(folder))))
    except ExportError as exc:
        raise ModelInitError(f"train.init_from={path}: {exc}") from None


def _under(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


def top_level_parts(model: nn.Module) -> list[str]:
    """What init_modules may name: the model's child modules and direct parameters that hold weights."""
    names = {key.split(".", 1)[0] for key in model.state_dict()}
    return sorted(names)


def load_parts(model: nn.Module, path: str, parts: Sequence[str]) -> str:
    """Copy the source's weights of `parts` into `model` (before DeepSpeed partitions anything); the report."""
    known = top_level_parts(model)
    unknown = [p for p in parts if p not in known]
    if unknown:
        raise ModelInitError(f"train.init_modules names {unknown[0]!r}, which this model does not have; choose from "
                             f"{', '.join(known)}")
    source = source_weights(path)
    target = {k: v for k, v in model.state_dict().items() if any(_under(k, p) for p in parts)}
    missing = sorted(k for k in target if k not in source)
    if missing:
        raise ModelInitError(f"train.init_from={path} lacks {len(missing)} of the weights of {', '.join(parts)} "
                             f"(first: {missing[0]}); it must have this run's shape of those parts (model.num_layers, "
                             f"num_concepts, concept_dim, decoder, tie_word_embeddings, ...)")
    vocab = set(vocabulary_parameters(model))
    with torch.no_grad():
        for key, tensor in target.items():
            loaded = source[key]
            padded = key in vocab and loaded.shape[0] <= tensor.shape[0]
            if loaded.shape[1:] != tensor.shape[1:] or (loaded.shape[0] != tensor.shape[0] and not padded):
                raise ModelInitError(f"train.init_from={path}: {key} is {tuple(loaded.shape)}, this run's is "
                                     f"{tuple(tensor.shape)}; use a source of the same shape")
            tensor[:loaded.shape[0]].copy_(loaded.to(tensor.dtype))
    fresh = [p for p in known if p not in parts]
    return (f"{', '.join(parts)} warm-started from {path} ({len(target)} tensors)"
            + (f"; {', '.join(fresh)} start fresh" if fresh else ""))


def _plain(named: Sequence[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
    return [(n[len(MODEL_PREFIX):] if n.startswith(MODEL_PREFIX) else n, p) for n, p in named]


def check_trainable(module: nn.Module, trainable: Sequence[str]) -> None:
    """Every train.trainable prefix must name parameters of the trained module (model.*, objectives.*)."""
    plain = _plain(list(module.named_parameters()))
    for prefix in trainable:
        if not any(_under(name, prefix) for name, _ in plain):
            parts = sorted({name.split(".", 1)[0] for name, _ in plain})
            raise ModelInitError(f"train.trainable names {prefix!r}, which matches no parameter; give parameter "
                                 f"name prefixes such as {', '.join(parts)} (an untied head needs "
                                 f"model.tie_word_embeddings=false)")


def freeze_all_but(named: Sequence[tuple[str, nn.Parameter]], trainable: Sequence[str]) -> str:
    """requires_grad=False on every parameter not under one of `trainable`; the report. Names are the trained
    module's (model.*, objectives.*), matched with the model's given without `model.` (lm_head, decoder,
    encoder.concepts; objectives.terms.mlsm.head). Frozen parameters get no gradient and no optimizer state;
    ZeRO-3 still partitions and checkpoints them."""
    kept = total = 0
    for name, param in _plain(named):
        train = any(_under(name, prefix) for prefix in trainable)
        param.requires_grad_(train)
        kept, total = kept + (param.numel() if train else 0), total + param.numel()
    return f"trainable: {', '.join(trainable)} ({kept:,} of {total:,} of this rank's parameters; the rest frozen)"
