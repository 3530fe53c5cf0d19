"""Qasper-style question answering with an exported concept encoder: every answer is "Yes", "No",
"Unanswerable" or a span of the document. The model (AutoModelForQuestionAnswering,
megaconcept/model/hf_modeling.py) predicts the answer type and, for spans, start/end positions.

Inputs are encoded as pretraining saw a pair of documents (`question <sep> document <sep>`, each segment
tokenized on its own) with the document's character offsets kept, so a predicted token span maps back to
the document's own text. Training uses the HF Trainer (as GLUE does); prediction is a plain batched pass.
"""
from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .common import EvalError, load_model, read_config, separator_id
from .glue_finetune import FinetuneConfig, training_args

# Answer type -> the answer text qasper's references use for it (spans are the document's own text).
ANSWER_WORDS = {"yes": "Yes", "no": "No", "unanswerable": "Unanswerable"}
DROP_NOT_FOUND = "answer text not in the input"
DROP_CUT = "answer beyond --max-length"


def answer_target(answer: str, document: str) -> Optional[tuple[str, Optional[tuple[int, int]]]]:
    """(answer type, character span [start, end) in `document` or None) for one reference answer.

    "Yes" / "No" / "Unanswerable" (any case, a trailing period allowed) are their own types; any other
    answer is a span at its first occurrence, searched case-sensitively, then case-insensitively.
    None for a free-form answer that occurs nowhere (it cannot be trained as a span).
    """
    text = answer.strip()
    key = text.rstrip(".").lower()
    if key in ANSWER_WORDS:
        return key, None
    if not text:
        return None
    start = document.find(text)
    if start >= 0:
        return "span", (start, start + len(text))
    match = re.search(re.escape(text), document, re.IGNORECASE)
    return ("span", match.span()) if match else None


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    doc_start: int
    """Input position of the first document token."""
    offsets: list[tuple[int, int]]
    """Character span in the document of each kept document token."""


def encode_qa(tokenizer: Any, query: str, document: str, max_length: int) -> Encoded:
    """`question <sep> document <sep>` (sep: the pretraining document separator) within max_length tokens: the
    question keeps at most half the budget when the pair overflows (the longest-first rule of common.encode), the
    document takes the rest."""
    if not tokenizer.is_fast:
        raise EvalError("qasper needs a fast tokenizer: spans map back to text through its offset mapping")
    eos = separator_id(tokenizer)
    q = tokenizer(query, add_special_tokens=False)["input_ids"]
    d = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
    budget = max_length - 2
    q = q[:max(budget // 2, budget - len(d["input_ids"]))]
    keep = budget - len(q)
    ids = q + [eos] + d["input_ids"][:keep] + [eos]
    return Encoded(ids, len(q) + 1, [tuple(o) for o in d["offset_mapping"][:keep]])


def token_span(enc: Encoded, chars: tuple[int, int]) -> Optional[tuple[int, int]]:
    """Input positions (first, last) of the tokens covering `chars`; None if truncation cut any of it."""
    start, end = chars
    covering = [i for i, (s, e) in enumerate(enc.offsets) if s < end and e > start]
    if not covering or enc.offsets[covering[-1]][1] < end:
        return None
    return enc.doc_start + covering[0], enc.doc_start + covering[-1]


def training_features(tokenizer: Any, rows: list[dict[str, Any]], max_length: int
                      ) -> tuple[list[dict[str, Any]], Counter]:
    """One feature per (row, reference answer) that maps to a type and, for spans, to kept tokens; the
    others are dropped and counted by reason. Non-span rows point start/end at 0 (the loss ignores them)."""
    features, dropped = [], Counter()
    for row in rows:
        enc = None
        for answer in row["answers"]:
            target = answer_target(answer, row["document"])
            if target is None:
                dropped[DROP_NOT_FOUND] += 1
                continue
            enc = enc or encode_qa(tokenizer, row["query"], row["document"], max_length)
            span = (0, 0) if target[1] is None else token_span(enc, target[1])
            if span is None:
                dropped[DROP_CUT] += 1
                continue
            features.append({"input_ids": enc.input_ids, "attention_mask": [1] * len(enc.input_ids),
                             "start_positions": span[0], "end_positions": span[1], "answer_type": target[0]})
    return features, dropped


def check_qa_export(model_dir: Path) -> None:
    """An EvalError unless the exported folder maps AutoModelForQuestionAnswering to its own code."""
    auto_map = read_config(model_dir).get("auto_map")
    if not isinstance(auto_map, dict) or "AutoModelForQuestionAnswering" not in auto_map:
        raise EvalError(f"{model_dir} has no question-answering class (exported before it existed); re-export "
                        f"it with python -m megaconcept.export")


def load_qa_model(model_dir: Path, pooling: str, trust: bool) -> Any:
    check_qa_export(model_dir)
    return load_model("AutoModelForQuestionAnswering", model_dir, trust, classifier_pooling=pooling)


def train_qa(model: Any, tokenizer: Any, features: list[dict[str, Any]], cfg: FinetuneConfig, seed: int) -> None:
    """Fine-tune with the HF Trainer; answer types become the model's class indices (model.answer_types)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer

    data = Dataset.from_list([{**f, "answer_type": model.answer_types.index(f["answer_type"])} for f in features])
    steps = -(-len(data) // cfg.batch_size)
    with tempfile.TemporaryDirectory(prefix="megaconcept-qa-") as work:
        Trainer(model=model, args=training_args(cfg, seed, steps, work), train_dataset=data,
                data_collator=DataCollatorWithPadding(tokenizer)).train()


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, max_tokens: int) -> tuple[int, int]:
    """(s, e) maximizing start[s] + end[e] with s <= e < s + max_tokens, over 1-D logits of one document."""
    n, best, span = start_logits.numel(), float("-inf"), (0, 0)
    for length in range(min(max_tokens, n)):
        scores = start_logits[:n - length] + end_logits[length:]
        i = int(scores.argmax())
        if scores[i].item() > best:
            best, span = scores[i].item(), (i, i + length)
    return span


@torch.no_grad()
def predict_qa(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, max_length: int, batch_size: int,
               max_answer_tokens: int) -> list[str]:
    """Answer text per row: the type's word, or the best document span (empty if no document token fits)."""
    model.eval()
    device = next(model.parameters()).device
    preds: list[str] = []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        encoded = [encode_qa(tokenizer, r["query"], r["document"], max_length) for r in chunk]
        batch = tokenizer.pad([{"input_ids": e.input_ids} for e in encoded], return_tensors="pt")
        out = model(**{k: v.to(device) for k, v in batch.items()})
        kinds = [model.answer_types[i] for i in out.type_logits.argmax(dim=-1).tolist()]
        for i, (row, enc, kind) in enumerate(zip(chunk, encoded, kinds)):
            if kind != "span":
                preds.append(ANSWER_WORDS[kind])
                continue
            doc = slice(enc.doc_start, enc.doc_start + len(enc.offsets))
            s, e = best_span(out.start_logits[i, doc], out.end_logits[i, doc], max_answer_tokens)
            preds.append(row["document"][enc.offsets[s][0]:enc.offsets[e][1]].strip() if enc.offsets else "")
    return preds
