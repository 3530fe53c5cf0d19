"""`python -m evals.scrolls --model HF_DIR --tasks contract_nli,quality,qasper`: the encoder-shaped SCROLLS tasks.

Scored with the official metrics:
  contract_nli  3-way classification of a hypothesis against a whole contract (query + document pair);
                exact match;
  quality       4-way multiple choice over a long story: one score per (question + option, story) pair;
                exact match;
  qasper        answer type (yes / no / unanswerable / span) over pooled concepts plus an extractive span
                decoded at every position by the pretrained decoder; SCROLLS token F1, max over references.
                Free-form references that occur nowhere in the paper cannot be trained on (dropped, counted)
                and score only by word overlap.
Not scored, and why: see NOT_SCORED in evals/scrolls_data.py (summaries and free-form answers need a text
generator). Inputs are cut to --max-length tokens (4096 default; 16384 fits where memory does: concepts
make it linear in length; qasper's span head decodes every position, so it needs a decoder position table
that long).
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any, Optional

from . import metrics
from .common import (EvalError, Report, add_source_arguments, check_length, check_model_dir, check_weights,
                     finite_positive_float, fmt, load_model, load_tokenizer, parse_list, parse_seeds, positive_int,
                     results_dir, run_header, sequence_length, standin_notes, trust_remote_code)
from .extractive_qa import ANSWER_WORDS, check_qa_export, load_qa_model, predict_qa, train_qa, training_features
from .glue_data import TaskData, TaskSpec
from .glue_finetune import POOLINGS, FinetuneConfig, finetune
from .multiple_choice import predict_multiple_choice, train_multiple_choice
from .scrolls_data import NOT_SCORED, TASKS, ScrollsTask, group_references, load_split, standin_splits


def _splits(task: ScrollsTask, args: argparse.Namespace, tokenizer: Any) -> dict[str, list[dict[str, Any]]]:
    if args.stand_in:
        return standin_splits(task, args.limit, args.max_length, tokenizer)
    splits = {s: load_split(task, s, args.data_dir, args.limit) for s in ("train", "validation")}
    if task.kind == "extractive_qa":  # scored once per question, against all of its references
        splits["validation"] = group_references(splits["validation"])
    return splits


def _finetune_config(args: argparse.Namespace, trust: bool) -> FinetuneConfig:
    return FinetuneConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
                          pooling=args.pooling, trust_remote_code=trust)


def _classification(task: ScrollsTask, model_dir: Path, splits: dict, seed: int, args: argparse.Namespace,
                    trust: bool) -> tuple[list[str], list[str]]:
    labels = sorted({r["label"] for r in splits["train"]})
    # A dev label never seen in training cannot be predicted: it stays in the score as a miss (-100 = no loss).
    rows = lambda split: [{"text_a": r["query"], "text_b": r["document"],  # noqa: E731
                           "label": labels.index(r["label"]) if r["label"] in labels else -100} for r in splits[split]]
    spec = TaskSpec(task.name, ("query", "document"), len(labels))
    preds, _ = finetune(model_dir, model_dir, spec, TaskData(rows("train"), {"validation": rows("validation")}),
                        seed, _finetune_config(args, trust))["validation"]
    return [labels[p] for p in preds], [r["label"] for r in splits["validation"]]


def _multiple_choice(model_dir: Path, splits: dict, seed: int, args: argparse.Namespace, trust: bool
                     ) -> tuple[list[str], list[str]]:
    import torch
    from transformers import set_seed

    set_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir, trust)
    model = load_model("AutoModelForSequenceClassification", model_dir, trust, num_labels=1,
                       classifier_pooling=args.pooling).to(device)
    common = dict(max_length=args.max_length, device=device)
    train_multiple_choice(model, tokenizer, splits["train"], lr=args.lr, epochs=args.epochs,
                          batch_size=args.batch_size, seed=seed, **common)
    preds = predict_multiple_choice(model, tokenizer, splits["validation"], batch_size=args.batch_size, **common)
    dev = splits["validation"]
    return [dev[i]["options"][p] for i, p in enumerate(preds)], [r["options"][r["label"]] for r in dev]


def _qa_features(rows: list[dict], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Encode qasper's training rows once for all seeds; answers that cannot be trained on are counted."""
    features, dropped = training_features(tokenizer, rows, max_length)
    for reason, count in dropped.items():
        print(f"qasper [train]: dropped {count} answers ({reason})", flush=True)
    if not features:
        raise EvalError("qasper [train]: no answer is yes/no/unanswerable or found in its input; nothing to train on")
    return {"features": features, "dropped": dict(dropped)}


def _extractive_qa(model_dir: Path, features: list[dict], dev: list[dict], seed: int, args: argparse.Namespace,
                   trust: bool) -> tuple[list[str], list[list[str]]]:
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the fresh heads and the unused LM head: expected
    set_seed(seed)
    tokenizer = load_tokenizer(model_dir, trust)
    tokenizer.padding_side = "right"  # position p holds token p: the decoder's queries and the spans count from 0
    model = load_qa_model(model_dir, args.pooling, trust)
    train_qa(model, tokenizer, features, _finetune_config(args, trust), seed)
    preds = predict_qa(model, tokenizer, dev, max_length=args.max_length, batch_size=args.batch_size,
                       max_answer_tokens=args.max_answer_tokens)
    return preds, [r["answers"] for r in dev]


