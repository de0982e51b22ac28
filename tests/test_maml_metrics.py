"""GLUE's metrics (evaluation.py) against values computed by hand."""

import math

import pytest

import evaluation

PRED = [1, 1, 0, 0, 1]
GOLD = [1, 0, 0, 0, 1]   # tp = 2, tn = 2, fp = 1, fn = 0


def test_accuracy_f1_mcc_by_hand():
    assert evaluation.accuracy(PRED, GOLD) == pytest.approx(4 / 5)
    assert evaluation.f1(PRED, GOLD) == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))                 # 0.8
    assert evaluation.mcc(PRED, GOLD) == pytest.approx((2 * 2 - 1 * 0) / math.sqrt(3 * 2 * 3 * 2))  # 2/3


def test_degenerate_cases():
    assert evaluation.mcc([1, 1, 1], [1, 0, 1]) == 0.0   # a constant prediction has no correlation
    assert evaluation.f1([0, 0], [1, 1]) == 0.0
    assert evaluation.mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_pearson_by_hand():
    # x - mean = (-1, 0, 1), y - mean = (-1, 1, 0): sum of products 1, norms sqrt(2) * sqrt(2)
    assert evaluation.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert evaluation.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_spearman_with_ties_by_hand():
    # ranks of x with a tie: (1, 2.5, 2.5, 4); of y: (1, 2, 3, 4)
    # centred: (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5)
    assert list(evaluation.average_ranks([1, 2, 2, 3])) == [1, 2.5, 2.5, 4]
    assert evaluation.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert evaluation.spearman([10, 20, 30], [1, 8, 27]) == pytest.approx(1.0)   # monotone, not linear


def test_task_metrics_uses_glue_names():
    out = evaluation.task_metrics(("f1", "accuracy"), PRED, GOLD)
    assert out == {"f1": pytest.approx(0.8), "accuracy": pytest.approx(0.8)}


def test_a_diverged_prediction_scores_nan_not_zero():
    assert math.isnan(evaluation.pearson([1.0, float("nan"), 2.0], [1, 2, 3]))
    assert math.isnan(evaluation.spearman([1.0, float("nan"), 2.0], [1, 2, 3]))
