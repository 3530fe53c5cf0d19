"""Warm start of the encoder from another trained model of the same encoder shape (train.init_encoder_from).

The source is an exported HF folder (its model.safetensors has the native keys) or a run / checkpoint directory
(consolidated the way the export does). Only `encoder.*` is copied; every key must exist with the same shape, so
a different architecture is refused by name instead of half-loaded. Vocabulary rows may differ only by padding:
a run pads its embedding (parallel.vocab_multiple) and an export trims it, so the source's rows fill the first
rows of the target and the padding rows keep their initialisation (no token id reaches them).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class EncoderInitError(ValueError):
    """train.init_encoder_from cannot be used; the message names the path, the key and the fix."""


def source_weights(path: str) -> dict[str, torch.Tensor]:
    """Canonical model weights of an exported folder or a run / checkpoint directory."""
    folder = Path(path).expanduser()
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if not folder.exists():
        raise EncoderInitError(f"train.init_encoder_from={path} does not exist; give an exported folder or a run "
                               f"directory")
    from ..export.checkpoint import ExportError, read_checkpoint_info, resolve_tag_dir
    from ..export.gather import consolidate

    try:
        return consolidate(read_checkpoint_info(resolve_tag_dir(str(folder))))
    except ExportError as exc:
        raise EncoderInitError(f"train.init_encoder_from={path}: {exc}") from None


def load_encoder(model: nn.Module, path: str) -> str:
    """Copy the source's encoder weights into `model.encoder` (before DeepSpeed partitions anything); the report."""
    source = source_weights(path)
    target = model.encoder.state_dict()
    missing = sorted(f"encoder.{k}" for k in target if f"encoder.{k}" not in source)
    if missing:
        raise EncoderInitError(f"train.init_encoder_from={path} lacks {len(missing)} encoder weights (first: "
                               f"{missing[0]}); it must have this run's encoder shape (model.num_layers, "
                               f"num_concepts, concept_dim, backbone, ...)")
    with torch.no_grad():
        for key, tensor in target.items():
            loaded = source[f"encoder.{key}"]
            padded = key == "token_embed.weight" and loaded.shape[0] <= tensor.shape[0]
            if loaded.shape[1:] != tensor.shape[1:] or (loaded.shape[0] != tensor.shape[0] and not padded):
                raise EncoderInitError(f"train.init_encoder_from={path}: encoder.{key} is {tuple(loaded.shape)}, "
                                       f"this run's is {tuple(tensor.shape)}; use a source of the same encoder shape")
            tensor[:loaded.shape[0]].copy_(loaded.to(tensor.dtype))
    return f"encoder warm-started from {path} ({len(target)} tensors; the decoder and the LM bias start fresh)"
