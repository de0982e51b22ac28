"""CALRec's pieces against independent computations: InfoNCE vs a naive loop, BM25 vs hand-computed scores,
the quasi-round-robin merge and the metrics on hand-made lists, the pooling spans vs the strings they should
cover, and an overfit smoke test. Run: python -m pytest -q tests/test_calrec.py"""

import dataclasses
import json
import math
import os
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import calrec
import calrec_extras
import data
import engine
import evaluation as ev
import model as gpt
from oracles import gradients_match_finite_differences, leaves_inputs_alone, within_memory


# -----------------------------------------------------------------------------
# InfoNCE


def naive_info_nce(q, k, ids, tau):
    """-1/B sum_i log(exp(cos(q_i, k_i)/tau) / sum_{j: j == i or ids_j != ids_i} exp(cos(q_i, k_j)/tau)),
    i over the B queries, j over every key (the first B are the queries' own, the rest extra negatives)."""
    total = 0.0
    for i in range(len(q)):
        num = math.exp(float(q[i] @ k[i]) / tau)
        den = sum(math.exp(float(q[i] @ k[j]) / tau) for j in range(len(k)) if j == i or ids[j] != ids[i])
        total += -math.log(num / den)
    return total / len(q)


def test_info_nce_equals_naive_loop():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(10, 5, dtype=torch.float64), dim=-1)
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 3, 8, 4, 2])  # two pairs of rows share a target; an extra key is item 4
    for tau in (0.05, 0.5, 1.0):
        want = naive_info_nce(q, k, ids.tolist(), tau)
        got = calrec.info_nce(q, k, ids, tau).item()
        assert got == pytest.approx(want, rel=1e-9), (
            f"info_nce of 7 queries against 10 keys (3 extra negatives; rows 0 and 6, 1 and 3 share an item, extra "
            f"key 8 is row 2's item), tau={tau}: expected {want:.9f} (a naive loop over the rows), got {got:.9f}")
        # the spec's direction (each target item against the batch's users) is the same formula, roles swapped
        want = naive_info_nce(k[:7], q, ids[:7].tolist(), tau)
        got = calrec.info_nce(k[:7], q, ids[:7], tau).item()
        assert got == pytest.approx(want, rel=1e-9), (
            f"info_nce of 7 queries against their 7 keys (rows 0 and 6, 1 and 3 share an item), tau={tau}: expected "
            f"{want:.9f} (a naive loop over the rows), got {got:.9f}")
    # float32 at a small tau: a cosine near 1 is a logit near 100 at tau = 0.01, and exp(100) overflows float32 (its
    # largest value is about e^88.7): the log-sum-exp must be taken stably. In 3 dimensions many cosines are near 1
    q = F.normalize(torch.randn(6, 3), dim=-1)
    k = F.normalize(torch.cat([q[:1], torch.randn(8, 3)]), dim=-1)  # row 0's positive is its query: cosine 1
    ids = torch.tensor([0, 1, 2, 0, 3, 4, 5, 1, 6])                 # rows 0 and 3 share an item; extra key 7 is row 1's
    for tau in (0.01, 0.005):
        want = naive_info_nce(q.double(), k.double(), ids.tolist(), tau)  # float64: e^200 is far from overflowing
        got = calrec.info_nce(q, k, ids, tau)
        assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=1e-4, abs=1e-4), (
            f"info_nce of float32 unit vectors (6 queries, 9 keys, cosines up to 1), tau={tau}: expected {want:.6f} "
            f"(a naive loop in float64), got {got.item():.6f} ({got.dtype}; exp(cos / tau) overflows float32 unless "
            f"the row's largest logit is taken out first)")
    # float16 (mixed precision's other type): the masked keys filled with what float16 holds (-inf; -1e9 overflows it)
    want = naive_info_nce(q.half().double(), k.half().double(), ids.tolist(), 0.05)
    try:
        got = calrec.info_nce(q.half(), k.half(), ids, 0.05).item()
    except RuntimeError as e:
        pytest.fail(f"info_nce of float16 unit vectors (6 queries, 9 keys), tau=0.05: {e}")
    assert got == pytest.approx(want, rel=1e-2), (
        f"info_nce of float16 unit vectors (6 queries, 9 keys), tau=0.05: expected {want:.4f} (a naive loop in "
        f"float64), got {got:.4f}")
    # every tensor made on the inputs' device: the inputs on the CPU while new tensors go by default to the "meta"
    # device (shapes, no data), so one made without device= cannot meet them, as it could not on a GPU
    q, k, ids = torch.eye(4, 3), torch.eye(6, 3), torch.tensor([0, 1, 2, 3, 4, 5])
    try:
        with torch.device("meta"):
            loss = calrec.info_nce(q, k, ids, 0.1)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        raise AssertionError(f"info_nce of 4 queries and 6 keys on the CPU, with the default device set to 'meta': "
                             f"{e} (a tensor made without device=?)") from None
    assert loss.device == q.device and loss.shape == (), (
        f"info_nce on the CPU with the default device 'meta': expected a scalar on the CPU, got {tuple(loss.shape)} "
        f"on {loss.device}")
    # the inputs themselves on "meta" (as a GPU's would be), after a call on the CPU: nothing made once on the CPU
    # (at import, or by the first call: a row index, a cached mask) may meet them
    calrec.info_nce(q, k, ids, 0.1)
    try:
        loss = calrec.info_nce(q.to("meta"), k.to("meta"), ids.to("meta"), 0.1)
    except (RuntimeError, NotImplementedError) as e:
        if str(e).startswith("exercise"):
            raise
        # an op with no "meta" kernel at all (torch.unique, nonzero) is not the body's fault: the check above, CPU
        # inputs with the default device "meta", stands for this one, as in recent-items. Reading the values into
        # Python (tolist, item: "no data" on meta) is no such op: it is how a mask cached by the ids' values fails
        no_meta_kernel = any(m in str(e) for m in ("Meta kernel", "register_meta", "'Meta' backend"))
        if not (isinstance(e, NotImplementedError) and no_meta_kernel):
            raise AssertionError(f"info_nce of 4 queries and 6 keys on the 'meta' device (as on a GPU), after a call "
                                 f"on the CPU: expected a scalar on meta, got {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:160]} (a tensor made once, on the CPU?)") from None
        loss = None
    assert loss is None or (loss.device.type == "meta" and loss.shape == ()), (
        f"info_nce of inputs on 'meta': expected a scalar on meta, got {tuple(loss.shape)} on {loss.device}")
    # distinct items whose ids agree in int16 (65536 apart), in float32 (past 2**24) or in int32 (2**32 apart): nothing
    # is masked
    q = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0]], dtype=torch.float64), dim=-1)
    k = F.normalize(torch.tensor([[0.9, 0.1], [0.2, 1.0], [1.0, 0.8]], dtype=torch.float64), dim=-1)
    for ids in ([5, 65541, 7], [2 ** 24, 2 ** 24 + 1, 3], [5, 2 ** 32 + 5, 7]):
        want = naive_info_nce(q, k, ids, 0.5)
        got = calrec.info_nce(q, k, torch.tensor(ids), 0.5).item()
        assert got == pytest.approx(want, rel=1e-9), (
            f"info_nce of 3 queries, items {ids} (all distinct: nothing masked), tau=0.5: expected {want:.9f} (a "
            f"naive loop over the rows), got {got:.9f}")
    # the same in float16 and bfloat16 (mixed precision's logits), items that those dtypes cannot tell apart (2049
    # rounds to 2048 in float16, 257 to 256 in bfloat16): the ids compared as integers, nothing masked
    for dtype, ids in ((torch.float16, [2048, 2049, 3]), (torch.bfloat16, [256, 257, 3])):
        want = naive_info_nce(q.to(dtype).double(), k.to(dtype).double(), ids, 0.5)
        got = calrec.info_nce(q.to(dtype), k.to(dtype), torch.tensor(ids), 0.5).item()
        assert got == pytest.approx(want, rel=2e-2), (
            f"info_nce of 3 {dtype} queries, items {ids} (all distinct: nothing masked), tau=0.5: expected "
            f"{want:.4f} (a naive loop in float64), got {got:.4f} (ids compared in the logits' dtype collide)")
    # the ids tensor changed in place between two calls (row 1 now of row 0's item): the second call masks by the ids
    # as they are now (nothing memoised by the tensor, which hashes by its identity)
    q = F.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.3], [0.1, 1.0]], dtype=torch.float64), dim=-1)
    ids = torch.tensor([0, 1, 2])
    calrec.info_nce(q, q, ids, 0.5)
    ids.numpy()[1] = 0  # through numpy: the tensor's version counter does not see it either
    want, got = naive_info_nce(q, q, [0, 0, 2], 0.5), calrec.info_nce(q, q, ids, 0.5).item()
    assert got == pytest.approx(want, rel=1e-9), (
        f"info_nce of 3 queries against themselves, tau=0.5, items [0, 1, 2], then the same ids tensor set to "
        f"[0, 0, 2] in place and called again: expected {want:.9f} (a naive loop, rows 0 and 1 masking each other), "
        f"got {got:.9f} (the mask of the old ids?)")
    # a temperature below 1e-3 (float64): each positive below one negative, the loss in closed form, 1200 at 1e-4
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    k = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)   # row 0: 0.6 vs 0.8; row 1: 0.96 vs 1.0
    for tau in (1e-4, 1e-5, 1e-7):  # the caller's temperature, however small: no floor under it
        want = sum(d / tau + math.log1p(math.exp(-d / tau)) for d in (0.8 - 0.6, 1.0 - 0.96)) / 2
        got = calrec.info_nce(q, k, torch.tensor([0, 1]), tau).item()
        assert got == pytest.approx(want, rel=1e-9), (
            f"info_nce (float64) of 2 queries, each positive's cosine below a negative's (0.6 < 0.8, 0.96 < 1.0), "
            f"tau={tau}: expected {want:.6f} (in closed form), got {got:.6f}")
    # a row whose logits all lie far below another row's: each row's log-sum-exp taken out with its own largest
    # logit (the matrix's largest would underflow every exp of this row to 0: log 0, an infinite loss)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])       # row 0: cosine 1 to its key; row 1: 0 and -1
    ids = torch.tensor([0, 1, 2])
    for dtype, tau in ((torch.float32, 0.005), (torch.float64, 0.001)):
        a, b = 1 / tau, -1 / tau                                      # in closed form: the naive loop overflows
        row0 = math.log(2 + math.exp(-a))                             # log(e^a + e^0 + e^a) - a, the positive a
        row1 = -b + math.log(2 + math.exp(b))                         # log(e^0 + e^b + e^0) - b, the positive b
        want = (row0 + row1) / 2
        got = calrec.info_nce(q.to(dtype), k.to(dtype), ids, tau).item()
        assert got == pytest.approx(want, rel=1e-5), (
            f"info_nce ({dtype}) of 2 queries, 3 keys, tau={tau}: row 0's logits {a:g}, 0, {a:g}; row 1's 0, {b:g}, 0 "
            f"(all far below row 0's largest): expected {want:.6f}, got {got} (each row's log-sum-exp must be taken "
            f"out with that row's own largest logit)")
    # the loss is a graph of the queries and of the keys both (a key detached keeps the value, not the gradient)
    torch.manual_seed(5)
    q, k, ids = torch.randn(4, 3), torch.randn(6, 3), torch.tensor([2, 0, 2, 1, 3, 0])
    for tau in (0.5, 1.0):
        try:
            gradients_match_finite_differences(
                lambda q, k: calrec.info_nce(F.normalize(q, dim=-1), F.normalize(k, dim=-1), ids, tau), q, k)
        except RuntimeError as e:                                     # gradcheck's GradcheckError is one
            pytest.fail(f"the gradients of info_nce (4 queries, 6 keys, tau={tau}) with respect to the queries and the "
                        f"keys: expected finite differences' (both in the graph), got others: {str(e).splitlines()[0]}")


def test_duplicate_targets_are_not_negatives():
    # rows 0 and 1 have the same target item; row 1's query equals row 0's key exactly, which would be a
    # perfect "negative" for row 0 if it were not masked. With masking, row 0's term only sees row 2.
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    tau = 1.0
    loss = calrec.info_nce(k, q, torch.tensor([7, 7, 8]), tau).item()  # for each target item, over the users
    # row 0: pos cos(q0,k0)=0, negative q2: cos=0 -> -log(1/2); row 1: pos 1, neg q2: 0 -> -log(e/(e+1));
    # row 2: pos cos(q2,k2)=1, negatives q0: 1, q1: 0 -> -log(e/(e+e+1))
    e = math.e
    expected = (math.log(2) - math.log(e / (e + 1)) - math.log(e / (2 * e + 1))) / 3
    assert loss == pytest.approx(expected, rel=1e-6), (
        f"info_nce of 3 rows, rows 0 and 1 of the same item 7 (each other's key masked out, not a negative), tau=1: "
        f"expected (log 2 - log(e/(e+1)) - log(e/(2e+1))) / 3 = {expected:.6f}, got {loss:.6f}")
    unmasked = calrec.info_nce(k, q, torch.tensor([7, 6, 8]), tau).item()
    assert unmasked > loss + 0.1, (  # without the mask, the duplicate counts as a (hard) negative
        f"info_nce of the same rows with three distinct items (nothing masked): expected more than the masked loss "
        f"{loss:.6f} + 0.1, got {unmasked:.6f}")
    # a masked key that is the row's best, at a temperature near 0: the loss of each row is 0 (its own key is the only
    # one left), however large the masked logit (a row's max taken before the mask, a finite stand-in for -inf, fail)
    q, k = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    for dtype, tau in ((torch.float32, 0.01), (torch.float64, 1e-5)):
        loss = calrec.info_nce(q.to(dtype), k.to(dtype), torch.tensor([7, 7]), tau).item()
        assert loss == 0.0, (
            f"info_nce, {dtype}, tau={tau}, queries [[1, 0], [1, 0]], keys [[-1, 0], [1, 0]], both rows of item 7 (each "
            f"other's key masked out): expected 0 (each row's own key is alone), got {loss}")


def test_loss_mixture_by_hand():
    torch.manual_seed(1)
    P, C = 5, 4
    v_u, v_tu = (F.normalize(torch.randn(P, C, dtype=torch.float64), dim=-1) for _ in range(2))
    v_t = F.normalize(torch.randn(P + 2, C, dtype=torch.float64), dim=-1)  # two extra negative items
    items = torch.tensor([4, 2, 4, 7, 1, 9, 2])
    for alpha, beta, tau in ((0.2, 0.3, 0.05), (0.0, 0.5, 1.0), (0.25, 0.0, 0.3), (0.2, 0.3, 0.1)):
        l_tt, l_ut = (naive_info_nce(q, v_t, items.tolist(), tau) for q in (v_tu, v_u))
        l_nig = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        loss, parts = calrec.calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau)
        want = (1 - alpha - beta) * 3.0 + alpha * l_tt + beta * l_ut
        assert loss.item() == pytest.approx(want, rel=1e-9), (
            f"calrec_loss with alpha={alpha}, beta={beta}, tau={tau}, L_NIG = 3, L_TT = {l_tt:.10g}, L_UT = "
            f"{l_ut:.10g} (both at that tau): expected "
            f"(1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT = {want:.10g}, got {loss.item():.10g} "
            f"({loss.dtype}; the inputs are float64)")
        assert loss.shape == () and loss.dtype == torch.float64, (
            f"calrec_loss with alpha={alpha}, beta={beta} of a 0-d float64 L_NIG: expected a 0-d float64 loss, got "
            f"shape {tuple(loss.shape)}, {loss.dtype}")
        assert set(parts) == {"nig", "tt", "ut"} and all(type(v) is float for v in parts.values()), (
            f"calrec_loss's parts: expected a dict {{'nig', 'tt', 'ut'}} of Python floats, got "
            f"{ {k: type(v).__name__ for k, v in parts.items()} }")
        assert parts["nig"] == 3.0, f"parts['nig']: expected L_NIG itself, 3.0 (not weighted), got {parts['nig']}"
        for name, weight, value in (("tt", alpha, l_tt), ("ut", beta, l_ut)):
            if weight > 0:  # a part whose weight is 0 need not be computed
                assert parts[name] == pytest.approx(value, rel=1e-9), (
                    f"parts[{name!r}] with alpha={alpha}, beta={beta}: expected L_{name.upper()} itself, "
                    f"{value:.10g} (not weighted), got {parts[name]:.10g}")
        # the loss is the graph of its terms: d loss / d L_NIG = 1 - alpha - beta
        loss.backward()
        assert l_nig.grad is not None and l_nig.grad.item() == pytest.approx(1 - alpha - beta), (
            f"d loss / d L_NIG with alpha={alpha}, beta={beta}: expected 1 - alpha - beta = {1 - alpha - beta}, got "
            f"{None if l_nig.grad is None else l_nig.grad.item()} (is the loss built from the parts' floats?)")
    # the caller's temperature and weights, however small: no floor under either. Each positive's cosine below a
    # negative's (0.6 < 0.8, 0.96 < 1.0): L_UT = ((0.8 - 0.6) + (1.0 - 0.96)) / 2 / tau in closed form at tau = 1e-7
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    k = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    loss, _ = calrec.calrec_loss(torch.tensor(3.0, dtype=torch.float64), q, q, k, torch.tensor([0, 1]), 0.0, 0.5, 1e-7)
    assert loss.item() == pytest.approx(0.5 * 3.0 + 0.5 * 0.24 / 2 / 1e-7, rel=1e-9), (
        f"calrec_loss with alpha=0, beta=0.5, tau=1e-7, L_NIG = 3, L_UT = 0.24 / 2 / 1e-7 = 1.2e6 in closed form: "
        f"expected 600001.5, got {loss.item():.10g} (a floor under tau?)")
    _, parts = calrec.calrec_loss(torch.tensor(3.0, dtype=torch.float64), v_u, v_tu, v_t, items, 0.0, 1e-7, 0.1)
    want = naive_info_nce(v_u, v_t, items.tolist(), 0.1)
    assert parts["ut"] == pytest.approx(want, rel=1e-9), (
        f"calrec_loss with alpha=0, beta=1e-7: expected parts['ut'] = L_UT = {want:.10g} (a weight above 0 is on, "
        f"however small), got {parts['ut']}")
    # a diverged L_NIG of inf: the mixture is inf, as the equation reads (1 - alpha - beta) inf + ..., not nan (a term
    # of weight 0 written 0 * L_NIG, or the mixture rearranged as L_NIG + alpha (L_TT - L_NIG) + ...)
    for alpha, beta in ((0.0, 0.0), (0.2, 0.0), (0.2, 0.3)):
        loss, _ = calrec.calrec_loss(torch.tensor(math.inf, dtype=torch.float64), v_u, v_tu, v_t, items, alpha, beta,
                                     0.1)
        assert loss.item() == math.inf, f"calrec_loss with L_NIG = inf, alpha={alpha}, beta={beta}: expected inf, " \
                                        f"got {loss.item()}"
    # the spec's direction: each target item against the users of the batch (no extra negatives)
    ids = items[:P].tolist()
    l_nig = torch.tensor(3.0, dtype=torch.float64)
    for alpha, beta, tau in ((0.3, 0.0, 0.5), (0.0, 0.3, 0.5), (0.2, 0.3, 0.5), (0.2, 0.3, 0.1)):  # the last stays
        want = (1 - alpha - beta) * 3.0 + alpha * naive_info_nce(v_t[:P], v_tu, ids, tau) + beta * naive_info_nce(
            v_t[:P], v_u, ids, tau)  # each term over the users, whichever of them are on
        loss, _ = calrec.calrec_loss(l_nig, v_u, v_tu, v_t[:P], items[:P], alpha, beta, tau, over_users=True)
        assert loss.item() == pytest.approx(want, rel=1e-9), (
            f"calrec_loss with over_users=True (each target item the query, the batch's users the keys), alpha="
            f"{alpha}, beta={beta}, tau={tau}: expected {want:.10g}, got {loss.item():.10g}")
    # extra negative items behind the P targets have no user: over the users, only the P targets are queries
    with_extra = f"calrec_loss with over_users=True and 2 extra negative items in v_t (only the first P = {P} rows " \
        f"are the users' targets, the queries)"
    try:
        loss, _ = calrec.calrec_loss(l_nig, v_u, v_tu, v_t, items, 0.2, 0.3, 0.1, over_users=True)
    except (RuntimeError, IndexError) as e:
        pytest.fail(f"{with_extra}: expected {want:.10g}, got {type(e).__name__}: {e}")
    assert loss.item() == pytest.approx(want, rel=1e-9), f"{with_extra}: expected {want:.10g}, got {loss.item():.10g}"
    # a term of weight 0 is not computed (alpha = beta = 0: the project has no item tower's vectors, v_T = None) and
    # counts as a 0-d zero on L_NIG's device: the loss stays a scalar there, whatever the default device (here
    # "meta", where a tensor made without device= would land: it could not meet the CPU's, as it could not a GPU's)
    for alpha, beta, keys in ((0.0, 0.0, None), (0.0, 0.5, v_t), (0.25, 0.0, v_t)):
        want = (1 - alpha - beta) * 3.0 + alpha * l_tt + beta * l_ut
        what = f"calrec_loss with alpha={alpha}, beta={beta}{', v_t=None' if keys is None else ''}, the default " \
            f"device 'meta'"
        try:
            with torch.device("meta"):
                loss, parts = calrec.calrec_loss(l_nig, v_u, v_tu, keys, items, alpha, beta, 0.1)
        except NotImplementedError:
            raise
        except (RuntimeError, TypeError, AttributeError, IndexError) as e:
            pytest.fail(f"{what}: expected {want:.10g}, got {type(e).__name__}: {e}")
        assert loss.shape == () and loss.device == l_nig.device, (
            f"{what}: expected a 0-d loss on the CPU (L_NIG's device), got shape {tuple(loss.shape)} on {loss.device}")
        assert loss.item() == pytest.approx(want, rel=1e-9), f"{what}: expected {want:.10g}, got {loss.item():.10g}"
        zeros = {name: parts[name] for name, weight in (("tt", alpha), ("ut", beta)) if weight == 0}
        assert all(v == 0.0 for v in zeros.values()), f"{what}: expected the parts of weight 0 as 0.0, got {zeros}"
    # the parts of a step are the caller's to keep (a training log keeps them): a later call leaves them as they were
    first = calrec.calrec_loss(torch.tensor(3.0), v_u, v_tu, None, items, 0.0, 0.0, 0.1)[1]
    kept = dict(first)                                              # a copy, taken before the second call
    second = calrec.calrec_loss(torch.tensor(5.0), v_u, v_tu, None, items, 0.0, 0.0, 0.1)[1]
    assert first == kept == {"nig": 3.0, "tt": 0.0, "ut": 0.0} and second["nig"] == 5.0, (
        f"calrec_loss twice, L_NIG = 3 then 5 (alpha = beta = 0): expected the first call's parts to stay "
        f"{{'nig': 3.0, 'tt': 0.0, 'ut': 0.0}} and the second's nig 5.0, got {first} and {second} (one dict shared by "
        f"every call?)")
    # one prediction (P = 1: v_U and v_T|U of shape (1, C)) beside 2 extra negatives: over the items, the naive loop;
    # over the users, one key only, the query's own, so L_TT = L_UT = 0 (nothing squeezed: P stays 1, not C)
    v_u1, v_tu1 = v_u[:1], v_tu[:1]
    for over_users in (False, True):
        l_tt, l_ut = ((0.0, 0.0) if over_users else
                      (naive_info_nce(q, v_t[:3], items[:3].tolist(), 0.5) for q in (v_tu1, v_u1)))
        want = 0.5 * 3.0 + 0.2 * l_tt + 0.3 * l_ut
        what = (f"calrec_loss with one prediction (v_U, v_T|U of shape (1, {C})), v_T (3, {C}), alpha=0.2, beta=0.3, "
                f"tau=0.5, over_users={over_users}")
        try:
            loss, parts = calrec.calrec_loss(l_nig, v_u1, v_tu1, v_t[:3], items[:3], 0.2, 0.3, 0.5,
                                             over_users=over_users)
        except NotImplementedError:
            raise
        except (RuntimeError, IndexError, ValueError) as e:
            pytest.fail(f"{what}: expected {want:.10g}, got {type(e).__name__}: {e}")
        got = (loss.item(), parts["tt"], parts["ut"])
        assert got == pytest.approx((want, l_tt, l_ut), rel=1e-9, abs=1e-12), (
            f"{what}: expected loss, L_TT, L_UT = {want:.10g}, {l_tt:.10g}, {l_ut:.10g}; got {got}")


