"""Allowed range of every numeric config value, as one table checked before any cross-field rule.

Each row is ``dotted key -> Allowed(check, text)``; a violation reads ``KEY=VALUE TEXT`` (e.g.
``model.num_heads=0 must be positive``). Cross-field rules in :mod:`megaconcept.config.validate` only ever
see values that passed here, so they can divide by and index with them. A test walks the config tree and
fails when a numeric field has no row here (or in :data:`CHECKED_BY_RULES`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, Iterator, Mapping

from ..model.config import CONFIG_VERSION
from .schema import RunConfig


@dataclass(frozen=True)
class Allowed:
    check: Callable[[Any], bool]
    """True when the value is allowed; only called with values of the field's type."""
    text: str
    """The allowed range as the rest of the sentence after ``KEY=VALUE``."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    # Python ints are exact and unbounded; math.isfinite would overflow converting a huge one.
    return _number(value) and (isinstance(value, int) or math.isfinite(value))


def count(low: int) -> Allowed:
    """An integer >= low (steps, sizes, indices)."""
    return Allowed(lambda v: _number(v) and v >= low, "must be positive" if low == 1 else f"must be >= {low}")


def above(low: float) -> Allowed:
    """A finite number > low."""
    return Allowed(lambda v: _finite(v) and v > low, f"must be finite and > {low:g}")


def at_least(low: float) -> Allowed:
    """A finite number >= low."""
    return Allowed(lambda v: _finite(v) and v >= low, f"must be finite and >= {low:g}")


def within(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Allowed:
    """A number in an interval; NaN fails every comparison, so it is refused too."""
    def check(v: Any) -> bool:
        return (_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))

    text = f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Allowed(check, text)


def optional(allowed: Allowed) -> Allowed:
    """None (the field's documented "unset") or a value ``allowed`` accepts."""
    return Allowed(lambda v: v is None or allowed.check(v), f"{allowed.text} (or null)")


def each(allowed: Allowed, text: str, length: int | None = None) -> Allowed:
    """A list whose items ``allowed`` accepts (exactly ``length`` of them when given), described by ``text``."""
    def check(v: Any) -> bool:
        return isinstance(v, list) and (length is None or len(v) == length) and all(allowed.check(x) for x in v)

    return Allowed(check, text)


UNIT = within(0.0, 1.0)
"""Fractions and probabilities, both ends allowed."""
OPEN_UNIT = within(0.0, 1.0, low_open=True, high_open=True)
"""Rates that must leave something masked and something visible."""

RANGES: dict[str, Allowed] = {
    # numpy's SeedSequence refuses negative seeds; torch's seeds are 64-bit and the trainer adds the step.
    "seed": Allowed(lambda v: _number(v) and 0 <= v < 2**63, "must be in [0, 2**63)"),
    "model.vocab_size": optional(count(1)),
    "model.num_concepts": count(1),
    "model.concept_dim": count(1),
    "model.num_layers": count(1),
    "model.num_heads": count(1),
    "model.mlp_ratio": above(0.0),
    "model.slot_iterations": count(1),
    "model.decoder_layers": count(1),
    "model.max_position_embeddings": count(1),
    "model.dropout": within(0.0, 1.0, high_open=True),
    "model.norm_eps": above(0.0),
    "model.init_std": above(0.0),
    "model.concept_init_std": above(0.0),
    # Version 1 is upgraded on load (ConceptModelConfig.__post_init__); anything else is not this code's.
    "model.config_version": Allowed(lambda v: v == CONFIG_VERSION, f"must be {CONFIG_VERSION} (1 is upgraded)"),
    "model.backbone.num_layers": count(0),
    "model.backbone.hidden_size": count(1),
    "model.backbone.num_heads": count(1),
    "model.backbone.num_kv_heads": count(1),
    "model.backbone.intermediate_size": count(1),
    "model.backbone.rope_theta": above(0.0),
    "model.backbone.norm_eps": above(0.0),
    "model.backbone.source_layers": optional(each(count(0), "must be a list of layer indices >= 0")),
    "objective.ce_chunk_size": count(1),
    "objective.masking.rate": OPEN_UNIT,
    "objective.masking.mask_prob": UNIT,
    "objective.masking.random_prob": UNIT,
    "objective.masking.final_rate": optional(OPEN_UNIT),
    "objective.masking.schedule_steps": count(0),
    "data.num_workers": count(0),
    "train.max_steps": count(1),
    "train.micro_batch_size": count(1),
    "train.grad_accum_steps": count(1),
    "train.lr": above(0.0),
    "train.min_lr_ratio": UNIT,
    "train.warmup_steps": count(0),
    "train.weight_decay": at_least(0.0),
    "train.betas": each(within(0.0, 1.0, high_open=True), "must be two numbers in [0, 1)", length=2),
    "train.grad_clip": at_least(0.0),
    "train.log_interval": count(1),
    "train.backbone_lr_mult": above(0.0),
    "train.backbone_freeze_steps": count(0),
    "train.peak_tflops": at_least(0.0),
    "guard.max_consecutive_skips": count(0),
    "guard.max_total_skips": count(0),
    "guard.spike_factor": Allowed(lambda v: v == 0 or (_finite(v) and v > 1), "must be 0 (off) or finite and > 1"),
    "guard.spike_window": count(1),
    "parallel.tensor": count(1),
    "parallel.pipeline": count(1),
    "parallel.vocab_multiple": count(1),
    "checkpoint.interval": count(1),
    "checkpoint.keep_last": count(1),
    "analysis.unigram_tokens": count(0),
}

CHECKED_BY_RULES = {"analysis.interval", "analysis.samples", "analysis.collapse_fraction"}
"""Numeric keys ranged by a rule of validate.py instead (its one message names all three; a CLI test pins it)."""

OPTION_TREES = ("objective.terms", "objective.weighting.options", "objective.masking.options",
                "model.bottleneck_options")
"""Free-form option mappings: their registries check names and types, here every number must be finite."""


def _numbers(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers(f"{prefix}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _numbers(f"{prefix}[{index}]", item)
    elif isinstance(value, float):
        yield prefix, value


def range_problems(cfg: RunConfig) -> dict[str, str]:
    """Dotted key -> one-line message, for every value outside its range (empty when all are in range)."""
    problems = {key: f"{key}={value} {allowed.text}" for key, allowed in RANGES.items()
                if not allowed.check(value := attrgetter(key)(cfg))}
    for tree in OPTION_TREES:
        for key, value in _numbers(tree, attrgetter(tree)(cfg)):
            if not math.isfinite(value):
                problems[key] = f"{key}={value} must be finite"
    return problems
