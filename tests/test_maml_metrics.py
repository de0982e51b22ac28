"""GLUE's metrics (evaluation.py) against values computed by hand."""

import math
from fractions import Fraction

import numpy as np
import pytest

import evaluation
from oracles import leaves_inputs_alone

PRED = [1, 1, 0, 0, 1]
GOLD = [1, 0, 0, 0, 1]   # tp = 2, tn = 2, fp = 1, fn = 0
# every cell of the table filled, and a different F1 for each class: tp = 3, fp = 1, fn = 2, tn = 4
PRED2 = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
GOLD2 = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def expect(fn, args, expected, how, abs=1e-12):
    """Assert fn(*args) == expected, the message naming the call, the value expected, how, and what came out."""
    got = fn(*args)
    call = f"{fn.__name__}({', '.join(map(str, args))})"
    assert got == pytest.approx(expected, abs=abs), f"{call}: expected {expected:.6g} ({how}), got {got}"
    assert type(got) is float, (f"{call}: expected a Python float (json and torch.load(weights_only=True), which reads "
                                f"the run state, take no numpy scalar), got {type(got).__name__}")


def test_accuracy_f1_mcc_by_hand():
    assert evaluation.accuracy(PRED, GOLD) == pytest.approx(4 / 5)
    expect(evaluation.f1, (PRED, GOLD), 2 * 2 / (2 * 2 + 1 + 0), "tp 2, fp 1, fn 0: 2tp / (2tp + fp + fn)")  # 0.8
    expect(evaluation.mcc, (PRED, GOLD), (2 * 2 - 1 * 0) / math.sqrt(3 * 2 * 3 * 2),                       # 2/3
           "tp 2, tn 2, fp 1, fn 0: (tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn))")
    # the positive class is 1: class 0 would score 2·4 / (2·4 + 2 + 1) = 8/11
    expect(evaluation.f1, (PRED2, GOLD2), 6 / 9, "of the positive class 1; tp 3, fp 1, fn 2: 2·3 / (2·3 + 1 + 2)")
    expect(evaluation.mcc, (PRED2, GOLD2), (3 * 4 - 1 * 2) / math.sqrt(4 * 5 * 5 * 6),
           "tp 3, tn 4, fp 1, fn 2: (3·4 − 1·2) / √(4·5·5·6)")


def test_mcc_of_a_large_table_by_hand():
    # a dev set of 400,000 labels: the denominator's product (about 1.6e21) is past what an int64 holds (9.2e18),
    # so the counts must be multiplied as floats (or Python ints), as here
    tp, tn, fp, fn = 150_000, 130_000, 70_000, 50_000
    pred = np.repeat([1, 0, 1, 0], [tp, tn, fp, fn])
    gold = np.repeat([1, 0, 0, 1], [tp, tn, fp, fn])
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # Python ints: exact
    got = evaluation.mcc(pred, gold)
    assert got == pytest.approx(expected, rel=1e-12), (
        f"mcc of 400,000 labels, tp {tp}, tn {tn}, fp {fp}, fn {fn}: expected {expected:.12g} "
        f"((tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn)), the product about 1.6e21), got {got}")


def test_degenerate_cases():
    expect(evaluation.mcc, ([1, 1, 1], [1, 0, 1]), 0.0, "a constant prediction has no correlation: 0, not 0/0", abs=0)
    expect(evaluation.f1, ([0, 0], [1, 1]), 0.0, "no true positive", abs=0)
    expect(evaluation.f1, ([0, 0], [0, 0]), 0.0, "no true positive, nor any positive: 0, not 0/0 (nan is for a "
           "diverged model)", abs=0)
    expect(evaluation.mcc, ([0, 1, 0, 1], [1, 0, 1, 0]), -1.0, "every label inverted: tp = tn = 0, fp = fn = 2")
    expect(evaluation.mcc, ([0, 0, 1], [0, 0, 0]), 0.0, "no positive in gold: an empty column, 0")
    expect(evaluation.pearson, ([2, 2, 2], [1, 2, 3]), 0.0, "a constant prediction: 0, not nan")
    expect(evaluation.mcc, ([1, 0, 1, 0], [1, 1, 1, 1]), 0.0, "no negative in gold: an empty row, 0, not 0/0", abs=0)
    expect(evaluation.mcc, ([0, 0, 0, 0], [1, 0, 1, 0]), 0.0, "no positive predicted (a collapsed model): 0, not 0/0",
           abs=0)
    expect(evaluation.pearson, ([1.0], [2.0]), 0.0, "a single pair: a constant prediction, 0, not nan", abs=0)
    # a prediction equal to the gold is still constant when the gold is: 0, not a perfect 1 (0.1's mean is inexact)
    expect(evaluation.pearson, ([0.1] * 3, [0.1] * 3), 0.0, "the same constant on both sides: 0", abs=0)
    expect(evaluation.pearson, ([3, 3], [3, 3]), 0.0, "the same constant on both sides: 0", abs=0)
    expect(evaluation.spearman, ([2, 2, 2], [2, 2, 2]), 0.0, "all tied on both sides: constant ranks, 0", abs=0)


