"""Multiple choice with a sequence-classification model: every (question + option, document) pair gets one
score (num_labels = 1) and a softmax over a question's options is trained with cross-entropy, the standard
encoder recipe (as in HF's *ForMultipleChoice heads, which this model family does not define).

A small hand-written loop: the HF Trainer's collator and loss assume one sequence per example."""
from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F

from .common import encode


def _encode_example(tokenizer: Any, row: dict[str, Any], max_length: int) -> list[dict[str, list[int]]]:
    return [encode(tokenizer, f"{row['query']} {option}", row["document"], max_length) for option in row["options"]]


def _batch(tokenizer: Any, rows: list[dict[str, Any]], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    seqs = [seq for row in rows for seq in _encode_example(tokenizer, row, max_length)]
    padded = tokenizer.pad(seqs, return_tensors="pt")
    return {k: v.to(device) for k, v in padded.items()}


def option_scores(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_length: int,
                  device: torch.device) -> torch.Tensor:
    """(len(rows), options) scores."""
    logits = model(**_batch(tokenizer, rows, max_length, device)).logits  # (rows * options, 1)
    return logits.view(len(rows), -1)


def train_multiple_choice(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, lr: float, epochs: float,
                          batch_size: int, max_length: int, seed: int, device: torch.device) -> list[float]:
    """AdamW with linear warmup (6%) and decay; returns the loss per step."""
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, int(0.06 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    model.train()
    losses, order = [], []
    for _ in range(total):
        if not order:
            order = list(range(len(rows)))
            rng.shuffle(order)
        chunk, order = [rows[i] for i in order[:batch_size]], order[batch_size:]
        scores = option_scores(model, tokenizer, chunk, max_length, device)
        loss = F.cross_entropy(scores.float(), torch.tensor([r["label"] for r in chunk], device=device))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@torch.no_grad()
def predict_multiple_choice(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, batch_size: int,
                            max_length: int, device: torch.device) -> list[int]:
    model.eval()
    preds: list[int] = []
    for start in range(0, len(rows), batch_size):
        scores = option_scores(model, tokenizer, rows[start:start + batch_size], max_length, device)
        preds += scores.argmax(dim=-1).tolist()
    return preds
