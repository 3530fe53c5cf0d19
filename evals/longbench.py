"""`python -m evals.longbench --model HF_DIR [--tasks trec,longbench_v2]`: LongBench v1 and v2, encoder protocols.

LongBench is zero-shot and test-only, written for generators; an encoder answers the tasks that fit with a
protocol that needs no generation. Every text is encoded as pretraining saw it and pooled to one vector (the
mean over concepts, L2-normalised); similarity is the cosine of two such vectors. Scores use the official
metric code (evals/metrics.py):
  passage_retrieval_en  the query (a summary of one paragraph) and every numbered paragraph of the context are
                        encoded; the most similar paragraph is the prediction "Paragraph k" (retrieval_score).
  trec, lsht            few-shot classification by the nearest labelled in-context example: the context's
                        examples ("Question: ...\\nType: ..." for trec, "新闻：...\\n类别：..." for lsht) are
                        parsed and encoded one by one, and the input takes the label of the most similar one
                        (classification_score against the row's all_classes). Also reported: the class-centroid
                        variant (the label whose mean example vector is most similar) and the score of always
                        naming the row's most frequent example label ("majority"); chance is the mean score of
                        a uniform pick among the labels in the row's context.
  longbench_v2          four-option multiple choice by option scoring: `question <sep> context <sep>` and each
                        `question <sep> option <sep>` are encoded; the most similar option's letter is the
                        prediction. Accuracy overall, by difficulty (easy/hard) and by length (short/medium/
                        long) when rows carry them, as the official v2 table; chance 25%.
Inputs longer than --max-length are cut (the head is kept): v2 contexts run to millions of words.
Data: the hub, --data-dir with LongBench's own files, or --stand-in (see evals/longbench_data.py); lsht has no
stand-in and is skipped with a note.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from . import metrics
from .common import (EvalError, Report, add_source_arguments, check_length, check_model_dir, check_weights, encode, fmt,
                     load_model, load_tokenizer, parse_list, results_dir, run_header, sequence_length, standin_notes,
                     trust_remote_code)
from .longbench_data import LETTERS, NO_STANDIN, task_rows

TASKS = ("passage_retrieval_en", "trec", "lsht", "longbench_v2")
PROTOCOLS = {
    "passage_retrieval_en": "passage_retrieval_en: nearest numbered paragraph to the query; official retrieval_score",
    "trec": "trec: label of the nearest labelled in-context example; official classification_score",
    "lsht": "lsht: label of the nearest labelled in-context example; official classification_score",
    "longbench_v2": "longbench_v2: option scoring, cos(question+context, question+option); accuracy",
}
STANDIN_SHAPES = {
    "passage_retrieval_en": "HotpotQA question vs its merged supporting paragraphs among other questions' ones",
    "trec": "HotpotQA questions labelled by answer type (yesno/year/number/entity), examples from other questions",
    "longbench_v2": "HotpotQA question, supporting + distractor paragraphs, gold answer among 3 same-type answers",
}
_BATCH = 32  # sequences per forward pass
# Texts are cut to this many characters per --max-length token before tokenizing: far more than any
# tokenizer's average, so nothing that fits is lost, and a million-word v2 context is not tokenized whole.
_CHARS_PER_TOKEN = 16
_GROUP_ORDER = ("easy", "hard", "short", "medium", "long")


def _embed(model: Any, tokenizer: Any, texts: list[str], max_length: int, device: Any,
           seconds: Optional[list[str]] = None) -> Any:
    """Mean-pooled concepts, L2-normalised: (len(texts), D). ``seconds`` makes pairs `text <sep> second <sep>`."""
    import torch
    import torch.nn.functional as F

    cut = max_length * _CHARS_PER_TOKEN
    pairs = list(zip(texts, seconds if seconds is not None else [None] * len(texts)))
    pooled = []
    for start in range(0, len(pairs), _BATCH):
        seqs = [encode(tokenizer, a[:cut], None if b is None else b[:cut], max_length)
                for a, b in pairs[start:start + _BATCH]]
        batch = tokenizer.pad(seqs, return_tensors="pt").to(device)
        with torch.no_grad():
            concepts = model(**batch).last_hidden_state  # (B, C, D)
        pooled.append(F.normalize(concepts.float().mean(dim=1), dim=-1))
    return torch.cat(pooled)


@dataclass
class Encoder:
    """The loaded model and what `_embed` needs, plus a cache of single-text vectors."""

    model: Any
    tokenizer: Any
    device: Any
    max_length: int
    cache: dict[str, Any] = field(default_factory=dict)

    def __call__(self, texts: list[str], seconds: Optional[list[str]] = None) -> Any:
        return _embed(self.model, self.tokenizer, texts, self.max_length, self.device, seconds)

    def cached(self, texts: list[str]) -> Any:
        """Like a call on single texts, remembering each vector: few-shot examples recur across rows."""
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            self.cache.update(zip(missing, self(missing)))
        return torch.stack([self.cache[t] for t in texts])


def load_encoder(model_dir: Path, tokenizer: Any, max_length: int, trust: bool) -> Encoder:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model("AutoModel", model_dir, trust).to(device).eval()
    return Encoder(model, tokenizer, device, max_length)


def _progress(rows: list[dict[str, Any]], task: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(rows, desc=task, unit="row", leave=False)


def passage_retrieval(enc: Encoder, rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    preds = []
    for row in _progress(rows, task):
        query = enc([row["input"]])  # (1, D)
        paragraphs = enc(row["paragraphs"])  # (P, D)
        preds.append(f"Paragraph {int((paragraphs @ query.T).argmax()) + 1}")
    return {"metric": "retrieval_score",
            "score": statistics.fmean(metrics.retrieval_score(p, r["answer"]) for p, r in zip(preds, rows)),
            "chance": statistics.fmean(1 / len(r["paragraphs"]) for r in rows), "predictions": preds}


def _class_score(prediction: str, row: dict[str, Any]) -> float:
    # Official LongBench: the best score over the row's reference answers.
    return max(metrics.classification_score(prediction, gold, row["all_classes"]) for gold in row["answers"])


def _nearest_labels(enc: Encoder, row: dict[str, Any]) -> tuple[str, str]:
    """(label of the nearest example, label of the nearest class centroid) for one few-shot row."""
    import torch
    import torch.nn.functional as F

    texts, labels = zip(*row["examples"])
    examples = enc.cached(list(texts))  # (E, D)
    query = enc.cached([row["input"]])[0]  # (D,)
    names = list(dict.fromkeys(labels))
    members = torch.tensor([[label == name for label in labels] for name in names], device=examples.device)
    centroids = F.normalize(members.float() @ examples, dim=-1)  # (K, D): normalised mean of each class
    return labels[int((examples @ query).argmax())], names[int((centroids @ query).argmax())]


def fewshot_classification(enc: Encoder, rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    nearest, centroid = [], []
    for row in _progress(rows, task):
        by_example, by_centroid = _nearest_labels(enc, row)
        nearest.append(by_example)
        centroid.append(by_centroid)
    chance = [statistics.fmean(_class_score(name, r) for name in dict.fromkeys(l for _, l in r["examples"]))
              for r in rows]
    majority = [Counter(label for _, label in r["examples"]).most_common(1)[0][0] for r in rows]
    return {"metric": "classification_score",
            "score": statistics.fmean(_class_score(p, r) for p, r in zip(nearest, rows)),
            "chance": statistics.fmean(chance),
            "majority": statistics.fmean(_class_score(m, r) for m, r in zip(majority, rows)),
            "centroid_score": statistics.fmean(_class_score(p, r) for p, r in zip(centroid, rows)),
            "predictions": nearest, "centroid_predictions": centroid}


def _breakdown(rows: list[dict[str, Any]], hits: list[bool], key: str) -> dict[str, dict[str, float]]:
    """Accuracy per value of ``key`` (difficulty, length) over the rows that carry one."""
    groups: dict[str, list[bool]] = {}
    for row, hit in zip(rows, hits):
        if row.get(key):
            groups.setdefault(str(row[key]), []).append(hit)
    order = sorted(groups, key=lambda g: (_GROUP_ORDER.index(g) if g in _GROUP_ORDER else len(_GROUP_ORDER), g))
    return {g: {"n": len(groups[g]), "score": sum(groups[g]) / len(groups[g])} for g in order}


def option_scoring(enc: Encoder, rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    preds = []
    for row in _progress(rows, task):
        query = enc([row["question"]], [row["context"]])[0]  # (D,)
        options = enc([row["question"]] * len(row["options"]), row["options"])  # (4, D)
        preds.append(LETTERS[int((options @ query).argmax())])
    gold = [r["answer"] for r in rows]
    hits = [p == g for p, g in zip(preds, gold)]
    result = {"metric": "accuracy", "score": metrics.multiple_choice_accuracy(preds, gold),
              "chance": statistics.fmean(1 / len(r["options"]) for r in rows), "predictions": preds}
    for key in ("difficulty", "length"):
        if any(r.get(key) for r in rows):
            result[f"by_{key}"] = _breakdown(rows, hits, key)
    return result


SCORERS: dict[str, Callable[[Encoder, list[dict[str, Any]], str], dict[str, Any]]] = {
    "passage_retrieval_en": passage_retrieval, "trec": fewshot_classification, "lsht": fewshot_classification,
    "longbench_v2": option_scoring,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.longbench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    add_source_arguments(p, "longbench", "LongBench's data.zip (DIR/data.zip, or extracted: DIR/data/<task>.jsonl "
                         "or DIR/<task>.jsonl) and v2's data.json (DIR/data.json or DIR/longbench_v2.json)",
                         "cap the rows scored per task")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated from {','.join(TASKS)} (default: all)")
    p.add_argument("--max-length", type=sequence_length, default=512, help="tokens per encoded text or pair")
    return p


def _table(results: dict[str, dict[str, Any]], suffix: str) -> list[list[str]]:
    table = []
    for task, r in results.items():
        table.append([task + suffix, fmt(r["score"]), fmt(r["chance"]), str(r["n"])])
        for key in ("difficulty", "length"):
            table += [[f"{task}{suffix} {key}={group}", fmt(g["score"]), fmt(r["chance"]), str(g["n"])]
                      for group, g in r.get(f"by_{key}", {}).items()]
    return table


def _report(args: argparse.Namespace, model_dir: Path, results: dict[str, dict[str, Any]],
            skipped: dict[str, str]) -> Path:
    suffix = " (stand-in)" if args.stand_in else ""
    notes = [f"model: {model_dir}", "zero-shot: cosine of mean-pooled, L2-normalised concepts; scores x100"]
    notes += [PROTOCOLS[task] for task in results]
    notes += [f"{task}: centroid variant {fmt(r['centroid_score'])}, majority-label baseline {fmt(r['majority'])}"
              for task, r in results.items() if "centroid_score" in r]
    if args.stand_in:
        notes += [f"{task} (stand-in): {STANDIN_SHAPES[task]}" for task in results]
    notes += [f"skipped: {task} ({why})" for task, why in skipped.items()] + standin_notes(args.stand_in)
    payload = {**run_header("longbench", args.stand_in, model_dir, args), "tasks": results, "skipped": skipped}
    return Report(results_dir(args, "longbench", model_dir)).write(payload, ["task", "score", "chance", "rows"],
                                                                   _table(results, suffix), notes)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_dir = check_model_dir(args.model)
        check_weights(model_dir)
        tasks = parse_list(args.tasks, list(TASKS), "LongBench task (scored here)")
        check_length(model_dir, args.max_length, "mean")
        skipped = {t: f"no stand-in: {NO_STANDIN[t]}" for t in tasks if args.stand_in and t in NO_STANDIN}
        tasks = [t for t in tasks if t not in skipped]
        if not tasks:
            raise EvalError(f"nothing to score: {', '.join(skipped)} has no stand-in; drop --stand-in or add tasks")
        trust = trust_remote_code(model_dir, args.trust_remote_code)
        tokenizer = load_tokenizer(model_dir, trust)
        rows = {task: task_rows(task, args, tokenizer) for task in tasks}  # every row checked before scoring
        empty = [task for task, r in rows.items() if not r]
        if empty:
            raise EvalError(f"no rows to score for {', '.join(empty)}")
        enc = load_encoder(model_dir, tokenizer, args.max_length, trust)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = {task: {"task": task, "n": len(rows[task]), "stand_in": bool(args.stand_in),
                      **SCORERS[task](enc, rows[task], task)} for task in tasks}
    path = _report(args, model_dir, results, skipped)
    print(path.with_name("results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
