"""Token backbone: Llama-architecture layers (RMSNorm, RoPE, grouped-query attention, SwiGLU).

Runs bidirectionally by default so concepts read contextual token states; `causal=True` reproduces the
decoder-only model the weights come from (the parity test relies on it). Parameter names follow HF Llama
(`layers.{i}.self_attn.q_proj`, `input_layernorm`, `mlp.gate_proj`, `norm`), so warm-starting is a rename
of the prefix only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig
from .layers import GatedMLP


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """cos/sin tables computed on the fly, so any sequence length works (no trained length limit).

    The frequencies are recomputed each call (Dh/2 numbers) rather than kept in a non-persistent buffer:
    transformers 5 builds a model on the meta device in `from_pretrained`, and a buffer that is not in the
    checkpoint is left as uninitialized memory there, which gave exported backbones garbage rotations.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """(Dh/2,) fp32 rotation frequencies, the formula of HF's Llama (default rope type)."""
        steps = torch.arange(0, self.head_dim, 2, dtype=torch.float, device=device)
        return 1.0 / (self.theta ** (steps / self.head_dim))

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """-> cos, sin of shape (N, Dh), computed in fp32 then cast."""
        positions = torch.arange(seq_len, device=device, dtype=torch.float)
        freqs = torch.outer(positions, self.inv_freq(device))  # (N, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class GQAttention(nn.Module):
    """Grouped-query self-attention with rotary positions."""

    tensor_parallel_plan = {"q_proj": "column", "k_proj": "column", "v_proj": "column", "o_proj": "row"}

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.head_dim = cfg.hidden_size // cfg.num_heads
        d, kv = cfg.hidden_size, cfg.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.causal = cfg.causal

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B, N, D), rope cos/sin (N, Dh), key_mask (B, N) bool keep -> (B, N, D)."""
        # Head counts come from the projections' widths, so a tensor-parallel shard (H/T, Hkv/T heads) runs as is.
        q = self.q_proj(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)  # (B, H, N, Dh)
        k = self.k_proj(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)  # (B, Hkv, N, Dh)
        v = self.v_proj(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        cos, sin = rope
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        if self.causal:
            n = x.shape[1]
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            mask = causal if mask is None else mask & causal
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).flatten(-2))


class BackboneLayer(nn.Module):
    """Pre-norm Llama decoder layer (used bidirectionally unless `causal`)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.self_attn = GQAttention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, key_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Stack of :class:`BackboneLayer` over token embeddings; `norm` is the final RMSNorm."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(
                f"backbone hidden_size {cfg.hidden_size}, num_heads {cfg.num_heads}, num_kv_heads "
                f"{cfg.num_kv_heads}: heads must divide the width and kv heads must divide heads"
            )
        self.rotary = RotaryEmbedding(cfg.hidden_size // cfg.num_heads, cfg.rope_theta)
        self.layers = nn.ModuleList(BackboneLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)

    def rope(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary(tokens.shape[1], tokens.device, tokens.dtype)

    def forward(
        self, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, capture: Optional[list[int]] = None
    ) -> list[torch.Tensor]:
        """tokens (B, N, D) embeddings -> states (B, N, D) after each layer count in `capture`.

        Default capture is [num_layers]; the state after the last layer is the final-normed one (as in
        HF LlamaModel's last_hidden_state), intermediate ones are raw residual streams.
        """
        capture = capture or [len(self.layers)]
        rope = self.rope(tokens)
        states = [tokens] if 0 in capture else []
        for depth, layer in enumerate(self.layers, start=1):
            tokens = layer(tokens, rope, attention_mask)
            if depth in capture:
                states.append(self.norm(tokens) if depth == len(self.layers) else tokens)
        return [states[sorted(set(capture)).index(c)] for c in capture]
