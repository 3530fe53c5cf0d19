"""Live concept health and held-out loss: every `analysis.interval` steps, concept metrics of a fixed
held-out batch, its MLM loss under a fixed masking, and a collapse alarm (the failure a predecessor of
this project hit: effective rank ~5 of 128 concepts)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..analysis import concept_metrics
from ..config.schema import AnalysisSection
from ..data.heldout import heldout_ids
from ..data.shards import Manifest
from ..parallel import ParallelContext

PREFIX = "concepts/"
HELDOUT_MASK_SEED = 0x4E1D  # the same masked positions at every measurement, so losses compare across steps


class ConceptMonitor:
    """Runs the trained module on the held-out batch: the concepts it returns for the clean text, and the
    objectives on a fixed masking of it (`heldout_loss` is the MLM term's loss when there is one, else the
    total; every term's loss is logged under heldout/). Every rank runs the forwards (ZeRO-3 gathers and
    tensor-parallel layers need them all); rank 0 alone computes and reports the metrics."""

    def __init__(self, cfg: AnalysisSection, manifest: Manifest, num_concepts: int, ctx: ParallelContext,
                 collate: Callable[[torch.Tensor, torch.Generator], dict]) -> None:
        self.cfg, self.num_concepts, self.ctx = cfg, num_concepts, ctx
        ids = torch.from_numpy(heldout_ids(manifest, cfg.heldout, cfg.samples))
        self.input_ids = ids.to(ctx.device)
        masked = collate(ids, torch.Generator().manual_seed(HELDOUT_MASK_SEED))
        self.masked = {k: v.to(ctx.device) for k, v in masked.items()}
        self.alarmed = False

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
        finally:
            engine.train()
        if not self.ctx.is_main:
            return None
        metrics = concept_metrics(concepts.detach().float())
        terms = {k: float(v) for k, v in scored.metrics.items() if k.startswith("loss/")}
        record: dict[str, Any] = {"step": step, "heldout_loss": terms.get("loss/mlm", float(scored.loss)),
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


def summary_line(record: dict[str, Any], num_concepts: int) -> str:
    """The progress line of an analysis record."""
    get = lambda key: record[PREFIX + key]  # noqa: E731
    return (f"step {record['step']:>6} | held-out loss {record['heldout_loss']:.4f} | concepts: eff. rank {get('effective_rank'):.1f}/{num_concepts} "
            f"(batch {get('global_effective_rank'):.1f}) | mean cos {get('mean_pairwise_cosine'):.3f} | "
            f"uniformity {get('uniformity'):.3f} | collapsed dims {get('collapsed_dims'):.0f}")
