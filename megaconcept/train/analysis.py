"""Live concept health and held-out loss: every `analysis.interval` steps, concept metrics of a fixed
held-out batch, its MLM loss under a fixed masking, and a collapse alarm (the failure a predecessor of
this project hit: effective rank ~5 of 128 concepts)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..analysis import concept_metrics
from ..config.schema import AnalysisSection, MaskingSection
from ..data.heldout import heldout_ids, training_manifest
from ..data.shards import Manifest
from ..data.unigram import unigram_cross_entropy, unigram_log_probs
from ..parallel import ParallelContext

PREFIX = "concepts/"
HELDOUT_MASK_SEED = 0x4E1D  # the same masked positions at every measurement, so losses compare across steps
PROBE_MASKING = MaskingSection(strategy="bert", rate=0.15, mask_prob=1.0, random_prob=0.0)
"""The masking of `heldout_mlm15`: 15% of positions, all replaced by the mask token, whatever the run trains
(MLM at any rate, diffusion, other terms), so that number compares across runs on the same held-out data."""


class ConceptMonitor:
    """Runs the trained module on the held-out batch: the concepts it returns for the clean text, and the
    objectives on a fixed masking of it (`heldout_loss` is the MLM term's loss when there is one, else the
    total; every term's loss is logged under heldout/). Every rank runs the forwards (ZeRO-3 gathers and
    tensor-parallel layers need them all); rank 0 alone computes and reports the metrics. With `probe` (a
    PROBE_MASKING collate) it also reports `heldout_mlm15`: the LM head's plain cross-entropy under that masking,
    and `heldout_mlm15_unigram`: a unigram model's (training-shard counts) on the same targets, the level of a
    model that has learned token frequencies and no context."""

    def __init__(self, cfg: AnalysisSection, manifest: Manifest, num_concepts: int, ctx: ParallelContext,
                 collate: Callable[[torch.Tensor, torch.Generator], dict],
                 probe: Optional[Callable[[torch.Tensor, torch.Generator], dict]] = None) -> None:
        self.cfg, self.num_concepts, self.ctx = cfg, num_concepts, ctx
        ids = torch.from_numpy(heldout_ids(manifest, cfg.heldout, cfg.samples))
        self.input_ids = ids.to(ctx.device)
        self.masked = self._masked(collate, ids)
        self.probe = None if probe is None else decode_everywhere(self._masked(probe, ids))
        self.unigram = None
        if self.probe is not None and cfg.unigram_tokens > 0 and ctx.is_main:
            log_probs = unigram_log_probs(training_manifest(manifest, cfg.heldout), cfg.unigram_tokens)
            self.unigram = unigram_cross_entropy(log_probs, self.probe["labels"])
        self.alarmed = False

    def _masked(self, collate: Callable[[torch.Tensor, torch.Generator], dict], ids: torch.Tensor) -> dict:
        masked = collate(ids, torch.Generator().manual_seed(HELDOUT_MASK_SEED))
        return {k: v.to(self.ctx.device) for k, v in masked.items()}

    def due(self, step: int, last_step: int) -> bool:
        return self.cfg.interval > 0 and (step % self.cfg.interval == 0 or step == last_step)

    @torch.no_grad()
    def measure(self, engine: Any, step: int) -> Optional[dict[str, Any]]:
        """The metrics record for `step` on rank 0 (None elsewhere); the engine is back in train mode after."""
        engine.eval()
        try:
            # One decoded position keeps the decoder's share negligible; only the concepts are used.
            positions = torch.zeros(self.input_ids.shape[0], 1, dtype=torch.long, device=self.ctx.device)
            concepts = engine(input_ids=self.input_ids, positions=positions, score=False).outputs.concepts
            scored = engine(**self.masked)
            probe = None if self.probe is None else engine(**self.probe, probe=True).loss
        finally:
            engine.train()
        if not self.ctx.is_main:
            return None
        metrics = concept_metrics(concepts.detach().float())
        terms = {k: float(v) for k, v in scored.metrics.items() if k.startswith("loss/")}
        record: dict[str, Any] = {"step": step, "heldout_loss": terms.get("loss/mlm", float(scored.loss)),
                                  **({} if probe is None else {"heldout_mlm15": float(probe)}),
                                  **({} if self.unigram is None else {"heldout_mlm15_unigram": self.unigram}),
                                  **{f"heldout/{k}": v for k, v in terms.items()},
                                  **{PREFIX + k: v for k, v in metrics.items()}}
        floor = self.cfg.collapse_fraction * self.num_concepts
        if metrics["effective_rank"] < floor:
            record[PREFIX + "collapse_alarm"] = True
            if not self.alarmed:
                self.alarmed = True
                print(f"WARNING: concept collapse at step {step}: effective rank {metrics['effective_rank']:.2f} "
                      f"< {self.cfg.collapse_fraction} x {self.num_concepts} concepts (analysis.collapse_fraction); "
                      "the concepts are becoming copies of few directions", flush=True)
        return record


def decode_everywhere(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A masked batch decoded at every position: positions 0..N-1, labels -100 except at the targets. The loss is
    the same mean over the same targets, and a decoder whose positions attend to each other (diffusion with token
    self-attention) sees the whole sequence, as it was trained to."""
    ids = batch["input_ids"]
    labels = torch.full_like(ids, -100).scatter_(1, batch["positions"], batch["labels"])
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return {**batch, "positions": positions, "labels": labels}


def summary_line(record: dict[str, Any], num_concepts: int) -> str:
    """The progress line of an analysis record."""
    get = lambda key: record[PREFIX + key]  # noqa: E731
    unigram = f", unigram {record['heldout_mlm15_unigram']:.4f}" if "heldout_mlm15_unigram" in record else ""
    probe = f" (MLM@15% {record['heldout_mlm15']:.4f}{unigram})" if "heldout_mlm15" in record else ""
    return (f"step {record['step']:>6} | held-out loss {record['heldout_loss']:.4f}{probe} | concepts: eff. rank {get('effective_rank'):.1f}/{num_concepts} "
            f"(batch {get('global_effective_rank'):.1f}) | mean cos {get('mean_pairwise_cosine'):.3f} | "
            f"uniformity {get('uniformity'):.3f} | collapsed dims {get('collapsed_dims'):.0f}")
