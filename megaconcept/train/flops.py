"""Architecture-aware FLOP count and MFU for the concept encoder.

Counts matrix-multiply FLOPs (2*m*n*k each) of one training sample: forward once, backward twice the
forward (the usual 3x). Model FLOPs only, as MFU is defined: recomputation from activation checkpointing
or the chunked loss is not counted. Norms, softmax, RoPE and element-wise ops are ignored (< 1%).
An MLSM term (count_step_flops) adds its frozen teacher's forward to layer l and the FISTA targets, once (no
backward), and its d x k head; without an MLM-style term the d x V LM head is not run and not counted.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from ..model.bottleneck import BOTTLENECKS
from ..model.config import ConceptModelConfig

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' datasheets, without the 2:4 sparsity figure.
# Order matters: the first substring found in the device name wins ("H100 PCIe" before "H100").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500.0), ("B200", 2250.0), ("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0),
)


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward matmul FLOPs of one sample, by part of the model."""

    backbone: float
    concept_cross: float
    concept_self: float
    concept_mlp: float
    decoder: float
    lm_head: float
    bottleneck: float = 0.0
    """Between concepts and decoder (model.bottleneck; vae: its mu and logvar heads)."""
    objective_heads: float = 0.0
    """Heads owned by objective terms on the decoded positions (MLSM: d x k)."""
    teacher: float = 0.0
    """A frozen teacher's forward (MLSM: to layer l); no backward."""
    targets: float = 0.0
    """Computing targets without gradients (MLSM: FISTA codes); no backward."""

    @property
    def forward(self) -> float:
        """The trained part's forward (the 3x of `train` applies to it)."""
        return (self.backbone + self.concept_cross + self.concept_self + self.concept_mlp + self.bottleneck
                + self.decoder + self.lm_head + self.objective_heads)

    @property
    def train(self) -> float:
        """Forward + backward (2x forward) per sample, plus the frozen teacher and the targets once."""
        return 3.0 * self.forward + self.teacher + self.targets


def _mm(m: float, n: float, k: float) -> float:
    return 2.0 * m * n * k


