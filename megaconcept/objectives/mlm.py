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


def choose_kernel(ctx: BuildContext, weighted: bool = False) -> tuple[str, CrossEntropyFn]:
    """The LM-head cross-entropy for this machine and layout (chosen once, when the term is built); weighted:
    one that takes per-row weights."""
    name = select_cross_entropy(ctx.cross_entropy, ctx.cuda, ctx.tensor_parallel_size > 1, weighted=weighted)
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
        states, labels = outputs.states, batch["labels"].flatten()  # (B, M, D), (B * M,)
        # Rows labelled -100 pad samples with fewer targets (a diffusion batch): the mean runs over the real
        # targets only. chunked/apex give -100 rows zero loss and liger averages over the rest itself; the
        # vocab-parallel kernel has no ignore index, so it gets weight-0 rows with a valid id instead.
        valid = labels >= 0
        count = valid.sum()
        kwargs: dict[str, Any] = {} if self.kernel_name == "liger" else {"normalizer": count.clamp(min=1)}
        if self.kernel_name == "vocab_parallel":
            labels, kwargs["row_weights"] = torch.where(valid, labels, 0), valid.to(torch.float32)
        loss = self.kernel(states.flatten(0, 1), self._head_weight(), self._model[0].lm_bias, labels,
                           self.chunk_size, **kwargs)
        return {"loss": loss, "targets": count.to(torch.float32)}


OBJECTIVES.add("mlm", MLMObjective, MLMConfig)