def test_loss_mixture_gradients_match_finite_differences():
    # the loss is a graph of every input: its gradient reaches L_NIG, v_U, v_T|U and v_T (a term detached keeps its
    # value, not its gradient); finite differences in float64 against autograd
    torch.manual_seed(6)
    P, C = 4, 3
    v_u, v_tu = torch.randn(P, C), torch.randn(P, C)
    v_t = torch.randn(P + 2, C)                                     # two extra negative items
    items = torch.tensor([4, 2, 4, 7, 1, 9])
    for alpha, beta, over_users in ((0.2, 0.3, False), (0.2, 0.3, True), (0.0, 0.5, False), (0.25, 0.0, True)):
        def loss_of(l_nig, v_u, v_tu, v_t):
            return calrec.calrec_loss(l_nig, F.normalize(v_u, dim=-1), F.normalize(v_tu, dim=-1),
                                      F.normalize(v_t, dim=-1), items, alpha, beta, 0.1, over_users=over_users)[0]
        try:
            gradients_match_finite_differences(loss_of, torch.tensor(3.0), v_u, v_tu, v_t)
        except RuntimeError as e:                                    # gradcheck's GradcheckError is one
            pytest.fail(f"the gradients of calrec_loss (alpha={alpha}, beta={beta}, over_users={over_users}) with "
                        f"respect to L_NIG, v_U, v_T|U and v_T: expected finite differences' (every term in the graph),"
                        f" got others: {str(e).splitlines()[0]}")


def test_user_and_target_vectors_are_means_over_their_spans():
    torch.manual_seed(2)
    h = torch.randn(2, 9, 3, dtype=torch.float64)
    rows, starts, ends = torch.tensor([0, 0, 1]), torch.tensor([2, 5, 3]), torch.tensor([4, 8, 7])
    v_u = calrec.user_vectors(h, rows, starts)
    v_tu = calrec.target_vectors(h, rows, starts, ends)
    for name, got in (("user_vectors", v_u), ("target_vectors", v_tu)):
        assert tuple(got.shape) == (3, 3), f"{name} of 3 spans of a (2, 9, 3) batch: expected shape (3, 3), got " \
            f"{tuple(got.shape)}"
    for p, (b, s, e) in enumerate(zip(rows.tolist(), starts.tolist(), ends.tolist())):
        prompt = sum(h[b, t] for t in range(s)) / s           # every position before the item
        item = sum(h[b, t] for t in range(s, e)) / (e - s)     # the item's own positions
        for name, got, want, span in (("user_vectors", v_u[p], prompt / prompt.norm(), f"positions 0 to {s - 1}"),
                                      ("target_vectors", v_tu[p], item / item.norm(), f"positions {s} to {e - 1}")):
            assert torch.allclose(got, want, rtol=1e-7, atol=1e-7), (
                f"{name}, span {p} (row {b}, the item at positions {s} to {e - 1}): expected the normalised mean of h "
                f"over {span}, {[round(x, 6) for x in want.tolist()]}, got {[round(x, 6) for x in got.tolist()]}")
    # h changed in place between two calls (an evaluation's buffer, reused): each call reads h as it is now (nothing
    # cached by the tensor's identity, its memory or its shape). h = [[1, 0], [0, 1]] over one row, then its first
    # position set to [0, 5]: the mean over position 0 is [1, 0], then [0, 1]
    h2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    row, start, end = torch.tensor([0]), torch.tensor([0]), torch.tensor([1])  # the span [0, 1) of row 0
    for name, call in (("user_vectors", lambda: calrec.user_vectors(h2, row, end)),
                       ("target_vectors", lambda: calrec.target_vectors(h2, row, start, end))):
        h2[0, 0] = torch.tensor([1.0, 0.0])
        first = call().tolist()
        h2[0, 0] = torch.tensor([0.0, 5.0])
        again = call().tolist()
        assert (first, again) == ([[1.0, 0.0]], [[0.0, 1.0]]), (
            f"{name} over position 0 of h = [[1, 0], [0, 1]], then again after h[0, 0] was set to [0, 5] in place: "
            f"want [[1, 0]] then [[0, 1]], got {first} then {again} (the first h, kept?)")
    # a span may start at position 0: target_vectors alone needs no prompt before it
    rows, starts, ends = torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([4, 9])
    got = calrec.target_vectors(h, rows, starts, ends)
    for p, (b, e) in enumerate(zip(rows.tolist(), ends.tolist())):
        item = sum(h[b, t] for t in range(e)) / e
        want = item / item.norm()
        assert torch.allclose(got[p], want, rtol=1e-7, atol=1e-7), (
            f"target_vectors, span {p} (row {b}, positions 0 to {e - 1}: a span that starts the row): expected the "
            f"normalised mean of h over them, {[round(x, 6) for x in want.tolist()]}, got "
            f"{[round(x, 6) for x in got[p].tolist()]}")
    # a mean of zero (hidden states that cancel) normalises to zero, as F.normalize does, never to NaN
    zero = torch.zeros(1, 4, 3, dtype=torch.float64)
    for name, got in (("user_vectors", calrec.user_vectors(zero, torch.tensor([0]), torch.tensor([2]))),
                      ("target_vectors", calrec.target_vectors(zero, torch.tensor([0]), torch.tensor([1]),
                                                               torch.tensor([3])))):
        assert torch.equal(got, torch.zeros(1, 3, dtype=torch.float64)), (
            f"{name} of hidden states that are all 0: expected the zero vector (a mean of 0 normalised as F.normalize "
            f"does it), got {got.tolist()}")
    # its gradient is finite (F.normalize's: no 0 / 0 behind a torch.where); and a mean below F.normalize's floor,
    # 1e-12, is divided by the floor: the mean's norm meets it, not the sum's (400 positions of 1e-14)
    spans = {"user_vectors": lambda x: calrec.user_vectors(x, torch.tensor([0]), torch.tensor([400])),
             "target_vectors": lambda x: calrec.target_vectors(x, torch.tensor([0]), torch.tensor([0]),
                                                               torch.tensor([400]))}
    for name, span in spans.items():
        zero = torch.zeros(1, 400, 3, dtype=torch.float64, requires_grad=True)
        grad, = torch.autograd.grad(span(zero).sum(), zero)
        assert torch.isfinite(grad).all(), f"{name} of hidden states that are all 0: a gradient that is not finite"
        norm = span(torch.full((1, 400, 3), 1e-14, dtype=torch.float64)).norm().item()
        assert norm == pytest.approx(3 ** 0.5 * 1e-14 / 1e-12, rel=1e-6), (
            f"{name} of 400 positions of h = 1e-14 (a mean of norm 1.7e-14): expected the mean / 1e-12, as "
            f"F.normalize's floor gives it, of norm {3 ** 0.5 * 1e-14 / 1e-12:.4g}; got norm {norm:.4g}")
    # hidden states 1e-7 small: still unit vectors (a normalised mean does not depend on the scale of h; an epsilon
    # added to the norm, as in m / (|m| + 1e-8), shortens them); and 1e-10 small, means of norm about 1e-10, still
    # above F.normalize's floor of 1e-12 (a floor of 1e-8, torch.cosine_similarity's eps, shortens them)
    rows, starts, ends = torch.tensor([0, 0, 1]), torch.tensor([2, 5, 3]), torch.tensor([4, 8, 7])
    for scale in (1e-7, 1e-10):
        for name, got in (("user_vectors", calrec.user_vectors(h * scale, rows, starts)),
                          ("target_vectors", calrec.target_vectors(h * scale, rows, starts, ends))):
            norms = got.norm(dim=-1).tolist()
            assert norms == pytest.approx([1.0] * 3, rel=1e-9), (
                f"{name} of the same spans of h * {scale:g} (float64): expected vectors of norm 1 (normalised as "
                f"F.normalize does it, whatever the scale of h), got norms {norms}")
    # the same spans of a transposed (non-contiguous) h, in bfloat16 (autocast's dtype), with the default device
    # "meta" (a tensor made without device= or dtype= lands there, or in float32): the vectors in h's dtype, on the CPU
    rows, starts, ends = torch.tensor([0, 0, 1]), torch.tensor([2, 5, 3]), torch.tensor([4, 8, 7])
    want = {"user_vectors": calrec.user_vectors(h, rows, starts), "target_vectors": calrec.target_vectors(h, rows, starts,
                                                                                                          ends)}
    h_t = h.to(torch.bfloat16).transpose(0, 1).contiguous().transpose(0, 1)   # (2, 9, 3), not contiguous
    for name, call in (("user_vectors", lambda x: calrec.user_vectors(x, rows, starts)),
                       ("target_vectors", lambda x: calrec.target_vectors(x, rows, starts, ends))):
        try:
            with torch.device("meta"):
                got = call(h_t)
        except NotImplementedError:
            raise
        except RuntimeError as e:
            pytest.fail(f"{name} of a non-contiguous bfloat16 h on the CPU, the default device 'meta': {e}")
        assert got.dtype == torch.bfloat16 and got.device == h.device and tuple(got.shape) == (3, 3), (
            f"{name} of a bfloat16 h on the CPU (the default device 'meta'): expected (3, 3) bfloat16 on the CPU, got "
            f"{tuple(got.shape)} {got.dtype} on {got.device}")
        assert torch.allclose(got.double(), want[name], atol=0.05), (
            f"{name} of the same spans of h in bfloat16: expected about {want[name].tolist()}, got {got.tolist()}")
    # long bfloat16 rows (512 positions, hidden states around 2): a short span late in a row, taken as the difference
    # of two running sums kept in bfloat16 (about 1000, rounded to multiples of 8), loses most of its digits
    long = (torch.randn(2, 512, 64, dtype=torch.float64) + 2).to(torch.bfloat16)
    rows, starts, ends = torch.tensor([0, 1, 1]), torch.tensor([500, 400, 2]), torch.tensor([504, 410, 511])
    for name, got, (b, s, e) in [("user_vectors", v, (b, 0, s)) for v, b, s in zip(
            calrec.user_vectors(long, rows, starts), rows.tolist(), starts.tolist())] + [
            ("target_vectors", v, span) for v, span in zip(calrec.target_vectors(long, rows, starts, ends),
                                                           zip(rows.tolist(), starts.tolist(), ends.tolist()))]:
        mean = long[b, s:e].double().mean(0)
        assert torch.allclose(got.double(), mean / mean.norm(), atol=0.01), (
            f"{name} of a bfloat16 h (2, 512, 64), row {b}, positions {s} to {e - 1}: expected the normalised mean "
            f"within bfloat16's rounding (0.01), differs by {float((got.double() - mean / mean.norm()).abs().max()):.3f}"
            " (sums kept in bfloat16 cancel: keep them in float32 or wider)")
    # float16 hidden states of 120 over 600 positions: running sums up to 72000, past float16's largest (65504)
    big, one = torch.full((1, 600, 4), 120.0, dtype=torch.float16), torch.tensor([0])
    for name, got in (("user_vectors", calrec.user_vectors(big, one, torch.tensor([600]))),
                      ("target_vectors", calrec.target_vectors(big, one, torch.tensor([550]), torch.tensor([600])))):
        assert got.dtype == torch.float16 and got.tolist() == [[0.5] * 4], (
            f"{name} of a float16 h (1, 600, 4) all 120 (sums to 72000 overflow float16: keep them in float32 or "
            f"wider): expected [[0.5] * 4] in float16, got {got.tolist()} {got.dtype}")
    # float16 hidden states of 3000 over 768 features: each mean fits float16, its norm (83,000) does not: normalise
    # in float32 or wider, then cast (each coordinate 1 / sqrt(768) = 0.0361)
    big, want = torch.full((1, 4, 768), 3000.0, dtype=torch.float16), 1 / math.sqrt(768)
    for name, got in (("user_vectors", calrec.user_vectors(big, one, torch.tensor([4]))),
                      ("target_vectors", calrec.target_vectors(big, one, torch.tensor([1]), torch.tensor([4])))):
        assert got.dtype == torch.float16 and tuple(got.shape) == (1, 768) and torch.allclose(
            got.double(), torch.full((1, 768), want, dtype=torch.double), atol=1e-3), (
            f"{name} of a float16 h (1, 4, 768) all 3000 (a mean of norm 83,000, past float16's 65504: normalise in "
            f"float32 or wider): expected every coordinate {want:.4f} in float16, got {got[0, :3].tolist()}... "
            f"{got.dtype}")
    # h and its spans all on the "meta" device, as a GPU's are all on the GPU: a tensor made once at import (a zero
    # row on the CPU, which the default device "meta" above cannot see) cannot meet them
    rows, starts, ends = (torch.tensor(v, device="meta") for v in ([0, 0, 1], [2, 5, 3], [4, 8, 7]))
    for name, call in (("user_vectors", lambda x: calrec.user_vectors(x, rows, starts)),
                       ("target_vectors", lambda x: calrec.target_vectors(x, rows, starts, ends))):
        try:
            got = call(torch.empty(2, 9, 3, device="meta"))
        except (RuntimeError, NotImplementedError) as e:
            if str(e).startswith("exercise "):  # a blank body
                raise
            if "device" in str(e):
                pytest.fail(f"{name} of an h (2, 9, 3) and spans on the 'meta' device: {e} (a tensor made elsewhere: "
                            "a zero row made once at import?)")
            continue  # an op that "meta" cannot run (a loop over .tolist(), say) is not the body's fault
        assert got.device.type == "meta" and tuple(got.shape) == (3, 3), (
            f"{name} of an h (2, 9, 3) and spans on the 'meta' device: expected (3, 3) on meta, got "
            f"{tuple(got.shape)} on {got.device}")
    rows, starts, ends = torch.tensor([0, 0, 1]), torch.tensor([2, 5, 3]), torch.tensor([4, 8, 7])
    # a float32 h with no grad (as under no_grad, evaluation's): user_vectors leaves it as it was, and target_vectors,
    # called next on the same h (as calrec.py does), reads the hidden states themselves; by hand, rows 2 and 3 of
    # [[1, 0], [3, 4], [0, 2], [2, 0]] average to [1, 1], normalised [0.7071, 0.7071]
    h32 = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [0.0, 2.0], [2.0, 0.0]]])
    before = h32.clone()
    calrec.user_vectors(h32, torch.tensor([0]), torch.tensor([2]))
    assert torch.equal(h32, before), (
        f"user_vectors of a float32 h (1, 4, 2) needing no grad changed h: expected {before.tolist()}, got "
        f"{h32.tolist()} (running sums written into the caller's h?)")
    got = calrec.target_vectors(h32, torch.tensor([0]), torch.tensor([2]), torch.tensor([4]))
    want = torch.tensor([[1.0, 1.0]]) / math.sqrt(2.0)
    assert torch.allclose(got, want, atol=1e-6), (
        f"target_vectors of positions 2 to 3 of h = {before.tolist()}, after user_vectors of the same h: expected "
        f"{want.tolist()}, got {got.tolist()}")
    # the vectors are a graph of h: its gradient (a normalisation done in place breaks backward) against finite
    # differences
    for name, call in (("user_vectors", lambda x: calrec.user_vectors(x, rows, starts)),
                       ("target_vectors", lambda x: calrec.target_vectors(x, rows, starts, ends))):
        try:
            gradients_match_finite_differences(call, h)
        except RuntimeError as e:                                     # gradcheck's GradcheckError is one
            pytest.fail(f"the gradient of {name} (3 spans of a (2, 9, 3) h) with respect to h: expected finite "
                        f"differences', got others: {str(e).splitlines()[0]}")