def test_pearson_by_hand():
    # x - mean = (-1, 0, 1), y - mean = (-1, 1, 0): sum of products 1, norms sqrt(2) * sqrt(2)
    expect(evaluation.pearson, ([1, 2, 3], [1, 3, 2]), 0.5, "centred (−1, 0, 1)·(−1, 1, 0) = 1 over √2·√2")
    expect(evaluation.pearson, ([1, 2, 3], [2, 4, 6]), 1.0, "y = 2x")
    expect(evaluation.pearson, ([1, 2, 3], [3, 2, 1]), -1.0, "y decreases with x")
    # centred (−1.5, −0.5, 0.5, 1.5) and (−0.5, −1.5, 1.5, 0.5): 3 / (√5·√5)
    expect(evaluation.pearson, ([1, 2, 3, 4], [2, 1, 4, 3]), 0.6, "centred products sum to 3, norms √5 and √5")
    expect(evaluation.pearson, ([10.5, 10.0, 11.0], [3.0, 1.0, 2.0]), 0.5, "centred (0, −0.5, 0.5)·(1, −1, 0) = 0.5 "
           "over √0.5·√2")
    # distinct values are not constant, however close: x = 1 + (0, 2, 4)·2^-52 rises with y
    eps = 2.0 ** -52
    expect(evaluation.pearson, ([1.0, 1.0 + 2 * eps, 1.0 + 4 * eps], [1.0, 2.0, 3.0]), 1.0,
           "values a few float64 steps apart are distinct, not constant: centred (−2, 0, 2)·2^-52, y's (−1, 0, 1)",
           abs=1e-9)


def test_spearman_with_ties_by_hand():
    # ranks of x with a tie: (1, 2.5, 2.5, 4); of y: (1, 2, 3, 4)
    # centred: (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5)
    cases = [  # (x, ranks from 1, ties sharing the mean of their ranks)
        ([1, 2, 2, 3], [1, 2.5, 2.5, 4]),
        ([30, 10, 20], [3, 1, 2]),                 # each rank at its value's own place, not in sorted order
        ([3, 1, 2, 1], [4, 1.5, 3, 1.5]),
        ([2, 1, 2], [2.5, 1, 2.5]),                # a tie at the top
        ([5, 5, 5], [2, 2, 2]),                    # all tied: the mean of 1, 2, 3
        ([0.5, 0.2, 0.5, 0.2, 0.5], [4, 1.5, 4, 1.5, 4]),
        ([1, 1 + 1e-9, 0.5], [2, 3, 1]),           # distinct in float64 (alike in float32): no tie
    ]
    for x, expected in cases:
        got = [float(r) for r in evaluation.average_ranks(x)]
        assert got == expected, f"average_ranks({x}): expected {expected} (from 1, ties sharing their mean), got {got}"
    expect(evaluation.spearman, ([1, 2, 2, 3], [1, 2, 3, 4]), 4.5 / math.sqrt(4.5 * 5),
           "Pearson of the ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4)")
    expect(evaluation.spearman, ([10, 20, 30], [1, 8, 27]), 1.0, "monotone, not linear")
    expect(evaluation.spearman, ([30, 10, 20], [3, 1, 2]), 1.0, "the same order, unsorted")
    expect(evaluation.spearman, ([1, 1 + 1e-9, 1 + 2e-9], [1, 2, 3]), 1.0, "increasing: distinct in float64, "
           "no tie")


