"""Absorbing-state masked-diffusion corruption (MDLM, Sahoo et al. 2024; LLaDA), masking strategy `diffusion`.

Per sample b a masking level t_b ~ U(t_min, 1) (stratified or antithetic across the batch, so every batch covers
[t_min, 1] evenly), then every position is masked independently with probability t_b and always replaced by the
mask token (absorbing state: no random or kept targets). The ELBO weight of each target is 1/t_b (the
log-linear schedule's alpha'_t / (1 - alpha_t), kuleshov-group/mdlm `_forward_pass_diffusion`), optionally capped
at `max_weight`; megaconcept.objectives.diffusion normalises the weighted sum by the number of tokens.

The number of targets varies per sample (Binomial(N, t_b)), so targets are padded to the batch's largest count:
padded rows have label -100 and weight 0. `objective.masking.rate`, `mask_prob`, `random_prob` and rate schedules
do not apply (config validation refuses schedules and mask_later with this strategy).

Batch keys: input_ids (the noisy text, or the clean text with encoder_reads=clean, upstream's design),
decoder_input_ids (the noisy text, only with encoder_reads=clean: what the decoder's queries read), positions,
labels, target_weights (B, M) float, noise_level (B,) float (t, for timestep conditioning and logging) and
num_tokens (B,) float (the ELBO's normaliser: the tokens of each sample).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .masking import MASKING, MaskingSpec

SAMPLINGS = ("stratified", "antithetic", "iid")
ENCODER_READS = ("clean", "noisy")
DECODES = ("masked", "all")


@dataclass
class DiffusionOptions:
    """objective.masking.options of strategy=diffusion."""

    t_min: float = 1e-3
    """Lowest masking level (MDLM's sampling_eps): t ~ U(t_min, 1), so the weight 1/t stays <= 1/t_min."""
    sampling: str = "stratified"
    """How the batch's t are drawn: stratified = one uniform draw in each of B equal strata of [0, 1);
    antithetic = MDLM's (u / B + b / B) mod 1 from one draw; iid = independent draws."""
    max_weight: Optional[float] = None
    """Cap on the ELBO weight 1/t (null = none beyond 1/t_min); a cap trades the exact ELBO for lower variance."""
    encoder_reads: str = "clean"
    """What the encoder reads: clean = the uncorrupted text (upstream's design: at high t the decoder sees nothing
    but concepts, so they must carry the content); noisy = the corrupted text (MDLM proper: what generation feeds)."""
    decode: str = "masked"
    """Positions the decoder runs on: masked = the targets only (sparse; exact when decoded positions do not attend
    to each other); all = every position (needed when the decoder has token self-attention)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"t_min={self.t_min} must lie in (0, 1)")
        if self.max_weight is not None and self.max_weight < 1.0:
            raise ValueError(f"max_weight={self.max_weight} must be >= 1 (1/t >= 1 for every t <= 1) or null")
        for name, value, valid in (("sampling", self.sampling, SAMPLINGS),
                                   ("encoder_reads", self.encoder_reads, ENCODER_READS),
                                   ("decode", self.decode, DECODES)):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is unknown; valid: {', '.join(valid)}")


def sample_levels(batch_size: int, options: DiffusionOptions, generator: torch.Generator) -> torch.Tensor:
    """(B,) masking levels in [t_min, 1): stratified / antithetic / iid uniform draws mapped onto [t_min, 1)."""
    strata = torch.arange(batch_size, dtype=torch.float64) / batch_size
    if options.sampling == "stratified":
        u = strata + torch.rand(batch_size, generator=generator, dtype=torch.float64) / batch_size
    elif options.sampling == "antithetic":
        u = (torch.rand(1, generator=generator, dtype=torch.float64) / batch_size + strata) % 1.0
    else:
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    return (options.t_min + (1.0 - options.t_min) * u).float()


def elbo_weights(levels: torch.Tensor, options: DiffusionOptions) -> torch.Tensor:
    """(B,) t -> (B,) 1/t, capped at max_weight when set."""
    weights = levels.reciprocal()
    return weights if options.max_weight is None else weights.clamp(max=options.max_weight)


def target_layout(masked: torch.Tensor, decode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """masked (B, N) bool -> positions (B, M) and valid (B, M) bool: the masked positions first, in order, padded
    (position 0, invalid) to the batch's largest count (at least 1); decode=all: every position, valid where masked."""
    b, n = masked.shape
    if decode == "all":
        return torch.arange(n).expand(b, n).clone(), masked.clone()
    m = max(1, int(masked.sum(dim=1).max()))
    # Masked positions sort first (key = position), unmasked after them (key = n + position): stable and exact.
    key = torch.where(masked, 0, n) + torch.arange(n)
    order = key.argsort(dim=1)[:, :m]
    valid = masked.gather(1, order)
    return torch.where(valid, order, 0), valid


def diffusion_batch(ids: torch.Tensor, levels: torch.Tensor, masked: torch.Tensor, spec: MaskingSpec,
                    options: DiffusionOptions) -> dict[str, torch.Tensor]:
    """Clean ids (B, N), levels t (B,), masked (B, N) bool -> the model batch (see the module docstring)."""
    noisy = ids.masked_fill(masked, spec.mask_token_id)
    positions, valid = target_layout(masked, options.decode)
    labels = torch.where(valid, ids.gather(1, positions), -100)
    weights = torch.where(valid, elbo_weights(levels, options)[:, None], 0.0)
    batch = {"input_ids": noisy if options.encoder_reads == "noisy" else ids, "positions": positions,
             "labels": labels, "target_weights": weights, "noise_level": levels,
             "num_tokens": torch.full((ids.shape[0],), float(ids.shape[1]))}
    if options.encoder_reads == "clean":
        batch["decoder_input_ids"] = noisy
    return batch


def diffusion_masking(ids: torch.Tensor, spec: MaskingSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Masked-diffusion corruption of packed ids (B, N) (no padding in packed shards: every position counts)."""
    options = spec.options or DiffusionOptions()
    levels = sample_levels(ids.shape[0], options, generator)
    masked = torch.rand(ids.shape, generator=generator) < levels[:, None]
    return diffusion_batch(ids, levels, masked, spec, options)


MASKING.add("diffusion", diffusion_masking, DiffusionOptions)