# -----------------------------------------------------------------------------
# BM25


def test_bm25_matches_hand_computed_scores():
    docs = ["Red apple", "green apple pie", "red, red car!"]
    bm = calrec.BM25(docs, k1=1.2, b=0.75)
    # by hand: N = 3, lengths 2, 3, 3, avgdl = 8/3; "red" is in 2 documents:
    #   idf = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln 1.6 = 0.4700036
    #   doc 0: tf 1, K = 1.2 (0.25 + 0.75 * 2 / (8/3)) = 0.975  -> 0.4700036 * 2.2 / 1.975 = 0.5235484
    #   doc 2: tf 2, K = 1.2 (0.25 + 0.75 * 3 / (8/3)) = 1.3125 -> 0.4700036 * 4.4 / 3.3125 = 0.6243067
    # "pie" is in 1 document: idf = ln(1 + 2.5 / 1.5) = 0.9808293; doc 1: tf 1, K = 1.3125
    #   -> 0.9808293 * 2.2 / 2.3125 = 0.9331132
    # "apple" is in 2 documents (idf 0.4700036), tf 1 in doc 0 (K = 0.975) and in doc 1 (K = 1.3125):
    #   -> 0.4700036 * 2.2 / 1.975 = 0.5235484 and 0.4700036 * 2.2 / 2.3125 = 0.4471386
    # a query word counts as often as the query repeats it: "red red" scores twice what "red" does
    queries = ["red", "pie", "red pie", "unseen words", "red red", "pie red pie", "apple"]
    want = [[0.5235484, 0.0, 0.6243067], [0.0, 0.9331132, 0.0], [0.5235484, 0.9331132, 0.6243067], [0.0, 0.0, 0.0],
            [1.0470968, 0.0, 1.2486134], [0.5235484, 1.8662264, 0.6243067], [0.5235484, 0.4471386, 0.0]]
    s = bm.scores(queries)
    assert tuple(s.shape) == (len(queries), 3), f"BM25.scores of {len(queries)} queries on 3 documents: expected " \
        f"shape ({len(queries)}, 3), got {tuple(s.shape)}"
    for q, row, w in zip(queries, s.tolist(), want):
        assert row == pytest.approx(w, abs=1e-6), (
            f"BM25 scores of query {q!r} on the documents {docs}: expected {w}, got {[round(x, 7) for x in row]}")
    assert s[3].tolist() == [0.0, 0.0, 0.0], f"BM25 scores of 'unseen words' (no known word): expected exactly 0, " \
        f"got {s[3].tolist()}"
    assert bm.matrix.layout != torch.strided, (  # search() reads W as self.matrix
        f"BM25's W (self.matrix): expected a sparse matrix, as the docstring says (dense, the (D, V) of a real catalog "
        f"takes gigabytes), got a dense {bm.matrix.layout} one")
    assert s.dtype == torch.float32, (  # search() orders the scores by their float32 bits
        f"BM25.scores: expected float32 scores (BM25.search sorts them by their float32 bits), got {s.dtype}")
    hits = bm.search(["red", "unseen"], depth=3)
    assert hits[0][0] == [2, 0] and hits[1] == ([], []), (
        f"BM25.search('red'), ('unseen'): expected documents [2, 0] and none (zero-score documents are not retrieved),"
        f" got {hits[0][0]} and {hits[1][0]}")
    # every word of a query counts, however long it is: 600 unknown words before "pie", or "red red" before 70 of
    # them, score as "pie" and "red red" alone
    for long, short in (("x " * 600 + "pie", "pie"), ("red red " + "x " * 70, "red red")):
        got, want = bm.scores([long, short]).tolist()
        assert got == pytest.approx(want, abs=1e-6), (
            f"BM25 scores of {short!r} after or before {long.count('x')} unknown words: expected {want} (those of "
            f"{short!r} alone), got {got}")
    # a second index (its own words) leaves the first as it was: nothing shared between indexes (a default {} of
    # __init__ is one dict for every call)
    calrec.BM25(["blue sky", "grey sky"])
    got, want_red = bm.scores(["red"]).tolist()[0], [0.5235484, 0.0, 0.6243067]
    assert got == pytest.approx(want_red, abs=1e-6), (
        f"BM25 scores of 'red' on {docs} after another index was built over ['blue sky', 'grey sky']: expected "
        f"{want_red}, got {got}")
    # lower-cased as words() does it (str.lower, as Lucene's LowerCaseFilter): 'Straße' is not 'strasse'
    got = calrec.BM25(["Straße nach Berlin", "strasse"]).scores(["strasse"]).tolist()[0]
    assert got[0] == 0.0 and got[1] > 0, f"BM25 scores of 'strasse' on ['Straße nach Berlin', 'strasse']: expected " \
        f"a score for the second alone (str.lower keeps ß; casefold would make it ss), got {got}"
    # past 2 ** 15 documents, and words (an int16 index wraps there): 33,000 documents, the last alone holding a word;
    # 33 documents of 1,000 words each, 33,000 words in all
    many = within_memory(lambda: calrec.BM25([""] * 32_999 + ["w"]).scores(["w"])[0], "BM25 of 33,000 documents")
    assert many.nonzero().flatten().tolist() == [32999], (
        f"BM25 of 33,000 documents, the last alone holding the word 'w', the query 'w': expected a score for "
        f"document 32999 alone, got scores at {many.nonzero().flatten().tolist()[:5]}")
    wordy = calrec.BM25([" ".join(f"w{i}" for i in range(j, j + 1000)) for j in range(0, 33_000, 1000)])
    wordy = wordy.scores(["w32999"])[0].nonzero().flatten().tolist()
    assert wordy == [32], (f"BM25 of 33 documents holding the words 'w0' ... 'w32999', 1,000 each, in order, the query "
                           f"'w32999': expected a score for document 32 alone, got scores at {wordy[:5]}")


def test_bm25_reads_words_of_any_script():
    cases = {"Red, red CAR's 12-pack": ["red", "red", "car", "s", "12", "pack"],
             "Pokémon Straße_Ärger": ["pokémon", "straße", "ärger"],           # an accent is a letter, _ splits
             "Красный МЯЧ, 2 шт.": ["красный", "мяч", "2", "шт"],                # Cyrillic, lower-cased
             "ポケモン赤い本 ゲーム": ["ポケモン", "赤", "い", "本", "ゲーム"],          # katakana runs; each kanji, each kana
             "红色汽车": ["红", "色", "汽", "车"], "Ελληνικά κείμενα": ["ελληνικά", "κείμενα"], "?! —": []}
    for text, want in cases.items():
        assert calrec.words(text) == want, f"words({text!r}): expected {want}, got {calrec.words(text)}"
    # a catalog whose letters are mapped one to one to Cyrillic scores as the English one: BM25 sees the same words
    english = ["red apple pie", "green apple", "red car door", "blue car"]
    mapping = str.maketrans("abcdeghilnoprtuy", "абцдегхилнопртуы")
    cyrillic = [d.translate(mapping) for d in english]
    queries = ["red apple", "car", "blue pie"]
    want = calrec.BM25(english).scores(queries)
    got = calrec.BM25(cyrillic).scores([q.translate(mapping) for q in queries])
    assert torch.equal(got, want) and want.sum() > 0, (
        f"BM25 of {cyrillic}: expected {want.tolist()} (the English twin's scores), got {got.tolist()}")


def naive_bm25(documents, query, k1, b):
    """BM25 of `query` on each document, one document and one query word (repeats too) at a time:
    sum_w idf(w) tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl)), idf(w) = ln(1 + (N - n_w + 0.5) / (n_w + 0.5)),
    |d| the document's number of words as the analyser (calrec.words) reads them, avgdl their mean."""
    docs = [calrec.words(d) for d in documents]
    avgdl = sum(len(d) for d in docs) / len(docs)
    out = []
    for d in docs:
        total = 0.0
        for w in calrec.words(query):
            n = sum(w in other for other in docs)
            tf = d.count(w)
            if tf:                                                  # a word the document lacks adds nothing
                idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
                total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))
        out.append(total)
    return out


def test_bm25_equals_a_naive_loop_for_any_k1_and_b():
    # punctuation inside the words ("red,red" is two words, "car's" two), and a last document with no word at all;
    # queries read by the same analyser (capitals, punctuation); an underscore splits a word, an accent does not
    # ("red_apple" is "red" and "apple", "Pokémon" one word: calrec.words keeps runs of letters and digits); a word
    # inside another word is not that word, in a document or a query ("shredded" is no "red", "carpets" no "car")
    docs = ["red,red car", "Red apple pie", "green apple", "the red car's red door", "Pokémon red_apple 42",
            "A red car on shredded carpets, a piece of greenery", "?!"]
    leaves_inputs_alone(calrec.BM25, docs)  # the catalog's texts are the caller's: none lower-cased or cleaned in place
    queries = ["red", "apple pie red", "car door door", "nothing here", "s", "Title: Red, APPLE! car's", "mon 42",
               "Carpets and pieces"]
    leaves_inputs_alone(calrec.BM25(docs).scores, queries)  # the queries too: none lower-cased in place
    # and as many queries as asked: all of them, one (still a row: (1, D)), one or two with no known word, none
    for (k1, b), asked in zip(((1.2, 0.75), (2.0, 0.3), (0.5, 1.0), (1.5, 0.0), (1.2, 0.75), (1.2, 0.75), (1.2, 0.75)),
                              (queries, queries, queries, queries, ["apple pie red"], ["nothing here", "?"], [])):
        s = calrec.BM25(docs, k1=k1, b=b).scores(asked)
        assert tuple(s.shape) == (len(asked), len(docs)), (
            f"BM25(k1={k1}, b={b}).scores of {len(asked)} queries {asked} on the documents {docs} (the last has no "
            f"word): expected shape ({len(asked)}, {len(docs)}), got {tuple(s.shape)}")
        for q, row in zip(asked, s.tolist()):
            want = naive_bm25(docs, q, k1, b)
            assert row == pytest.approx(want, rel=1e-5, abs=1e-6), (
                f"BM25(k1={k1}, b={b}) scores of query {q!r} on the documents {docs}: expected "
                f"{[round(x, 6) for x in want]} (a naive loop; tf, n_w and |d| count the analyser's words, not "
                f"substrings of the text), got "
                f"{[round(x, 6) for x in row]}")
    # two indexes over different catalogs, the same query texts: each scores against its own vocabulary (nothing
    # learnt from one index, a query's word ids, say, reaches another)
    for docs in (["red apple", "green pear", "red car"], ["blue sky", "apple pie", "red apple pie"]):
        got = calrec.BM25(docs).scores(["apple", "red apple"]).tolist()
        for q, row in zip(["apple", "red apple"], got):
            want = naive_bm25(docs, q, 1.2, 0.75)
            assert row == pytest.approx(want, rel=1e-5, abs=1e-6), (
                f"BM25({docs}).scores([{q!r}]), after an index over another catalog scored the same query: expected "
                f"{[round(x, 6) for x in want]} (a naive loop), got {[round(x, 6) for x in row]}")
    # a document of 2002 words (an item's long description): its first word and its last both count, and |d| counts
    # every word (no cut to a maximum length)
    docs = ["red " + "filler " * 2000 + "car", "green apple", "red car", "filler"]
    for q in ("red", "car", "filler apple"):
        want, got = naive_bm25(docs, q, 1.2, 0.75), calrec.BM25(docs).scores([q])[0].tolist()
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (
            f"BM25 scores of query {q!r} on the documents ['red' + 'filler' * 2000 + 'car' (2002 words), "
            f"'green apple', 'red car', 'filler']: expected {[round(x, 6) for x in want]} (a naive loop), got "
            f"{[round(x, 6) for x in got]}")
    # a catalog of 20,000 documents, each its own word, scored with at most 512 MiB more memory than the process
    # holds: W stays sparse in scores too (a dense (D, V) copy of it takes 1.6 GB here, 3.2 GiB for 17k items and 50k
    # words; where the cap cannot be set, not on Linux, the call runs uncapped). In closed form, a document's one word
    # has tf = 1 and |d| = avgdl = 1, so its score is its idf, ln(1 + (N - 1 + 0.5) / 1.5); every other document 0
    n = 20000
    big = calrec.BM25([f"w{i}" for i in range(n)])
    got = within_memory(lambda: big.scores(["w5 w7", "w19999 unknown"]), f"BM25 over {n} documents (each its own "
                        "word), scores of 2 queries (W made dense? the product W @ Q is sparse-dense)")
    idf = math.log(1 + (n - 1 + 0.5) / 1.5)
    hits = {(0, 5): idf, (0, 7): idf, (1, n - 1): idf}
    assert tuple(got.shape) == (2, n) and all(got[q, d].item() == pytest.approx(v, rel=1e-5) for (q, d), v in
                                              hits.items()) and got.count_nonzero().item() == 3, (
        f"BM25 over {n} documents 'w0' .. 'w{n - 1}', scores of 'w5 w7' and 'w19999 unknown': expected (2, {n}) "
        f"scores, {idf:.6f} (the idf) at documents 5, 7 and {n - 1} and 0 elsewhere, got {tuple(got.shape)} with "
        f"{got.count_nonzero().item()} nonzero scores")
    # documents of the same text (a catalog's items may share one): each is a document of its own, N = 4
    docs = ["red car", "red car", "blue car", "red car"]
    for q in ("red", "blue car"):
        want = naive_bm25(docs, q, 1.2, 0.75)
        try:
            got = calrec.BM25(docs).scores([q])[0].tolist()
        except (RuntimeError, IndexError, ValueError) as e:
            pytest.fail(f"BM25({docs}).scores([{q!r}]) (three documents of one text): expected "
                        f"{[round(x, 6) for x in want]} (a naive loop, N = 4), got {type(e).__name__}: {e}")
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (
            f"BM25({docs}).scores([{q!r}]) (three documents of one text): expected {[round(x, 6) for x in want]} "
            f"(a naive loop, N = 4), got {[round(x, 6) for x in got]}")


# -----------------------------------------------------------------------------
# quasi-round-robin merge


def naive_round_robin(lists, list_scores, exclude, k):
    """Round p: while the round has candidates, the one of highest score (ties: the lower beam) is taken out and
    kept if it is new and outside `exclude`; at most k kept in all."""
    taken = []
    depth = max(map(len, lists)) if lists else 0
    for p in range(depth):
        pool = [(sc[p], -m, lst[p]) for m, (lst, sc) in enumerate(zip(lists, list_scores)) if len(lst) > p]
        while pool:
            score, beam, item = max(pool)                           # the best score; of equal ones, the lower beam
            pool.remove((score, beam, item))
            if len(taken) < k and item not in taken and item not in exclude:
                taken.append(item)
    return taken


def test_bm25_lists_reach_past_a_long_history():
    # a user whose 45 history items are the query's best matches: one beam's list is still the top k of the whole
    # BM25 order with the history left out (the search reaches past the history), here by a naive sort of the scores
    docs = [f"Title: red red red widget {i}" for i in range(45)] + ["Title: red red widget 45"] + \
        [f"Title: blue gadget {i}" for i in range(46, 100)]
    bm25, history, k = calrec.BM25(docs), list(range(45)), 20
    scores = bm25.scores(["Title: red widget"])[0].tolist()
    want = [i for i in sorted(range(len(docs)), key=lambda i: (-scores[i], i)) if i not in history][:k]
    got = calrec.bm25_lists(bm25, ["Title: red widget"], [history], beams=1, k=k)
    assert got == [want], f"bm25_lists of one beam, a history of the 45 best matches, k={k}: expected {want}, got {got}"


def test_merge_round_robin_on_hand_made_lists():
    lists = [[10, 11, 12, 13], [20, 10, 21], [11, 30]]
    scores = [[5.0, 4.0, 3.0, 2.0], [9.0, 1.0, 0.5], [6.0, 0.1]]
    cases = [  # (what the case checks, lists, scores, exclude, k, the merge by hand)
        # round 0: candidates 10 (5.0), 20 (9.0), 11 (6.0) -> by score: 20, 11, 10
        # round 1: 11 (4.0, taken), 10 (1.0, taken), 30 (0.1) -> 30
        # round 2: 12 (3.0), 21 (0.5) -> 12, 21 ; round 3: 13
        ("every round, by score within a round", lists, scores, [], 10, [20, 11, 10, 30, 12, 21, 13]),
        ("history items skipped, k stops early", lists, scores, [20, 12], 4, [11, 10, 30, 21]),
        ("k reached in the middle of a round", lists, scores, [], 2, [20, 11]),
        ("equal scores within a round: the better beam (lower index) first", [[1], [2]], [[1.0], [1.0]], [], 2, [1, 2]),
        ("equal scores within a round: the better beam first, whatever the items' ids", [[2], [1]], [[1.0], [1.0]], [],
         2, [2, 1]),
        ("scores 3e-7 apart are not equal: by score, not by beam", [[1], [2]], [[1.0000001], [1.0000004]], [], 2, [2, 1]),
        ("scores 1e-8 apart (equal in float32) are not equal: by score", [[1], [2]], [[1.00000001], [1.00000002]], [],
         2, [2, 1]),
        ("k = 0: no item", lists, scores, [], 0, []),
        ("no lists: nothing to merge", [], [], [7], 3, []),
        # the second beam's list is the longest: round 1 holds its item 3 alone
        ("as many rounds as the longest list", [[1], [2, 3]], [[1.0], [2.0, 1.5]], [], 5, [2, 1, 3]),
        # 20 beams in one round (a sort that is not stable, as torch.sort or np.argsort past 16 values, mixes equal
        # scores): beams 0, 3, ..., 18 (item 100 + m) score 2.0, the others 1.0, each group in beam order
        ("20 beams, equal scores in a round: by beam, whatever the sort", [[100 + m] for m in range(20)],
         [[2.0 if m % 3 == 0 else 1.0] for m in range(20)], [], 20,
         [100 + m for m in range(0, 20, 3)] + [100 + m for m in range(20) if m % 3]),
    ]
    for what, ls, sc, exclude, k, want in cases:
        got = calrec.merge_round_robin(ls, sc, exclude=exclude, k=k)  # a list, or a tuple: its callers read either
        got = list(got) if isinstance(got, tuple) else got
        assert got == want, (f"merge_round_robin of lists {ls} with BM25 scores {sc}, exclude={exclude}, k={k} "
                             f"({what}): expected {want}, got {got}")
    # a family of random merges against a naive loop: an item in several beams of one round (its best score
    # counts), repeated in a list, rounds that add nothing (all taken or history) before rounds that do, equal scores
    import random
    rng = random.Random(0)
    for case in range(300):
        ls = [[rng.randrange(8) for _ in range(rng.randrange(6))] for _ in range(rng.randrange(5))]
        sc = [sorted((rng.choice([0.5, 1.0, 2.0, 3.0]) for _ in lst), reverse=True) for lst in ls]
        exclude, k = rng.sample(range(8), rng.randrange(4)), rng.randrange(11)
        want = naive_round_robin(ls, sc, exclude, k)
        got = calrec.merge_round_robin(ls, sc, exclude=exclude, k=k)
        got = list(got) if isinstance(got, tuple) else got
        assert got == want, (f"merge_round_robin of lists {ls} with BM25 scores {sc}, exclude={exclude}, k={k}: "
                             f"expected {want} (a naive loop: round by round, the best score first), got {got}")
    # the caller's lists, scores and history stay as they were
    exclude = [20, 12]
    got = leaves_inputs_alone(calrec.merge_round_robin, lists, scores, exclude=exclude, k=4)
    assert list(got) == [11, 10, 30, 21] and isinstance(got, (list, tuple)), \
        f"merge_round_robin of the same lists, exclude=[20, 12], k=4: expected [11, 10, 30, 21], got {got}"
    # the merged list is a list of its own, even with nothing to merge (one list, no history): a caller that extends
    # or reorders it leaves the beam's list as it was
    one = [[3, 1, 2]]
    got = calrec.merge_round_robin(one, [[3.0, 2.0, 1.0]], exclude=[], k=5)
    if isinstance(got, list):
        got.append(7)
        got.reverse()
    assert one == [[3, 1, 2]], (
        f"merge_round_robin of one list [[3, 1, 2]], no history, k=5, then the caller appended 7 to the result and "
        f"reversed it: expected the caller's list [[3, 1, 2]] as it was (a new list returned), got {one}")
    # a history given as a set is the caller's too: the items taken are not added to it
    exclude = {20, 12}
    got = calrec.merge_round_robin(lists, scores, exclude=exclude, k=4)
    assert list(got) == [11, 10, 30, 21] and exclude == {20, 12}, (
        f"merge_round_robin of the same lists, exclude={{20, 12}} (a set), k=4: expected [11, 10, 30, 21] and the set "
        f"left as {{20, 12}}, got {list(got)} and the set {exclude}")
    # k = 300 of 400 distinct candidates (past 256, CPython's cached small ints: k compared by `is` never matches):
    # exactly the first 300 of the merge
    ls = [[4 * i + m for i in range(100)] for m in range(4)]
    sc = [[float(100 - i) for i in range(100)] for _ in range(4)]
    got, want = calrec.merge_round_robin(ls, sc, exclude=[], k=300), naive_round_robin(ls, sc, [], 300)
    assert list(got) == want, (f"merge_round_robin of 4 lists of 100 distinct items, k=300: expected the first 300 "
                               f"items of the merge (a naive loop), got {len(got)} items"
                               + ("" if len(got) != 300 else ", another order"))
    # a history of 70,001 items whose oldest (the first) is beam 0's best: left out, however old, past any window
    # (by hand: round 0 takes 2, round 1 takes 1, then 3)
    history = [100] + list(range(1000, 71000))
    lists, scores = [[100, 1], [2, 3]], [[5.0, 1.0], [4.0, 0.5]]
    got = calrec.merge_round_robin(lists, scores, exclude=history, k=3)
    want = naive_round_robin(lists, scores, history, 3)
    assert list(got) == want == [2, 1, 3], (
        f"merge_round_robin of lists {lists} with BM25 scores {scores}, k=3, a history of 70,001 items holding item 100 "
        f"as its oldest: expected {want} (item 100 left out), got {list(got)}")
    # ids past 256 built at run time (as .tolist() builds them: equal ints, distinct objects) in two beams' round 0:
    # the item is taken once (compared with ==, not `is`)
    a, b = int("1000"), int("1000")
    lists, scores = [[a, int("2000")], [b, int("3000")]], [[2.0, 1.0], [1.5, 0.5]]
    got = calrec.merge_round_robin(lists, scores, exclude=[], k=5)
    assert list(got) == naive_round_robin(lists, scores, [], 5) == [1000, 2000, 3000], (
        f"merge_round_robin of lists {lists} with BM25 scores {scores}, k=5 (item 1000 in both beams' round 0, two int "
        f"objects): expected [1000, 2000, 3000], got {list(got)}")