def test_task_metrics_uses_glue_names():
    out = evaluation.task_metrics(("f1", "accuracy"), PRED, GOLD)
    assert out == {"f1": pytest.approx(0.8), "accuracy": pytest.approx(0.8)}


def test_a_diverged_prediction_scores_nan_not_zero():
    for fn in (evaluation.pearson, evaluation.spearman):
        got = fn([1.0, float("nan"), 2.0], [1, 2, 3])
        assert math.isnan(got), f"{fn.__name__}([1, nan, 2], [1, 2, 3]): expected nan (a diverged model), got {got}"
        # nan before any other case: a single value (no spread to correlate) or a prediction equal to the gold
        # or a constant gold (one predicted value not finite among finite ones)
        for x, y in (([float("nan")], [1.0]), ([float("inf")], [0.5]), ([1.0, float("inf")], [1.0, float("inf")]),
                     ([1.0, float("nan")], [2.0, 2.0]), ([1.0, float("inf"), 3.0], [5.0] * 3)):
            got = fn(x, y)
            assert math.isnan(got), f"{fn.__name__}({x}, {y}): expected nan (a value is not finite), got {got}"


def exact_pearson(x, y):
    """Pearson's r of the float values x and y, in exact rational arithmetic (two passes, no cancellation)."""
    x, y = [Fraction(float(v)) for v in x], [Fraction(float(v)) for v in y]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return 0.0
    return math.copysign(math.sqrt(sxy * sxy / (sxx * syy)), sxy)


