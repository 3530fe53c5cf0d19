"""Iterative unmasking (masked-diffusion generation and infill), shared by the native model and the HF export.

LLaDA's sampler (ML-GSAI/LLaDA `generate.py`): every masked position is filled in `steps` rounds; per round the
model predicts every masked position, a token is drawn (argmax at temperature 0, else the Gumbel-max trick in
float64, since low precision Gumbel noise hurts quality, arXiv:2409.02908), and the `k` predictions with the
highest confidence (softmax probability of the drawn token; or random with remasking=random) are committed, the
rest stay masked. k spreads the sample's masked count evenly over the rounds (the remainder in the first ones).
With `block_length` the masked positions are filled block by block from left to right (semi-autoregressive),
`steps` split evenly over the blocks; positions beyond the current block cannot be committed. Committed tokens
are never remasked. The mask token and `forbidden_ids` (other special ids) are never drawn.

Hand-written: no library ships masked-diffusion sampling for an arbitrary masked LM. Plain torch, so it travels
in exported folders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(ids (B, N), noise level t (B,): the share of masked positions) -> logits (B, N, V)."""
REMASKING = ("low_confidence", "random")


@dataclass(frozen=True)
class InfillOptions:
    steps: int = 32
    """Rounds of unmasking (at most one per masked position; more rounds than masked positions just idle)."""
    temperature: float = 0.0
    """0 = argmax; > 0 = Gumbel-max sampling at this temperature."""
    block_length: Optional[int] = None
    """Fill the masked region in blocks of this many positions, left to right; None = all at once."""
    remasking: str = "low_confidence"
    """Which predictions a round commits: low_confidence (keep the most confident) | random."""
    seed: int = 0
    """Seeds the Gumbel noise and random remasking: same seed, same output."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.temperature < 0 or (self.block_length is not None and self.block_length < 1):
            raise ValueError(f"steps={self.steps} must be >= 1, temperature={self.temperature} >= 0 and "
                             f"block_length={self.block_length} >= 1 or None")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} is unknown; valid: {', '.join(REMASKING)}")


def transfer_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """masked (B, L) bool -> (B, steps) positions to commit per round (LLaDA's get_num_transfer_tokens)."""
    count = masked.sum(dim=1, keepdim=True)
    base, remainder = count // steps, count % steps
    return base + (torch.arange(steps, device=masked.device)[None, :] < remainder).long()


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """(B, N, V) -> drawn ids (B, N): argmax, or argmax of exp(logits) / (-log u)^temperature in float64."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(logits.device).clamp_min(1e-300)
    return (logits.double().exp() / (-u.log()) ** temperature).argmax(dim=-1)


def _blocks(masked: torch.Tensor, block_length: Optional[int]) -> list[torch.Tensor]:
    """The (B, N) windows the rounds fill in order: everything, or blocks of positions from the first masked one."""
    n = masked.shape[1]
    if block_length is None:
        return [torch.ones_like(masked)]
    first = int(masked.any(dim=0).float().argmax()) if masked.any() else 0
    starts = range(first, n, block_length)
    index = torch.arange(n, device=masked.device)
    return [(index >= s) & (index < s + block_length) for s in starts]


def infill(logits_fn: LogitsFn, input_ids: torch.Tensor, mask_token_id: int, options: InfillOptions,
           attention_mask: Optional[torch.Tensor] = None, forbidden_ids: Sequence[int] = ()) -> torch.Tensor:
    """input_ids (B, N) with `mask_token_id` where tokens are to be generated -> (B, N) with every one filled."""
    x = input_ids.clone()
    real = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    generator = torch.Generator().manual_seed(options.seed)
    windows = _blocks((x == mask_token_id) & real, options.block_length)
    per_block = max(1, options.steps // len(windows))
    banned = torch.tensor(sorted({mask_token_id, *forbidden_ids}), device=x.device)
    for window in windows:
        counts = transfer_counts((x == mask_token_id) & real & window, per_block)
        for step in range(per_block):
            masked = (x == mask_token_id) & real
            if not masked.any():
                return x
            level = masked.sum(dim=1).float() / real.sum(dim=1).clamp_min(1).float()
            logits = logits_fn(x, level).float()
            logits[..., banned] = float("-inf")
            drawn = _draw(logits, options.temperature, generator)
            if options.remasking == "low_confidence":
                confidence = logits.softmax(dim=-1).gather(-1, drawn[..., None]).squeeze(-1).double()
            else:
                confidence = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
            confidence = confidence.masked_fill(~(masked & window), float("-inf"))
            x = _commit(x, drawn, confidence, counts[:, step])
    return x


def _commit(x: torch.Tensor, drawn: torch.Tensor, confidence: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per sample b, write the drawn ids at its counts[b] most confident positions (ties: the leftmost)."""
    order = confidence.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(x.shape[1], device=x.device).expand_as(order))
    chosen = (rank < counts[:, None]) & torch.isfinite(confidence)
    return torch.where(chosen, drawn, x)