def test_catalog_beams_are_exactly_the_best_catalog_items():
    """With as many beams as items, beam search constrained by the catalog's prefix tree returns every item,
    ranked by its log-probability -- compared with a full forward pass over each item's tokens."""
    torch.manual_seed(3)
    V, eot = 12, 11
    net = gpt.GPT(gpt.GPTConfig(block_size=32, vocab_size=V, n_layer=1, n_head=2, n_embd=16)).eval()
    catalog = [[1, 2, 3], [1, 2], [4], [1, 5, 6, 7], [4, 9], [1, 2]]  # shared prefixes, a prefix of another, twins
    trie = calrec_extras.CatalogTrie(catalog, eot, V)
    prompt = [3, 8, 1]
    beams = net.beam_search([prompt], 5, 5, eot, allowed_next=trie)[0]  # 5 distinct token sequences
    got = [(tokens, score) for tokens, score in beams]
    want = []
    for tokens in {tuple(t) for t in catalog}:
        with torch.no_grad():
            logp = torch.log_softmax(net(torch.tensor([prompt + list(tokens) + [eot]]))[0][0], -1)
        want.append((list(tokens) + [eot], sum(float(logp[len(prompt) - 1 + i, t])
                                               for i, t in enumerate(list(tokens) + [eot]))))
    want.sort(key=lambda w: -w[1])
    assert [t for t, _ in got] == [t for t, _ in want], (
        f"beam search with 5 beams constrained by CatalogTrie({catalog}, eot={eot}): expected every distinct item, "
        f"best first, {[t for t, _ in want]}, got {[t for t, _ in got]}")
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-5,
                               err_msg="the constrained beams' scores against each item's log-probability")
    twins = trie.ranked_items([[([1, 2, eot], 0.0)]], [[]], 10)[0]
    assert twins == [1, 5], f"items of a beam that wrote [1, 2, eot]: expected [1, 5] (twins share a leaf, in item " \
        f"order), got {twins}"


def test_catalog_trie_makes_its_mask_on_the_device_of_the_tokens():
    # with new tensors going by default to "meta" (shapes, no data), the mask of CPU tokens must come back on the
    # CPU, as on a GPU it must come back on the GPU: built with device= and moved to tokens.device
    trie, eot = calrec_extras.CatalogTrie([[1, 2], [1, 3], [4]], 9, 10), 9
    tokens = torch.tensor([[[1], [4]], [[2], [1]]])  # 2 prompts x 2 beams, one token each
    want = torch.zeros(2, 2, 10, dtype=torch.bool)
    want[0, 0, [2, 3]] = want[0, 1, eot] = want[1, 1, [2, 3]] = True  # (2,) starts no item: nothing
    try:
        with torch.device("meta"):
            got = trie(tokens)
    except (RuntimeError, NotImplementedError) as e:
        if str(e).startswith("exercise"):
            raise
        raise AssertionError(f"CatalogTrie(tokens (2, 2, 1) on the CPU), the default device set to 'meta': {e}") \
            from None
    assert got.device == tokens.device, (
        f"CatalogTrie(tokens on the CPU), the default device set to 'meta': want the mask on the tokens' device, the "
        f"CPU, got it on {got.device}")
    assert torch.equal(got, want), f"CatalogTrie([[1, 2], [1, 3], [4]])(tokens {tokens.tolist()}): want {want}, got {got}"
    # tokens that can be read but live on another device, as a GPU's do: the mask must come back on theirs
    class TokensElsewhere:  # a CPU tensor's values and methods (tolist, size, cpu, len, ...), its device "meta"
        def __init__(self, t):
            self.t, self.shape, self.device = t, t.shape, torch.device("meta")

        def __getattr__(self, name):
            return getattr(self.t, name)

        def __len__(self):
            return len(self.t)
    try:
        got = trie(TokensElsewhere(tokens))
    except (AttributeError, TypeError) as e:
        raise AssertionError(f"CatalogTrie(tokens on another device, readable as a CPU tensor): {e}") from None
    assert got.device.type == "meta", (
        f"CatalogTrie(tokens on the 'meta' device, readable as a CPU tensor): want the mask on the tokens' device, "
        f"meta, got it on {got.device} (made on the CPU and not moved to tokens.device?)")


def test_catalog_trie_by_hand():
    V, eot = 12, 11
    catalog = [[1, 2, 3], [1, 2], [4], [1, 5, 6, 7], [4, 9], [1, 2]]  # shared prefixes, a prefix of another, twins
    trie = calrec_extras.CatalogTrie(catalog, eot, V)
    # the nodes: every prefix of an item's tokens followed by end-of-text is one; nothing else is
    for prefix in ((), (1,), (1, 2), (1, 2, eot), (1, 2, 3, eot), (4, eot), (1, 5, 6)):
        assert trie.node(prefix) is not None, f"CatalogTrie.node({prefix}): expected a node (a prefix of an item " \
            f"of {catalog}, each ended by end-of-text {eot}), got None"
    for prefix in ((9,), (1, 9), (1, 9, 2), (4, 9, 9), (2, eot), (1, 2, eot, 3), (1, 2, eot, eot), (4, eot, eot)):
        assert trie.node(prefix) is None, f"CatalogTrie.node({prefix}): expected None (no item of {catalog} starts " \
            f"so; nothing goes on after end-of-text), got {trie.node(prefix)}"
    # a second trie of another catalog: its own nodes (nothing carried over from the first)
    other = calrec_extras.CatalogTrie([[9, 9], [1, 3]], eot, V)
    for prefix, want in (((9,), True), ((9, 9, eot), True), ((1, 3), True), ((1, 2), False), ((4,), False)):
        assert (other.node(prefix) is not None) == want, (
            f"CatalogTrie([[9, 9], [1, 3]]).node({prefix}), built after a trie of {catalog}: expected "
            f"{'a node' if want else 'None'}, got {other.node(prefix)}")
    assert trie.node((9,)) is None and trie.node((1, 2)) is not None, (
        f"CatalogTrie({catalog}).node((9,)), node((1, 2)) after another trie was built: expected None and a node, "
        f"got {trie.node((9,))} and {trie.node((1, 2))}")
    leaves = {(1, 2, eot): [1, 5], (1, 2, 3, eot): [0], (4, eot): [2], (4, 9, eot): [4], (1, 5, 6, 7, eot): [3]}
    for prefix, items in leaves.items():  # a finished beam's items, through the public ranked_items
        got = trie.ranked_items([[(list(prefix), 0.0)]], [[]], 10)[0]
        assert got == items, f"ranked_items of one beam {list(prefix)}: expected the items {items} (twins share a " \
            f"leaf, in item order), got {got}"
    got = trie.ranked_items([[([1, 2, eot], 0.0)]], [[]], 0)
    assert got == [[]], f"ranked_items(..., k=0): expected the top 0, [[]], got {got}"
    # an unfinished beam (no end-of-text) is no item, whatever items end where it would: only [1, 2, eot] counts
    got = trie.ranked_items([[([1, 2], -1.0), ([4, 9], -1.5), ([1, 2, eot], -2.0)]], [[]], 10)
    assert got == [[1, 5]], (f"ranked_items of the beams [1, 2], [4, 9] (unfinished: no end-of-text) and [1, 2, eot] "
                             f"(items 1 and 5): expected [[1, 5]], got {got}")
    # GPT-2's end-of-text, 50256 (a Hugging Face GPT-2's tokenizer, which calrec.py passes on), and beams as
    # beam_search returns them, ints of a tensor's .tolist(): an id equal to eot_id, not the same object (CPython
    # shares one int object only for ids up to 256)
    gpt2 = calrec_extras.CatalogTrie([[10, 20], [30]], 50256, 50257)
    written = torch.tensor([[10, 20, 50256], [30, 50256, 0]]).tolist()
    found = [[(written[0], -1.0), (written[1][:2], -2.0), (written[0][:2], -3.0)]]
    got = gpt2.ranked_items(found, [[]], 5)
    assert got == [[0, 1]], (f"ranked_items of the beams {[t for t, _ in found[0]]} (ints from a tensor's .tolist(), "
                             f"the last unfinished) over the catalog [[10, 20], [30]], eot_id=50256 (GPT-2's): "
                             f"expected [[0, 1]], got {got} (end-of-text compared by identity, `is`, not by value?)")
    allowed = gpt2(torch.tensor([[written[0][:2], written[0][1:]]]))  # the beams [10, 20] and [20, 50256]
    for k, (beam, want) in enumerate(((written[0][:2], {50256}), (written[0][1:], set()))):
        got = set(allowed[0, k].nonzero().view(-1).tolist())
        assert got == want, (f"tokens allowed after the beam {beam} of CatalogTrie([[10, 20], [30]], eot_id=50256, "
                             f"vocab_size=50257): expected {sorted(want)}, got {sorted(got)}")
    # a long history (61 items, the oldest first) is left out whole
    many = calrec_extras.CatalogTrie([[i + 1] for i in range(70)], 99, 100)   # item i is the token i + 1
    history = [1] + list(range(10, 70))
    got = many.ranked_items([[([2, 99], -1.0), ([1, 99], -2.0)]], [history], 5)
    assert got == [[0]], (f"ranked_items of beams that wrote item 1, then item 0, history [1, 10..69] (61 items, "
                          f"item 1 the oldest): expected [[0]], got {got}")
    history = [1] + list(range(10, 70)) * 1200                  # 72,001 items, item 1 the oldest, once: no window
    got = many.ranked_items([[([2, 99], -1.0), ([1, 99], -2.0)]], [history], 5)
    assert got == [[0]], (f"ranked_items of beams that wrote item 1, then item 0, a history of 72,001 items (item "
                          f"1 the oldest, then items 10..69 1200 times): expected [[0]], got {got}")
    # the tokens each beam may write next: an item's next token, end-of-text where an item ends, none after it
    beams = {(1, 2): {3, eot}, (4, 9): {eot}, (2, 1): set(), (4, eot): set(), (1, 5): {6}}
    allowed = trie(torch.tensor([list(beams)]))                       # (1 prompt, 5 beams, 2 tokens so far)
    assert tuple(allowed.shape) == (1, len(beams), V) and allowed.dtype == torch.bool, (
        f"CatalogTrie(tokens (1, {len(beams)}, 2)): expected a bool tensor (1, {len(beams)}, {V}), got "
        f"{allowed.dtype} {tuple(allowed.shape)}")
    for k, (beam, want) in enumerate(beams.items()):
        got = set(allowed[0, k].nonzero().view(-1).tolist())
        assert got == want, f"tokens allowed after the beam {list(beam)}: expected {sorted(want)}, got {sorted(got)}"
    # two prompts, each with its own beams: each beam's allowed tokens are its own prompt's
    two = {0: {(1, 2): {3, eot}, (4, eot): set()}, 1: {(1, 5): {6}, (4, 9): {eot}}}
    allowed = trie(torch.tensor([list(two[0]), list(two[1])]))       # (2 prompts, 2 beams, 2 tokens so far)
    for b, its_beams in two.items():
        for k, (beam, want) in enumerate(its_beams.items()):
            got = set(allowed[b, k].nonzero().view(-1).tolist())
            assert got == want, (f"tokens allowed after the beam {list(beam)} of prompt {b} (of 2, each with its own "
                                 f"beams): expected {sorted(want)}, got {sorted(got)}")
    # vocab_size columns, whatever the id of end-of-text (0 in the project's own tokenizer, whose special tokens come
    # first; a mask of eot_id + 1 columns would broadcast over the logits)
    wide = calrec_extras.CatalogTrie(catalog, eot, 16)(torch.tensor([[[1, 2]]]))
    assert tuple(wide.shape) == (1, 1, 16) and set(wide[0, 0].nonzero().view(-1).tolist()) == {3, eot}, (
        f"CatalogTrie({catalog}, eot={eot}, vocab_size=16) of the beam [1, 2]: expected a (1, 1, 16) mask allowing "
        f"[3, {eot}], got {tuple(wide.shape)} allowing {wide[0, 0].nonzero().view(-1).tolist()}")
    first = set(trie(torch.zeros(1, 2, 0, dtype=torch.long))[0, 1].nonzero().view(-1).tolist())
    assert first == {1, 4}, f"tokens allowed first (no token yet): expected [1, 4], got {sorted(first)}"
    # the items the finished beams wrote, best beam first, twins together, history out, dead beams (-inf) ignored
    found = [[([1, 2, eot], -1.0), ([4, eot], -2.0), ([1, 2, 3, eot], -3.0), ([4, 9, eot], float("-inf"))]]
    # the history goes before the top k are cut: k items whenever the beams hold k outside the history
    # (k = 1 and a history holding twin 1: its twin 5 moves up, not the next beam's item 2)
    for history, k, want in (([1], 3, [5, 2, 0]), ([], 10, [1, 5, 2, 0]), ([2], 2, [1, 5]), ([1, 5], 2, [2, 0]),
                             ([1], 1, [5])):
        got = trie.ranked_items(found, [history], k)
        assert got == [want], (f"ranked_items of the beams {found[0]} (items 1 and 5 are twins), history {history}, "
                               f"k={k}: expected [{want}], got {got}")
    # twins come out in item order, whatever their ids: items 1 and 8 write [1, 2]
    twins = [[2]] + [[1, 2]] + [[k + 3] for k in range(6)] + [[1, 2]]
    got = calrec_extras.CatalogTrie(twins, eot, V).ranked_items([[([1, 2, eot], -1.0), ([3, eot], -2.0)]], [[]], 5)
    assert got == [[1, 8, 2]], (f"ranked_items of the beams [1, 2, eot], [3, eot] over the catalog {twins} (items 1 "
                                f"and 8 are twins): expected [[1, 8, 2]] (twins in item order), got {got}")
    # several users, each with its own beams and history; a beam cut short (no end-of-text) wrote no item
    found = [[([1, 2, eot], -1.0), ([4, eot], -2.0)], [([4, 9, eot], -0.5), ([1, 2, 3, eot], -0.7)],
             [([1, 2], -0.1), ([4, eot], -0.2)]]
    got = leaves_inputs_alone(trie.ranked_items, found, [[2], [0], []], 3)  # the caller's histories stay as they were
    assert got == [[1, 5], [4], [2]], (f"ranked_items of three users' beams {found}, histories [[2], [0], []], k=3: "
                                       f"expected [[1, 5], [4], [2]] (each user's own beams and history; the third "
                                       f"user's first beam, [1, 2], never finished), got {got}")
    # each call returns lists of their own: a caller that keeps one call's result finds it as it was after the next
    first = trie.ranked_items([[([4, eot], -1.0)]], [[]], 5)
    trie.ranked_items([[([4, 9, eot], -1.0)], [([1, 2, 3, eot], -1.0)]], [[], []], 5)
    assert first == [[2]], (f"ranked_items of the beam [4, eot] (item 2), after a second call on other beams: "
                            f"expected [[2]] as it was, got {first} (the lists of one call reused by the next?)")
    # ... and a caller that changes a result changes nothing of the trie: one user, one beam, no history (the leaf's
    # items as they are), the result extended and sorted, then the same call again
    got = trie.ranked_items([[([1, 2, eot], -1.0)]], [[]], 5)
    got[0].append(0)
    got[0].sort(reverse=True)
    again = trie.ranked_items([[([1, 2, eot], -1.0)]], [[]], 5)
    assert again == [[1, 5]], (f"ranked_items of the beam [1, 2, eot] (twins 1 and 5), again after the caller appended "
                               f"0 to the first result and sorted it: expected [[1, 5]], got {again} (the trie's own "
                               f"list of the leaf's items handed out?)")
    # the items' token sequences as tuples (any sequence of ids, as lists are): the same trie as of lists
    try:
        as_tuples = calrec_extras.CatalogTrie([tuple(tokens) for tokens in catalog], eot, V)
        got = as_tuples.ranked_items(found, [[2], [0], []], 3)
        allowed = as_tuples(torch.tensor([[[1, 2], [4, 9]]]))
    except TypeError as e:
        pytest.fail(f"CatalogTrie of the catalog {catalog} as tuples of tokens: {type(e).__name__}: {e}")
    assert got == [[1, 5], [4], [2]] and [set(a.nonzero().view(-1).tolist()) for a in allowed[0]] == [{3, eot},
                                                                                                      {eot}], (
        f"CatalogTrie of the catalog {catalog} as tuples of tokens: expected the trie of lists (ranked items "
        f"[[1, 5], [4], [2]] of the three users above; after [1, 2] the tokens 3 and {eot}, after [4, 9] {eot}), got "
        f"{got} and {[a.nonzero().view(-1).tolist() for a in allowed[0]]}")


