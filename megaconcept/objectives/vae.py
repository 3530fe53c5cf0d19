"""The KL term of a VAE bottleneck (model.bottleneck=vae): KL(q(z|x) || N(0, I)) per concept, with free bits.

    kl[b, c] = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1)           (B, C) nats, in fp32
    K[c]     = mean_b kl[b, c], averaged over the data-parallel group  (C,)  the batch-mean KL of each concept
    loss     = mean_c max(K[c], free_bits)                             the floor holds where K[c] <= free_bits

The loss averages over concepts, so a weight means the same at any num_concepts; the ELBO's KL (summed over
concepts) is C times it and is what the `kl` statistic reports. Free bits (Kingma et al. 2016, openai/iaf) clamp
the batch mean, not each sample: a concept at or below the floor contributes exactly free_bits and no gradient.
A per-GPU batch mean would make that decision rank-dependent, so the per-concept means are all-reduced over the
data-parallel group first (RECIPES §5); the reported statistics are the raw, unclamped values.
The weight's annealing (linear warm-up, or cyclical: Fu et al. 2019) is the generic term schedule
(objective.terms.kl.schedule, megaconcept.objectives.compose.WEIGHT_SCHEDULES).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..model.registry import RegistryError
from ..parallel.collectives import group_size
from .base import OBJECTIVES, BuildContext, Objective, TermConfig


@dataclass
class KLConfig(TermConfig):
    """objective.terms.kl: the VAE bottleneck's KL to the standard normal prior."""

    free_bits: float = 0.0
    """Nats per concept: a concept whose batch-mean KL is at or below it contributes exactly free_bits and no
    gradient, so the KL cannot squeeze it further (0.25 in IAF); 0 = no floor."""
    active_threshold: float = 0.01
    """A (concept, dim) is an active unit when the variance of mu over the batch is >= this (calc_au's delta,
    He et al. 2019 / Optimus)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.free_bits) and self.free_bits >= 0):
            raise ValueError(f"free_bits={self.free_bits} must be finite and >= 0")
        if not (math.isfinite(self.active_threshold) and self.active_threshold > 0):
            raise ValueError(f"active_threshold={self.active_threshold} must be finite and > 0")


def kl_per_concept(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """mu, logvar (B, C, D) -> KL(N(mu, exp(logvar)) || N(0, I)) (B, C) in nats, summed over D, in fp32.
    expm1(lv) - lv is exp(lv) - lv - 1 without the cancellation near lv = 0, and never below 0."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + torch.expm1(logvar) - logvar).sum(dim=-1)


def _all_reduce_sum(tensor: torch.Tensor, group: Optional[Any]) -> torch.Tensor:
    """A detached copy of `tensor` summed over `group` (None = the whole world); itself in a world of one."""
    if group_size(group) == 1:
        return tensor.detach()
    total = tensor.detach().clone()
    dist.all_reduce(total, group=group)
    return total


def group_mean(local: torch.Tensor, group: Optional[Any]) -> torch.Tensor:
    """This rank's batch means (C,) -> the group's mean in value, this rank's `local` in gradient.

    Every rank's batch is the same size, so the mean of the means is the global batch mean. Data-parallel
    training averages gradients over the group, so each rank backpropagating its own means through decisions
    taken on the global value (the free-bits floor) gives exactly the single-process gradient of the
    global-batch loss. `local - local.detach()` is exactly 0 in value: the result equals the group mean bit for bit.
    """
    world = group_size(group)
    if world == 1:
        return local
    return _all_reduce_sum(local, group) / world + (local - local.detach())


def active_units(mu: torch.Tensor, threshold: float, group: Optional[Any]) -> torch.Tensor:
    """mu (B, C, D) -> number of (concept, dim) whose variance of mu over the group's batch is >= threshold.
    Unbiased variance (n - 1), two passes, as calc_au; a batch of one has no variance (0 active)."""
    mu = mu.detach().float()
    count = torch.full((1,), float(mu.shape[0]), device=mu.device)  # a fill kernel: no host-to-device copy
    sums = _all_reduce_sum(torch.cat([mu.sum(dim=0).flatten(), count]), group)
    n = sums[-1]
    mean = (sums[:-1] / n).view_as(mu[0])  # (C, D)
    squares = _all_reduce_sum((mu - mean).square().sum(dim=0), group)
    variance = squares / (n - 1).clamp(min=1)
    return (variance >= threshold).sum().float()


class KLObjective(Objective):
    """mean_c max(K[c], free_bits) (see the module docstring) from the bottleneck's vae_mu, vae_logvar (B, C, D).

    Stats, all raw (before the floor) and equal on every data-parallel rank: kl = sum_c K[c] (the ELBO's KL per
    sample, nats); kl_concept_min / _mean / _max over K; below_free_bits = concepts with K[c] <= free_bits (held
    at the floor, no gradient); active_units = active (concept, dim) pairs out of C * D.
    """

    needs_aux = ("vae_mu", "vae_logvar")
    stats = ("kl", "kl_concept_min", "kl_concept_mean", "kl_concept_max", "below_free_bits", "active_units")
    nonnegative = True  # the KL is >= 0 term by term, and so is the floor

    def __init__(self, cfg: KLConfig, ctx: BuildContext) -> None:
        super().__init__()
        bottleneck = getattr(ctx.model, "bottleneck", None)
        if not set(self.needs_aux) <= set(getattr(bottleneck, "aux_names", ())):
            raise RegistryError(f"objective.terms.kl needs a posterior (model.bottleneck=vae); "
                                f"{type(bottleneck).__name__} has none")
        self.free_bits, self.active_threshold = cfg.free_bits, cfg.active_threshold
        self.group = ctx.data_group

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mu, logvar = outputs.aux["vae_mu"], outputs.aux["vae_logvar"]  # (B, C, D)
        per_concept = group_mean(kl_per_concept(mu, logvar).mean(dim=0), self.group)  # (C,)
        floor = torch.full_like(per_concept, self.free_bits)
        # where, not maximum: at or below the floor the value is exactly free_bits and the gradient exactly 0.
        loss = torch.where(per_concept > floor, per_concept, floor).mean()
        with torch.no_grad():
            raw = per_concept.detach()
            return {"loss": loss, "kl": raw.sum(), "kl_concept_min": raw.min(), "kl_concept_mean": raw.mean(),
                    "kl_concept_max": raw.max(), "below_free_bits": (raw <= self.free_bits).sum().float(),
                    "active_units": active_units(mu, self.active_threshold, self.group)}


OBJECTIVES.add("kl", KLObjective, KLConfig)
