"""The masked-language-modeling term: cross-entropy of the LM head at the decoded (masked) positions."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from ..model.lm_loss import CrossEntropyFn
from .base import OBJECTIVES, BuildContext, Objective, TermConfig
from .cross_entropy import CROSS_ENTROPY, select_cross_entropy, vocab_parallel_chunked_cross_entropy


@dataclass
class MLMConfig(TermConfig):
    """objective.terms.mlm: weight and warm-up only; the kernel is objective.cross_entropy."""


def choose_kernel(ctx: BuildContext) -> tuple[str, CrossEntropyFn]:
    """The LM-head cross-entropy for this machine and layout (chosen once, when the term is built)."""
    name = select_cross_entropy(ctx.cross_entropy, ctx.cuda, ctx.tensor_parallel_size > 1)
    if name == "vocab_parallel":
        return name, partial(vocab_parallel_chunked_cross_entropy, group=ctx.tensor_group)
    return name, CROSS_ENTROPY[name]


class MLMObjective(Objective):
    """Mean cross-entropy over every decoded position of the batch (B*M rows, labels (B, M)).

    The LM head (tied embedding or lm_head, plus lm_bias) belongs to the model; the term only applies it,
    chunk by chunk, so (B*M, V) logits never exist at once.
    """

    reads = ("labels",)
    stats = ("targets",)
    nonnegative = True

    def __init__(self, cfg: MLMConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.kernel_name, self.kernel = choose_kernel(ctx)
        self.chunk_size = ctx.ce_chunk_size
        # Bound methods, not submodules: the head's parameters stay the model's (one name each).
        self._head_weight = ctx.model.output_embedding
        self._model = (ctx.model,)  # a tuple hides the module from nn.Module registration
        ctx.say(f"LM-head loss: {self.kernel_name}")

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        states, labels = outputs.states, batch["labels"]  # (B, M, D), (B, M)
        loss = self.kernel(states.flatten(0, 1), self._head_weight(), self._model[0].lm_bias, labels.flatten(),
                           self.chunk_size)
        return {"loss": loss, "targets": torch.tensor(float(labels.numel()), device=loss.device)}


OBJECTIVES.add("mlm", MLMObjective, MLMConfig)