def test_text_log_probs_and_generator_check_equal_token_by_token_loops(small_world):
    """log p(continuation | prompt) of right-padded pairs of mixed lengths, against one unpadded forward pass per
    token; the generator check's means and share, against those per-user sums."""
    torch.manual_seed(4)
    net = gpt.GPT(gpt.GPTConfig(block_size=32, vocab_size=12, n_layer=1, n_head=2, n_embd=16)).eval()
    prompts, conts = [[3, 8, 1], [5], [2, 2, 9, 4, 7]], [[1, 2, 11], [4, 6, 6, 0, 11], [11]]

    def naive(prompt, cont, net=net):
        total = 0.0
        for i, t in enumerate(cont):
            with torch.no_grad():
                logits = net(torch.tensor([prompt + cont[:i]]))[0][0, -1]
            total += float(torch.log_softmax(logits, -1)[t])
        return total

    want = [naive(p, c) for p, c in zip(prompts, conts)]
    np.testing.assert_allclose(calrec_extras.text_log_probs(net, prompts, conts, "cpu", batch=2), want, rtol=1e-5)

    _, _, texts, tok = small_world
    lm = gpt.GPT(gpt.GPTConfig(block_size=256, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)).eval()
    builder = data.PromptBuilder(tok, texts, 256, max_history=2, max_item_tokens=None)
    catalog = [0, 1, 2, 3]
    examples = [([0, 1], 2), ([2], 3), ([3, 0], 1)]
    check = calrec_extras.generator_check(lm, builder, tok.eot_id, examples, catalog, 2, "cpu")

    def per_user(item_of):
        return [naive(builder.prompt(h), builder.item_ids[item_of(h, t)] + [tok.eot_id], lm) for h, t in examples]

    nxt, last, top = per_user(lambda h, t: t), per_user(lambda h, t: h[-1]), per_user(lambda h, t: 2)
    assert check["next_item"] == pytest.approx(np.mean(nxt), rel=1e-5)
    assert check["last_item"] == pytest.approx(np.mean(last), rel=1e-5)
    assert check["most_popular"] == pytest.approx(np.mean(top), rel=1e-5)
    assert check["popular_beats_next"] == pytest.approx(np.mean([p > n for p, n in zip(top, nxt)]))
    assert check["users"] == 3


def test_markov_and_last_item_baselines_by_hand():
    d = data.Domain("D", [{"Title": "red apple"}, {"Title": "green pear"}, {"Title": "red cherry"},
                          {"Title": "blue plum"}], ["a", "b", "c", "d"], train=[], valid=[], test=[],
                    train_sequences=[[0, 1], [0, 1, 2], [0, 2], [3, 0, 1], [2, 3]], attributes=("Title",))
    examples = [([0], 2), ([3], 1), ([1], 3), ([2], 0), ([1, 3], 0)]
    # transitions: 0->1 three times, 0->2, 1->2, 2->3, 3->0 once each; popularity 0: 4, 1: 3, 2: 3, 3: 2.
    # score = count(last -> j) * (4 + 1) + popularity(j); the history is excluded; ties count against the target
    # user 0 (after 0): 1 scores 18, 2 scores 8 -> rank 2;  user 1 (after 3): 0 9, 1 3, 2 3 -> the tie: rank 3
    # user 2 (after 1): 2 8, 0 4, 3 2 -> rank 3;           user 3 (after 2): 3 7, 0 4 -> rank 2
    # user 4 (after 3, its last item; 1 and 3 excluded): 0 scores 9, 2 scores 3 -> rank 1
    got = ev.rank_markov(d, examples).tolist()
    assert got == [2, 3, 3, 2, 1], (
        f"rank_markov of the histories {[h for h, _ in examples]} -> targets {[t for _, t in examples]} (score = how "
        f"often j followed the last history item, ties by popularity): expected ranks [2, 3, 3, 2, 1], got {got}")
    # items 1 and 2 each followed 0 once and are equally popular: each ties with the other, whichever is the target
    twins = data.Domain("T", [{"Title": t} for t in "abcde"], list("abcde"), train=[], valid=[], test=[],
                        train_sequences=[[0, 1], [0, 2], [3, 4]], attributes=("Title",))
    got = ev.rank_markov(twins, [([0], 1), ([0], 2)]).tolist()
    assert got == [2, 2], (f"rank_markov after item 0, items 1 and 2 alike in count and popularity, each the target "
                           f"once: expected [2, 2] (a tie counts against the target, whatever the indices), got {got}")
    # one transition outweighs any popularity (item 3 is 5 times popular in 2 sequences), and a transition at the
    # start of a long sequence counts as much as one at its end
    def domain(seqs, n):
        return data.Domain("D", [{"Title": f"t{i}"} for i in range(n)], [str(i) for i in range(n)], train=[],
                           valid=[], test=[], train_sequences=seqs, attributes=("Title",))
    filler = [2 + i % 60 for i in range(2000)]                          # items 2..61, 0 never among them
    for seqs, n, target, what in (([[0, 2], [3, 3, 3, 3, 3]], 4, 2, "2 followed 0 once; 3, never, is 5 times popular"),
                                  ([[0, 1] + list(range(2, 62)), [5, 7], [5, 7]], 62, 1,
                                   "0 -> 1 starts a 62-item sequence"),
                                  ([[0, 1] + filler, [5, 7], [5, 7]], 62, 1, "0 -> 1 starts a 2002-item sequence"),
                                  ([filler + [0, 1], [5, 7], [5, 7]], 62, 1, "0 -> 1 ends a 2002-item sequence")):
        got = ev.rank_markov(domain(seqs, n), [([0], target)]).tolist()
        assert got == [1], (f"rank_markov, history [0], target {target} ({what}): expected [1] (the only item that "
                            f"ever followed 0), got {got}")
    texts = [data.item_text(it, d.attributes) for it in d.items]
    bm = calrec.BM25(texts)
    # the last item's text finds itself (excluded: it is the history) and the items sharing its words
    # user 0: "red" links apple and cherry -> rank 1; user 1: the same, the other way round -> rank 1
    # user 2: pear shares only "title": plum ties with apple and cherry, counted against it -> rank 3
    # user 3 (apple then plum): plum's text shares only "title" with pear and cherry: the tie -> rank 2
    examples = [([0], 2), ([2], 0), ([1], 3), ([0, 3], 2)]
    ranks = ev.rank_last_item_bm25(bm, texts, examples).tolist()
    assert ranks == [1, 1, 3, 2], (
        f"rank_last_item_bm25 of the histories {[h for h, _ in examples]} -> targets {[t for _, t in examples]} over "
        f"{texts} (the query: the last history item's text): expected ranks [1, 1, 3, 2], got {ranks}")
    # against a naive loop over BM25 scores computed word by word: a target tied with an item of higher index (the
    # tie counts against the target, whatever the indices), a target sharing no word with the query (score 0: it
    # ties with every other 0, it is not unranked), a history of several items, a target in its history, a last
    # item whose text repeats a word (the query counts it twice); a last item whose words are split by punctuation
    # and hold an accent ("red,blue car's": red, blue, car, s; "Pokémon": one word, not "pokmon"), read by BM25's own
    # analyser (calrec.words), nothing deleted from the text first
    for texts, examples in ((["red,blue car's", "red apple", "blue car", "green apple", "Pokémon Yellow!", "pokmon",
                              "yellow-pokémon card"],
                             [([0], 1), ([0], 2), ([0], 3), ([4], 5), ([4], 6), ([3, 4], 1)]),
                            (["red apple", "red cherry", "red plum", "blue sky", "green sky"],
                             [([2], 0), ([0], 3), ([1], 2), ([4, 0], 3), ([3], 3), ([1, 2], 4)]),
                            (["red red bike", "red car", "bike"], [([0], 1), ([1], 0)])):  # the last: texts below
        want = []
        for history, target in examples:
            s = naive_bm25(texts, texts[history[-1]], 1.2, 0.75)
            want.append(0 if target in history else
                        sum(s[j] >= s[target] for j in range(len(texts)) if j not in history))
        ranks = ev.rank_last_item_bm25(calrec.BM25(texts), texts, examples).tolist()
        assert ranks == want, (
            f"rank_last_item_bm25 of the histories {[h for h, _ in examples]} -> targets {[t for _, t in examples]} "
            f"over {texts}: expected ranks {want} (a naive loop over the BM25 scores; ties and zero scores count "
            f"against the target), got {ranks}")
    # a last item of 81 words: the whole text is the query, its last word ('zebra') too
    long = [" ".join(f"w{i}" for i in range(80)) + " zebra", "zebra", "w1 a b c d e f g h"]
    s = naive_bm25(long, long[0], 1.2, 0.75)
    want = [sum(s[j] >= s[1] for j in (1, 2))]
    got = ev.rank_last_item_bm25(calrec.BM25(long), long, [([0], 1)]).tolist()
    assert got == want, (f"rank_last_item_bm25, the last item's text 81 words ending in 'zebra', target the item "
                         f"'zebra': expected {want} (a naive loop over the BM25 scores), got {got}")
    # a last item of 2001 words: its first word (w0) and its last (zebra) both in the query. Items 1 and 3 each share
    # one of them (equal n_w, tf and length: equal scores), item 2 nothing: by hand, each target ties the other, rank 2
    long = [" ".join(f"w{i}" for i in range(2000)) + " zebra", "zebra zz", "a b", "w0 zz"]
    got = ev.rank_last_item_bm25(calrec.BM25(long), long, [([0], 1), ([0], 3)]).tolist()
    assert got == [2, 2], (f"rank_last_item_bm25, the last item's text 2001 words 'w0 ... w1999 zebra', targets the "
                           f"items 'zebra zz' and 'w0 zz' (each sharing one query word, alike otherwise): expected "
                           f"[2, 2] (each ties the other; both words are in the query), got {got}")
    # a catalog of 300 items, targets ranked past 100 (a retriever's depth): every item is scored, not the top few
    many = ["red " + "filler " * i for i in range(150)] + [f"blue thing{i}" for i in range(150)]
    deep = [([0], 121), ([0], 149), ([3], 2)]
    expected = [sum(s[j] >= s[t] for j in range(len(many)) if j not in h) for h, t in deep
                for s in [naive_bm25(many, many[h[-1]], 1.2, 0.75)]]
    got = ev.rank_last_item_bm25(calrec.BM25(many), many, deep).tolist()
    assert got == expected, (f"rank_last_item_bm25 over a catalog of 300 items (targets ranked past 100): expected "
                             f"{expected} (a naive loop over every item's BM25 score), got {got}")
    # the index given, with its own k1 and b (the run's bm25_k1 and bm25_b), not one built anew with the defaults: the
    # long text repeating "red" beats the short one at b = 0 (no length normalisation), not at b = 0.75
    docs = ["red", "red red red blue blue blue blue blue blue blue", "red green", "blue"]
    for k1, b in ((1.2, 0.0), (2.0, 0.3), (1.2, 0.75)):
        want = [sum(s[j] >= s[t] for j in range(4) if j not in h) for h, t in ([[0], 1], [[0], 2])
                for s in [naive_bm25(docs, docs[h[-1]], k1, b)]]
        ranks = ev.rank_last_item_bm25(calrec.BM25(docs, k1, b), docs, [([0], 1), ([0], 2)]).tolist()
        assert ranks == want, (f"rank_last_item_bm25 with the index BM25({docs}, k1={k1}, b={b}), histories [[0], [0]] "
                               f"-> targets [1, 2]: expected ranks {want} (the scores of the index given), got {ranks}")
    # more users than one chunk of ranks_in_chunks (1024): each chunk's queries are its own users' last items
    examples = [([i % 3], (i + 1) % 3) for i in range(1030)]
    want = [sum(s[j] >= s[t] for j in range(3) if j not in h) for h, t in examples[:3]
            for s in [naive_bm25(texts, texts[h[-1]], 1.2, 0.75)]] * 344
    try:
        ranks = ev.rank_last_item_bm25(calrec.BM25(texts), texts, examples).tolist()
    except (RuntimeError, IndexError) as e:
        ranks = f"{type(e).__name__}: {str(e)[:100]}"
    assert ranks == want[:1030], (
        f"rank_last_item_bm25 of 1030 users (more than one chunk of 1024) over {texts}: expected ranks {want[:6]}... "
        f"(a naive loop), got {str(ranks)[:120]}")
    calls = []

    class Counting(calrec.BM25):  # how many queries each call scores
        def scores(self, queries):
            calls.append(len(queries))
            return super().scores(queries)
    ev.rank_last_item_bm25(Counting(texts), texts, examples)
    assert max(calls, default=0) <= 1024 and sum(calls) == 1030, (
        f"rank_last_item_bm25 of 1030 users: BM25.scores called with {calls} queries; expected each user's query once, "
        "at most one chunk (1024) a call: the whole (users, N) matrix of a Games-sized split takes 3.4 GB")


def naive_markov_ranks(sequences, n_items, examples):
    """score(j) = (how often j came right after the last history item in the training sequences, j's popularity),
    compared as pairs (the count first, popularity only to break its ties), one transition at a time. rank =
    candidates (history excluded) scoring >= the target; 0 for a target in its own history."""
    bought = Counter(j for seq in sequences for j in seq)
    pop = [bought[j] for j in range(n_items)]
    ranks = []
    for history, target in examples:
        count = [0] * n_items
        for seq in sequences:
            for a, b in zip(seq, seq[1:]):
                count[b] += a == history[-1]
        key = [(count[j], pop[j]) for j in range(n_items)]
        ranks.append(0 if target in history else
                     sum(key[j] >= key[target] for j in range(n_items) if j not in history))
    return ranks


def test_markov_equals_a_naive_loop():
    # a transition repeated within a sequence (0 -> 1 twice: each time counts), popularity above 1000 (item 3: a
    # tie-break must stay below one transition however popular), and the highest item (5) in no transition
    sequences = [[0, 1, 0, 1, 0, 2], [2], [2], [2], [1, 4, 0]] + [[3]] * 1200 + [[5]]
    d = data.Domain("D", [{"Title": f"item {i}"} for i in range(6)], list("abcdef"), train=[], valid=[], test=[],
                    train_sequences=sequences, attributes=("Title",))
    examples = [([0], 1), ([0], 2), ([4, 0], 3), ([1], 0), ([5], 3), ([2, 5], 4), ([3], 1), ([1], 1)]
    want = naive_markov_ranks(sequences, 6, examples)
    try:
        got = ev.rank_markov(d, examples).tolist()
    except (RuntimeError, IndexError) as e:
        pytest.fail(f"rank_markov of 6 items, item 5 in no transition: expected ranks {want}, got "
                    f"{type(e).__name__}: {e}")
    assert got == want, (
        f"rank_markov of the histories {[h for h, _ in examples]} -> targets {[t for _, t in examples]} over the "
        f"training sequences {sequences[:5]} + [[3]] * 1200 + [[5]]: expected ranks {want} (a naive loop: the "
        f"transition's count first, popularity only to break ties), got {got}")
    # popularity counts every purchase, a user's repeats too (item 2: 2 buyers, 4 purchases; item 1: 3 buyers, 3)
    sequences = [[0, 1], [0, 2], [1], [3, 1], [3, 2, 3, 2, 3, 2]]
    d = data.Domain("D", [{"Title": f"item {i}"} for i in range(4)], list("abcd"), train=[], valid=[], test=[],
                    train_sequences=sequences, attributes=("Title",))
    examples = [([0], 1), ([0], 2)]
    want, got = naive_markov_ranks(sequences, 4, examples), ev.rank_markov(d, examples).tolist()
    assert got == want, (
        f"rank_markov of the histories [[0], [0]] -> targets [1, 2] over the training sequences {sequences}: expected "
        f"ranks {want} (items 1 and 2 tie on one transition after item 0; item 2 is bought 4 times, item 1 3 times), "
        f"got {got}")
    # counts times popularity past 2**24, where float32 no longer holds every integer: 1000 transitions 0 -> 1 and
    # 0 -> 2 each, item 1 bought once more than item 2, item 3 bought 40000 times (count * 40001 is about 4e7)
    sequences = [[0, 1]] * 1000 + [[0, 2]] * 1000 + [[1]] + [[3]] * 40000
    d = data.Domain("D", [{"Title": f"item {i}"} for i in range(4)], list("abcd"), train=[], valid=[], test=[],
                    train_sequences=sequences, attributes=("Title",))
    examples = [([0], 1), ([0], 2), ([3], 1), ([1], 3)]
    want = naive_markov_ranks(sequences, 4, examples)
    got = ev.rank_markov(d, examples).tolist()
    assert got == want, (
        f"rank_markov of the histories {[h for h, _ in examples]} -> targets {[t for _, t in examples]} over the "
        f"training sequences [[0, 1]] * 1000 + [[0, 2]] * 1000 + [[1]] + [[3]] * 40000: expected ranks {want} (after "
        f"item 0, items 1 and 2 tie on 1000 transitions and item 1 is the more popular), got {got} (count * "
        f"(max popularity + 1) + popularity in float32 is exact only below 2**24)")
    # a count times (max popularity + 1) past 2**31, where int32 wraps: 50,000 transitions 0 -> 1 and an item 2 bought
    # 50,001 times. By hand: after 0, item 1 is the only item that ever followed (rank 1); after 3, item 2 (rank 1)
    sequences = [[0, 1]] * 50000 + [[2]] * 50000 + [[3, 2]]
    d = data.Domain("D", [{"Title": f"item {i}"} for i in range(4)], list("abcd"), train=[], valid=[], test=[],
                    train_sequences=sequences, attributes=("Title",))
    got = ev.rank_markov(d, [([0], 1), ([3], 2)]).tolist()
    assert got == [1, 1], (
        f"rank_markov of the histories [[0], [3]] -> targets [1, 2] over the training sequences [[0, 1]] * 50000 + "
        f"[[2]] * 50000 + [[3, 2]]: expected ranks [1, 1] (each target the only item that followed the last one), got "
        f"{got} (count * (max popularity + 1) is 2.5e9 here, past int32)")
    # the counts of the domain given, as it is now: its training sequences changed between two calls, and new domains
    # made and dropped in a row (a new object may take a dropped one's id()), each with other sequences: each call
    # reads its own domain's sequences (nothing cached by the domain's identity)
    seqs_a, seqs_b = [[0, 1], [0, 1], [0, 2]], [[0, 2], [0, 2], [0, 1]]
    examples = [([0], 2), ([0], 1)]
    d = data.Domain("D", [{"Title": f"item {i}"} for i in range(3)], list("abc"), train=[], valid=[], test=[],
                    train_sequences=seqs_a, attributes=("Title",))
    stale = []
    for turn in range(12):
        seqs = seqs_a if turn % 2 == 0 else seqs_b
        if turn < 2:
            d.train_sequences = seqs                                  # the same object, other sequences
            what = "the same domain, its train_sequences set anew"
        else:
            del d                                                     # dropped before the next is made
            d = data.Domain("D", [{"Title": f"item {i}"} for i in range(3)], list("abc"), train=[], valid=[],
                            test=[], train_sequences=seqs, attributes=("Title",))
            what = "a new domain, the one before dropped"
        want, got = naive_markov_ranks(seqs, 3, examples), ev.rank_markov(d, examples).tolist()
        if got != want:
            stale.append(f"  call {turn + 1} ({what}), training sequences {seqs}: expected {want}, got {got}")
    assert not stale, ("rank_markov of the histories [[0], [0]] -> targets [2, 1], domains whose training sequences "
                       "alternate (a naive loop over each domain's own sequences; counts kept from an earlier domain, "
                       "by id(domain)?):\n" + "\n".join(stale))
    # a key past 2**24 again, through the size of the catalog (count * (N + 1) is about 2e7 for N = 20,000 items), for a
    # key that ranks the popularities instead of counting them
    sequences, n = [[0, 1]] * 1003 + [[0, 2]] * 1003 + [[1]], 20000
    d = data.Domain("D", [{"Title": f"item {i}"} for i in range(n)], [str(i) for i in range(n)], train=[], valid=[],
                    test=[], train_sequences=sequences, attributes=("Title",))
    examples = [([0], 1), ([0], 2)]
    # ... with at most 512 MiB more memory than the process holds: the counts kept sparse, as the docstring says (a
    # dense (N, N) int64 matrix of these 20,000 items takes 3.2 GB, of a 17,000-item catalog 2.15 GiB; where the cap
    # cannot be set, not on Linux, the call runs uncapped)
    want = naive_markov_ranks(sequences, n, examples)
    got = within_memory(lambda: ev.rank_markov(d, examples).tolist(), f"rank_markov over {n} items (the (N, N) "
                        "counts made dense? keep them sparse: each chunk reads the rows of its users' last items)")
    assert got == want, (
        f"rank_markov over {n} items of the histories [[0], [0]] -> targets [1, 2], training sequences [[0, 1]] * 1003 "
        f"+ [[0, 2]] * 1003 + [[1]]: expected ranks {want} (items 1 and 2 tie on 1003 transitions, item 1 the more "
        f"popular), got {got} (a key past 2**24 is not exact in float32)")
    # no transition at all (every training sequence a single item): popularity alone ranks; and more users than one
    # chunk of ranks_in_chunks (1024): each chunk scored from its own users' last items
    sequences = [[0], [1], [1], [2], [1], [2]]
    d = data.Domain("D", [{"Title": f"item {i}"} for i in range(4)], list("abcd"), train=[], valid=[], test=[],
                    train_sequences=sequences, attributes=("Title",))
    examples = [([i % 4], (i * 3 + 1) % 4) for i in range(1030)]
    want = naive_markov_ranks(sequences, 4, examples[:4]) * 258
    try:
        got = ev.rank_markov(d, examples).tolist()
    except (RuntimeError, IndexError) as e:
        got = f"{type(e).__name__}: {str(e)[:100]}"
    assert got == want[:1030], (
        f"rank_markov of 1030 users (more than one chunk of 1024) over the training sequences {sequences} (no "
        f"transition: popularity alone): expected ranks {want[:8]}... (a naive loop), got {str(got)[:120]}")


