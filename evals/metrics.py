"""Official metric definitions for the evaluation harness (GLUE, SCROLLS, LongBench).

Every function returns a plain Python float. Scores are fractions in [0, 1] (correlations in
[-1, 1]); scaling to 0-100 for tables is the caller's job. Empty input raises ValueError.
Classification and correlation metrics wrap sklearn / scipy; only the answer normalization and
scoring rules that those libraries lack are written here, each following the official code.
"""
from __future__ import annotations

import re
import statistics
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

# --------------------------------------------------------------------------- classification


def _check_pair(preds: Sequence, labels: Sequence) -> None:
    if len(preds) == 0 or len(labels) == 0:
        raise ValueError("metric needs at least one prediction and one label, got empty input")
    if len(preds) != len(labels):
        raise ValueError(f"got {len(preds)} predictions for {len(labels)} labels")


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to their label."""
    _check_pair(preds, labels)
    return float(skm.accuracy_score(labels, preds))


def matthews_corr(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation coefficient; 0.0 when predictions or labels are all one class.

    sklearn already returns 0.0 for that zero-denominator case (the GLUE CoLA convention).
    """
    _check_pair(preds, labels)
    return float(skm.matthews_corrcoef(labels, preds))


def f1_binary(preds: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class 1; 0.0 when it is ill-defined (no positive label or prediction)."""
    _check_pair(preds, labels)
    return float(skm.f1_score(labels, preds, pos_label=1, average="binary", zero_division=0.0))


# --------------------------------------------------------------------------- correlation


def _is_constant(values: Sequence[float]) -> bool:
    return bool(np.ptp(np.asarray(values, dtype=np.float64)) == 0)


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson r; 0.0 (not scipy's NaN) when either input is constant, e.g. a collapsed regressor."""
    _check_pair(preds, labels)
    if _is_constant(preds) or _is_constant(labels):
        return 0.0
    return float(stats.pearsonr(preds, labels).statistic)


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rho (ties get averaged ranks); 0.0 (not NaN) when either input is constant."""
    _check_pair(preds, labels)
    if _is_constant(preds) or _is_constant(labels):
        return 0.0
    return float(stats.spearmanr(preds, labels).statistic)


# --------------------------------------------------------------------------- GLUE

# MNLI is scored twice by the caller, once on matched and once on mismatched dev sets.
GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
}

_METRIC_FNS = {"mcc": matthews_corr, "accuracy": accuracy, "f1": f1_binary,
               "pearson": pearson, "spearman": spearman}


def _glue_metric_names(task: str) -> tuple[str, ...]:
    if task not in GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; valid tasks: {', '.join(GLUE_METRICS)}")
    return GLUE_METRICS[task]


def glue_scores(task: str, preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """All metrics of a GLUE task, keyed by the names in GLUE_METRICS[task].

    stsb takes float scores; every other task takes integer class ids.
    """
    names = _glue_metric_names(task)
    cast = float if task == "stsb" else int
    preds, labels = [cast(p) for p in preds], [cast(y) for y in labels]
    return {name: _METRIC_FNS[name](preds, labels) for name in names}


def glue_task_score(task: str, scores: Mapping[str, float]) -> float:
    """One number per task: the mean of its metrics (how GLUE averages MRPC, STS-B and QQP)."""
    names = _glue_metric_names(task)
    missing = [name for name in names if name not in scores]
    if missing:
        raise ValueError(f"scores for {task!r} lack {missing}")
    return float(statistics.fmean(scores[name] for name in names))


# --------------------------------------------------------------------------- SQuAD / SCROLLS QA

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, drop articles a/an/the, collapse whitespace.

    Follows the official SQuAD v1.1 evaluate script step for step; the order matters
    ("the," loses its comma before the article rule sees it).
    """
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str) or len(references) == 0:
        raise ValueError("references must be a non-empty list of strings")


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized reference, else 0.0."""
    _check_references(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


def _token_f1_single(prediction: str, reference: str) -> float:
    # Follows the official SQuAD v2.0 compute_f1: an empty side scores 1.0 only if both are empty
    # (v1.1 and LongBench's qa_f1_score give 0.0 there; they agree everywhere else).
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    num_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token-overlap F1 (bag of normalized tokens), maximized over the references."""
    _check_references(references)
    return float(max(_token_f1_single(prediction, ref) for ref in references))


