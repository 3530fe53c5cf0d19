"""`python -m evals.longbench --model HF_DIR --tasks passage_retrieval_en`: LongBench, encoder protocols.

LongBench v1 is zero-shot and test-only, written for generators; an encoder answers the tasks that fit with
a protocol that needs no generation, scored with the official metric code (evals/metrics.py):
  passage_retrieval_en  the query (a summary of one paragraph) and every numbered paragraph of the context
                        are encoded; the paragraph whose pooled concepts are most cosine-similar to the
                        query's is the prediction "Paragraph k" (official retrieval_score).
Still to come (documented, not scored yet): trec / lsht by nearest labelled in-context example, and
LongBench v2 multiple choice by option scoring.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Optional

from . import metrics
from .common import (EvalError, Report, add_source_arguments, check_length, check_model_dir, encode, fmt,
                     load_tokenizer, parse_list, results_dir, run_header, standin_notes)

HUB_DATASET = "THUDM/LongBench"
TASKS = ("passage_retrieval_en",)
NOT_YET = {"trec": "nearest labelled in-context example", "lsht": "nearest labelled in-context example",
           "longbench_v2": "option scoring"}
_PARAGRAPH = re.compile(r"Paragraph (\d+): ")


def split_paragraphs(context: str) -> list[str]:
    """"Paragraph 1: ... Paragraph 2: ..." -> texts in order (numbering checked to be 1..n)."""
    parts = _PARAGRAPH.split(context)
    numbers, texts = [int(n) for n in parts[1::2]], [t.strip() for t in parts[2::2]]
    if not texts or numbers != list(range(1, len(texts) + 1)):
        raise ValueError("context is not numbered 'Paragraph 1: ...', 'Paragraph 2: ...'")
    return texts


def _rows(args: argparse.Namespace, tokenizer: Any) -> list[dict[str, Any]]:
    if args.stand_in:
        from .standins import long_standin

        rows = long_standin("passage_retrieval", limit=args.limit, target_tokens=args.max_length,
                            tokenizer=tokenizer)["validation"]
        return [{"input": r["input"], "paragraphs": r["paragraphs"], "answer": r["answers"][0]} for r in rows]
    from datasets import load_dataset

    if args.data_dir:
        path = Path(args.data_dir) / "passage_retrieval_en.jsonl"
        if not path.is_file():
            raise EvalError(f"{path} not found; expected LongBench's passage_retrieval_en.jsonl (input, context, answers)")
        records = load_dataset("json", data_files=str(path), split="train")
    else:
        try:
            records = load_dataset(HUB_DATASET, "passage_retrieval_en", split="test")
        except Exception as exc:  # network / auth errors: one line
            raise EvalError(f"could not load {HUB_DATASET}/passage_retrieval_en ({str(exc).splitlines()[0]}); "
                            f"use --data-dir or --stand-in") from None
    rows = [{"input": r["input"], "paragraphs": split_paragraphs(r["context"]), "answer": r["answers"][0]}
            for r in records]
    return rows[: args.limit] if args.limit else rows


def _embed(model: Any, tokenizer: Any, texts: list[str], max_length: int, device: Any) -> Any:
    """Mean-pooled concepts, L2-normalised: (len(texts), D)."""
    import torch
    import torch.nn.functional as F

    batch = tokenizer.pad([encode(tokenizer, t, None, max_length) for t in texts], return_tensors="pt").to(device)
    with torch.no_grad():
        concepts = model(**batch).last_hidden_state  # (B, C, D)
    return F.normalize(concepts.float().mean(dim=1), dim=-1)


def passage_retrieval(model_dir: Path, rows: list[dict[str, Any]], max_length: int) -> tuple[list[str], list[str]]:
    import torch
    from transformers import AutoModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir)
    model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=True).to(device).eval()
    preds = []
    for row in rows:
        query = _embed(model, tokenizer, [row["input"]], max_length, device)
        paragraphs = _embed(model, tokenizer, row["paragraphs"], max_length, device)
        preds.append(f"Paragraph {int((paragraphs @ query.T).argmax()) + 1}")
    return preds, [r["answer"] for r in rows]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.longbench", description=__doc__.splitlines()[0])
    add_source_arguments(p, "longbench", "DIR/<task>.jsonl (input, context, answers)", "cap the rows scored")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated from {','.join(TASKS)}")
    p.add_argument("--max-length", type=int, default=512, help="tokens per query or paragraph")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_dir = check_model_dir(args.model)
        parse_list(args.tasks, list(TASKS), "LongBench task (scored here)")
        check_length(model_dir, args.max_length, "mean")
        rows = _rows(args, load_tokenizer(model_dir))
        preds, gold = passage_retrieval(model_dir, rows, args.max_length)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    score = sum(metrics.retrieval_score(p, g) for p, g in zip(preds, gold)) / len(gold)
    chance = sum(1 / len(r["paragraphs"]) for r in rows) / len(rows)
    out = results_dir(args, "longbench", model_dir)
    result = {"task": "passage_retrieval_en", "metric": "retrieval_score", "score": score, "chance": chance,
              "n": len(rows), "stand_in": bool(args.stand_in), "predictions": preds}
    payload = {**run_header("longbench", args.stand_in, model_dir, args), "tasks": {"passage_retrieval_en": result},
               "not_yet": NOT_YET}
    label = "passage_retrieval_en" + (" (stand-in)" if args.stand_in else "")
    notes = [f"model: {model_dir}", "zero-shot: cosine of mean-pooled concepts; official retrieval_score x100"]
    notes += [f"not scored yet: {k} ({how})" for k, how in NOT_YET.items()] + standin_notes(args.stand_in)
    path = Report(out).write(payload, ["task", "score", "chance", "rows"], [[label, fmt(score), fmt(chance), str(len(rows))]],
                             notes)
    print(path.with_name("results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