# -----------------------------------------------------------------------------
# metrics


def check_metrics(ranks, want, exact=()):
    """rank_metrics(ranks) against the hand-computed `want` ({metric: value}); `exact` the metrics compared exactly."""
    got = ev.rank_metrics(torch.tensor(ranks))
    for name, value in want.items():
        assert name in got, f"rank_metrics({ranks}): no {name!r} in {sorted(got)}"
        assert type(got[name]) is float, (
            f"rank_metrics({ranks})[{name!r}]: expected a Python float (the run state, which torch.load("
            f"weights_only=True) reads, takes no numpy scalar), got {type(got[name]).__name__} {got[name]!r}")
        ok = got[name] == value if name in exact else got[name] == pytest.approx(value)
        assert ok, f"rank_metrics of ranks {ranks} (0: not retrieved): {name} expected {value:.6f}, got {got[name]:.6f}"


def test_metrics_on_hand_made_ranks():
    gains = [1, 1 / 2, 0, 0]  # NDCG@10 of each user; the standard error is their sample std / sqrt(4)
    mean = sum(gains) / 4
    check_metrics([1, 3, 0, 12], {  # 0: not retrieved
        "recall@1": 0.25, "recall@5": 0.5, "recall@10": 0.5, "recall@20": 0.75,
        "ndcg@5": (1 + 1 / 2) / 4,                              # 1/log2(2) + 1/log2(4)
        "ndcg@10": (1 + 1 / 2) / 4,
        "ndcg@20": (1 + 1 / 2 + 1 / math.log2(13)) / 4,
        "ndcg@10_se": math.sqrt(sum((g - mean) ** 2 for g in gains) / 3) / 2},
        exact=("recall@1", "recall@5", "recall@10", "recall@20"))
    # ranks exactly at each cut-off count within it: rank K is inside @K
    g5, g10, g20 = 1 / math.log2(6), 1 / math.log2(11), 1 / math.log2(21)
    check_metrics([5, 10, 20, 21, 0], {
        "recall@1": 0.0, "recall@5": 0.2, "recall@10": 0.4, "recall@20": 0.6,
        "ndcg@5": g5 / 5, "ndcg@10": (g5 + g10) / 5, "ndcg@20": (g5 + g10 + g20) / 5})
    # two users, gains 1 and 0: a sample std of √0.5, over √2, is a standard error of 0.5
    check_metrics([1, 0], {"ndcg@10": 0.5, "ndcg@10_se": 0.5})
    # 65 users, one at rank 1: the gains' mean is 1/65, their sample variance (64/65) / 64 = 1/65, and the standard
    # error √(1/65) / √65 = 1/65 (the sample std whatever the number of users)
    check_metrics([1] + [0] * 64, {"ndcg@10": 1 / 65, "ndcg@10_se": 1 / 65})
    # one user: no spread to measure, a standard error of 0 (the sample std of one value is nan)
    check_metrics([2], {"recall@1": 0.0, "recall@5": 1.0, "ndcg@10": 1 / math.log2(3), "ndcg@10_se": 0.0})
    # the caller's ranks stay as they were: a float64 tensor or array (torch.as_tensor of either is no copy)
    for ranks in (torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64), np.array([1.0, 0.0, 3.0])):
        got = leaves_inputs_alone(ev.rank_metrics, ranks)["recall@5"]  # 2/3 to float32's precision will do
        assert got == pytest.approx(2 / 3), f"rank_metrics of the ranks [1, 0, 3]: expected recall@5 = 2/3, got {got}"
    # ranks past int16 (65537 is 1 in int16, 70000 is 4464): past every cut-off, no metric counts them
    got = ev.rank_metrics([65537, 65539, 70000])
    assert not {k: v for k, v in got.items() if v != 0.0}, (
        f"rank_metrics of the ranks [65537, 65539, 70000] (all past every K): expected every metric 0, got {got}")
    # each call returns a dict of its own (calrec.py keeps one per split and method): the first stays as it was
    first = ev.rank_metrics([1, 1])
    ev.rank_metrics([0, 0])
    want = {"recall@1": 1.0, "recall@20": 1.0, "ndcg@5": 1.0, "ndcg@20": 1.0, "ndcg@10_se": 0.0}
    assert {name: first.get(name) for name in want} == want, (
        f"rank_metrics([1, 1]) after a call on the ranks [0, 0]: expected {want} (every user at rank 1), got {first} "
        f"(one dict shared by every call?)")


def test_ranks_exclude_history_and_count_ties_against_the_target():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.7],
                           [0.1, 0.2, 0.3, 0.4, 0.5],
                           [0.5, 0.5, 0.5, 0.5, 0.5],
                           [-0.2, -0.5, 0.3, -0.9, -0.5]])
    given = scores.clone()
    targets = torch.tensor([2, 0, 1, 1])
    histories = [[0], [4, 3], [0, 1], [2, 4]]
    # user 0: item 0 excluded; 0.8 above; item 4 ties at 0.7 -> rank 3 (ties count against the target)
    # user 1: items 4, 3 excluded; 0.2, 0.3 above -> rank 3
    # user 2: the target is in the history -> unrankable (0)
    # user 3 (cosines can be negative): items 2 and 4 excluded (not scored 0: that would be above -0.5); item 0 above
    #   -> rank 2
    got = ev.ranks_from_scores(scores, targets, histories).tolist()
    assert got == [3, 3, 0, 2], (
        f"ranks_from_scores of 4 users (rank = candidates scoring >= the target, history excluded, 0 when the target "
        f"is in it): expected [3, 3, 0, 2], got {got}")
    # the same scores times 1e10 (scores below -1e9): the same ranks; the history is excluded by -inf, not by a finite
    # stand-in that a low score lies below
    got = ev.ranks_from_scores(scores * 1e10, targets, histories).tolist()
    assert got == [3, 3, 0, 2], (
        f"ranks_from_scores of the same users, scores times 1e10 (user 3's target at -5e9): expected the same ranks "
        f"[3, 3, 0, 2], got {got}")
    assert torch.equal(scores, given), \
        "ranks_from_scores changed the scores it was given (exclude the history in a copy)"
    # float64 scores too stay as they were (float64's .double() is no copy)
    got = leaves_inputs_alone(ev.ranks_from_scores, scores.double(), targets, histories).tolist()
    assert got == [3, 3, 0, 2], f"ranks_from_scores of the same users, float64 scores: expected [3, 3, 0, 2], got {got}"
    # nan scores (a diverged scorer), as the formula rank = #{candidates scoring >= the target} gives them: nan >= t
    # and t >= nan are both false, so a nan candidate does not count against the target (user 0: 0.5 alone -> 1) and a
    # nan target has no candidate at or above it, itself neither: 0, not ranked (user 1)
    nan = float("nan")
    got = ev.ranks_from_scores(torch.tensor([[nan, 0.5, 0.2], [0.3, nan, 0.1]]), torch.tensor([1, 1]), [[], []])
    assert got.tolist() == [1, 0], (
        f"ranks_from_scores of the scores [[nan, 0.5, 0.2], [0.3, nan, 0.1]], targets [1, 1], no history: expected "
        f"[1, 0] (rank = candidates scoring >= the target: nan >= 0.5 is false, and nothing is >= nan), got "
        f"{got.tolist()}")
    # no user has a history: nothing is excluded (user 0: 0.9, 0.8 and the tie 0.7 -> 4; user 1: every item -> 5)
    got = ev.ranks_from_scores(scores[:2], targets[:2], [[], []]).tolist()
    assert got == [4, 5], f"ranks_from_scores of users 0 and 1 with empty histories: expected [4, 5], got {got}"
    # integer scores (counts, as a popularity scorer gives) are compared in float32 too, the history at -inf: by hand,
    # user 0 without item 3, target score 2: items 0 and 2 -> 2; user 1 without item 2: item 1 alone -> 1
    counts = torch.tensor([[3, 1, 2, 5], [0, 4, 4, 1]])
    try:
        got = ev.ranks_from_scores(counts, torch.tensor([2, 1]), [[3], [2]]).tolist()
    except RuntimeError as e:
        pytest.fail(f"ranks_from_scores of int64 scores {counts.tolist()}, targets [2, 1], histories [[3], [2]]: "
                    f"expected [2, 1], got RuntimeError: {e} (-inf written before the cast to float32?)")
    assert got == [2, 1], (f"ranks_from_scores of int64 scores {counts.tolist()}, targets [2, 1], histories "
                           f"[[3], [2]]: expected [2, 1], got {got}")
    asked = []  # the same users two at a time: the same ranks, and never more than two users' scores at once
    examples = [(h, t) for h, t in zip(histories, targets.tolist())]
    ranks = ev.ranks_in_chunks(lambda rows: asked.append(rows) or scores[rows], examples, chunk=2)
    assert ranks.tolist() == [3, 3, 0, 2] and asked == [slice(0, 2), slice(2, 4)], (
        f"ranks_in_chunks of the same 4 users, 2 at a time: expected ranks [3, 3, 0, 2] from the rows "
        f"[slice(0, 2), slice(2, 4)], got {ranks.tolist()} from {asked}")
    # float64 scores closer than float32 can tell apart tie (compared in float32), and a target its scorer ruled out
    # (-inf, outside its history) cannot be ranked either; one scored +inf can (first, or tied with another +inf)
    inf = float("inf")
    near = torch.tensor([[1.0, 1.0 + 1e-12, 0.5, 0.2], [0.3, -inf, 0.5, 0.2], [0.5, inf, 2.0, 1.0],
                         [inf, inf, 0.0, 1.0]], dtype=torch.float64)
    got = ev.ranks_from_scores(near, torch.tensor([1, 1, 1, 1]), [[], [3], [0], []]).tolist()
    assert got == [2, 0, 1, 2], (
        f"ranks_from_scores of float64 scores {near.tolist()}, targets [1, 1, 1, 1], histories [[], [3], [0], []]: "
        f"expected [2, 0, 1, 2] (1.0 and 1.0 + 1e-12 tie in float32; a target scored -inf: 0; scored +inf: 1, or 2 "
        f"beside another +inf), got {got}")
    # float32 scores close but distinct are no tie: 1.003 is above 1.0 (bfloat16 would round both to 1.0), and
    # 1 - 2**-24 (float32's step below 1) is below it: a tie is equality, with no tolerance
    close = torch.tensor([[1.0, 1.003, 1 - 2 ** -24, 0.99, 0.5]]).expand(4, 5)
    got = ev.ranks_from_scores(close, torch.tensor([0, 1, 2, 3]), [[], [], [], []]).tolist()
    assert got == [2, 1, 3, 4], (
        f"ranks_from_scores of the float32 scores [1.0, 1.003, 1 - 2**-24, 0.99, 0.5], targets items 0, 1, 2, 3, no "
        f"history: expected [2, 1, 3, 4] (only 1.003 is above 1.0; 1 - 2**-24 is below it, not a tie), got {got}")
    from_lists = ev.ranks_from_lists([[5, 2, 9], [1]], [9, 4]).tolist()
    assert from_lists == [3, 0], \
        f"ranks_from_lists of targets 9, 4 in [5, 2, 9], [1]: expected [3, 0], got {from_lists}"
    # twins (one key: items a ranker cannot tell apart) rank the target at the worst of their places outside the
    # history, and nowhere (0) when one of them is missing from the list: items 2, 5, 7 and 9 share a text
    twins = ["a", "b", "t", "c", "d", "t", "e", "t", "f", "t"]
    lists = [[5, 2, 9, 1], [9, 5, 2, 7], [2, 9], [9, 5, 2], [5, 9, 2], [1, 3]]
    targets, histories = [2, 2, 2, 2, 2, 3], [[7], [], [5, 7], [], [2, 7], []]
    got = ev.ranks_from_lists(lists, targets, histories, twins).tolist()
    assert got == [3, 4, 2, 0, 0, 2], (
        f"ranks_from_lists of the lists {lists}, targets {targets}, histories {histories}, twins 2, 5, 7, 9: expected "
        f"[3, 4, 2, 0, 0, 2] (the last place of a twin outside the history; 0 when twin 7 is missing or the target is "
        f"in the history; item 3 has no twin), got {got}")


