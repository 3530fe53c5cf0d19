"""Objectives composed: the configured terms, their weights and schedules, one weighting scheme, one total.

    ObjectiveSet(outputs, batch) -> (total loss, metrics)
    metrics: loss/<term> (unweighted), weight/<term> (effective, schedule and scheme applied), <term>/<stat>

`objective.terms` maps a term name to its config; the name is the registry key unless the entry names one
with `kind` (two terms of one kind), and a null entry removes a default term (`objective.terms.mlm=null`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from ..model.registry import Registry, RegistryError
from .base import OBJECTIVES, BuildContext, TermConfig
from .weighting import WEIGHTING
from . import gate as _gate, mlm as _mlm, regularizers as _regularizers  # noqa: F401  (register the built-in terms)
from . import contrastive as _contrastive  # noqa: F401
from . import vae as _vae  # noqa: F401  (registers kl)
from . import diffusion as _diffusion  # noqa: F401
from . import mlsm as _mlsm  # noqa: F401  (masked latent semantic modeling)


def term_configs(terms: Mapping[str, Any]) -> dict[str, tuple[str, TermConfig]]:
    """objective.terms -> {term name: (registry key, its config dataclass)}; one-line errors on bad entries."""
    out: dict[str, tuple[str, TermConfig]] = {}
    for name, values in terms.items():
        if values is None:
            continue  # removed on purpose
        if not isinstance(values, Mapping):
            raise RegistryError(f"objective.terms.{name} must be a mapping of options (or null to remove it), "
                                f"got {values!r}")
        values = dict(values)
        kind = values.pop("kind", name)
        where = f"objective.terms.{name}"
        if kind not in OBJECTIVES:
            raise RegistryError(f"{where}: {kind!r} is not a known objective; valid: {', '.join(OBJECTIVES.keys())}")
        cfg = OBJECTIVES.options(kind, values, where)
        if cfg.weight < 0 or cfg.warmup_steps < 0:
            raise RegistryError(f"{where}: weight={cfg.weight} and warmup_steps={cfg.warmup_steps} must be >= 0")
        check_schedule(cfg, where)
        out[name] = (kind, cfg)
    if not out:
        raise RegistryError("objective.terms is empty; give at least one term (e.g. objective.terms.mlm={})")
    return out


@dataclass
class CyclicalOptions:
    """schedule_options of schedule=cyclical: Fu et al. 2019 (haofuml/cyclical_annealing frange_cycle_linear)."""

    cycle_steps: int = 0
    """Optimizer steps the cycles spread over (required); from this step on the weight stays full."""
    n_cycles: int = 4
    """Cycles within cycle_steps; cycle c starts at step floor(c * cycle_steps / n_cycles)."""
    ratio: float = 0.5
    """Share of each cycle over which the factor rises linearly from 0 to 1; it stays 1 for the rest."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_cycles <= self.cycle_steps:
            raise ValueError(f"cycle_steps={self.cycle_steps} and n_cycles={self.n_cycles} must satisfy "
                             f"1 <= n_cycles <= cycle_steps (cycle_steps is required)")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio={self.ratio} must be in (0, 1]")


def _linear(options: None, cfg: TermConfig, step: int) -> float:
    """min(1, (step + 1) / warmup_steps); 1 without warm-up (the warm-up every term always had)."""
    return 1.0 if cfg.warmup_steps <= 0 else min(1.0, (step + 1) / cfg.warmup_steps)


