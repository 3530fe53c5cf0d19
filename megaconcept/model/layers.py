"""Building blocks of the concept encoder: attention (self and cross), gated MLP, norms.

Plain PyTorch, no collectives: tensor parallelism is applied from outside (megaconcept.parallel).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """q (B, H, Lq, Dh), k/v (B, H, Lk, Dh), mask (B, 1, 1, Lk) bool keep -> (B, H, Lq, Dh).

    PyTorch picks flash / memory-efficient kernels on GPU and the math kernel on CPU.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Reference implementation of :func:`_sdpa`, useful for debugging and attention maps."""
    return attention_weights(q, k, mask).to(q.dtype) @ v


ATTENTION: Registry[AttentionFn] = Registry("model.attention")
ATTENTION.add("sdpa", _sdpa)
ATTENTION.add("eager", _eager)


def sinusoidal_features(positions: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """positions (...) int -> (..., dim) sin/cos features (Vaswani et al., base 10000): defined at any position,
    so modules built on them have no length limit."""
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
                         * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., ceil(dim / 2))
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[..., :dim].to(dtype)


class Attention(nn.Module):
    """Multi-head attention whose queries and keys/values may come from different sequences."""

    # Heads split across tensor-parallel ranks; the output projection sums the ranks' heads.
    tensor_parallel_plan = {"q_proj": "column", "k_proj": "column", "v_proj": "column", "o_proj": "row"}

    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa", kv_dim: Optional[int] = None,
                 rotary: Optional[nn.Module] = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        kv_dim = kv_dim or dim  # keys/values may come from a narrower or wider sequence (token path)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(kv_dim, dim, bias=False)
        self.v_proj = nn.Linear(kv_dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.attend = ATTENTION[backend]
        # Optional (q, k) -> (q, k) rotation per head (concept_positions.ConceptRotary); holds no parameters.
        self.rotary = rotary

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, D) -> (B, H, L, Dh)
        return x.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)

    def forward(
        self, queries: torch.Tensor, keys_values: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """queries (B, Lq, D), keys_values (B, Lk, Dkv), key_mask (B, Lk) bool keep -> (B, Lq, D), and with
        return_weights the attention weights (B, H, Lq, Lk) fp32 (computed eagerly: SDPA returns none)."""
        q = self._heads(self.q_proj(queries))
        k = self._heads(self.k_proj(keys_values))
        v = self._heads(self.v_proj(keys_values))
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        if return_weights:
            weights = attention_weights(q, k, mask)
            out = self.o_proj((weights.to(v.dtype) @ v).transpose(1, 2).flatten(-2))
            return out, weights
        out = self.attend(q, k, v, mask)  # (B, H, Lq, Dh)
        return self.o_proj(out.transpose(1, 2).flatten(-2))


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) in fp32: (B, H, Lq, Lk). Masked keys get the fp32 minimum, so their weight
    underflows to exactly 0 while a row with no key left stays finite (uniform) instead of NaN."""
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    return scores.softmax(dim=-1)


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    tensor_parallel_plan = {"gate_proj": "column", "up_proj": "column", "down_proj": "row"}

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class CrossAttentionBlock(nn.Module):
    """Pre-norm residual cross-attention: queries read from a (normed) key/value sequence."""

    def __init__(
        self, dim: int, num_heads: int, eps: float, dropout: float, backend: str, kv_dim: Optional[int] = None
    ) -> None:
        super().__init__()
        self.query_norm = nn.RMSNorm(dim, eps=eps)
        self.kv_norm = nn.RMSNorm(kv_dim or dim, eps=eps)
        self.attn = Attention(dim, num_heads, backend, kv_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor, key_mask: Optional[torch.Tensor],
                return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """With return_weights also the attention weights (B, H, Lq, Lk) (see Attention.forward)."""
        attended = self.attn(self.query_norm(queries), self.kv_norm(keys_values), key_mask, return_weights)
        if return_weights:
            attended, weights = attended
            return queries + self.dropout(attended), weights
        return queries + self.dropout(attended)


class SelfAttentionBlock(nn.Module):
    """Pre-norm residual self-attention (used among the concepts: cost O(C^2), independent of N); `rotary`
    rotates queries and keys by position (concept_positions.ConceptRotary), None = no positions."""

    def __init__(self, dim: int, num_heads: int, eps: float, dropout: float, backend: str,
                 rotary: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, backend, rotary=rotary)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.dropout(self.attn(h, h))


class MLPBlock(nn.Module):
    """Pre-norm residual gated MLP."""

    def __init__(self, dim: int, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.mlp = GatedMLP(dim, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.mlp(self.norm(x)))


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for linear and embedding weights, zeros for biases; norms keep ones."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
