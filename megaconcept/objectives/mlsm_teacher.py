"""The MLSM teacher: a Llama-architecture causal LM run only up to layer l (early exit, no unembedding).

    Teacher(ids (B, N)) -> (B, N, H) float32 hidden states after layer l

Layer l counts as HF's `output_hidden_states[l]` (0 = the embeddings; the raw residual stream after l layers;
at l = the source's depth, HF's last entry is final-normed and so is this). Weights come through the
project's warm-start loader (megaconcept.model.warmstart.load_source: a hub id, an HF folder or `smollm2-gguf`)
into the project's own Backbone with `causal=True` (the source LM's attention) and only the first l layers,
so the later layers are never built, let alone run.

Shared by the dictionary job (data_prep.mlsm_dictionary) and the `mlsm` objective, which must see the same
function of the same weights: `weights_sha256` fingerprints exactly the tensors the teacher uses, and the
objective refuses a teacher whose fingerprint differs from the dictionary's metadata.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import torch
from torch import nn

from ..model.backbone import Backbone
from ..model.config import BackboneConfig
from ..hub_env import enable_fast_downloads
from ..model.warmstart import GGUF_SPEC, load_source

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
PROBE_TEXT = "The quick brown fox, 12 jumps: über naïve café!\nNew line\tand tab."
"""Tokenized by both tokenizers: equal vocabularies must also split text alike."""


class Teacher(nn.Module):
    """Token embedding + the first `layer` Llama layers (causal), frozen."""

    def __init__(self, cfg: BackboneConfig, vocab_rows: int, final_norm: bool, unknown_id: int = 0) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_rows, cfg.hidden_size)
        self.backbone = Backbone(cfg)
        self.final_norm = final_norm
        """layer = the source's depth: HF's last hidden state is final-normed."""
        self.unknown_id = unknown_id
        """What ids the teacher has no row for (tokens the shards' tokenizer added, e.g. its mask) are read as."""

    @property
    def hidden_size(self) -> int:
        return self.embed_tokens.embedding_dim

    @property
    def layer(self) -> int:
        return len(self.backbone.layers)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N) -> (B, N, H) float32 states after `layer` layers (HF output_hidden_states[layer])."""
        rows = self.embed_tokens.num_embeddings
        ids = torch.where(ids < rows, ids, torch.full_like(ids, self.unknown_id))
        x = self.embed_tokens(ids)  # (B, N, H)
        rope = self.backbone.rope(x)
        for layer in self.backbone.layers:  # not Backbone.forward: that final-norms its last layer's output
            x = layer(x, rope, None)
        if self.final_norm:
            x = self.backbone.norm(x)
        return x.float()


def teacher_config(src: Any, layer: int) -> BackboneConfig:
    """The Backbone config of the source LM's first `layer` layers; one-line ValueError when it cannot be."""
    model_type = getattr(src, "model_type", "llama")
    depth = int(getattr(src, "num_hidden_layers", 0))
    rope = getattr(src, "rope_parameters", None) or getattr(src, "rope_scaling", None) or {}
    problems = []
    if model_type not in LLAMA_FAMILY:
        problems.append(f"model_type {model_type!r} is not Llama-architecture ({', '.join(LLAMA_FAMILY)})")
    if not 1 <= layer <= depth:
        problems.append(f"--layer {layer} is out of range: the teacher has layers 1..{depth}")
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type {rope.get('rope_type')!r} is not supported (the backbone has plain RoPE)")
    if problems:
        raise ValueError("teacher refused: " + "; ".join(problems))
    theta = rope.get("rope_theta", getattr(src, "rope_theta", 10000.0))
    return BackboneConfig(num_layers=layer, hidden_size=src.hidden_size, num_heads=src.num_attention_heads,
                          num_kv_heads=src.num_key_value_heads, intermediate_size=src.intermediate_size,
                          rope_theta=float(theta), norm_eps=float(src.rms_norm_eps), causal=True)


def build_teacher(source: str, layer: int, unknown_id: int = 0) -> tuple[Teacher, dict[str, Any]]:
    """Load `source` (hub id, HF folder or smollm2-gguf) up to `layer`: (eval, frozen fp32 Teacher, identity).

    identity: source, model_type, depth, layer, hidden_size, num_heads, num_kv_heads, intermediate_size (what the
    FLOP counter needs), vocab_rows, gguf and weights_sha256."""
    enable_fast_downloads()  # a hub id downloads through hf_transfer when it is installed
    state, src = load_source(source)
    cfg = teacher_config(src, layer)
    embed = state["model.embed_tokens.weight"]
    teacher = Teacher(cfg, embed.shape[0], final_norm=layer == src.num_hidden_layers, unknown_id=unknown_id)
    wanted = {"embed_tokens.weight": "model.embed_tokens.weight"}
    for name in teacher.state_dict():
        if name.startswith("backbone."):
            wanted[name] = "model." + name[len("backbone."):]
    missing = [theirs for theirs in wanted.values() if theirs not in state]
    if missing:
        raise ValueError(f"teacher {source!r} lacks tensors {', '.join(missing[:3])}; is it a Llama-architecture LM?")
    teacher.load_state_dict({mine: state[theirs] for mine, theirs in wanted.items()})
    teacher.requires_grad_(False).eval()
    identity = {"source": source, "model_type": getattr(src, "model_type", "llama"),
                "depth": int(src.num_hidden_layers), "layer": layer, "hidden_size": int(src.hidden_size),
                "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads,
                "intermediate_size": cfg.intermediate_size,
                "vocab_rows": int(embed.shape[0]), "gguf": source == GGUF_SPEC,
                "weights_sha256": weights_sha256(teacher)}
    return teacher, identity


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the names, shapes and float32 bytes of every tensor the module uses, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(t.shape)}\0".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def tokenizer_mismatch(teacher_tok: Any, shards_tok: Any) -> Optional[str]:
    """Why the teacher's tokenizer differs from the shards' (None when they agree).

    They agree when every token of the teacher's vocabulary has the same id in the shards' one (the shards'
    may add tokens after it, e.g. the mask) and both split a probe text into the same ids."""
    theirs, ours = teacher_tok.get_vocab(), shards_tok.get_vocab()
    differing = [t for t, i in theirs.items() if ours.get(t) != i]
    if differing:
        return f"{len(differing)} of the teacher's {len(theirs)} tokens have other ids in the shards' tokenizer " \
               f"(e.g. {differing[0]!r})"
    a = teacher_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    b = shards_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if a != b:
        return "the two tokenizers split the same text into different ids"
    return None


def teacher_tokenizer(source: str) -> Any:
    """The teacher's own tokenizer, loaded as the sharder loads one (mask and pad added when absent)."""
    from ..data.tokenizer import SMOLLM2_SPEC, load_tokenizer

    return load_tokenizer(SMOLLM2_SPEC if source == GGUF_SPEC else source)


def digest_metadata(metadata: dict[str, Any]) -> str:
    """A short stable fingerprint of a dictionary's metadata (what a run records)."""
    return hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:16]


def cast_for(device: torch.device) -> torch.dtype:
    """bf16 on GPU (the teacher is frozen: half the memory and time), fp32 on CPU (exact, and CPU bf16 is slow)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32

