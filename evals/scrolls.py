"""`python -m evals.scrolls --model HF_DIR --tasks contract_nli,quality`: the encoder-shaped SCROLLS tasks.

Scored (official metric: exact match of the predicted output with the gold one):
  contract_nli  3-way classification of a hypothesis against a whole contract (query + document pair);
  quality       4-way multiple choice over a long story: one score per (question + option, story) pair.
Not scored, and why: see NOT_SCORED in evals/scrolls_data.py (summaries and free-form answers need a text
generator; qasper's span + yes/no/unanswerable head is not built yet). Inputs are cut to --max-length
tokens (4096 default; 16384 fits where memory does: concepts make it linear in length).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from . import metrics
from .common import (EvalError, Report, add_source_arguments, check_length, check_model_dir, fmt, load_tokenizer,
                     parse_list, parse_seeds, results_dir, run_header, standin_notes)
from .glue_data import TaskData, TaskSpec
from .glue_finetune import FinetuneConfig, finetune
from .multiple_choice import predict_multiple_choice, train_multiple_choice
from .scrolls_data import NOT_SCORED, TASKS, ScrollsTask, load_split, standin_splits


def _splits(task: ScrollsTask, args: argparse.Namespace, tokenizer: Any) -> dict[str, list[dict[str, Any]]]:
    if args.stand_in:
        return standin_splits(task, args.limit, args.max_length, tokenizer)
    return {s: load_split(task, s, args.data_dir, args.limit) for s in ("train", "validation")}


def _classification(task: ScrollsTask, model_dir: Path, splits: dict, seed: int, args: argparse.Namespace
                    ) -> tuple[list[str], list[str]]:
    labels = sorted({r["label"] for r in splits["train"]})
    # A dev label never seen in training cannot be predicted: it stays in the score as a miss (-100 = no loss).
    rows = lambda split: [{"text_a": r["query"], "text_b": r["document"],  # noqa: E731
                           "label": labels.index(r["label"]) if r["label"] in labels else -100} for r in splits[split]]
    spec = TaskSpec(task.name, ("query", "document"), len(labels))
    cfg = FinetuneConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
                         pooling=args.pooling)
    preds, _ = finetune(model_dir, model_dir, spec, TaskData(rows("train"), {"validation": rows("validation")}),
                        seed, cfg)["validation"]
    return [labels[p] for p in preds], [r["label"] for r in splits["validation"]]


def _multiple_choice(model_dir: Path, splits: dict, seed: int, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), trust_remote_code=True, num_labels=1, classifier_pooling=args.pooling).to(device)
    common = dict(max_length=args.max_length, device=device)
    train_multiple_choice(model, tokenizer, splits["train"], lr=args.lr, epochs=args.epochs,
                          batch_size=args.batch_size, seed=seed, **common)
    preds = predict_multiple_choice(model, tokenizer, splits["validation"], batch_size=args.batch_size, **common)
    dev = splits["validation"]
    return [dev[i]["options"][p] for i, p in enumerate(preds)], [r["options"][r["label"]] for r in dev]


def run_task(task: ScrollsTask, model_dir: Path, seeds: list[int], args: argparse.Namespace) -> dict[str, Any]:
    splits = _splits(task, args, load_tokenizer(model_dir))
    per_seed = {}
    for seed in seeds:
        if task.kind == "multiple_choice":
            preds, gold = _multiple_choice(model_dir, splits, seed, args)
        else:
            preds, gold = _classification(task, model_dir, splits, seed, args)
        per_seed[seed] = metrics.mean_exact_match(preds, [[g] for g in gold])
        print(f"{task.name}: seed {seed} exact match {per_seed[seed]:.4f}", flush=True)
    gold_dev = [r["label"] for r in splits["validation"]]
    majority = max(set(gold_dev), key=gold_dev.count)  # the best constant guess on the dev set itself
    return {"task": task.name, "metric": "exact_match", "seeds": per_seed,
            "median": metrics.median_over_seeds(list(per_seed.values())),
            "constant_baseline": gold_dev.count(majority) / len(gold_dev), "n_train": len(splits["train"]),
            "n_dev": len(gold_dev), "max_length": args.max_length, "stand_in": bool(args.stand_in)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.scrolls", description=__doc__.splitlines()[0])
    add_source_arguments(p, "scrolls", "DIR/<task>/{train,validation}.jsonl with id/input/output",
                         "cap train and dev rows per task")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated from {','.join(TASKS)}")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (median reported)")
    p.add_argument("--max-length", type=int, default=4096, help="tokens per input (4096-16384)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--pooling", default="mean", choices=("mean", "attention", "decoder"))
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_dir = check_model_dir(args.model)
        tasks = parse_list(args.tasks, list(TASKS), "SCROLLS task (scored here)")
        seeds = parse_seeds(args.seeds)
        check_length(model_dir, args.max_length, args.pooling)
        results = [run_task(TASKS[name], model_dir, seeds, args) for name in tasks]
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = results_dir(args, "scrolls", model_dir)
    payload = {**run_header("scrolls", args.stand_in, model_dir, args), "tasks": {r["task"]: r for r in results},
               "not_scored": NOT_SCORED}
    rows = [[r["task"] + (" (stand-in)" if r["stand_in"] else ""), fmt(r["median"]), fmt(r["constant_baseline"]),
             str(len(r["seeds"])), f"{r['n_train']}/{r['n_dev']}", str(r["max_length"])] for r in results]
    notes = [f"model: {model_dir}", "exact match x100, median over seeds"]
    notes += [f"not scored: {k} - {why}" for k, why in NOT_SCORED.items()] + standin_notes(args.stand_in)
    path = Report(out).write(payload, ["task", "exact match", "majority baseline", "seeds", "train/dev", "max tokens"],
                             rows, notes)
    print(path.with_name("results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
