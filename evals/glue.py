"""`python -m evals.glue --model HF_DIR`: fine-tune and score GLUE tasks on their dev sets.

Each task is fine-tuned from the exported model (HF Trainer, one run per seed) with the sequence
classification head of `megaconcept/model/classification.py`, and scored with the standard metric(s) of
`evals/metrics.py`. Reported per task: every seed's scores, the median over seeds (GLUE practice for the
noisy small tasks), the task score (mean of its metrics), a majority-class baseline; plus the average over
tasks. Data: the hub (`nyu-mll/glue`), local files (`--data-dir`: the GLUE download, per-split files, a hub-cache
snapshot or a save_to_disk folder; see evals/glue_data.py), or offline stand-ins derived from real data at run
time (`--stand-in`, labelled as such everywhere).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from . import metrics
from .common import (EvalError, Report, add_source_arguments, check_length, check_model_dir, check_weights, fmt,
                     load_tokenizer, parse_list, parse_seeds, results_dir, run_header, standin_notes, trust_remote_code)
from .glue_data import STANDIN_TASKS, TASKS, TaskSpec, load_task
from .glue_finetune import FinetuneConfig, finetune


@dataclass
class TaskResult:
    task: str
    metric_names: list[str]
    seeds: dict[int, dict[str, float]]
    median: dict[str, float]
    score: float
    majority: dict[str, float]
    n_train: int
    n_dev: dict[str, int]
    stand_in: bool


def _dev_metrics(spec: TaskSpec, predictions: dict[str, tuple[list, list]]) -> dict[str, float]:
    """Scores of every dev split; MNLI's two sets get `_m` / `_mm` suffixes."""
    out: dict[str, float] = {}
    for split, (preds, labels) in predictions.items():
        suffix = spec.split_suffix(split)
        out.update({f"{k}{suffix}": v for k, v in metrics.glue_scores(spec.metric_task, preds, labels).items()})
    return out


def majority_baseline(spec: TaskSpec, train_labels: list, dev: dict[str, list]) -> dict[str, float]:
    """Predict the most frequent training label (the training mean for regression) on every dev example."""
    if spec.num_labels == 1:
        guess: Any = sum(train_labels) / len(train_labels)
    else:
        guess = Counter(train_labels).most_common(1)[0][0]
    return _dev_metrics(spec, {split: ([guess] * len(labels), labels) for split, labels in dev.items()})


def run_task(spec: TaskSpec, model_dir: Path, seeds: list[int], cfg: FinetuneConfig, out_dir: Path,
             init_from: Optional[dict[int, Path]] = None, keep_models: bool = False) -> TaskResult:
    """Fine-tune and score one task for every seed; `keep_models` saves each seed's model under out_dir."""
    data = load_task(spec, cfg.source, cfg.data_dir, cfg.limit)
    dev_labels = {split: [row["label"] for row in rows] for split, rows in data.dev.items()}
    per_seed: dict[int, dict[str, float]] = {}
    for seed in seeds:
        start = (init_from or {}).get(seed, model_dir)
        keep = out_dir / f"{spec.name}_seed{seed}" if keep_models else None
        predictions = finetune(model_dir, start, spec, data, seed, cfg, keep)
        per_seed[seed] = _dev_metrics(spec, predictions)
        print(f"{spec.label}: seed {seed} " + ", ".join(f"{k} {v:.4f}" for k, v in per_seed[seed].items()), flush=True)
    names = list(per_seed[seeds[0]])
    median = {k: metrics.median_over_seeds([per_seed[s][k] for s in seeds]) for k in names}
    return TaskResult(spec.name, names, per_seed, median, sum(median.values()) / len(median),
                      majority_baseline(spec, [r["label"] for r in data.train], dev_labels), len(data.train),
                      {k: len(v) for k, v in data.dev.items()}, spec.stand_in)


def _order(tasks: list[str], from_mnli: bool) -> list[str]:
    """MNLI first when the small tasks start from its fine-tuned model."""
    return sorted(tasks, key=lambda t: t != "mnli") if from_mnli else tasks