def _cyclical(options: CyclicalOptions, cfg: TermConfig, step: int) -> float:
    """min(1, tau / (ratio * period)): period = cycle_steps / n_cycles, tau = steps since the current cycle's start
    (integer starts, as the reference's int(c * period)); 1 from cycle_steps on."""
    total, cycles = options.cycle_steps, options.n_cycles
    if step >= total:
        return 1.0
    cycle = min(cycles - 1, ((step + 1) * cycles - 1) // total)  # the last c with floor(c * total / cycles) <= step
    tau = step - cycle * total // cycles
    return min(1.0, tau * cycles / (total * options.ratio))


WEIGHT_SCHEDULES: Registry[Callable[[Any, TermConfig, int], float]] = Registry("objective.terms.schedule")
"""A term's weight factor in [0, 1] at an optimizer step: fn(schedule options, term config, step). The step is
resumed state, so a resumed run continues the schedule where it stopped."""
WEIGHT_SCHEDULES.add("linear", _linear)
WEIGHT_SCHEDULES.add("cyclical", _cyclical, CyclicalOptions)


def check_schedule(cfg: TermConfig, where: str) -> None:
    """One-line RegistryError for an unknown schedule, bad schedule_options or a warm-up it does not use."""
    if cfg.schedule not in WEIGHT_SCHEDULES:
        raise RegistryError(f"{where}.schedule={cfg.schedule!r} is unknown; "
                            f"valid: {', '.join(WEIGHT_SCHEDULES.keys())}")
    if cfg.schedule_options is not None and not isinstance(cfg.schedule_options, Mapping):
        raise RegistryError(f"{where}.schedule_options must be a mapping of options, got {cfg.schedule_options!r}")
    WEIGHT_SCHEDULES.options(cfg.schedule, cfg.schedule_options, f"{where}.schedule_options")
    if cfg.schedule != "linear" and cfg.warmup_steps:
        raise RegistryError(f"{where}: warmup_steps={cfg.warmup_steps} is the linear schedule's; schedule="
                            f"{cfg.schedule} shapes the weight itself, so set warmup_steps=0")


def warmed_weight(cfg: TermConfig, step: int) -> float:
    """The term's weight at optimizer step `step` (0-based): weight times its schedule's factor (linear: from
    1/warmup_steps up to the full weight; cyclical: see _cyclical)."""
    options = WEIGHT_SCHEDULES.options(cfg.schedule, cfg.schedule_options, "objective.terms.schedule_options")
    return cfg.weight * WEIGHT_SCHEDULES[cfg.schedule](options, cfg, step)


class ObjectiveSet(nn.Module):
    """Every term of the run plus the weighting scheme; parameters of either live under `objectives.`."""

    def __init__(self, terms: dict[str, tuple[str, TermConfig]], scheme: str, options: Optional[Mapping[str, Any]],
                 ctx: BuildContext) -> None:
        super().__init__()
        self.configs = {name: cfg for name, (_, cfg) in terms.items()}
        self.kinds = {name: kind for name, (kind, _) in terms.items()}
        self.terms = nn.ModuleDict({name: OBJECTIVES[kind](cfg, ctx) for name, (kind, cfg) in terms.items()})
        self.weighting = WEIGHTING[scheme](WEIGHTING.options(scheme, options, "objective.weighting.options"),
                                           dict(self.terms))
        decoder = getattr(ctx.model, "decoder", None)
        self._decoder = (decoder,)  # a tuple: the decoder stays the model's module
        self.decoder_stats: tuple[str, ...] = getattr(decoder, "stat_names", ())
        self.step = 0
        """The optimizer step the next forward belongs to (the trainer sets it; warm-ups read it)."""
        # A plain MLM term for probe_loss, with the run's kernel (vocab-parallel under TP); it owns no parameters.
        self._probe = (OBJECTIVES["mlm"](OBJECTIVES.options("mlm"), replace(ctx, say=lambda _message: None)),)
        self.collected: list[dict[str, torch.Tensor]] = []
        """Metrics of forwards the trainer did not see returned (a pipeline's last stage): drained per step."""

    def probe_loss(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The LM head's mean cross-entropy at batch["labels"] (the held-out fixed-masking number every run reports,
        whatever its terms)."""
        return self._probe[0](outputs, batch)["loss"]

    @property
    def reads(self) -> tuple[str, ...]:
        """Batch keys any term reads, sorted (the order a pipeline sends them in)."""
        return tuple(sorted({key for term in self.terms.values() for key in term.reads}))

    def metric_names(self) -> list[str]:
        """Every metric key forward returns, in order (fixed by the config: the same on every rank)."""
        names = [f"{kind}/{name}" for name in self.terms for kind in ("loss", "weight")]
        names += [f"{name}/{stat}" for name, term in self.terms.items() for stat in term.stats]
        return names + [f"decoder/{stat}" for stat in self.decoder_stats]

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        results = {name: term(outputs, batch) for name, term in self.terms.items()}
        losses = {name: r["loss"] for name, r in results.items()}
        weights = {name: warmed_weight(cfg, self.step) for name, cfg in self.configs.items()}
        total, effective = self.weighting(losses, weights)
        total = _nonfinite_poisons_gradients(total)
        device = total.device
        metrics: dict[str, torch.Tensor] = {}
        for name in self.terms:
            metrics[f"loss/{name}"] = losses[name].detach().float()
            metrics[f"weight/{name}"] = torch.as_tensor(effective[name], dtype=torch.float32, device=device)
        for name, term in self.terms.items():
            for stat in term.stats:
                metrics[f"{name}/{stat}"] = results[name][stat].detach().float()
        if self.decoder_stats:  # e.g. sim_matrix's gate: is the concept path used?
            with torch.no_grad():
                stats = self._decoder[0].statistics(outputs.aux)
            metrics.update({f"decoder/{k}": stats[k].float() for k in self.decoder_stats})
        return total, metrics

    def batch_makers(self, separator_id: int, seq_len: int) -> list[Any]:
        """What the data workers add to each batch for the terms (their `batch_maker`), e.g. document views;
        `separator_id` ends each document in the shards (their manifest's `separator_id`)."""
        return [term.batch_maker(separator_id, seq_len) for term in self.terms.values() if hasattr(term, "batch_maker")]

    def describe(self) -> str:
        parts = [f"{name} ({self.kinds[name]}, weight {cfg.weight}"
                 + (f", warm-up {cfg.warmup_steps} steps" if cfg.warmup_steps else "")
                 + (f", {cfg.schedule} schedule)" if cfg.schedule != "linear" else ")")
                 for name, cfg in self.configs.items()]
        return f"objectives: {', '.join(parts)}; weighting {type(self.weighting).__name__}"


def _nonfinite_poisons_gradients(total: torch.Tensor) -> torch.Tensor:
    """`total`, unchanged when finite; when not, every gradient it produces is NaN as well. A non-finite loss
    must never update the weights, and DeepSpeed's optimizers skip exactly the steps whose gradient norm is not
    finite, on every rank at once (megaconcept.train.guard counts them). A NaN term whose gradients happen to be
    finite (a constant, a detached statistic) would otherwise slip through. No host sync: when finite the added
    term is 0 * total and its gradient 0, so values and gradients stay bit-for-bit what they were."""
    poison = torch.where(torch.isfinite(total.detach()), 0.0, float("nan"))
    return total + poison * total


def build_objectives(terms: Mapping[str, Any], scheme: str, options: Optional[Mapping[str, Any]],
                     ctx: BuildContext) -> ObjectiveSet:
    return ObjectiveSet(term_configs(terms), scheme, options, ctx)