def test_ranks_from_scores_equal_a_naive_loop():
    # a family of random users against a naive loop: histories of every length (empty ones beside longer ones,
    # item 0 in none of them), items repeated within a history, targets in their own history, ties, negative scores;
    # one user and several; float32, float64 and bfloat16 scores, contiguous or a transpose's view
    def naive(scores, targets, histories):
        out = []
        for row, target, history in zip(scores.tolist(), targets.tolist(), histories):
            out.append(0 if target in history else
                       sum(row[j] >= row[target] for j in range(len(row)) if j not in history))
        return out

    gen = torch.Generator().manual_seed(0)
    for case in range(40):
        B, N = (1, 3, 5)[case % 3], 7
        scores = torch.randint(-2, 3, (N, B), generator=gen).to((torch.float32, torch.float64, torch.bfloat16)[case % 3])
        scores = scores.t() if case % 2 else scores.t().contiguous()    # (B, N), a transpose's view every other case
        targets = torch.randint(0, N, (B,), generator=gen)
        histories = [torch.randint(1, N, (int(torch.randint(0, 4, (), generator=gen)),), generator=gen).tolist()
                     for _ in range(B)]
        want = naive(scores, targets, histories)
        got = leaves_inputs_alone(ev.ranks_from_scores, scores, targets, histories)
        assert tuple(got.shape) == (B,) and got.tolist() == want, (
            f"ranks_from_scores of the {scores.dtype} scores {scores.tolist()}, targets {targets.tolist()}, histories "
            f"{histories}: expected {want} (a naive loop: candidates outside the history scoring >= the target), got "
            f"{got.tolist()}")
    # a catalog past int16 (a constant scorer: all 40000 items tie with the target) and a history of 300 items
    got = ev.ranks_from_scores(torch.zeros(1, 40000), torch.tensor([0]), [[]]).tolist()
    assert got == [40000], f"ranks_from_scores of a constant scorer over 40000 items: expected [40000] (every tie " \
        f"counts against the target), got {got}"
    scores, history = torch.arange(400, 0, -1, dtype=torch.float32)[None], list(range(1, 301))  # item 0 the best
    want = naive(scores, torch.tensor([350]), [history])
    got = ev.ranks_from_scores(scores, torch.tensor([350]), [history]).tolist()
    assert got == want, (f"ranks_from_scores of 400 items (item 0 the best, 399 the worst), target 350, history the "
                         f"300 items 1..300: expected {want} (a naive loop), got {got}")
    # a history of 4996 items (past any window of recent items): item 0, the best, its oldest, then items 1..999 five
    # times; over 2000 items scored 2000 - i, target 1500: by hand, items 1000..1500 score >= it, rank 501
    scores, history = torch.arange(2000, 0, -1, dtype=torch.float32)[None], [0] + list(range(1, 1000)) * 5
    got = ev.ranks_from_scores(scores, torch.tensor([1500]), [history]).tolist()
    assert got == [501], (f"ranks_from_scores of 2000 items (item i scores 2000 - i), target 1500, a history of 4996 "
                          f"items (item 0, the best, its oldest; then items 1..999 five times): expected [501] (items "
                          f"1000..1500), got {got}")
    # every rank of every catalog of N = 1..100 items, and of 1,000, 4,097 and 17,000 (a Games-sized catalog): item i
    # scores N - i, so by hand (as the loop counts) item i's rank is i + 1: a count, not the share of the catalog at
    # or above the target times N (in float32, 1/41 * 41 is 0.99999994 and 13/22 * 22 is 12.999999: truncated)
    missed = []
    for N in list(range(1, 101)) + [1000, 4097, 17000]:
        scores = torch.arange(N, 0, -1, dtype=torch.float32)         # item i scores N - i: distinct, best first
        chunk = max(1, 2 ** 22 // N)                                   # at most 4M scores at a time
        for s in range(0, N, chunk):
            targets = torch.arange(s, min(N, s + chunk))
            got = ev.ranks_from_scores(scores.expand(len(targets), N), targets, [[] for _ in targets]).long()
            wrong = (got != targets + 1).nonzero().view(-1)
            if len(wrong):
                missed.append(f"N = {N}: target ranks {(targets[wrong][:4] + 1).tolist()} came out as "
                              f"{got[wrong][:4].tolist()}")
                break
    assert not missed, ("ranks_from_scores of N items scored N - i (no history), every target: expected rank i + 1 "
                        f"for item i (the count of items scoring >= it); {len(missed)} catalogs missed, e.g.\n  "
                        + "\n  ".join(missed[:5]))


# -----------------------------------------------------------------------------
# templates, batches and the pooling spans


@pytest.fixture(scope="module")
def small_world():
    items = [{"Title": "Red kettle", "Brand": "Acme", "Price": "$10"},
             {"Title": "Blue kettle lid", "Brand": "Acme"},
             {"Title": "Green tea, loose", "Brand": "Leafy", "Price": "$4"},
             {"Title": "Tea cup", "Brand": "Leafy", "Price": "$2"}]
    attrs = ("Title", "Brand", "Price")
    texts = [data.item_text(it, attrs) for it in items]
    tok = data.train_tokenizer(texts * 5 + [data.history_prompt(texts)], vocab_size=400)
    return items, attrs, texts, tok


def test_item_text_and_prompt_templates(small_world):
    items, attrs, texts, _ = small_world
    assert texts[1] == "Title: Blue kettle lid, Brand: Acme, Price: Unknown"
    assert data.item_text({"Title": "one two three four"}, ("Title",), max_words=2) == "Title: one two"
    assert data.history_prompt(texts[:2]) == (
        "User purchase history: This is a summary of the user's purchase history.\n"
        f"The first purchased item is as follows: {texts[0]}.\n"
        f"The next purchased item is as follows: {texts[1]}.\n"
        "The next purchased item is as follows:")


class WordTokens:
    """A tokenizer whose tokens are the words, so that token counts can be worked out by hand."""
    def encode_batch(self, texts):
        return [t.split() for t in texts]


def test_fitted_item_texts_shorten_the_longest_value_and_keep_every_attribute():
    items = [({"Title": "a b c d e f", "Brand": "x y"}, ("Title", "Brand")),           # 10 words
             ({"Title": "a b c", "Brand": "w x y z"}, ("Title", "Brand")),             # 9 words
             ({"Title": "a b c d", "Brand": "x"}, ("Title", "Brand", "Price")),        # 9, Price Unknown
             ({"Title": "a"}, ("Title", "Brand"))]                                     # 4 words: fits
    # by hand, at most 7 words: the first title gives up 3 words; the second brand one, then the title, the
    # first of two equal values; the third title 2 words (Price: Unknown counts); the fourth fits as it is
    assert calrec.fitted_item_texts(items, 24, WordTokens(), 7) == [
        "Title: a b c, Brand: x y", "Title: a b, Brand: w x y", "Title: a b, Brand: x, Price: Unknown",
        "Title: a, Brand: Unknown"]
    # a value keeps one word even when the item cannot fit; the word cap applies first
    assert calrec.fitted_item_texts(items[:1], 24, WordTokens(), 2) == ["Title: a, Brand: x"]
    assert calrec.fitted_item_texts(items[:1], 2, WordTokens(), 99) == ["Title: a b, Brand: x y"]


def test_pooling_spans_cover_exactly_history_and_target(small_world):
    _, _, texts, tok = small_world
    builder = data.PromptBuilder(tok, texts, block_size=128, max_history=20, max_item_tokens=None)
    examples = [([0, 1], 2), ([3], 0)]
    batch = builder.training_batch([h + [t] for h, t in examples])
    idx, attn, targets = batch["idx"], batch["attention_mask"], batch["targets"]
    assert batch["row"].tolist() == [0, 1] and batch["item"].tolist() == [2, 0]  # one prediction per row
    for b, (history, target) in enumerate(examples):
        row, start, end = idx[b].tolist(), int(batch["start"][b]), int(batch["end"][b])
        # the prompt [0, start) decodes to the prompt string, [start, end) to the target item's text
        assert tok.decode(row[:start]) == data.history_prompt([texts[i] for i in history])
        assert tok.decode(row[start:end]) == " " + texts[target]
        assert row[end] == tok.eot_id and int(attn[b].sum()) == end + 1  # then end-of-text, then padding
        # next-token targets: exactly the target tokens and the end-of-text, each predicted one step early
        pos = (targets[b] != -100).nonzero().view(-1).tolist()
        assert pos == list(range(start - 1, end))
        assert [int(targets[b, p]) for p in pos] == row[start:end + 1]
    items_idx, items_mask = builder.item_batch([2, 0])
    assert tok.decode(items_idx[0][items_mask[0].bool()].tolist()) == " " + texts[2]


def test_every_position_predicts_each_history_item_after_its_own_prompt(small_world):
    _, _, texts, tok = small_world
    builder = data.PromptBuilder(tok, texts, block_size=128, max_history=20, max_item_tokens=None)
    batch = builder.training_batch([[3, 1, 0, 2]], every_position=True)
    row = batch["idx"][0].tolist()
    assert batch["item"].tolist() == [1, 0, 2]  # every item after the first is predicted
    for k, (start, end, item) in enumerate(zip(batch["start"].tolist(), batch["end"].tolist(), batch["item"].tolist())):
        # the prompt before each prediction is exactly the prompt inference builds for that history
        assert row[:start] == builder.prompt([3, 1, 0, 2][:k + 1])
        assert tok.decode(row[start:end]) == " " + texts[item]
    # the loss positions: every predicted item's tokens, and the end-of-text only after the last one
    pos = (batch["targets"][0] != -100).nonzero().view(-1).tolist()
    want = [p for s, e in zip(batch["start"].tolist(), batch["end"].tolist()) for p in range(s - 1, e - 1)]
    assert pos == want + [batch["end"][-1].item() - 1]


def test_long_histories_keep_the_most_recent_items_that_fit(small_world):
    _, _, texts, tok = small_world
    builder = data.PromptBuilder(tok, texts, block_size=80, max_history=20, max_item_tokens=None)
    history = [0, 1, 2, 3, 0, 1, 2, 3]
    batch = builder.training_batch([history + [1]])
    assert int(batch["attention_mask"].sum()) <= 80
    prompt = tok.decode(batch["idx"][0, :batch["start"][0]].tolist())
    kept = prompt.count("purchased item is as follows: ")
    assert 1 <= kept < len(history)
    assert prompt == data.history_prompt([texts[i] for i in history[-kept:]])
    # inference keeps the same items: the room reserved for the target is the same (the longest item)
    assert builder.prompt(history) == batch["idx"][0, :batch["start"][0]].tolist()


def test_max_history_keeps_only_the_most_recent_items(small_world):
    _, _, texts, tok = small_world
    history = [3, 1, 0]
    for n in (1, 2):
        builder = data.PromptBuilder(tok, texts, block_size=128, max_history=n, max_item_tokens=None)
        assert tok.decode(builder.prompt(history)) == data.history_prompt([texts[i] for i in history[-n:]])
        # a training row of the sequence holds the same kept items, then its target; every position predicts
        # each kept item after the first, so one item gives one prediction: the sequence's last transition
        batch = builder.training_batch([history + [2]], every_position=True)
        assert batch["item"].tolist() == history[-n:][1:] + [2]
        assert batch["idx"][0, :batch["start"][-1]].tolist() == builder.prompt(history)


def test_train_step_loss_equals_the_loss_computed_by_hand(small_world):
    """One training step's loss against every term computed apart: L_NIG from the LM's own cross-entropy, v_U and
    v_T|U as means of one unpadded row's hidden states, v_T of each item alone, and L_UT on the dense path's query
    q_U = (1 - mu) v_U + mu r_U, r_U the 0.5 ** age weighted mean of the last two history items' v_T."""
    _, _, texts, tok = small_world
    builder = data.PromptBuilder(tok, texts, block_size=128, max_history=2, max_item_tokens=64)
    sequences, extra = [[3, 1, 0, 2], [2, 0]], [1]
    cfg = dataclasses.replace(calrec.BUILT_IN, alpha=0.2, beta=0.3, tau=0.1, recent_in_loss=2, recent_loss_weight=0.4,
                              recent_loss_decay=0.5)
    torch.manual_seed(5)
    net = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)).eval()
    batch = builder.training_batch(sequences, every_position=True)
    # predictions: row 0 predicts 0 (after 3, 1) and 2; row 1 predicts 0 -- at these places in their sequences
    assert batch["item"].tolist() == [0, 2, 0] and batch["position"].tolist() == [2, 3, 1]
    with torch.no_grad():
        nig = sum(F.cross_entropy(net(batch["idx"][b:b + 1], targets=batch["targets"][b:b + 1])[0][0],
                                  batch["targets"][b], ignore_index=-100, reduction="sum") for b in range(2))
        nig = nig / (batch["targets"] != -100).sum()
        v_item = {i: F.normalize(net.hidden_states(torch.tensor([builder.item_ids[i]]))[0].mean(0), dim=0)
                  for i in range(4)}
        v_u, v_tu, q_u = [], [], []
        for b, s, e, pos in zip(*(batch[k].tolist() for k in ("row", "start", "end", "position"))):
            h = net.hidden_states(torch.tensor([batch["idx"][b, :e].tolist()]))[0]
            v_u.append(F.normalize(h[:s].mean(0), dim=0))
            v_tu.append(F.normalize(h[s:e].mean(0), dim=0))
            history = sequences[b][max(0, pos - 2):pos]
            w = [0.5 ** (len(history) - 1 - k) for k in range(len(history))]
            r = sum(wk * v_item[i] for wk, i in zip(w, history)) / sum(w)
            q_u.append(F.normalize(0.6 * v_u[-1] + 0.4 * r, dim=0))
    keys, ids = torch.stack([v_item[i] for i in [0, 2, 0] + extra]), [0, 2, 0] + extra
    want = 0.5 * nig.item() + 0.2 * naive_info_nce(torch.stack(v_tu), keys, ids, 0.1) + \
        0.3 * naive_info_nce(torch.stack(q_u), keys, ids, 0.1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    loss, parts = calrec.train_step(calrec.Towers(net), optimizer, engine.grad_scaler("cpu", "float32"), builder,
                                    sequences, extra, cfg, "cpu", "float32")
    assert loss == pytest.approx(want, rel=1e-5) and parts["nig"] == pytest.approx(nig.item(), rel=1e-5), (
        f"train_step's loss with L_UT on q_U (recent_in_loss=2, mu=0.4, decay 0.5): expected {want:.7g} (L_NIG "
        f"{nig.item():.7g}), got {loss:.7g} (L_NIG {parts['nig']:.7g})")
    plain = dataclasses.replace(cfg, recent_in_loss=0)  # L_UT on v_U alone: the paper's
    loss, _ = calrec.train_step(calrec.Towers(net), optimizer, engine.grad_scaler("cpu", "float32"), builder,
                                sequences, extra, plain, "cpu", "float32")
    want = 0.5 * nig.item() + 0.2 * naive_info_nce(torch.stack(v_tu), keys, ids, 0.1) + \
        0.3 * naive_info_nce(torch.stack(v_u), keys, ids, 0.1)
    assert loss == pytest.approx(want, rel=1e-5), (
        f"train_step's loss with the paper's L_UT on v_U (recent_in_loss=0): expected {want:.7g}, got {loss:.7g}")


# -----------------------------------------------------------------------------
# overfit smoke test: the whole loss and both inference paths on a memorised user


def test_overfit_loss_falls_and_memorised_target_comes_first(small_world):
    _, _, texts, tok = small_world
    torch.manual_seed(0)
    net = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=48))
    builder = data.PromptBuilder(tok, texts, block_size=128, max_history=20, max_item_tokens=None)
    examples = [([0], 1), ([2], 3), ([1, 2], 0)]
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = builder.training_batch([h + [t] for h, t in examples])
    items = batch.pop("item")
    del batch["attention_mask"], batch["position"]  # right-padded rows: the towers need no mask
    cfg = dataclasses.replace(calrec.BUILT_IN, beams=3, constrained_beams=3, top_k=4, eval_batch=4)
    towers = calrec.Towers(net)
    losses = []
    for _ in range(120):
        nig_sum, n_tokens, v_u, v_tu, v_t = towers(**batch, item_idx=builder.item_batch(items.tolist())[0],
                                                   item_mask=builder.item_batch(items.tolist())[1])
        loss, parts = calrec.calrec_loss(nig_sum / n_tokens, v_u, v_tu, v_t, items, 0.2, 0.2, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert set(parts) == {"nig", "tt", "ut"}
    catalog = range(0, 4)
    # one beam: its BM25 list is the ranking (with more, the merge orders a round by BM25 score, not beam score)
    ranks, _ = calrec.rank_generative(net, builder, tok, examples, catalog, dataclasses.replace(cfg, beams=1), texts,
                                      bm25=calrec.BM25(texts))
    assert ranks.tolist() == [1, 1, 1]
    trie = calrec_extras.CatalogTrie(builder.item_ids, tok.eot_id, tok.vocab_size)
    twins = list(map(tuple, builder.item_ids))
    assert calrec.rank_generative(net, builder, tok, examples, catalog, cfg, twins, trie=trie)[0].tolist() == [1, 1, 1]
    # item 0 given item 3's text: the two cannot be told apart, and as ties count against the target, the user whose
    # target is 3 (first in the list, with its twin) ranks it 2nd, as it would 0 (its twin, outside the history)
    same = [texts[3]] + texts[1:]
    ranks, _ = calrec.rank_generative(net, builder, tok, examples, catalog, dataclasses.replace(cfg, beams=1), same,
                                      bm25=calrec.BM25(same))
    assert ranks.tolist()[1] == 2, ranks.tolist()
    v_u, v_t = calrec.dense_vectors(net, builder, examples, catalog, "cpu")
    assert calrec_extras.rank_vectors(v_u, v_t, examples).tolist() == [1, 1, 1]


def test_dense_ranks_equal_a_naive_loop_over_users_and_items(small_world):
    # each prompt and each item alone through the model (no batch, no padding), cosine by hand, rank counted
    _, _, texts, tok = small_world
    torch.manual_seed(3)
    net = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)).eval()
    builder = data.PromptBuilder(tok, texts, block_size=128, max_history=20, max_item_tokens=None)
    examples = [([0, 1], 2), ([3], 0), ([2], 3), ([1, 3, 0], 2)]
    with torch.no_grad():
        items = []
        for ids in builder.item_ids:
            h = net.hidden_states(torch.tensor([ids]))[0]
            items.append(h.mean(0) / h.mean(0).norm())
        want = []
        for history, target in examples:
            h = net.hidden_states(torch.tensor([builder.prompt(history)]))[0]
            v = h.mean(0)
            scores = [float(v @ items[i]) / float(v.norm()) for i in range(len(texts))]
            want.append(sum(scores[i] >= scores[target] for i in range(len(texts)) if i not in history))
    got = calrec_extras.rank_vectors(*calrec.dense_vectors(net, builder, examples, range(len(texts)), "cpu"), examples)
    assert got.tolist() == want


def naive_dense_ranks(v_u, v_t, examples, tau, prior, gamma=1.0, mu=0.0):
    """score_j = ((1 - mu) cos(u, t_j) + mu * sum_i w_i cos(t_i, t_j)) / tau + prior_j, w_i = gamma ** (items after
    i in the history), normalised; one user, one item and one history item at a time. rank = candidates scoring >=
    the target (history excluded, ties against the target); 0 for a target in its own history."""
    def cos(a, b):
        return float(a @ b) / float(a.norm() * b.norm())

    ranks = []
    for u, (history, target) in zip(v_u, examples):
        w = [gamma ** (len(history) - 1 - n) for n in range(len(history))]
        score = [((1 - mu) * cos(u, v_t[j]) + mu * sum(wi * cos(v_t[i], v_t[j]) for wi, i in zip(w, history))
                  / max(sum(w), 1e-12)) / tau + float(prior[j]) for j in range(len(v_t))]
        ranks.append(0 if target in history else
                     sum(score[j] >= score[target] for j in range(len(v_t)) if j not in history))
    return ranks


def test_dense_ranks_with_a_popularity_prior_equal_a_naive_loop():
    torch.manual_seed(0)
    v_u, v_t = F.normalize(torch.randn(7, 5), dim=-1), F.normalize(torch.randn(9, 5), dim=-1)
    examples = [([0, 3], 1), ([2], 2), ([], 8), ([5, 6, 7], 0), ([1], 4), ([8], 6), ([0], 3)]
    prior = 0.5 * torch.log1p(torch.tensor([0, 3, 1, 9, 0, 2, 7, 1, 4.0]))
    want = naive_dense_ranks(v_u, v_t, examples, 0.1, prior)
    assert calrec_extras.rank_vectors(v_u, v_t, examples, 0.1, prior, chunk=3).tolist() == want   # chunks of 3 users
    assert calrec_extras.rank_vectors(v_u, v_t, examples).tolist() == naive_dense_ranks(v_u, v_t, examples, 1.0,
                                                                                        torch.zeros(9))


def test_prior_weight_is_the_validation_argmax_and_follows_the_data():
    # three items; cosine mildly prefers item 0 for every user. When users buy the popular item 2, a prior helps;
    # when they buy the unpopular item 0, it hurts. The weight picked must be the best NDCG@10, computed by hand.
    v_t = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]]), dim=-1)
    v_u = F.normalize(torch.tensor([[1.0, 0.1]]).repeat(4, 1), dim=-1)
    log_counts = torch.log1p(torch.tensor([1.0, 5.0, 50.0]))
    weights = (0.0, 0.25, 0.5, 1.0)

    def ndcg10(examples, w):  # one relevant item: 1 / log2(rank + 1)
        ranks = naive_dense_ranks(v_u, v_t, examples, 0.05, w * log_counts)
        return sum(1 / math.log2(r + 1) if 0 < r <= 10 else 0.0 for r in ranks) / len(ranks)

    for target in (2, 0):
        examples = [([], target)] * 4
        (mu, gamma, best), ndcg = calrec_extras.choose_dense_weights(v_u, v_t, examples, 0.05, log_counts, (0.0,), (),
                                                                     weights)
        assert ndcg == pytest.approx({(0.0, None, w): ndcg10(examples, w) for w in weights})
        assert mu == 0.0 and gamma is None
        assert best == min(w for w in weights if ndcg[0.0, None, w] == max(ndcg.values()))
        assert (best > 0) == (target == 2)


def test_dense_ranks_with_the_recent_items_equal_a_naive_loop():
    torch.manual_seed(1)
    v_u, v_t = F.normalize(torch.randn(6, 4), dim=-1), F.normalize(torch.randn(10, 4), dim=-1)
    examples = [([0, 3, 5, 7], 1), ([2], 2), ([9, 4], 8), ([5, 6, 7, 1, 2], 0), ([1], 4), ([8, 0], 6)]
    prior = 0.25 * torch.log1p(torch.tensor([0, 3, 1, 9, 0, 2, 7, 1, 4.0, 5.0]))
    for gamma, mu in ((0.5, 0.5), (1.0, 0.75), (0.25, 0.0), (0.0, 0.4)):  # gamma 0: the last item alone
        r_u = calrec_extras.recent_vectors(v_t, [h for h, _ in examples], gamma)
        got = calrec_extras.rank_vectors(calrec_extras.dense_queries(v_u, r_u, mu), v_t,
                                         examples, 0.1, prior, chunk=4)
        want = naive_dense_ranks(v_u, v_t, examples, 0.1, prior, gamma, mu)
        assert got.tolist() == want, (
            f"dense ranks of the query (1 - mu) v_U + mu r_U, r_U = recent_vectors(v_T, histories, decay={gamma}), "
            f"mu={mu}, histories {[h for h, _ in examples]}: expected {want} (a naive loop), got {got.tolist()}")