def write_results(results: list[TaskResult], out_dir: Path, model_dir: Path, args: argparse.Namespace) -> Path:
    average = sum(r.score for r in results) / len(results)
    stand_in = any(r.stand_in for r in results)
    payload = {**run_header("glue", stand_in, model_dir, args), "average": average,
               "tasks": {r.task: asdict(r) for r in results}}
    rows = [[r.task + (" (stand-in)" if r.stand_in else ""), ", ".join(f"{k} {fmt(v)}" for k, v in r.median.items()),
             fmt(r.score), ", ".join(f"{k} {fmt(v)}" for k, v in r.majority.items()), str(len(r.seeds)), str(r.n_train)]
            for r in results]
    rows.append(["**average**", "", fmt(average), "", "", ""])
    notes = [f"model: {model_dir}", "median over seeds; task score = mean of its metrics; x100",
             *standin_notes(stand_in)]
    path = Report(out_dir).write(payload, ["task", "dev metrics (median)", "score", "majority baseline", "seeds",
                                           "train rows"], rows, notes)
    _plot(results, out_dir / "scores.png")
    return path


def _plot(results: list[TaskResult], path: Path) -> None:
    """Task score next to the majority-class baseline: the gap is what the model learned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(results) + 2, 3.5))
    xs = range(len(results))
    ax.bar([x - 0.2 for x in xs], [100 * r.score for r in results], width=0.4, label="model (median)")
    ax.bar([x + 0.2 for x in xs], [100 * sum(r.majority.values()) / len(r.majority) for r in results], width=0.4,
           label="majority class")
    ax.set_xticks(list(xs), [r.task + ("*" if r.stand_in else "") for r in results])
    ax.set_ylabel("dev score")
    ax.legend()
    ax.set_title("GLUE" + (" (* = stand-in data)" if any(r.stand_in for r in results) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.glue", description=__doc__.splitlines()[0])
    add_source_arguments(p, "glue", "DIR/<task>/ (qnli or QNLI) holding the GLUE download (train.tsv, dev.tsv), "
                         "<split>.{parquet,jsonl,json,csv,tsv} or hub shards, or a save_to_disk folder",
                         "cap train and dev rows per task (quick runs)")
    p.add_argument("--tasks", help=f"comma-separated, default all: {','.join(TASKS)} (stand-ins: "
                                   f"{','.join(STANDIN_TASKS)})")
    p.add_argument("--seeds", help="comma-separated seeds for every task (default: 5 for cola/mrpc/stsb/rte, 1 else)")
    p.add_argument("--from-mnli", action="store_true", help="start rte/mrpc/stsb from the MNLI fine-tuned model")
    FinetuneConfig.add_arguments(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_dir = check_model_dir(args.model)
        check_weights(model_dir)
        valid = list(STANDIN_TASKS if args.stand_in else TASKS)
        tasks = parse_list(args.tasks, valid, "GLUE task") or valid
        if args.from_mnli and "mnli" not in tasks:
            raise EvalError("--from-mnli needs mnli among --tasks (its fine-tuned model is the starting point)")
        seeds = parse_seeds(args.seeds)
        cfg = FinetuneConfig.from_args(args, trust_remote_code(model_dir, args.trust_remote_code))
        check_length(model_dir, cfg.max_length, cfg.pooling)
        load_tokenizer(model_dir, cfg.trust_remote_code)  # a broken tokenizer fails now, not after the data loads
        out_dir = results_dir(args, "glue", model_dir)
        results, mnli_models = [], None
        for name in _order(tasks, args.from_mnli):
            spec = (STANDIN_TASKS if args.stand_in else TASKS)[name]
            init = mnli_models if args.from_mnli and name in ("rte", "mrpc", "stsb") else None
            results.append(run_task(spec, model_dir, seeds or list(spec.default_seeds), cfg, out_dir, init,
                                    keep_models=name == "mnli" and args.from_mnli))
            if name == "mnli" and args.from_mnli:
                mnli_models = {s: out_dir / f"mnli_seed{s}" for s in results[-1].seeds}
        path = write_results(results, out_dir, model_dir, args)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(Path(path.parent / "results.md").read_text())
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
