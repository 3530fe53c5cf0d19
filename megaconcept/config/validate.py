"""Cross-field rules of the run config. Each rule returns one line naming the keys and the fix."""
from __future__ import annotations

import math
from typing import Callable, Optional

from ..model.encoder import READ_POSITIONS
from .schema import RunConfig

Rule = Callable[[RunConfig], Optional[str]]


def _heads_divide(cfg: RunConfig) -> Optional[str]:
    m = cfg.model
    if m.concept_dim % m.num_heads:
        return f"model.concept_dim={m.concept_dim} is not divisible by model.num_heads={m.num_heads}; pick heads dividing it"
    return None


def _positive(cfg: RunConfig) -> Optional[str]:
    checks = {
        "model.num_concepts": cfg.model.num_concepts, "model.concept_dim": cfg.model.concept_dim,
        "model.num_layers": cfg.model.num_layers, "model.num_heads": cfg.model.num_heads,
        "model.decoder_layers": cfg.model.decoder_layers, "train.max_steps": cfg.train.max_steps,
        "train.micro_batch_size": cfg.train.micro_batch_size, "train.grad_accum_steps": cfg.train.grad_accum_steps,
        "train.log_interval": cfg.train.log_interval, "checkpoint.interval": cfg.checkpoint.interval,
        "checkpoint.keep_last": cfg.checkpoint.keep_last, "objective.ce_chunk_size": cfg.objective.ce_chunk_size,
        "model.max_position_embeddings": cfg.model.max_position_embeddings,
        "parallel.tensor": cfg.parallel.tensor, "parallel.pipeline": cfg.parallel.pipeline,
        "parallel.vocab_multiple": cfg.parallel.vocab_multiple,
    }
    bad = [f"{k}={v}" for k, v in checks.items() if v <= 0]
    return f"{', '.join(bad)} must be positive" if bad else None


def _probabilities(cfg: RunConfig) -> Optional[str]:
    mk = cfg.objective.masking
    if not 0.0 < mk.rate < 1.0:
        return f"objective.masking.rate={mk.rate} must be in (0, 1)"
    if mk.mask_prob < 0 or mk.random_prob < 0 or mk.mask_prob + mk.random_prob > 1.0:
        return "objective.masking.mask_prob + random_prob must lie in [0, 1] (BERT uses 0.8 and 0.1)"
    if not 0.0 <= cfg.model.dropout < 1.0:
        return f"model.dropout={cfg.model.dropout} must be in [0, 1)"
    return None


def _choices(cfg: RunConfig) -> Optional[str]:
    allowed = {
        "train.precision": (cfg.train.precision, ("auto", "bf16", "fp32")),
        "logging.wandb_mode": (cfg.logging.wandb_mode, ("offline", "online", "disabled")),
    }
    from ..objectives.cross_entropy import CHOICES

    allowed["objective.cross_entropy"] = (cfg.objective.cross_entropy, CHOICES)
    for key, (value, valid) in allowed.items():
        if value not in valid:
            return f"{key}={value!r} is not one of {', '.join(valid)}"
    return None


def _optimizer(cfg: RunConfig) -> Optional[str]:
    t = cfg.train
    if t.lr <= 0 or not 0 <= t.min_lr_ratio <= 1:
        return f"train.lr={t.lr} must be > 0 and train.min_lr_ratio={t.min_lr_ratio} in [0, 1]"
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        return f"train.betas={list(t.betas)} must be two numbers in [0, 1)"
    if t.warmup_steps < 0 or t.grad_clip < 0 or t.weight_decay < 0 or t.peak_tflops < 0:
        return "train.warmup_steps, train.grad_clip, train.weight_decay and train.peak_tflops must be >= 0"
    return None


def _registries(cfg: RunConfig) -> Optional[str]:
    # Imported here: the registries live with their components, the config only names them.
    from ..model.decoders import DECODERS, POSITION_QUERIES
    from ..model.layers import ATTENTION
    from ..objectives.masking import MASKING

    for value, registry in ((cfg.model.decoder, DECODERS), (cfg.model.decoder_positions, POSITION_QUERIES),
                            (cfg.model.attention, ATTENTION), (cfg.objective.masking.strategy, MASKING)):
        if value not in registry:
            return f"{registry.key}={value!r} is unknown; valid: {', '.join(registry.keys())}"
    return None


def _masking(cfg: RunConfig) -> Optional[str]:
    from ..model.registry import RegistryError
    from ..objectives.masking import MASK_SCHEDULES, MASKING

    mk = cfg.objective.masking
    if mk.final_rate is not None and not 0.0 < mk.final_rate < 1.0:
        return f"objective.masking.final_rate={mk.final_rate} must be in (0, 1)"
    if mk.schedule_steps < 0:
        return f"objective.masking.schedule_steps={mk.schedule_steps} must be >= 0"
    if mk.schedule != "constant" and mk.final_rate is None:
        return f"objective.masking.schedule={mk.schedule} needs objective.masking.final_rate (the rate it moves to)"
    try:
        MASKING.options(mk.strategy, mk.options, "objective.masking.options")
        MASK_SCHEDULES.options(mk.schedule, {"final_rate": mk.final_rate, "steps": mk.schedule_steps})
    except RegistryError as exc:
        return str(exc)
    return None


