"""evals.metrics against sklearn/scipy and hand-computed values, edge cases included."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from evals import metrics as M

PREDS = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
LABELS = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0]


# --------------------------------------------------------------------------- classification


def test_classification_matches_sklearn():
    assert M.accuracy(PREDS, LABELS) == pytest.approx(skm.accuracy_score(LABELS, PREDS))
    assert M.matthews_corr(PREDS, LABELS) == pytest.approx(skm.matthews_corrcoef(LABELS, PREDS))
    assert M.f1_binary(PREDS, LABELS) == pytest.approx(skm.f1_score(LABELS, PREDS))
    assert all(type(v) is float for v in (M.accuracy(PREDS, LABELS), M.matthews_corr(PREDS, LABELS)))


def test_classification_hand_computed():
    # TP=1 FP=1 TN=2 FN=0: MCC = (1*2 - 1*0) / sqrt(2*1*2*3), F1 = 2*0.5*1/(0.5+1)
    preds, labels = [1, 1, 0, 0], [1, 0, 0, 0]
    assert M.accuracy(preds, labels) == 0.75
    assert M.matthews_corr(preds, labels) == pytest.approx(2 / math.sqrt(12))
    assert M.f1_binary(preds, labels) == pytest.approx(2 / 3)
    assert M.matthews_corr([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_mcc_all_one_class_is_zero():
    assert M.matthews_corr([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0
    assert M.matthews_corr([1, 0, 1, 0], [0, 0, 0, 0]) == 0.0


def test_f1_ill_defined_is_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.f1_binary([0, 0, 0], [0, 0, 0]) == 0.0
        assert M.f1_binary([0, 0], [1, 1]) == 0.0


@pytest.mark.parametrize("fn", [M.accuracy, M.matthews_corr, M.f1_binary, M.pearson, M.spearman])
def test_empty_and_mismatched_inputs_raise(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        fn([1, 0, 1], [1, 0])


# --------------------------------------------------------------------------- correlation

X = [0.1, 1.5, 2.0, 3.7, 4.2, 2.2]
Y = [0.0, 1.0, 2.5, 3.0, 5.0, 1.9]


def test_correlations_match_scipy():
    assert M.pearson(X, Y) == pytest.approx(stats.pearsonr(X, Y).statistic)
    assert M.spearman(X, Y) == pytest.approx(stats.spearmanr(X, Y).statistic)
    assert M.pearson(X, Y) == pytest.approx(np.corrcoef(X, Y)[0, 1])
    assert M.pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)


def test_spearman_ties_use_average_ranks():
    preds, labels = [1.0, 2.0, 2.0, 3.0, 3.0], [1.0, 3.0, 2.0, 5.0, 4.0]
    # average ranks of preds: [1, 2.5, 2.5, 4.5, 4.5]; labels are untied
    by_hand = np.corrcoef([1, 2.5, 2.5, 4.5, 4.5], [1, 3, 2, 5, 4])[0, 1]
    assert M.spearman(preds, labels) == pytest.approx(by_hand)
    assert M.spearman(preds, labels) == pytest.approx(stats.spearmanr(preds, labels).statistic)


def test_constant_inputs_give_zero_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy would warn and return NaN
        for fn in (M.pearson, M.spearman):
            assert fn([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
            assert fn([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0
            assert fn([5.0], [1.0]) == 0.0


# --------------------------------------------------------------------------- GLUE


@pytest.mark.parametrize("task", sorted(M.GLUE_METRICS))
def test_glue_scores_keys_per_task(task):
    if task == "stsb":
        preds, labels = X, Y
    elif task == "mnli":
        preds, labels = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    else:
        preds, labels = PREDS, LABELS
    scores = M.glue_scores(task, preds, labels)
    assert tuple(scores) == M.GLUE_METRICS[task]
    assert all(type(v) is float for v in scores.values())
    assert M.glue_task_score(task, scores) == pytest.approx(sum(scores.values()) / len(scores))


def test_glue_metric_table():
    assert M.GLUE_METRICS["cola"] == ("mcc",)
    assert M.GLUE_METRICS["mrpc"] == ("f1", "accuracy")
    assert M.GLUE_METRICS["stsb"] == ("pearson", "spearman")
    assert M.GLUE_METRICS["qqp"] == ("accuracy", "f1")
    assert set(M.GLUE_METRICS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"}


def test_glue_values():
    mrpc = M.glue_scores("mrpc", PREDS, LABELS)
    assert mrpc["f1"] == pytest.approx(skm.f1_score(LABELS, PREDS))
    assert mrpc["accuracy"] == pytest.approx(skm.accuracy_score(LABELS, PREDS))
    assert M.glue_scores("cola", PREDS, LABELS)["mcc"] == pytest.approx(skm.matthews_corrcoef(LABELS, PREDS))
    stsb = M.glue_scores("stsb", X, Y)
    assert stsb["spearman"] == pytest.approx(stats.spearmanr(X, Y).statistic)
    assert M.glue_task_score("stsb", {"pearson": 0.8, "spearman": 0.6}) == pytest.approx(0.7)


def test_glue_unknown_task_and_missing_metric():
    with pytest.raises(ValueError, match="valid tasks: cola, sst2"):
        M.glue_scores("wnli", [1], [1])
    with pytest.raises(ValueError, match="valid tasks"):
        M.glue_task_score("squad", {"f1": 1.0})
    with pytest.raises(ValueError, match="lack"):
        M.glue_task_score("mrpc", {"f1": 1.0})


# --------------------------------------------------------------------------- SQuAD / SCROLLS QA


@pytest.mark.parametrize("raw, normalized", [
    ("The  Quick, Brown fox!", "quick brown fox"),
    ("an apple a day", "apple day"),
    ("Theater and Anthem", "theater and anthem"),  # articles only as whole words
    ("the, end.", "end"),  # punctuation goes before the article rule runs
    ("U.S.A.", "usa"),
    ("  \tA\n", ""),
])
def test_normalize_answer(raw, normalized):
    assert M.normalize_answer(raw) == normalized


def test_exact_match():
    assert M.exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert M.exact_match("Eiffel", ["eiffel tower"]) == 0.0
    assert M.exact_match("Paris", ["London", "paris!"]) == 1.0  # max over references
    with pytest.raises(ValueError):
        M.exact_match("Paris", [])


def test_token_f1_hand_computed():
    # tokens [cat, sat] vs [cat, sat, down]: precision 1, recall 2/3, F1 0.8
    assert M.token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    # repeated tokens count with multiplicity: [cat, cat] vs [cat] gives P=1/2, R=1
    assert M.token_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)
    assert M.token_f1("dog", ["cat"]) == 0.0


def test_token_f1_max_over_references():
    refs = ["a cat sat down", "cat sat", "dog"]
    assert M.token_f1("the cat sat", refs) == 1.0
    # [cat, on, mat] vs [cat, sat] gives F1 0.4; vs [mat, on] gives 0.8
    assert M.token_f1("cat on the mat", ["cat sat", "the mat on"]) == pytest.approx(0.8)


def test_token_f1_empty_answers():
    assert M.token_f1("", [""]) == 1.0
    assert M.token_f1("The.", ["a"]) == 1.0  # both normalize to zero tokens
    assert M.token_f1("", ["cat"]) == 0.0
    assert M.token_f1("cat", ["the"]) == 0.0
    assert M.token_f1("", ["cat", ""]) == 1.0


def test_mean_qa_metrics():
    preds = ["the cat sat", "Paris", ""]
    refs = [["a cat sat down"], ["London", "paris"], ["cat"]]
    assert M.mean_exact_match(preds, refs) == pytest.approx(1 / 3)
    assert M.mean_token_f1(preds, refs) == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError):
        M.mean_token_f1([], [])
    with pytest.raises(ValueError):
        M.mean_exact_match(["a"], [["a"], ["b"]])


def test_scrolls_f1_empty_sides_score_zero():
    # SCROLLS (SQuAD v1.1 rule): no shared token is 0.0, even when both sides are empty (token_f1 says 1.0).
    assert M.scrolls_token_f1("", ["Unanswerable"]) == 0.0
    assert M.scrolls_token_f1("Yes", [""]) == 0.0
    assert M.scrolls_token_f1("", [""]) == 0.0
    assert M.scrolls_token_f1("The.", ["a"]) == 0.0  # both normalize to zero tokens
    assert M.scrolls_token_f1("", ["", "cat"]) == 0.0
    with pytest.raises(ValueError):
        M.scrolls_token_f1("cat", [])


def test_scrolls_f1_normalizes_and_takes_the_best_reference():
    assert M.scrolls_token_f1("The BERT model!", ["bert model"]) == 1.0  # case, punctuation, articles
    assert M.scrolls_token_f1("yes", ["No", "Yes."]) == 1.0
    # [bert, base] vs [bert, large, model]: P 1/2, R 1/3, F1 0.4; vs [bert]: P 1/2, R 1, F1 2/3
    assert M.scrolls_token_f1("a BERT base", ["BERT large model"]) == pytest.approx(0.4)
    assert M.scrolls_token_f1("BERT-base", ["bert base"]) == 0.0  # a hyphen is dropped, not a space: "bertbase"
    assert M.scrolls_token_f1("the BERT, base", ["BERT large model", "bert"]) == pytest.approx(2 / 3)
    assert M.scrolls_token_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)  # multiplicity counts
    for pred, refs in (("the cat sat", ["a cat sat down"]), ("dog", ["cat", "dog bark"])):
        assert M.scrolls_token_f1(pred, refs) == pytest.approx(M.token_f1(pred, refs))  # agree off the edge case


def test_mean_scrolls_f1():
    preds, refs = ["Unanswerable", "", "cat sat"], [["unanswerable"], [""], ["a cat sat down", "dog"]]
    assert M.mean_scrolls_token_f1(preds, refs) == pytest.approx((1.0 + 0.0 + 0.8) / 3)
    with pytest.raises(ValueError):
        M.mean_scrolls_token_f1(["a"], [])


# --------------------------------------------------------------------------- LongBench

TREC_LIKE = ["abbreviation", "abbreviation expansion", "animal", "city"]


def test_classification_overlapping_class_names():
    # "abbreviation" is a proper substring of the gold class, so it is dropped: one match left
    assert M.classification_score("abbreviation expansion", "abbreviation expansion", TREC_LIKE) == 1.0
    # gold is the shorter class: both names match and both stay, so credit is split
    assert M.classification_score("abbreviation expansion", "abbreviation", TREC_LIKE) == 0.5
    assert M.classification_score("animal or city", "city", TREC_LIKE) == 0.5
    assert M.classification_score("city", "animal", TREC_LIKE) == 0.0
    assert M.classification_score("no idea", "animal", TREC_LIKE) == 0.0  # no match at all


def test_classification_reproduces_official_removal_skip():
    # Official code removes while iterating: after dropping "a", "ab" is skipped and survives,
    # so the list ends as ["ab", "abc"] and the score is 1/2 (a clean filter would give 1.0).
    assert M.classification_score("abc", "abc", ["a", "ab", "abc"]) == 0.5
    # the same classes in another order: "a" dropped, then "ab" is reached and dropped too
    assert M.classification_score("abc", "abc", ["a", "abc", "ab"]) == 1.0


def test_retrieval_score():
    assert M.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert M.retrieval_score("Paragraph 3, or Paragraph 12, most likely 3", "Paragraph 3") == pytest.approx(2 / 3)
    assert M.retrieval_score("Paragraph 30", "Paragraph 3") == 0.0  # whole digit runs, not substrings
    assert M.retrieval_score("I cannot tell", "Paragraph 3") == 0.0
    with pytest.raises(ValueError, match="Paragraph"):
        M.retrieval_score("3", "the third one")


def test_count_score():
    assert M.count_score("5", 5) == 1.0
    assert M.count_score("There are 5 unique paragraphs out of 12.", 5) == 0.5
    assert M.count_score("maybe 4, 5 or 6", "5") == pytest.approx(1 / 3)
    assert M.count_score("five", 5) == 0.0


def test_multiple_choice_accuracy():
    assert M.multiple_choice_accuracy(["A", "b", " C", "d"], ["a", "B", "C", "A"]) == 0.75
    with pytest.raises(ValueError):
        M.multiple_choice_accuracy([], [])


# --------------------------------------------------------------------------- aggregation


def test_median_over_seeds():
    assert M.median_over_seeds([0.7, 0.9, 0.8]) == pytest.approx(0.8)
    assert M.median_over_seeds([0.6, 0.9, 0.8, 0.7]) == pytest.approx(0.75)
    assert type(M.median_over_seeds([1, 2, 3])) is float
    with pytest.raises(ValueError, match="at least one"):
        M.median_over_seeds([])
