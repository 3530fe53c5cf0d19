"""A SCROLLS-qasper-shaped stand-in built at run time from HotpotQA (see evals/standin_sources.py for the
source, its licence and the STAND-IN label every score on these rows carries).

It holds the qasper builder: ``qasper_standin`` and its per-question row, on top of the shared HotpotQA
parse and context packing of evals/standin_sources.py.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Optional

from .extractive_qa import answer_target
from .standin_sources import (HotpotData, Question, Row, Splits, context_with_distractors, count_tokens, hotpot_data,
                              in_validation, is_yes_no)

# Share of the questions (yes/no ones excepted) whose supporting paragraphs are withheld: "Unanswerable".
# Qasper's dev references are about 10% unanswerable; a larger share keeps the class trainable on small limits.
UNANSWERABLE_FRACTION = 0.2


def _qasper_row(data: HotpotData, q: Question, rng: random.Random, target: int, tokenizer: Any) -> Optional[Row]:
    """One row for ``q``, or None (no supporting paragraph, or the answer text occurs nowhere in the context)."""
    if not q.support:
        return None
    # Question and context share the input: question tokens plus two separators come out of the target.
    budget = target - count_tokens(q.question, tokenizer) - 2
    if is_yes_no(q.answer):
        answer = q.answer.strip().capitalize()
    elif rng.random() < UNANSWERABLE_FRACTION:
        q, answer = dataclasses.replace(q, support=()), "Unanswerable"
    else:
        answer = q.answer.strip()
    _, context = context_with_distractors(data, q, rng, budget, tokenizer)
    if answer not in ("Yes", "No", "Unanswerable") and answer_target(answer, context) is None:
        return None
    return {"id": q.qid, "question": q.question, "context": context, "answer": answer}


def qasper_standin(limit: Optional[int] = None, seed: int = 0, target_tokens: int = 4096, tokenizer: Any = None,
                   dev_fraction: float = 0.2) -> Splits:
    """Qasper-shaped rows ``{"id", "question", "context", "answer"}`` from HotpotQA dev.

    Context = the question's supporting paragraphs plus distractor paragraphs of other questions
    (``standin_sources.context_with_distractors``), packed so that question + context fit
    ``target_tokens`` (``count_tokens``).
    Answer: "Yes" / "No" for yes/no questions; for the others, with probability UNANSWERABLE_FRACTION
    (each question's own seeded rng) the supporting paragraphs are left out and the answer is
    "Unanswerable" (distractors never share a title with the question's own context); otherwise the
    HotpotQA answer, kept only when it occurs in the context (case-sensitive, then insensitive: a span).
    Questions are visited in a seeded shuffle and split by ``in_validation`` on the id; ``limit`` caps
    each split (building stops once every split is full).
    """
    data = hotpot_data()
    out: Splits = {"train": [], "validation": []}
    order = list(range(len(data.questions)))
    random.Random(seed).shuffle(order)
    for index in order:
        q = data.questions[index]
        split = "validation" if in_validation(q.qid, seed, dev_fraction) else "train"
        if limit is not None and len(out[split]) >= limit:
            if all(len(rows) >= limit for rows in out.values()):
                break
            continue
        row = _qasper_row(data, q, random.Random(f"{seed}:qasper:{q.qid}"), target_tokens, tokenizer)
        if row is not None:
            out[split].append(row)
    return out
