"""GLUE's metrics against values computed by hand."""

import math

import pytest

import maml

PRED = [1, 1, 0, 0, 1]
GOLD = [1, 0, 0, 0, 1]   # tp = 2, tn = 2, fp = 1, fn = 0


def test_accuracy_f1_mcc_by_hand():
    assert maml.accuracy(PRED, GOLD) == pytest.approx(4 / 5)
    assert maml.f1(PRED, GOLD) == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))                 # 0.8
    assert maml.mcc(PRED, GOLD) == pytest.approx((2 * 2 - 1 * 0) / math.sqrt(3 * 2 * 3 * 2))  # 2/3


def test_degenerate_cases():
    assert maml.mcc([1, 1, 1], [1, 0, 1]) == 0.0   # a constant prediction has no correlation
    assert maml.f1([0, 0], [1, 1]) == 0.0
    assert maml.mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_pearson_by_hand():
    # x - mean = (-1, 0, 1), y - mean = (-1, 1, 0): sum of products 1, norms sqrt(2) * sqrt(2)
    assert maml.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert maml.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_spearman_with_ties_by_hand():
    # ranks of x with a tie: (1, 2.5, 2.5, 4); of y: (1, 2, 3, 4)
    # centred: (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5)
    assert list(maml.average_ranks([1, 2, 2, 3])) == [1, 2.5, 2.5, 4]
    assert maml.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert maml.spearman([10, 20, 30], [1, 8, 27]) == pytest.approx(1.0)   # monotone, not linear


def test_task_metrics_uses_glue_names():
    out = maml.task_metrics(("f1", "accuracy"), PRED, GOLD)
    assert out == {"f1": pytest.approx(0.8), "accuracy": pytest.approx(0.8)}


def test_a_diverged_prediction_scores_nan_not_zero():
    assert math.isnan(maml.pearson([1.0, float("nan"), 2.0], [1, 2, 3]))
    assert math.isnan(maml.spearman([1.0, float("nan"), 2.0], [1, 2, 3]))