def _llama_layers(n: int, layers: int, d: int, heads: int, kv_heads: int, ffn: int) -> float:
    """`layers` Llama layers over n tokens (full n x n scores: SDPA computes them under a causal mask too)."""
    kv = kv_heads * (d // heads)
    projections = _mm(n, d, d) * 2 + _mm(n, d, kv) * 2  # q, o ; k, v
    attention = _mm(n, n, d) * 2  # scores and weighted values over all query heads
    mlp = _mm(n, d, ffn) * 3
    return layers * (projections + attention + mlp)


def _backbone(cfg: ConceptModelConfig, n: int) -> float:
    b = cfg.backbone
    if not b.enabled:
        return 0.0
    return _llama_layers(n, b.num_layers, b.hidden_size, b.num_heads, b.num_kv_heads, b.intermediate_size)


def _diffusion_layer_extra(cfg: ConceptModelConfig, m: int) -> float:
    """A diffusion decoder layer's token self-attention among the m decoded positions and its AdaLN-Zero head."""
    options = (cfg.decoder_options or {}) if cfg.decoder == "diffusion" else {}
    d, extra = cfg.concept_dim, 0.0
    if options.get("self_attention"):
        extra += _mm(m, d, d) * 4 + _mm(m, m, d) * 2
    if options.get("time_conditioning"):
        extra += _mm(1, d, 3 * (3 if options.get("self_attention") else 2) * d)
    return extra


def count_flops(cfg: ConceptModelConfig, seq_len: int, decoded: int) -> FlopBreakdown:
    """One sample of `seq_len` tokens with `decoded` positions decoded and scored (the masked ones).

    Concept layers: cross-attention costs O(C*N) (queries are the C concepts, keys/values the N tokens),
    self-attention O(C^2); the bottleneck declares its own (BOTTLENECKS entries' forward_flops); the decoder's
    position queries read C concepts; the LM head runs only on the decoded positions (sparse decoding).
    """
    c, dc, dt, n, m = cfg.num_concepts, cfg.concept_dim, cfg.token_dim, seq_len, decoded
    mlp = _mm(c, dc, cfg.mlp_dim) * 3
    cross = _mm(c, dc, dc) * 2 + _mm(n, dt, dc) * 2 + _mm(c, n, dc) * 2  # q, o ; k, v of tokens ; attention
    if cfg.concept_layer == "slot":
        # k, v of the tokens once; per iteration q, o, attention, the GRU (input and hidden: 3D each) and the MLP.
        gru = _mm(c, dc, 3 * dc) * 2 if cfg.slot_update == "gru" else 0.0
        per_iteration = _mm(c, dc, dc) * 2 + _mm(c, n, dc) * 2 + gru + mlp
        cross = _mm(n, dt, dc) * 2 + cfg.slot_iterations * per_iteration
    self_attn = _mm(c, dc, dc) * 4 + _mm(c, c, dc) * 2
    dec_layer = (_mm(m, dc, dc) * 2 + _mm(c, dc, dc) * 2 + _mm(m, c, dc) * 2  # q, o ; k, v of concepts ; attn
                 + _mm(m, dc, cfg.mlp_dim) * 3 + _diffusion_layer_extra(cfg, m))
    head_in = dt if cfg.tie_word_embeddings else dc
    out_proj = _mm(m, dc, dt) if head_in != dc else 0.0
    return FlopBreakdown(
        backbone=_backbone(cfg, n), concept_cross=cfg.num_layers * cross, concept_self=cfg.num_layers * self_attn,
        concept_mlp=cfg.num_layers * mlp, decoder=cfg.decoder_layers * dec_layer + out_proj,
        lm_head=_mm(m, head_in, cfg.vocab_size or 0), bottleneck=BOTTLENECKS[cfg.bottleneck].forward_flops(cfg),
    )


LM_HEAD_TERMS = ("mlm", "diffusion")
"""Term kinds that run the d x V LM head on the decoded positions."""


def mlsm_flops(meta: Mapping[str, Any], seq_len: int, decoded: int, head_in: int,
               fista_iterations: int) -> tuple[float, float, float]:
    """(teacher, targets, head) forward FLOPs of one sample for an MLSM dictionary's metadata: the teacher's first
    l layers over the seq_len tokens; FISTA on the decoded rows: x D^T once (2 m k H) and one (m, k) x (k, k)
    product per iteration (2 m k^2; D D^T is computed once per run); the student's d x k head."""
    t, k, m = meta["teacher"], int(meta["atoms"]), decoded
    teacher = _llama_layers(seq_len, int(meta["layer"]), int(t["hidden_size"]), int(t["num_heads"]),
                            int(t["num_kv_heads"]), int(t["intermediate_size"]))
    targets = _mm(m, int(t["hidden_size"]), k) + fista_iterations * _mm(m, k, k)
    return teacher, targets, _mm(m, head_in, k)


def count_step_flops(cfg: ConceptModelConfig, terms: Mapping[str, Any], seq_len: int, decoded: int) -> FlopBreakdown:
    """count_flops for a run's objective.terms: MLSM terms add their teacher, FISTA and head (their dictionary's
    metadata names the teacher); the LM head counts only when a term runs it (mlm, diffusion) or no MLSM term
    replaces it."""
    base = count_flops(cfg, seq_len, decoded)
    kinds = {name: (v.get("kind", name) if isinstance(v, Mapping) else name) for name, v in terms.items()
             if v is not None}
    mlsm = [name for name, kind in kinds.items() if kind == "mlsm"]
    if not mlsm:
        return base
    head_in = cfg.token_dim if cfg.tie_word_embeddings else cfg.concept_dim
    teacher = targets = heads = 0.0
    for name in mlsm:
        options = terms[name]
        with open(os.path.join(str(options["dictionary"]), "mlsm_dictionary.json"), encoding="utf-8") as handle:
            meta = json.load(handle)
        parts = mlsm_flops(meta, seq_len, decoded, head_in, int(options.get("fista_iterations", 100)))
        teacher, targets, heads = teacher + parts[0], targets + parts[1], heads + parts[2]
    lm_head = base.lm_head if any(kind in LM_HEAD_TERMS for kind in kinds.values()) else 0.0
    return replace(base, lm_head=lm_head, objective_heads=heads, teacher=teacher, targets=targets)


def peak_flops(device_name: Optional[str], override_tflops: float = 0.0) -> Optional[float]:
    """Dense bf16 peak FLOP/s of one device: the override when set, else from the name; None = unknown (CPU)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if not device_name:
        return None
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops * 1e12
    return None


def mfu(train_flops_per_sample: float, samples_per_sec: float, num_devices: int, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilization: achieved model FLOP/s over the devices' combined peak."""
    if peak is None or num_devices <= 0:
        return None
    return train_flops_per_sample * samples_per_sec / (num_devices * peak)
