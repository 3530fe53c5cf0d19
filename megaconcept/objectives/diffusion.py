"""The masked-diffusion ELBO term (`objective.terms.diffusion`), paired with masking strategy `diffusion`.

    loss = sum_b sum_{i masked in b} w_b * CE(x0_bi | x_t) / sum_b num_tokens_b,   w_b = 1/t_b (capped)

This is MDLM's continuous-time NELBO for the log-linear schedule (kuleshov-group/mdlm `_loss`: normalised by
*all* tokens, not by the masked ones; unmasked positions carry their own token and contribute 0). Samples have
different numbers of targets, so padded target rows carry weight 0 and the sum is divided by the token count,
never by the number of rows. The normaliser is per micro-batch and per rank; packed batches have B*N tokens on
every rank, so the data-parallel mean of the rank losses is the global ELBO estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import OBJECTIVES, BuildContext, Objective, TermConfig
from .mlm import choose_kernel


@dataclass
class DiffusionConfig(TermConfig):
    """objective.terms.diffusion: weight and schedule only; t, the weights and the layout come from
    objective.masking (strategy=diffusion, options t_min, sampling, max_weight, encoder_reads, decode)."""


class DiffusionObjective(Objective):
    """Weighted cross-entropy of the LM head at the decoded positions (see the module docstring)."""

    reads = ("labels", "target_weights", "num_tokens", "noise_level")
    stats = ("targets", "mean_t")
    requires_masking = "diffusion"
    nonnegative = True

    def __init__(self, cfg: DiffusionConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.kernel_name, self.kernel = choose_kernel(ctx, weighted=True)
        self.chunk_size = ctx.ce_chunk_size
        self._head_weight = ctx.model.output_embedding  # bound method: the head stays the model's
        self._model = (ctx.model,)
        ctx.say(f"diffusion LM-head loss: {self.kernel_name}")

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        states, labels, weights = outputs.states, batch["labels"], batch["target_weights"]  # (B, M, D), (B, M) x2
        valid = labels.flatten() >= 0
        # Only the real targets reach the LM head: padding (to the batch's largest count, about half the rows
        # with t ~ U(t_min, 1)) would cost a (rows, V) logit block each for weight 0. One host sync per step;
        # every tensor-parallel rank selects the same rows (labels are replicated).
        rows = valid.nonzero().squeeze(1)
        if rows.numel() == 0:  # no sample drew a target: keep one weight-0 row so the graph and kernels stay whole
            rows = rows.new_zeros(1)
        safe = torch.where(valid, labels.flatten(), 0)[rows]  # vocab-parallel CE has no ignore index: a valid id
        loss = self.kernel(states.flatten(0, 1)[rows], self._head_weight(), self._model[0].lm_bias, safe,
                           self.chunk_size, row_weights=weights.flatten().to(torch.float32)[rows],
                           normalizer=batch["num_tokens"].sum())
        return {"loss": loss, "targets": valid.sum().to(torch.float32) / labels.shape[0],
                "mean_t": batch["noise_level"].float().mean()}


OBJECTIVES.add("diffusion", DiffusionObjective, DiffusionConfig)
