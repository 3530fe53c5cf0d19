"""The typed config tree: one dataclass per component, composed by :class:`RunConfig`.

Defaults are the embedded demo recipe (a tiny concept encoder on the embedded HotpotQA-paragraph
corpus), so `launchers/pretrain.py` with no `--config` runs end to end. Each field's docstring is the
comment right under it. Cross-field rules live in :mod:`megaconcept.config.validate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..model.config import ConceptModelConfig


@dataclass
class MaskingSection:
    strategy: str = "bert"
    """Masking registry key (see megaconcept.objectives.masking.MASKING)."""
    rate: float = 0.15
    """Fraction of positions per sample chosen as prediction targets."""
    mask_prob: float = 0.8
    """Of the chosen positions: share replaced by the mask token."""
    random_prob: float = 0.1
    """Of the chosen positions: share replaced by a random ordinary (non-special) token (the rest keep theirs)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The strategy's own options (span: p, min_words, max_words)."""
    schedule: str = "constant"
    """Masking-rate schedule over optimizer steps (objective.masking.MASK_SCHEDULES): constant | linear | step."""
    final_rate: Optional[float] = None
    """linear: the rate reached after schedule_steps; step: the rate from schedule_steps on."""
    schedule_steps: int = 0
    """linear: steps from `rate` to final_rate; step: the step the rate switches at."""
    mask_later: bool = False
    """MAE-LM: targets are left out of the keys/values the encoder reads (attention_mask 0 there), so concepts
    never attend to mask tokens; the decoder still predicts them."""


@dataclass
class WeightingSection:
    scheme: str = "fixed"
    """How the weighted terms become one loss (megaconcept.objectives.weighting.WEIGHTING): fixed = the weighted
    sum; uncertainty = Kendall-Gal learned log-variances (refused for terms that can be negative)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The scheme's own options (uncertainty: init_log_var, min_log_var, max_log_var)."""