def _constant_baseline(task: ScrollsTask, splits: dict) -> float:
    """The best constant answer on the dev set itself: the majority label, or for qasper the best of
    Yes / No / Unanswerable (the answers that need no span)."""
    dev = splits["validation"]
    if task.kind == "extractive_qa":
        refs = [r["answers"] for r in dev]
        return max(metrics.mean_scrolls_token_f1([word] * len(refs), refs) for word in ANSWER_WORDS.values())
    gold = [r["label"] for r in dev]
    return gold.count(max(set(gold), key=gold.count)) / len(gold)


def run_task(task: ScrollsTask, model_dir: Path, seeds: list[int], args: argparse.Namespace, trust: bool
             ) -> dict[str, Any]:
    tokenizer = load_tokenizer(model_dir, trust)
    splits = _splits(task, args, tokenizer)
    qa = task.kind == "extractive_qa"
    qa_data = _qa_features(splits["train"], tokenizer, args.max_length) if qa else {}
    metric, score = ("f1", metrics.mean_scrolls_token_f1) if qa else ("exact_match", metrics.mean_exact_match)
    per_seed = {}
    for seed in seeds:
        if qa:
            preds, refs = _extractive_qa(model_dir, qa_data["features"], splits["validation"], seed, args, trust)
        else:
            runner = _multiple_choice if task.kind == "multiple_choice" else partial(_classification, task)
            preds, gold = runner(model_dir, splits, seed, args, trust)
            refs = [[g] for g in gold]
        per_seed[seed] = score(preds, refs)
        print(f"{task.name}: seed {seed} {metric} {per_seed[seed]:.4f}", flush=True)
    extra = {"n_train_features": len(qa_data["features"]), "train_dropped": qa_data["dropped"]} if qa else {}
    return {"task": task.name, "metric": metric, "seeds": per_seed,
            "median": metrics.median_over_seeds(list(per_seed.values())),
            "constant_baseline": _constant_baseline(task, splits), "n_train": len(splits["train"]),
            "n_dev": len(splits["validation"]), "max_length": args.max_length, "stand_in": bool(args.stand_in),
            **extra}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.scrolls", description=__doc__.splitlines()[0])
    add_source_arguments(p, "scrolls", "DIR/<task>/{train,validation}.jsonl (the official zip extracted, or "
                         "DIR/<task>.zip), .parquet or hub shards, or a save_to_disk folder; id/input/output",
                         "cap train and dev rows per task")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated from {','.join(TASKS)}")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (median reported)")
    p.add_argument("--max-length", type=sequence_length, default=4096, help="tokens per input (4096-16384)")
    p.add_argument("--lr", type=finite_positive_float, default=1e-4)
    p.add_argument("--epochs", type=finite_positive_float, default=3.0)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--pooling", default="mean", choices=POOLINGS.keys(),
                   help="how concepts become the classifier's (qasper: the answer-type head's) input")
    p.add_argument("--max-answer-tokens", type=positive_int, default=64,
                   help="longest qasper span predicted, in tokens")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_dir = check_model_dir(args.model)
        tasks = parse_list(args.tasks, list(TASKS), "SCROLLS task (scored here)")
        seeds = parse_seeds(args.seeds)
        # qasper's span head decodes every position, whatever --pooling says.
        check_length(model_dir, args.max_length, "decoder" if "qasper" in tasks else args.pooling)
        if "qasper" in tasks:
            check_qa_export(model_dir)
        check_weights(model_dir)
        trust = trust_remote_code(model_dir, args.trust_remote_code)
        results = [run_task(TASKS[name], model_dir, seeds, args, trust) for name in tasks]
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = results_dir(args, "scrolls", model_dir)
    payload = {**run_header("scrolls", args.stand_in, model_dir, args), "tasks": {r["task"]: r for r in results},
               "not_scored": NOT_SCORED}
    rows = [[r["task"] + (" (stand-in)" if r["stand_in"] else ""), r["metric"], fmt(r["median"]),
             fmt(r["constant_baseline"]), str(len(r["seeds"])), f"{r['n_train']}/{r['n_dev']}", str(r["max_length"])]
            for r in results]
    notes = [f"model: {model_dir}", "scores x100, median over seeds; f1 = SCROLLS token F1, max over references"]
    notes += [f"{r['task']}: training dropped {n} answers ({why})" for r in results
              for why, n in r.get("train_dropped", {}).items()]
    notes += [f"not scored: {k} - {why}" for k, why in NOT_SCORED.items()] + standin_notes(args.stand_in)
    header = ["task", "metric", "score", "constant baseline", "seeds", "train/dev", "max tokens"]
    path = Report(out).write(payload, header, rows, notes)
    print(path.with_name("results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