def test_metrics_over_a_family_equal_exact_arithmetic_and_are_python_floats():
    # a generated family: 2 to 9 values (and 600: nothing changes past a size), large common offsets that cancel (1e8 + small values) and tiny spreads
    # (2.5 + 1e-9·noise, a near-collapsed regression head; values of 1e-13), a constant on either side, against exact
    # arithmetic; non-finite predictions (inf as well as nan, one or all of them) score nan; every metric returns a
    # Python float (json and torch.load(weights_only=True) read it)
    rng = np.random.default_rng(0)
    wrong = []
    for n in (2, 3, 5, 9, 600):
        for offset, spread in ((0.0, 1.0), (1e8, 1.0), (2.5, 1e-9), (-3e7, 10.0), (1e6, 1e-3)):
            x, y = offset + spread * rng.normal(size=n), rng.normal(size=n)
            tiny = 1e-13 * rng.normal(size=n)  # a small scale is no constant
            for a, b in ((x, y), (y, x), (x, -x + 1.0), (x, np.full(n, 2.5)), (np.full(n, offset), y), (tiny, y),
                         (np.full(n, 0.1), np.full(n, 0.7))):  # constants whose float64 mean is not exact
                got, expected = evaluation.pearson(a, b), exact_pearson(a, b)
                if type(got) is not float or not abs(got - expected) <= 1e-9:  # nan too
                    wrong.append(f"  pearson({a.tolist()}, {b.tolist()}): expected {expected!r} (exact arithmetic, "
                                 f"centred first), got {got!r} of type {type(got).__name__}")
        pred, gold = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
        for p, g in ((pred, gold), (gold, gold), (1 - gold, gold), (np.zeros(n, int), gold), (pred, np.zeros(n, int))):
            tp = sum(1 for u, v in zip(p, g) if u == 1 and v == 1)
            fp = sum(1 for u, v in zip(p, g) if u == 1 and v != 1)
            fn = sum(1 for u, v in zip(p, g) if u != 1 and v == 1)
            expected, got = 2 * tp / (2 * tp + fp + fn) if tp else 0.0, evaluation.f1(p, g)
            if type(got) is not float or not abs(got - expected) <= 1e-12:
                wrong.append(f"  f1({p.tolist()}, {g.tolist()}): expected the Python float {expected!r} (tp {tp}, "
                             f"fp {fp}, fn {fn}), got {got!r} of type {type(got).__name__}")
            tn = sum(1 for u, v in zip(p, g) if u != 1 and v != 1)
            factors = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)  # exact ints; 0: an empty row or column
            expected, got = (tp * tn - fp * fn) / math.sqrt(factors) if factors else 0.0, evaluation.mcc(p, g)
            if type(got) is not float or not abs(got - expected) <= 1e-12:
                wrong.append(f"  mcc({p.tolist()}, {g.tolist()}): expected the Python float {expected!r} (tp {tp}, "
                             f"tn {tn}, fp {fp}, fn {fn}), got {got!r} of type {type(got).__name__}")
    for bad in (float("inf"), float("-inf"), float("nan")):
        for fn_ in (evaluation.pearson, evaluation.spearman):
            for args in (([1.0, bad, 2.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [1.0, bad, 2.0]),
                         ([bad] * 3, [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [bad] * 3)):
                got = fn_(*args)
                if type(got) is not float or not math.isnan(got):
                    wrong.append(f"  {fn_.__name__}{args}: expected nan (a diverged model), got {got!r}")
    # average ranks against their definition, counted by hand: rank = 1 + (values below) + (other values equal) / 2;
    # with exact repeats and values one float64 step apart (distinct: no shared rank)
    for n in (1, 2, 4, 7, 100):
        base = rng.integers(0, 3, size=n).astype(float)
        for x in (base, np.nextafter(base, 9.0) * (rng.random(n) < 0.5) + base * (rng.random(n) >= 0.5), -base):
            expected = [1 + sum(v < u for v in x) + (sum(v == u for v in x) - 1) / 2 for u in x]
            got = evaluation.average_ranks(x)
            if not np.array_equal(got, expected):
                wrong.append(f"  average_ranks({x.tolist()}): expected {expected} (1 + the values below + half the "
                             f"other equal ones), got {np.asarray(got).tolist()}")
    # every metric leaves the caller's arrays (float64, as predictions are) as they were
    x, y = rng.normal(size=6), rng.normal(size=6)
    labels = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    for fn_, args in ((evaluation.pearson, (x, y)), (evaluation.spearman, (x, y)), (evaluation.average_ranks, (x,)),
                      (evaluation.f1, (labels, labels[::-1].copy())), (evaluation.mcc, (labels, labels[::-1].copy()))):
        try:
            leaves_inputs_alone(fn_, *args)
        except AssertionError as e:
            wrong.append(f"  {fn_.__name__} of float64 arrays: {e}")
    # float32 predictions (a model's own dtype) near 1e5 with a spread of 0.1, against float32 gold scores of 0 to 5:
    # float32 steps of 1/128 there; the mean, the centring and the sums need float64 (exact arithmetic of the same
    # float32 values is the oracle)
    for n in (3, 5, 9):
        x32 = (1e5 + 0.1 * rng.normal(size=n)).astype(np.float32)
        y32 = (x32.astype(np.float64) - 1e5 + rng.uniform(0, 5, size=n)).astype(np.float32)
        for a, b in ((x32, y32), (y32, x32)):
            got, expected = evaluation.pearson(a, b), exact_pearson(a, b)
            if type(got) is not float or not abs(got - expected) <= 1e-9:
                wrong.append(f"  pearson(float32 {a.tolist()}, float32 {b.tolist()}): expected {expected!r} (exact "
                             f"arithmetic of the float32 values), got {got!r} of type {type(got).__name__}")
    assert not wrong, "GLUE's metrics on a generated family of inputs:\n" + "\n".join(wrong[:12])


def test_the_table_shows_a_spread_only_over_several_seeds():
    # three seeds: mean 0.2, sample std sqrt(((0.1)^2 + 0 + (0.1)^2) / 2) = 0.1; one seed has no spread to show
    three = evaluation.summarize_seeds([{"mcc": 0.1}, {"mcc": 0.2}, {"mcc": 0.3}], ["mcc"])
    assert evaluation.plus_minus(three, "mcc") == "0.200 ± 0.100"
    one = evaluation.summarize_seeds([{"mcc": 0.25}], ["mcc"])
    assert evaluation.plus_minus(one, "mcc") == "0.250", "one seed: '± 0.000' would claim the seeds agree"