@dataclass
class ObjectiveSection:
    terms: dict[str, Any] = field(default_factory=lambda: {"mlm": {}})
    """Loss terms: name -> options (megaconcept.objectives.base.OBJECTIVES). Every term takes `weight` and
    `warmup_steps` (linear warm-up of the weight); `kind` picks the registry entry when the name differs;
    null removes a term (objective.terms.mlm=null)."""
    weighting: WeightingSection = field(default_factory=WeightingSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    ce_chunk_size: int = 4096
    """Decoded positions per cross-entropy chunk; logits never exceed (chunk, V)."""
    cross_entropy: str = "auto"
    """LM-head loss: auto | chunked | liger | apex. auto = liger's fused linear cross-entropy on a GPU where
    it imports, else the sparse chunked path; with tensor parallelism always the vocab-parallel chunked path."""


@dataclass
class DataSection:
    shards: str = "data/shards/demo"
    """Directory written by `python -m data_prep.shard` (manifest.json, *.tar, tokenizer/)."""
    num_workers: int = 1
    """DataLoader worker processes per rank (0 = read in the training process)."""
    verify_checksums: bool = True
    """Check every shard's sha256 against the manifest when it is opened."""
    shuffle: bool = True
    """Shuffle shard order and samples within a shard, deterministically from `seed` and epoch."""


@dataclass
class TrainSection:
    max_steps: int = 300
    """Optimizer steps to train for (raise it and re-run to continue a finished run)."""
    micro_batch_size: int = 16
    """Samples per rank per forward pass."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 1.5e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine schedule floor as a fraction of lr."""
    warmup_steps: int = 30
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (norm weights and biases are not decayed)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    precision: str = "auto"
    """auto | bf16 | fp32 ; auto = bf16 on a GPU that supports it, fp32 otherwise."""
    log_interval: int = 10
    """Steps between metric lines (metrics.jsonl and the progress line)."""
    backbone_lr_mult: float = 1.0
    """Learning-rate multiplier for the token path: backbone layers and the token embedding (what a warm start loads)."""
    backbone_freeze_steps: int = 0
    """The token path (backbone and token embedding) stays fixed (lr 0) for the first K optimizer steps."""
    init_from: Optional[str] = None
    """Warm start from a trained model: an exported folder (python -m megaconcept.export) or a run / checkpoint
    directory; which parts it gives is train.init_modules, the rest start fresh. E.g. a diffusion run starting
    from an MLM run's encoder. A resume ignores it (the checkpoint holds every weight)."""
    init_modules: list[str] = field(default_factory=lambda: ["encoder"])
    """The model's top-level parts copied from train.init_from, each of the same shape there: encoder (token
    embedding, backbone, concepts, concept layers), decoder, bottleneck, lm_head (untied), lm_bias."""
    trainable: list[str] = field(default_factory=list)
    """Empty: every parameter trains. Else only parameters under these name prefixes train (the model's without
    `model.`: lm_head, lm_bias, decoder, encoder.concepts; an objective's: objectives.terms.<name>), the rest are
    frozen. A linear probe on a frozen MLSM model: init_from=RUN init_modules=[encoder, decoder]
    trainable=[lm_head, lm_bias] model.tie_word_embeddings=false with the mlm term."""
    activation_checkpointing: bool = False
    """Recompute each backbone and concept layer in backward instead of keeping its activations."""
    compile: bool = False
    """torch.compile each backbone and concept layer (first steps are slower while it compiles)."""
    peak_tflops: float = 0.0
    """Dense bf16 peak of one device for MFU; 0 = looked up from the device name (unknown devices: no MFU)."""


@dataclass
class GuardSection:
    max_consecutive_skips: int = 3
    """A step whose loss or gradient norm is not finite is skipped (no update, counted, logged); more skips in
    a row than this stop the run with an error (exit 3), keeping the last healthy checkpoint. 0 = stop at the
    first."""
    max_total_skips: int = 20
    """The run also stops when more steps than this were skipped in all."""
    spike_factor: float = 5.0
    """A logged loss above this multiple of the running median writes a `spike` warning record; 0 = off."""
    spike_window: int = 50
    """Logged losses the running median is taken over."""


@dataclass
class ParallelSection:
    tensor: int = 1
    """Tensor-parallel degree (megatron-core layers); must divide heads, MLP widths and the vocabulary."""
    pipeline: int = 1
    """Pipeline-parallel stages (DeepSpeed pipeline engine; ZeRO stage 0-1 only)."""
    vocab_multiple: int = 1
    """With model.vocab_size unset, the tokenizer's size is padded up to a multiple of this and of `tensor`
    (Megatron's make-vocab-size-divisible-by; e.g. 128 aligns GPU matmuls). Padded rows are never targets."""


@dataclass
class CheckpointSection:
    interval: int = 100
    """Steps between checkpoints (a final one is always written)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are pruned after a successful save."""


@dataclass
class LoggingSection:
    wandb: bool = False
    """Also log to Weights & Biases."""
    wandb_mode: str = "offline"
    """offline | online | disabled ; offline never needs an account."""
    wandb_project: str = "megaconcept"
    """W&B project name."""


@dataclass
class AnalysisSection:
    interval: int = 100
    """Steps between concept-health metrics (megaconcept.analysis.concept_metrics) on a held-out batch,
    logged to metrics.jsonl; 0 = off. Skipped under pipeline parallelism (no stage holds all concepts), where
    the held-out shard still stays out of training so the data match a run without a pipeline."""
    heldout: str = "last_shard"
    """Where the held-out batch comes from: last_shard = the last shard of data.shards, then left out of
    training; or a shard directory written by data_prep.shard with the same tokenizer."""
    samples: int = 32
    """Held-out samples the metrics are computed on (the same ones every time)."""
    collapse_fraction: float = 0.1
    """Collapse alarm: warn once when the concepts' effective rank falls below this fraction of
    model.num_concepts."""
    unigram_tokens: int = 10_000_000
    """Training tokens counted (in stored order) for `heldout_mlm15_unigram`, the unigram model's cross-entropy on
    the `heldout_mlm15` targets: the level a model that learned only token frequencies reaches. 0 = off."""


@dataclass
class RunConfig:
    run_dir: str = "runs/demo"
    """Everything a run writes: config.yaml, metrics.jsonl, checkpoints/."""
    seed: int = 1234
    """Seeds model init, data order, masking and dropout."""
    model: ConceptModelConfig = field(default_factory=ConceptModelConfig)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    """Data parallelism takes the rest: world size / (tensor * pipeline)."""
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    analysis: AnalysisSection = field(default_factory=AnalysisSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    guard: GuardSection = field(default_factory=GuardSection)
    """Non-finite steps and loss spikes (megaconcept.train.guard)."""