def _mean_over_examples(metric: Callable[[str, Sequence[str]], float], preds: Sequence[str],
                        refs_list: Sequence[Sequence[str]]) -> float:
    _check_pair(preds, refs_list)
    return float(statistics.fmean(metric(p, refs) for p, refs in zip(preds, refs_list)))


def mean_exact_match(preds: Sequence[str], refs_list: Sequence[Sequence[str]]) -> float:
    """exact_match averaged over examples; refs_list[i] holds the references of preds[i]."""
    return _mean_over_examples(exact_match, preds, refs_list)


def mean_token_f1(preds: Sequence[str], refs_list: Sequence[Sequence[str]]) -> float:
    """token_f1 averaged over examples; refs_list[i] holds the references of preds[i]."""
    return _mean_over_examples(token_f1, preds, refs_list)


def scrolls_token_f1(prediction: str, references: Sequence[str]) -> float:
    """SCROLLS's F1 (qasper, narrative_qa): SQuAD normalization and token overlap, maximized over references.

    Follows SCROLLS's metrics/f1.py, the SQuAD v1.1 rule: no shared token scores 0.0, so an empty
    (normalized) prediction or reference scores 0.0 even against an empty one (token_f1 gives 1.0 there).
    """
    _check_references(references)
    pred = normalize_answer(prediction).split()
    return float(max(_token_f1_single(prediction, ref) if pred and normalize_answer(ref) else 0.0
                     for ref in references))


def mean_scrolls_token_f1(preds: Sequence[str], refs_list: Sequence[Sequence[str]]) -> float:
    """scrolls_token_f1 averaged over examples; refs_list[i] holds the references of preds[i]."""
    return _mean_over_examples(scrolls_token_f1, preds, refs_list)


# --------------------------------------------------------------------------- LongBench


def classification_score(prediction: str, ground_truth: str, all_classes: Sequence[str]) -> float:
    """LongBench classification (TREC, LSHT): 1/k if the gold class is among the k classes named.

    Follows the official THUDM/LongBench metrics.py: collect every class name that occurs as a
    substring of the prediction, drop matches that are a proper substring of the gold class,
    then score 1/len(matches) if the gold class is among them, else 0.0. The official fallback
    to difflib similarity is unreachable there (`if em_match_list != 0` is always true), so an
    empty match list scores 0.0 here as well.
    """
    matches = [name for name in all_classes if name in prediction]
    # Deliberately removes from the list while iterating over it, exactly as the official code
    # does: the element after each removed one is skipped. Fixing it would shift published scores.
    for name in matches:
        if name in ground_truth and name != ground_truth:
            matches.remove(name)
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _fraction_equal(prediction: str, target: str) -> float:
    # Official LongBench rule: share of all digit runs in the prediction that equal the target.
    numbers = re.findall(r"\d+", prediction)
    return sum(number == target for number in numbers) / len(numbers) if numbers else 0.0


def retrieval_score(prediction: str, ground_truth: str) -> float:
    """LongBench passage retrieval: fraction of numbers in the prediction equal to the gold id.

    The gold id is the first `Paragraph (\\d+)` in the ground truth (official metrics.py).
    """
    found = re.findall(r"Paragraph (\d+)", ground_truth)
    if not found:
        raise ValueError(f"ground truth {ground_truth!r} names no 'Paragraph N'")
    return float(_fraction_equal(prediction, found[0]))


def count_score(prediction: str, ground_truth: int | str) -> float:
    """LongBench passage count: fraction of numbers in the prediction equal to the gold count."""
    return float(_fraction_equal(prediction, str(ground_truth)))


def multiple_choice_accuracy(pred_letters: Sequence[str], gold_letters: Sequence[str]) -> float:
    """Accuracy of option letters (LongBench v2, QuALITY), ignoring case and surrounding spaces."""
    _check_pair(pred_letters, gold_letters)
    return accuracy([p.strip().upper() for p in pred_letters], [g.strip().upper() for g in gold_letters])


# --------------------------------------------------------------------------- aggregation


def median_over_seeds(values: Sequence[float]) -> float:
    """Median of one score over fine-tuning seeds (the mean of the middle two for even counts)."""
    if len(values) == 0:
        raise ValueError("median_over_seeds needs at least one value")
    return float(statistics.median(values))