def test_recent_vectors_by_hand():
    # r_U = sum_i decay ** age_i v_i / sum_i decay ** age_i, age 0 for the last (newest) history item
    v_items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    histories = [[0, 1, 2], [3], [], [2, 0]]
    want = {
        # decay 0.5: (0.25 v0 + 0.5 v1 + v2) / 1.75 = (1.25, 1.5) / 1.75; (0.5 v2 + v0) / 1.5 = (1.5, 0.5) / 1.5
        0.5: [[5 / 7, 6 / 7], [2.0, -1.0], [0.0, 0.0], [1.0, 1 / 3]],
        1.0: [[2 / 3, 2 / 3], [2.0, -1.0], [0.0, 0.0], [1.0, 0.5]],      # a plain mean
        0.0: [[1.0, 1.0], [2.0, -1.0], [0.0, 0.0], [1.0, 0.0]],          # the last item alone (0 ** 0 = 1)
    }
    for decay, w in want.items():
        got = calrec_extras.recent_vectors(v_items, histories, decay)
        assert tuple(got.shape) == (4, 2) and torch.allclose(got, torch.tensor(w, dtype=torch.float64)), (
            f"recent_vectors of the histories {histories} (oldest first; an empty one gives zeros) over the item "
            f"vectors {v_items.tolist()}, decay {decay}: expected {[[round(x, 6) for x in r] for r in w]}, got "
            f"{[[round(x, 6) for x in r] for r in got.tolist()]}")
    # every history empty: zeros, nothing to index (an empty index is still an index)
    got = calrec_extras.recent_vectors(v_items, [[], []], 0.5)
    assert tuple(got.shape) == (2, 2) and torch.equal(got, torch.zeros(2, 2, dtype=torch.float64)), (
        f"recent_vectors of two empty histories: expected zeros (2, 2), got {got.tolist()}")
    # more users than items (B > N): still one row per history
    got = calrec_extras.recent_vectors(v_items[:2], [[], [], []], 0.5)
    assert tuple(got.shape) == (3, 2) and torch.equal(got, torch.zeros(3, 2, dtype=torch.float64)), (
        f"recent_vectors of three empty histories over 2 items: expected zeros (3, 2), one row per history, got "
        f"{tuple(got.shape)} {got.tolist()}")
    # no history at all (a chunk of no users): an empty (0, C) batch
    got = calrec_extras.recent_vectors(v_items, [], 0.5)
    assert tuple(got.shape) == (0, 2) and got.dtype == torch.float64, (
        f"recent_vectors of no histories: expected an empty (0, 2) float64 tensor, got {got.dtype} {tuple(got.shape)}")
    # long histories (60 items: every one weighs, however old) in float64, against a loop in Python floats: float64
    # all the way (weights in float32 would be off by about 1e-8)
    gen = torch.Generator().manual_seed(3)
    v_long = torch.randn(30, 3, dtype=torch.float64, generator=gen)
    long = [torch.randint(0, 30, (60,), generator=gen).tolist(), list(range(29, -1, -1)) * 2]
    for decay in (1.0, 0.97, 0.7):
        got = calrec_extras.recent_vectors(v_long, long, decay)
        for hist, row in zip(long, got.tolist()):
            w = [decay ** (len(hist) - 1 - i) for i in range(len(hist))]
            want = [sum(wi * v_long[j, c].item() for wi, j in zip(w, hist)) / sum(w) for c in range(3)]
            assert row == pytest.approx(want, rel=1e-12, abs=1e-12), (
                f"recent_vectors of a history of {len(hist)} items in float64, decay {decay}: expected {want} (a loop "
                f"over every item of the history, in Python floats), got {row}")
    # a history of 70,000 items (past any window of "recent enough" items, ages past any clamp, past 2 ** 16
    # positions): every item weighs at its own age, the oldest too (at decay 1, a plain mean); against the same loop,
    # summed exactly (decay 0.5 and 0.25 too, where decay ** -position overflows: each weight is decay ** age, at most 1)
    rows, very_long = v_long.tolist(), torch.randint(0, 30, (70_000,), generator=gen).tolist()
    for decay in (1.0, 0.999, 0.97, 0.5, 0.25):
        w = [decay ** (len(very_long) - 1 - i) for i in range(len(very_long))]
        want = [math.fsum(wi * rows[j][c] for wi, j in zip(w, very_long)) / math.fsum(w) for c in range(3)]
        got = calrec_extras.recent_vectors(v_long, [very_long], decay)[0].tolist()
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (
            f"recent_vectors of a history of 70,000 items in float64, decay {decay}: expected {want} (a loop over every "
            f"item of the history, however old), got {got}")
    # float32 (the project's item vectors), a history of 100 items at decay 0.25 (in recent_decays' grid): (1/0.25) **
    # 99 is past float32's largest value, so weights as decay ** -(position from the oldest), normalised, are inf/inf.
    # Item 0 ninety-nine times, then item 1: by hand r = (v1 + Σ_{a=1..99} 0.25^a v0) / Σ_{a=0..99} 0.25^a, which
    # is (1/4, 3/4) to float32's precision for v0 = (1, 0), v1 = (0, 1)
    got = calrec_extras.recent_vectors(torch.eye(2), [[0] * 99 + [1]], 0.25)
    assert got.dtype == torch.float32 and torch.allclose(got, torch.tensor([[0.25, 0.75]]), rtol=1e-5, atol=1e-6), (
        f"recent_vectors in float32 of item 0 ninety-nine times, then item 1, decay 0.25, over the item vectors "
        f"[[1, 0], [0, 1]]: expected [[0.25, 0.75]] float32 (each weight decay ** age, age 0 the last item), got "
        f"{got.dtype} {got.tolist()}")
    # two calls in a row whose histories have the same lengths but other items: the second reads its own items
    # ((0.5 v2 + v3) / 1.5 = (2.5, -0.5) / 1.5), nothing kept from the first call (an index cached by the lengths)
    calrec_extras.recent_vectors(v_items, [[0, 1], [3]], 0.5)
    got = calrec_extras.recent_vectors(v_items, [[2, 3], [1]], 0.5)
    want = torch.tensor([[2.5 / 1.5, -0.5 / 1.5], [0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(got, want), (
        f"recent_vectors of the histories [[2, 3], [1]], decay 0.5, right after a call on [[0, 1], [3]] (the same "
        f"lengths, other items): expected {[[round(x, 6) for x in r] for r in want.tolist()]}, got "
        f"{[[round(x, 6) for x in r] for r in got.tolist()]} (the first call's items?)")
    # a diverged item tower is not hidden: a history holding a nan item vector gives nan where that item weighs, an
    # inf one inf, as the weighted sum gives them (only the empty history's 0 / 0 is made 0); by hand at decay 0.5:
    # (0.5 v0 + v1) / 1.5 = (nan, 2/3), (0.5 v0 + v2) / 1.5 = (inf, 0)
    v_bad = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [float("inf"), 0.0]], dtype=torch.float64)
    got = calrec_extras.recent_vectors(v_bad, [[0, 1], [0, 2], []], 0.5)
    want = torch.tensor([[float("nan"), 2 / 3], [float("inf"), 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert tuple(got.shape) == (3, 2) and torch.allclose(got, want, equal_nan=True), (
        f"recent_vectors of the histories [[0, 1], [0, 2], []], decay 0.5, over the item vectors [[1, 0], [nan, 1], "
        f"[inf, 0]]: expected {want.tolist()} (nan and inf as the weighted sums give them: a diverged model is not "
        f"hidden; zeros for the empty history), got {got.tolist()}")
    # an item bought twice counts twice, each time at its own age: [1, 1, 0] at decay 0.5 is
    # (0.25 v1 + 0.5 v1 + v0) / 1.75 = (1, 0.75) / 1.75
    got = calrec_extras.recent_vectors(v_items, [[1, 1, 0], [3, 3]], 0.5)
    want = torch.tensor([[1 / 1.75, 0.75 / 1.75], [2.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(got, want), (
        f"recent_vectors of the histories [[1, 1, 0], [3, 3]] (an item repeated: each occurrence weighs) over the item "
        f"vectors {v_items.tolist()}, decay 0.5: expected {want.tolist()}, got {got.tolist()}")
    # r_U is a graph of the item vectors (L_UT trains through it with recent_in_loss): its gradient against finite
    # differences
    try:
        gradients_match_finite_differences(
            lambda v: calrec_extras.recent_vectors(v, [[0, 1, 2], [3], [], [2, 0, 2]], 0.5), v_items)
    except RuntimeError as e:                                         # gradcheck's GradcheckError is one
        pytest.fail(f"the gradient of recent_vectors with respect to the item vectors: expected finite differences', "
                    f"got others: {str(e).splitlines()[0]}")
    # every tensor on v_items' device: on the "meta" device (shapes, no data) a tensor left on the CPU cannot meet
    # them, as it could not on a GPU. An op whose output size depends on values (repeat_interleave without
    # output_size, .item()) cannot run on "meta" at all: such a body is checked the other way round, v_items on the
    # CPU and new tensors going by default to "meta", where one made without device= lands
    def device_problem(v_items, default):
        try:  # after a CPU call on the same lengths, as a GPU run's would be: nothing cached by them, device and all
            calrec_extras.recent_vectors(torch.randn(5, 3), [[0, 1, 2], [], [4]], 0.5)
            with torch.device(default):
                got = calrec_extras.recent_vectors(v_items, [[0, 1, 2], [], [4]], 0.5)
        except (RuntimeError, NotImplementedError) as e:
            if str(e).startswith("exercise "):  # a blank body
                raise
            return f"{type(e).__name__}: {str(e).splitlines()[0]}"
        if (got.device, tuple(got.shape)) != (v_items.device, (3, 3)):
            return f"expected (3, 3) on {v_items.device}, got {tuple(got.shape)} on {got.device}"
        return None
    problem = device_problem(torch.empty(5, 3, device="meta"), "cpu")
    where = "item vectors on the meta device"
    if problem is not None and "device" not in problem:  # the meta device cannot run it: not the body's fault
        problem, where = device_problem(torch.randn(5, 3), "meta"), "CPU item vectors, the default device 'meta'"
    assert problem is None, (f"recent_vectors of 3 histories over (5, 3) {where}: {problem} (every tensor must be made "
                             "on v_items' device: is one left on the CPU, or made without device=?)")
    # bfloat16 item vectors (a GPU run's): weighed in float32, rounded once at the end. Item 0, then item 1 sixty
    # times, decay 0.97: r_0 = 0.97 ** 60 / Σ_{a=0..60} 0.97 ** a = 0.00572; with decay rounded to bfloat16 (0.96875)
    # 0.00543, 5% less, and sums of 61 weights in bfloat16 are off by more than its rounding step (0.4%)
    w = [0.97 ** (60 - i) for i in range(61)]
    want = [w[0] / sum(w), sum(w[1:]) / sum(w)]
    got = calrec_extras.recent_vectors(torch.eye(2, dtype=torch.bfloat16), [[0] + [1] * 60], 0.97)
    assert got.dtype == torch.bfloat16 and got[0].float().tolist() == pytest.approx(want, rel=2 ** -8), (
        f"recent_vectors in bfloat16 of item 0, then item 1 sixty times, decay 0.97, over the item vectors [[1, 0], "
        f"[0, 1]]: expected {want} to bfloat16's precision (weights decay ** age in float32 at least, the result "
        f"rounded to bfloat16 once), got {got.dtype} {got.float().tolist()}")
    # float16 item vectors, the other half-precision dtype: weighed in float32 too. Item 0 1999 times, then item 1,
    # decay 0.999: the weights sum to about 864, where float16's step is 0.5, so a running sum in float16 stalls
    # (r_0 0.988 instead of 0.99884). Against float64 sums, to float16's precision
    w = [0.999 ** (1999 - i) for i in range(2000)]
    want = [math.fsum(w[:-1]) / math.fsum(w), w[-1] / math.fsum(w)]
    got = calrec_extras.recent_vectors(torch.eye(2, dtype=torch.float16), [[0] * 1999 + [1]], 0.999)
    assert got.dtype == torch.float16 and got[0].double().tolist() == pytest.approx(want, rel=2 ** -10), (
        f"recent_vectors in float16 of item 0 1999 times, then item 1, decay 0.999, over the item vectors [[1, 0], "
        f"[0, 1]]: expected {want} to float16's precision (weights decay ** age summed in float32 at least, the result "
        f"rounded to float16 once), got {got.dtype} {got.double().tolist()}")


def test_recent_weight_is_the_validation_argmax_and_follows_the_data():
    # four items on a circle; v_U points at item 1 for every user, whose last history item is item 3. When users
    # buy item 2 (next to item 3, far from item 1), the recent items must win; when they buy item 1 itself, they
    # must lose. The pair picked must be the best NDCG@10 of the grid, computed by hand.
    angles = torch.tensor([0.0, 0.5, 2.5, 2.8])
    v_t = torch.stack([angles.cos(), angles.sin()], dim=1)
    v_u = v_t[[1]].repeat(4, 1)
    log_counts = torch.log1p(torch.tensor([3.0, 1.0, 1.0, 3.0]))
    mus, decays, weights = (0.0, 0.5, 0.75), (0.5, 1.0), (0.0, 0.5)

    def ndcg10(examples, mu, gamma, w):
        ranks = naive_dense_ranks(v_u, v_t, examples, 0.05, w * log_counts, gamma or 1.0, mu)
        return sum(1 / math.log2(r + 1) if 0 < r <= 10 else 0.0 for r in ranks) / len(ranks)

    for target in (2, 1):
        examples = [([0, 3], target)] * 4  # item 0 first, item 3 last: gamma decides how much item 0 weighs
        best, ndcg = calrec_extras.choose_dense_weights(v_u, v_t, examples, 0.05, log_counts, mus, decays, weights)
        grid = [(0.0, None, w) for w in weights] + [(m, g, w) for m in mus[1:] for g in decays for w in weights]
        want = {c: ndcg10(examples, *c) for c in grid}
        assert list(ndcg) == grid and ndcg == pytest.approx(want)
        assert best == max(grid, key=lambda c: (want[c], -grid.index(c)))
        assert (best[0] > 0) == (target == 2)


def test_model_selection_scores_the_first_select_users_or_all_with_zero(small_world):
    _, _, texts, tok = small_world
    torch.manual_seed(0)
    builder = data.PromptBuilder(tok, texts, block_size=128, max_history=20, max_item_tokens=None)
    net = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)).eval()
    valid = [([0], 1), ([1, 2], 3), ([3], 0), ([2], 1), ([0, 3], 2), ([1, 0, 2], 3), ([3, 1], 2)]
    bought = [[2, 2, 2, 2, 1], [3, 1, 2]]                         # training interactions: n = (0, 2, 5, 1)
    domain = data.Domain("tea", [{}] * 4, list("abcd"), [], valid, valid, train_sequences=bought)
    v_u, v_t = calrec.dense_vectors(net, builder, valid, range(4), "cpu")
    prior = torch.log1p(torch.tensor([0.0, 2, 5, 1]))

    def per_user(mu, gamma, lam):  # NDCG@10 of each user, by hand from the naive loop's ranks
        return [1 / math.log2(r + 1) if 0 < r <= 10 else 0.0 for r in
                naive_dense_ranks(v_u, v_t, valid, 0.05, lam * prior, gamma or 1.0, mu)]

    def validate(select_users, cosine_alone):  # calrec.validate on what it reads
        cfg = dataclasses.replace(calrec.BUILT_IN, select_users=select_users, tau=0.05)
        if cosine_alone:
            cfg = dataclasses.replace(cfg, recent_weights=(0.0,), prior_weights=(0.0,))
        exp = SimpleNamespace(domain=domain, lm=net, builder=builder, catalog=range(4), device="cpu", cfg=cfg)
        return calrec.validate(exp)

    cosine = per_user(0.0, None, 0.0)                              # v_U alone
    assert validate(2, True) == pytest.approx(sum(cosine[:2]) / 2)
    assert validate(0, True) == pytest.approx(sum(cosine) / 7) == validate(7, True)
    assert len(set(cosine)) > 1  # the users differ, so the count of users scored shows in the mean
    # the dense path as reported: the best mean NDCG@10 over the whole grid of (mu, gamma, lambda), by hand
    c = calrec.BUILT_IN
    grid = [(0.0, None, w) for w in c.prior_weights] + [(m, g, w) for m in c.recent_weights[1:]
                                                        for g in c.recent_decays for w in c.prior_weights]
    for users in (3, 7):
        scores = [sum(per_user(*g)[:users]) / users for g in grid]
        assert validate(users, False) == pytest.approx(max(scores))
    assert max(scores) > sum(cosine) / 7  # the grid finds better weights than the cosine alone here


def test_sasrec_batch_and_loss_by_hand():
    idx, targets = ev.sasrec_inputs([[4, 5, 6, 7], [8, 9], [1, 2, 3, 4, 5, 6]], L=3, pad=0)
    assert idx.tolist() == [[4, 5, 6], [8, 0, 0], [3, 4, 5]]           # the last L + 1 items, inputs then targets
    assert targets.tolist() == [[5, 6, 7], [9, -100, -100], [4, 5, 6]]
    torch.manual_seed(0)
    net = gpt.GPT(gpt.GPTConfig(block_size=3, vocab_size=10, n_layer=1, n_head=2, n_embd=8)).eval()
    with torch.no_grad():  # each real position alone: the sequence up to it, its next item's log-probability
        want = -sum(F.log_softmax(net(idx[b:b + 1, :t + 1])[0][0, -1], -1)[targets[b, t]].item()
                    for b in range(3) for t in range(3) if targets[b, t] != -100) / 7
        assert ev.sasrec_loss(net, idx, targets).item() == pytest.approx(want, rel=1e-5)


# -----------------------------------------------------------------------------
# the whole run on a tiny benchmark folder: table and results.json in the issue's format


def write_atomic(folder, name, n_users=12, n_items=8):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write("item_id:token\ttitle:token_seq\tbrand:token\n")
        for i in range(n_items):
            f.write(f"{i}\t{name} gadget number {i}\tBrand{i % 3}\n")
    seqs = [[(u + j) % n_items for j in range(5)] for u in range(n_users)]
    for split, cut in (("train", 3), ("valid", 4), ("test", 5)):
        with open(os.path.join(folder, f"{name}.{split}.inter"), "w") as f:
            f.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
            for u, s in enumerate(seqs):
                ends = range(cut - 1, 0, -1) if split == "train" else [cut - 1]
                for e in ends:
                    f.write(f"{u}\t{' '.join(map(str, s[:e]))}\t{s[e]}\n")


def test_stage_2_alone_needs_training_rows_of_the_target_only(tmp_path):
    import train
    tri = tmp_path / "Tri"  # every user bought 3 items: no training row, which stage 1 would need, stage 2 does not
    write_atomic(str(tri), "Tri")
    for split in ("train", "valid", "test"):
        with open(tri / f"Tri.{split}.inter", "w") as f:
            f.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
            f.writelines(f"{u}\t{' '.join(map(str, range(u % 4, u % 4 + cut)))}\t{u % 4 + cut}\n"
                         for u in range(6) for cut in {"train": (), "valid": (1,), "test": (2,)}[split])
    write_atomic(str(tmp_path / "Alpha"), "Alpha")
    argv = ["--task", "calrec", "--data", str(tri), str(tmp_path / "Alpha"), "--set", "stage1_steps=2", "--set",
            "stage2_steps=2", "--set", "baselines=false", "--eval-interval", "2", "--beams", "2", "--set",
            "constrained_beams=2"]
    out = train.main(argv + ["--stages", "2", "--out-dir", str(tmp_path / "o")])
    assert out["config"]["stages"] == "2"
    with pytest.raises(SystemExit):  # stage 1 trains on Tri too: refused
        train.main(argv + ["--stages", "both", "--out-dir", str(tmp_path / "o1")])


def test_run_writes_the_table_and_results_json(tmp_path, capsys):
    import train
    a, b = str(tmp_path / "Alpha"), str(tmp_path / "Beta")
    write_atomic(a, "Alpha")
    write_atomic(b, "Beta")
    out = tmp_path / "out"
    train.main(["--task", "calrec", "--data", a, b, "--set", "stage1_steps=3", "--set", "stage2_steps=3",
                "--eval-interval", "2", "--set", "sasrec_steps=3", "--beams", "2", "--set", "constrained_beams=3",
                "--out-dir", str(out)])
    res = json.loads((out / "results.json").read_text())
    methods = {"calrec_generative", "calrec_constrained", "calrec_dense", "calrec_dense_cos", "sasrec", "popular",
               "last_item_bm25", "markov"}
    metrics = {"recall@1", "recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "ndcg@10_se"}
    for split in ("valid", "test"):
        assert set(res[split]) == methods
        for m in methods:
            assert set(res[split][m]) == metrics
            assert all(0.0 <= v <= 1.0 for v in res[split][m].values())
    assert res["config"]["target"] == "Beta" and res["wall_s"] > 0 and res["resumed"] == 0
    check = res["generator_check"]  # every one of Beta's 12 validation users (fewer than bm25_valid_users)
    assert check["users"] == 12 and 0.0 <= check["popular_beats_next"] <= 1.0
    assert all(check[k] < 0 for k in ("next_item", "last_item", "most_popular"))  # log-probabilities of texts
    w = res["config"]["dense_weights"]
    c = calrec.REAL_DATA
    assert w["lam"] in c.prior_weights and w["mu"] in c.recent_weights and w["gamma"] in (None,) + c.recent_decays
    assert res["environment"]["torch"] == torch.__version__
    text = capsys.readouterr().out
    assert "CALRec generative+BM25" in text and "most popular" in text and "first-order Markov" in text
    # 'Title: Beta gadget number 7, Brand: Brand1' is far shorter than the real-data cap of 32 tokens
    assert "item texts longer than max_item_tokens=32, shortened: Alpha 0.0%, Beta 0.0%" in text