def _objectives(cfg: RunConfig) -> Optional[str]:
    from ..model.registry import RegistryError
    from ..objectives.base import OBJECTIVES
    from ..objectives.compose import term_configs
    from ..objectives.weighting import WEIGHTING

    o = cfg.objective
    try:
        terms = term_configs(o.terms)
        WEIGHTING.options(o.weighting.scheme, o.weighting.options, "objective.weighting.options")
    except RegistryError as exc:
        return str(exc)
    from ..model.decoders import DECODERS

    if cfg.model.decoder not in DECODERS:
        return None  # _registries names it
    produced = set(getattr(DECODERS[cfg.model.decoder], "aux_names", ()))
    for name, (kind, _) in terms.items():
        missing = sorted(set(OBJECTIVES[kind].needs_aux) - produced)
        if missing:
            makers = [k for k in DECODERS.keys() if set(OBJECTIVES[kind].needs_aux) <= set(DECODERS[k].aux_names)]
            return (f"objective.terms.{name} reads the decoder's {', '.join(missing)}, which model.decoder="
                    f"{cfg.model.decoder} does not produce; use model.decoder={' or '.join(makers)}")
    if o.weighting.scheme == "uncertainty":
        signed = [name for name, (kind, _) in terms.items() if not OBJECTIVES[kind].nonnegative]
        if signed:
            return (f"objective.weighting.scheme=uncertainty cannot weight term {signed[0]!r}: its loss can be "
                    f"negative or is unbounded below; use scheme=fixed (with warmup_steps) for it")
    return None


def backbone_tensor_parallel_degree(cfg: RunConfig) -> int:
    """Largest TP degree splitting the backbone's query and kv heads (SmolLM2: gcd(9, 3) = 3); the concept
    heads must split the same way so one TP degree serves the whole model."""
    b = cfg.model.backbone
    return math.gcd(b.num_heads, b.num_kv_heads) if b.enabled else 1


def _backbone(cfg: RunConfig) -> Optional[str]:
    b, t = cfg.model.backbone, cfg.train
    if b.read_positions not in READ_POSITIONS:
        return f"model.backbone.read_positions={b.read_positions!r} must be one of {', '.join(READ_POSITIONS)}"
    if b.num_layers < 0 or b.layout not in ("last", "interleaved"):
        return f"model.backbone.num_layers={b.num_layers} must be >= 0 and layout={b.layout!r} one of last, interleaved"
    if b.init_from and not b.enabled:
        return "model.backbone.init_from is set but model.backbone.num_layers=0; give the backbone layers"
    if b.source_layers is not None and len(b.source_layers) != b.num_layers:
        return f"model.backbone.source_layers lists {len(b.source_layers)} layers, num_layers is {b.num_layers}"
    if b.enabled and (b.hidden_size % b.num_heads or b.num_heads % b.num_kv_heads):
        return (f"model.backbone: num_heads={b.num_heads} must divide hidden_size={b.hidden_size} and "
                f"num_kv_heads={b.num_kv_heads} must divide num_heads")
    tp = backbone_tensor_parallel_degree(cfg)
    if tp > 1 and cfg.model.num_heads % tp:
        return (f"model.num_heads={cfg.model.num_heads} is not divisible by {tp}, the tensor-parallel degree the "
                f"backbone's heads ({b.num_heads}/{b.num_kv_heads} kv) allow; use a multiple of {tp}")
    if t.backbone_lr_mult <= 0 or t.backbone_freeze_steps < 0:
        return "train.backbone_lr_mult must be > 0 and train.backbone_freeze_steps >= 0"
    return None


def _analysis(cfg: RunConfig) -> Optional[str]:
    a = cfg.analysis
    if a.interval < 0 or a.samples < 2 or not 0.0 <= a.collapse_fraction <= 1.0:
        return (f"analysis.interval={a.interval} must be >= 0 (0 = off), analysis.samples={a.samples} >= 2 and "
                f"analysis.collapse_fraction={a.collapse_fraction} in [0, 1]")
    if not a.heldout:
        return "analysis.heldout is empty; use last_shard or a shard directory"
    return None


RULES: list[Rule] = [_positive, _heads_divide, _probabilities, _choices, _optimizer, _registries, _masking,
                     _objectives, _backbone, _analysis]


def validate(cfg: RunConfig) -> list[str]:
    """Every violated rule's message (empty when the config is consistent)."""
    return [msg for rule in RULES if (msg := rule(cfg)) is not None]
