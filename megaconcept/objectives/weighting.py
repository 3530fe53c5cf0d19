"""Loss weighting schemes (registry keyed by `objective.weighting.scheme`): the weighted terms -> one total.

    scheme(losses {term: scalar}, weights {term: float, warm-up applied}) -> (total, effective weights)

`fixed` is the plain weighted sum. `uncertainty` is Kendall, Gal & Cipolla (2018) homoscedastic-uncertainty
weighting in the LibMTL form  sum_i w_i * (L_i / (2 exp(s_i)) + s_i / 2)  with learned log-variances s_i,
clamped to [min_log_var, max_log_var]: for a loss that can be negative s_i -> -inf drives the total to -inf,
and as L_i -> 0 the weight 1 / (2 L_i) explodes, so it is refused for any term not bounded below by 0 and the
clamp bounds both the weight and the s_i / 2 reward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..model.registry import Registry, RegistryError


class FixedWeighting(nn.Module):
    """total = sum_i w_i L_i (w_i from the term's weight and warm-up); owns no parameters."""

    def __init__(self, options: Any, terms: dict[str, Any]) -> None:
        super().__init__()

    def forward(self, losses: dict[str, torch.Tensor], weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, Any]]:
        total: Optional[torch.Tensor] = None
        for name, loss in losses.items():
            term = loss * weights[name]
            total = term if total is None else total + term
        return total, dict(weights)


@dataclass
class UncertaintyOptions:
    init_log_var: float = 0.0
    """s_i at step 0 (effective weight 1 / (2 e^s) = 0.5)."""
    min_log_var: float = -2.0
    """Lower clamp of s_i: caps the effective weight at e^2 / 2 = 3.7."""
    max_log_var: float = 5.0
    """Upper clamp of s_i: keeps the effective weight above e^-5 / 2 = 0.0034."""

    def __post_init__(self) -> None:
        if not self.min_log_var < self.max_log_var:
            raise ValueError(f"min_log_var={self.min_log_var} must be below max_log_var={self.max_log_var}")


class UncertaintyWeighting(nn.Module):
    """Learned log-variances, one per term, in `log_vars` (checkpointed with the run, dropped by the export)."""

    def __init__(self, options: UncertaintyOptions, terms: dict[str, Any]) -> None:
        super().__init__()
        signed = [name for name, term in terms.items() if not term.nonnegative]
        if signed:
            raise RegistryError(
                f"objective.weighting.scheme=uncertainty cannot weight term {signed[0]!r}: its loss can be negative "
                f"or is unbounded below, which lets the weighting silence every other term; use scheme=fixed "
                f"(with warmup_steps) for it")
        self.names = list(terms)
        self.options = options
        self.log_vars = nn.Parameter(torch.full((len(self.names),), float(options.init_log_var)))

    def forward(self, losses: dict[str, torch.Tensor], weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, Any]]:
        s = self.log_vars.clamp(self.options.min_log_var, self.options.max_log_var)
        total: Optional[torch.Tensor] = None
        effective: dict[str, Any] = {}
        for i, name in enumerate(self.names):
            precision = 0.5 * torch.exp(-s[i])
            term = weights[name] * (losses[name] * precision + 0.5 * s[i])
            total = term if total is None else total + term
            effective[name] = (weights[name] * precision).detach()
        return total, effective


WEIGHTING: Registry[Callable[[Any, dict[str, Any]], nn.Module]] = Registry("objective.weighting.scheme")
WEIGHTING.add("fixed", FixedWeighting)
WEIGHTING.add("uncertainty", UncertaintyWeighting, UncertaintyOptions)
