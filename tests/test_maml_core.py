"""Oracles for maml.py's functional core: closed forms, a hand check, finite differences, a plain loop."""

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

import maml
from oracles import leaves_inputs_alone


# ---------------------------------------------------------------------------- helpers


def lsq_loss(params, batch):
    """L(θ) = (1/n) ||Xθ - y||²."""
    r = batch["X"] @ params["theta"] - batch["y"]
    return (r ** 2).mean()


def tanh_mlp_loss(params, batch):
    h = torch.tanh(batch["x"] @ params["w1"] + params["b1"])
    return ((h @ params["w2"] - batch["y"]) ** 2).mean()


def tanh_mlp_tasks(n_tasks, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {"w1": torch.randn(3, 5, generator=g, dtype=dtype), "b1": torch.randn(5, generator=g, dtype=dtype),
              "w2": torch.randn(5, 1, generator=g, dtype=dtype)}
    support = [{"x": torch.randn(n_tasks, 6, 3, generator=g, dtype=dtype),
                "y": torch.randn(n_tasks, 6, 1, generator=g, dtype=dtype)} for _ in range(2)]
    query = {"x": torch.randn(n_tasks, 7, 3, generator=g, dtype=dtype),
             "y": torch.randn(n_tasks, 7, 1, generator=g, dtype=dtype)}
    return params, support, query


def meta_grad(fn, params, *args):
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = fn(leaves, *args)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in leaves.items()}


def show(t, n=6):
    """A tensor's first few values, rounded, for a failure message."""
    values = torch.as_tensor(t).detach().flatten().tolist()
    return "[" + ", ".join(f"{v:.6g}" for v in values[:n]) + (", ...]" if len(values) > n else "]")


def assert_close(got, want, what, rtol=1e-12, atol=1e-12):
    """torch.testing.assert_close with a message in the exercise's terms: what was computed, expected and got."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}\n  expected {show(want)}\n  got      {show(got)}\n{m}")


def dropout_mlp_loss(params, batch):
    """A tanh MLP with dropout on its hidden layer: every call draws a mask."""
    h = F.dropout(torch.tanh(batch["x"] @ params["w1"]), p=0.5, training=True)
    return ((h @ params["w2"] - batch["y"]) ** 2).mean()


def dropout_mlp_copies(n_tasks):
    """θ of dropout_mlp_loss, and a batch holding n_tasks copies of one and the same task (float64)."""
    g = torch.Generator().manual_seed(0)
    params = {"w1": torch.randn(3, 8, generator=g, dtype=torch.float64),
              "w2": torch.randn(8, 1, generator=g, dtype=torch.float64)}
    task = {"x": torch.randn(6, 3, generator=g, dtype=torch.float64),
            "y": torch.randn(6, 1, generator=g, dtype=torch.float64)}
    return params, {k: v.expand(n_tasks, *v.shape).clone() for k, v in task.items()}


def assert_same_from_one_seed(name, run):
    """run() twice from torch.manual_seed(0): the same result, and the same torch.rand draw after it."""
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append((run(), torch.rand(1).item()))
    assert all(a == b if not isinstance(a, dict) else all(torch.equal(a[k], b[k]) for k in a)
               for a, b in zip(*runs)), (
        f"{name} with dropout in the loss, twice from torch.manual_seed(0): other results or another draw after it "
        f"(torch.rand(1): {runs[0][1]:.9f}, then {runs[1][1]:.9f}): the same seed must give the same run; no seed "
        "taken inside (torch.seed(), the clock)")


def quadratic_loss(params, batch):
    """L(θ) = c·θ²: one gradient step at inner_lr α multiplies θ by (1 − 2αc), so every θ^(k) is by hand."""
    return batch["c"] * params["theta"] ** 2


def counted(loss_fn, calls):
    """loss_fn, each run of its Python body appended to `calls`. One run per inner step (and one per query) is all
    the method needs; a run more (a loss logged on the side) draws another dropout mask, so the same seed gives
    other numbers, and costs a forward pass."""
    def run(params, batch):
        calls.append(1)
        return loss_fn(params, batch)
    return run


def scalar(value):
    return torch.tensor(value, dtype=torch.float64)


def least_squares(steps, alpha=0.05):
    """A least-squares task and its oracle in numpy: θ^(k) after k steps on the same support set, the MAML
    gradient (I − αH_s)^k ∇L_Q(θ^(k)) and the first-order one ∇L_Q(θ^(k))."""
    rng = np.random.default_rng(0)
    d, n_s, n_q = 4, 8, 9
    Xs, ys = rng.normal(size=(n_s, d)), rng.normal(size=n_s)
    Xq, yq = rng.normal(size=(n_q, d)), rng.normal(size=n_q)
    theta = rng.normal(size=d)
    Hs = 2.0 / n_s * Xs.T @ Xs
    th = theta.copy()
    for _ in range(steps):
        th = th - alpha * (2.0 / n_s * Xs.T @ (Xs @ th - ys))
    grad_q = 2.0 / n_q * Xq.T @ (Xq @ th - yq)
    return dict(Xs=Xs, ys=ys, Xq=Xq, yq=yq, theta=theta, alpha=alpha, theta_k=th,
                maml=np.linalg.matrix_power(np.eye(d) - alpha * Hs, steps) @ grad_q, fomaml=grad_q)


# ---------------------------------------------------------------------------- the inner loop alone: adapt


def test_adapt_by_hand():
    # L = c·θ², inner_lr 0.1, θ = 1: each step multiplies θ by (1 − 0.2c); a list of batches is cycled
    one, half, two = ({"c": scalar(c)} for c in (1.0, 0.5, 2.0))
    cases = [  # (batches, steps, expected θ^(k), how)
        (one, 0, 1.0, "no step: θ^(0) = θ"),
        (one, 1, 0.8, "θ' = θ − 0.1·2θ = 0.8"),
        (one, 3, 0.512, "one batch (a dict) is used at every step: 0.8³"),
        ([one, half], 3, 0.576, "a list is cycled, c = 1, 0.5, 1: 0.8·0.9·0.8"),
        ([half, one, two], 2, 0.72, "steps < len(list): the first two batches, c = 0.5, 1: 0.9·0.8"),
        ([half, two], 4, 0.2916, "c = 0.5, 2, 0.5, 2: (0.9·0.6)²"),
        # cycled however long: past twice the list (a list walked twice, then its first or last batch, is wrong)
        ([one, two], 6, (0.8 * 0.6) ** 3, "c = 1, 2, 1, 2, 1, 2: (0.8·0.6)³"),
        ([half, one, two], 10, (0.9 * 0.8 * 0.6) ** 3 * 0.9, "c = 0.5, 1, 2 three times, then 0.5: (0.9·0.8·0.6)³·0.9"),
        ([one, half, two, half, two], 5, 0.8 * 0.9 * 0.6 * 0.9 * 0.6, "5 batches, each once: 0.8·0.9·0.6·0.9·0.6"),
        (one, 101, 0.8 ** 101, "101 steps, however many: 0.8¹⁰¹"),
    ]
    wrong = []
    for batches, steps, expected, how in cases:
        got = maml.adapt({"theta": scalar(1.0)}, quadratic_loss, batches, inner_lr=0.1, steps=steps)["theta"].item()
        if got != pytest.approx(expected, abs=1e-12):
            cs = [b["c"].item() for b in batches] if isinstance(batches, list) else batches["c"].item()
            wrong.append(f"  c = {cs}, steps = {steps}: expected θ^(k) = {expected} ({how}), got {got:.6g}")
    assert not wrong, "adapt on L = c·θ² from θ = 1, inner_lr 0.1:\n" + "\n".join(wrong)
    calls = []
    maml.adapt({"theta": scalar(1.0)}, counted(quadratic_loss, calls), [one, half], inner_lr=0.1, steps=3)
    assert len(calls) == 3, f"adapt, 3 steps: loss_fn ran {len(calls)} times, want 3 (one per step; see counted)"
    # one batch that is no dict (a tensor of weights c): still one batch, used at every step, not a list of its rows
    got = maml.adapt({"theta": scalar(1.0)}, lambda p, c: (c * p["theta"] ** 2).sum(),
                     torch.tensor([1.0, 2.0], dtype=torch.float64), inner_lr=0.1, steps=2)["theta"].item()
    assert got == pytest.approx(0.16, abs=1e-12), (
        f"adapt on L = (c1 + c2)·θ², one batch c = tensor([1., 2.]), 2 steps of 0.1 from θ = 1: expected 0.4² = 0.16 "
        f"(a batch that is a tensor is one batch), got {got:.6g}")


def test_adapt_second_order_keeps_the_inner_gradients_and_first_order_drops_them():
    # θ^(k) = Π_j (1 − 2αc_j)·θ, so dθ^(k)/dθ = 0.8·0.9·0.8 = 0.576 through the inner gradients (second order);
    # with each inner gradient a constant, θ^(k) = θ − const and dθ^(k)/dθ = 1 (first order)
    batches = [{"c": scalar(1.0)}, {"c": scalar(0.5)}]
    for first_order, expected in ((False, 0.576), (True, 1.0)):
        theta = scalar(1.0).requires_grad_()
        fast = maml.adapt({"theta": theta}, quadratic_loss, batches, 0.1, 3, first_order=first_order)["theta"]
        assert fast.requires_grad, (f"adapt(first_order={first_order}) returned a θ^(k) with no path back to θ: "
                                    "θ^(k) must still depend on θ through θ^(0)")
        (slope,) = torch.autograd.grad(fast, theta)
        assert slope.item() == pytest.approx(expected, abs=1e-12), (
            f"dθ^(k)/dθ of adapt(first_order={first_order}) on L = c·θ², c = 1, 0.5, 1, inner_lr 0.1: expected "
            f"{expected} ({'inner gradients constant: 1' if first_order else '0.8·0.9·0.8, through the gradients'})"
            f", got {slope.item():.6g}")


def test_adapt_equals_a_loop_on_a_tanh_mlp():
    params, support, _ = tanh_mlp_tasks(1)
    batches = [{"x": b["x"][0], "y": b["y"][0]} for b in support]  # two batches, cycled over three steps
    alpha, steps = 0.3, 3
    expected = {k: v.clone() for k, v in params.items()}  # the oracle: .backward() and a step, by hand
    for j in range(steps):
        leaves = {k: v.clone().requires_grad_() for k, v in expected.items()}
        tanh_mlp_loss(leaves, batches[j % len(batches)]).backward()
        expected = {k: (v - alpha * v.grad).detach() for k, v in leaves.items()}
    fast = maml.adapt(params, tanh_mlp_loss, batches, alpha, steps)
    assert set(fast) == set(params), f"adapt returned the names {sorted(fast)}, expected those of θ, {sorted(params)}"
    for k in params:
        assert_close(fast[k].detach(), expected[k], f"adapt on a tanh MLP, parameter {k}, 3 steps on 2 batches cycled",
                     rtol=1e-10)


def test_adapt_leaves_its_inputs_alone():
    # θ is the caller's: the meta-gradient is taken at θ after every task's inner loop, so adapt builds new dicts
    # and never writes into the dict (nor the tensors) it was given
    params, support, _ = tanh_mlp_tasks(1)
    batches = [{"x": b["x"][0], "y": b["y"][0]} for b in support]
    for first_order in (False, True):
        leaves_inputs_alone(maml.adapt, params, tanh_mlp_loss, batches, 0.3, 3, first_order=first_order)
        leaves_inputs_alone(maml.adapt, params, tanh_mlp_loss, batches[0], 0.3, 1, first_order=first_order)
    # the caller's random stream too: two calls in a row under dropout, from one seed, draw new masks from it (the
    # same θ^(k) twice means a seed set inside, which also resets the stream for everyone after adapt)
    params, two = dropout_mlp_copies(1)
    task = {k: v[0] for k, v in two.items()}
    torch.manual_seed(0)
    first, second = (maml.adapt(params, dropout_mlp_loss, task, 0.1, 2) for _ in range(2))
    assert any(not torch.equal(first[k], second[k]) for k in params), (
        "adapt with dropout in the loss, twice in a row from one torch.manual_seed: the same θ^(k) both times, the "
        "same dropout masks: each call must draw new masks from the caller's random stream (no seed set inside)")


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_adapt_least_squares_closed_form(steps):
    # steps = 0: θ^(0) = θ, and the meta-gradient is the plain gradient ∇L_Q(θ): θ itself comes back, with its path
    o = least_squares(steps)
    support, query = {"X": torch.tensor(o["Xs"]), "y": torch.tensor(o["ys"])}, {"X": torch.tensor(o["Xq"]),
                                                                                "y": torch.tensor(o["yq"])}
    for first_order in (False, True):
        theta = torch.tensor(o["theta"]).requires_grad_()
        fast = maml.adapt({"theta": theta}, lsq_loss, support, o["alpha"], steps, first_order=first_order)
        np.testing.assert_allclose(fast["theta"].detach().numpy(), o["theta_k"], rtol=1e-10, atol=1e-12,
                                   err_msg=f"θ^(k) of adapt on least squares, {steps} steps")
        assert fast["theta"].requires_grad, f"adapt(first_order={first_order}): θ^(k) has no path back to θ"
        (g,) = torch.autograd.grad(lsq_loss(fast, query), theta)  # the MAML gradient, written out by hand here
        which = "fomaml" if first_order else "maml"
        np.testing.assert_allclose(g.numpy(), o[which], rtol=1e-10, atol=1e-12, err_msg=(
            f"d L_Q(adapt(θ, first_order={first_order})) / dθ, {steps} steps: expected the "
            + ("first-order gradient ∇L_Q(θ^(k))" if first_order else "MAML gradient (I − αH_s)^k ∇L_Q(θ^(k))")))


def scaled_tanh_mlp_loss(scale):
    """A new loss function, scale·tanh_mlp_loss, made afresh for each call (as each run or model makes its own)."""
    def loss_fn(params, batch):
        return scale * tanh_mlp_loss(params, batch)
    return loss_fn


def task_of(batches, i):
    """Task i of a batch dict, or of a list or tuple of them (the same container)."""
    if isinstance(batches, dict):
        return {k: v[i] for k, v in batches.items()}
    return type(batches)(task_of(b, i) for b in batches)


def adapt_by_loop(params, loss_fn, batches, alpha, steps):
    """Written here: `steps` SGD steps with .backward(), batches[j % len] at step j (one batch: that batch)."""
    batches = list(batches) if isinstance(batches, (list, tuple)) else [batches]
    p = {k: v.detach().clone() for k, v in params.items()}
    for j in range(steps):
        leaves = {k: v.requires_grad_() for k, v in p.items()}
        loss_fn(leaves, batches[j % len(batches)]).backward()
        p = {k: (v - alpha * v.grad).detach() for k, v in leaves.items()}
    return p


def test_adapt_over_a_family_under_vmap_equals_a_loop_per_task():
    # a generated family, as the project calls adapt: under torch.func.vmap over the tasks (meta_loss_vmap,
    # reptile_direction) and alone; one batch (a dict), a list or a tuple of batches, cycled; 0 to 3 steps; no
    # support at all ([]) with 0 steps (the multi-task baseline); first and second order; a new loss function each
    # time (nothing kept between calls); the default device set to "meta" while the tensors stay on the CPU
    params, support, _ = tanh_mlp_tasks(3)
    alpha, wrong = 0.3, []
    forms = {"a dict": lambda s: s[0], "a list": list, "a tuple": tuple}
    cases = [(steps, form, (steps + n) % 2 == 1, n == steps % 3)
             for steps in (0, 1, 3) for n, form in enumerate(forms)]
    for case, (steps, form, first_order, meta_default) in enumerate(cases):
        scale = 1.0 + 0.25 * case
        loss_fn, batches = scaled_tanh_mlp_loss(scale), forms[form](support)
        what = (f"adapt(θ, {scale}·tanh MLP loss, {form} of batches, inner_lr {alpha}, {steps} steps, "
                f"first_order={first_order}){' with the default device meta' * meta_default}")

        def run(b):
            return maml.adapt(params, loss_fn, b, alpha, steps, first_order)
        try:
            with torch.device("meta") if meta_default else torch.device("cpu"):
                batched = vmap(run, randomness="different")(batches)
                alone = run(task_of(batches, 0))
        except Exception as e:
            wrong.append(f"  {what}: raised {type(e).__name__}: {str(e)[:120]}")
            continue
        for i in range(3):
            expected = adapt_by_loop(params, loss_fn, task_of(batches, i), alpha, steps)
            for k in params:
                for how, got in (("under vmap", batched[k][i]),) + ((("alone", alone[k]),) if i == 0 else ()):
                    if got.shape != params[k].shape or not torch.allclose(got.detach(), expected[k], rtol=1e-10,
                                                                         atol=1e-12):
                        wrong.append(f"  {what}, {how}, task {i}, {k}: expected {show(expected[k])}, got {show(got)}")
    try:
        got = maml.adapt(params, scaled_tanh_mlp_loss(2.0), [], alpha, 0)
        if set(got) != set(params) or not all(torch.equal(got[k], params[k]) for k in params):
            wrong.append(f"  adapt(θ, loss, [], inner_lr, 0 steps): expected θ itself, got {got}")
    except Exception as e:
        wrong.append(f"  adapt(θ, loss, [] (no support batch), inner_lr, 0 steps): expected θ, raised "
                     f"{type(e).__name__}: {e}")
    assert not wrong, "adapt over a family of calls:\n" + "\n".join(wrong[:10])


# ---------------------------------------------------------------------------- closed forms of the meta-gradient


def test_one_dimensional_hand_check():
    # L_S = θ², L_Q = θ²/2, α = 0.1, θ = 1: θ' = 0.8; MAML gradient θ'(1 - 2α) = 0.64; FOMAML θ' = 0.8
    def loss_fn(params, batch):
        return batch["c"] * params["theta"] ** 2
    theta = {"theta": torch.tensor(1.0, dtype=torch.float64)}
    support = {"c": torch.tensor(1.0, dtype=torch.float64)}
    query = {"c": torch.tensor(0.5, dtype=torch.float64)}
    adapted = maml.adapt(theta, loss_fn, support, inner_lr=0.1, steps=1)
    assert adapted["theta"].item() == pytest.approx(0.8), (
        f"θ' = θ − 0.1·2θ = 0.8, adapt gave {adapted['theta'].item()}")
    batched = lambda b: {k: v[None] for k, v in b.items()}  # one task  # noqa: E731
    for first_order, expected in ((False, 0.64), (True, 0.8)):
        for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
            _, g = meta_grad(fn, theta, loss_fn, [batched(support)], batched(query), 0.1, 1, first_order)
            assert g["theta"].item() == pytest.approx(expected, abs=1e-12), (
                f"{fn.__name__}(first_order={first_order}) on L_S = θ², L_Q = θ²/2, inner_lr 0.1, θ = 1: expected the "
                f"meta-gradient {expected} ({'θ′' if first_order else 'θ′·(1 − 2·0.1)'}), got {g['theta'].item():.6g}")


def test_two_tasks_two_steps_by_hand():
    # L = c·θ², inner_lr 0.1, θ = 1, two steps on the support batches in turn, then the query:
    #   task 0: support c = 1, 0.5 -> θ_0^(2) = 0.8·0.9 = 0.72; query c = 0.5: L_Q = 0.5·0.72² = 0.2592
    #   task 1: support c = 2, 1   -> θ_1^(2) = 0.6·0.8 = 0.48; query c = 1:   L_Q = 0.48²       = 0.2304
    # dL_Q/dθ = 2c_q·θ^(2) · dθ^(2)/dθ, with dθ^(2)/dθ = θ^(2) (second order) or 1 (first order)
    #   MAML:   (2·0.5·0.72·0.72 + 2·0.48·0.48) / 2 = (0.5184 + 0.4608) / 2 = 0.4896
    #   FOMAML: (2·0.5·0.72      + 2·0.48)      / 2 = (0.72   + 0.96)   / 2 = 0.84
    per_task = lambda *c: {"c": torch.tensor(c, dtype=torch.float64)}  # one value per task  # noqa: E731
    support, query = [per_task(1.0, 2.0), per_task(0.5, 1.0)], per_task(0.5, 1.0)
    calls = []
    theta = {"theta": scalar(1.0).requires_grad_()}
    maml.meta_loss_loop(theta, counted(quadratic_loss, calls), support, query, 0.1, 2)
    assert len(calls) == 6, (f"meta_loss_loop, 2 tasks, 2 inner steps: loss_fn ran {len(calls)} times, want 2 · (2 "
                             "+ 1) = 6 (one per inner step and one for the query, per task; see counted)")
    for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
        for first_order, expected in ((False, 0.4896), (True, 0.84)):
            loss, g = meta_grad(fn, {"theta": scalar(1.0)}, quadratic_loss, support, query, 0.1, 2, first_order)
            what = (f"{fn.__name__}(first_order={first_order}) on two tasks, L = c·θ², support c = (1, 0.5) and "
                    "(2, 1), query c = 0.5 and 1, inner_lr 0.1, 2 steps, θ = 1")
            assert loss.item() == pytest.approx(0.2448, abs=1e-12), (
                f"{what}: expected the mean query loss (0.2592 + 0.2304) / 2 = 0.2448, got {loss.item():.6g}")
            assert g["theta"].item() == pytest.approx(expected, abs=1e-12), (
                f"{what}: expected the meta-gradient {expected}, the mean of the tasks' "
                f"{'first-order' if first_order else 'second-order'} gradients, got {g['theta'].item():.6g}")
    # 6 steps on a support of 2 batches: each task's batches cycled all the way (past twice the list), by hand
    #   task 0: c = 1, 2, 1, 2, 1, 2     -> θ_0^(6) = (0.8·0.6)³ = 0.110592; query c = 0.5
    #   task 1: c = 0.5, 1, 0.5, 1, ...  -> θ_1^(6) = (0.9·0.8)³ = 0.373248; query c = 1
    #   loss (0.5·θ_0² + θ_1²) / 2; MAML (2·0.5·θ_0·θ_0 + 2·θ_1·θ_1) / 2; FOMAML (2·0.5·θ_0 + 2·θ_1) / 2
    t0, t1 = (0.8 * 0.6) ** 3, (0.9 * 0.8) ** 3
    support = [per_task(1.0, 0.5), per_task(2.0, 1.0)]
    for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
        for first_order, expected in ((False, (t0 * t0 + 2 * t1 * t1) / 2), (True, (t0 + 2 * t1) / 2)):
            loss, g = meta_grad(fn, {"theta": scalar(1.0)}, quadratic_loss, support, query, 0.1, 6, first_order)
            what = (f"{fn.__name__}(first_order={first_order}) on two tasks, L = c·θ², support c = (1, 0.5) and "
                    "(2, 1) cycled over 6 steps, query c = 0.5 and 1, inner_lr 0.1, θ = 1")
            want = (0.5 * t0 ** 2 + t1 ** 2) / 2
            assert loss.item() == pytest.approx(want, abs=1e-12), (
                f"{what}: expected the mean query loss (0.5·0.110592² + 0.373248²) / 2 = {want:.9g} (the support "
                f"cycled past twice its length), got {loss.item():.9g}")
            assert g["theta"].item() == pytest.approx(expected, abs=1e-12), (
                f"{what}: expected the meta-gradient {expected:.9g}, got {g['theta'].item():.9g}")


@pytest.mark.parametrize("steps", [1, 3])
def test_least_squares_closed_form(steps):
    o = least_squares(steps)
    maml_oracle, fomaml_oracle = o["maml"], o["fomaml"]
    t = lambda a: torch.tensor(a, dtype=torch.float64)[None]  # add the task dimension  # noqa: E731
    support, query = [{"X": t(o["Xs"]), "y": t(o["ys"])}], {"X": t(o["Xq"]), "y": t(o["yq"])}
    params = {"theta": torch.tensor(o["theta"])}
    for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
        _, g2 = meta_grad(fn, params, lsq_loss, support, query, o["alpha"], steps, False)
        _, g1 = meta_grad(fn, params, lsq_loss, support, query, o["alpha"], steps, True)
        np.testing.assert_allclose(g2["theta"].numpy(), maml_oracle, rtol=1e-10, atol=1e-12, err_msg=(
            f"{fn.__name__}(first_order=False), {steps} steps: the MAML gradient (I − αH_s)^k ∇L_Q(θ^(k))"))
        np.testing.assert_allclose(g1["theta"].numpy(), fomaml_oracle, rtol=1e-10, atol=1e-12, err_msg=(
            f"{fn.__name__}(first_order=True), {steps} steps: the first-order gradient ∇L_Q(θ^(k))"))
        # second order differs from first order exactly by the (I - αH)^k factor
        gap = np.abs(g2["theta"].numpy() - g1["theta"].numpy()).max()
        assert gap > 1e-3, f"{fn.__name__}: first and second order gave the same gradient (max difference {gap:.3g})"


def test_maml_equals_fomaml_when_inner_lr_is_zero():
    params, support, query = tanh_mlp_tasks(3)
    _, g2 = meta_grad(maml.meta_loss_vmap, params, tanh_mlp_loss, support, query, 0.0, 2, False)
    _, g1 = meta_grad(maml.meta_loss_vmap, params, tanh_mlp_loss, support, query, 0.0, 2, True)
    for k in params:
        assert_close(g2[k], g1[k], f"meta_loss_vmap with inner_lr 0: MAML's and FOMAML's gradients of {k} must agree")


# ---------------------------------------------------------------------------- vmap vs a plain loop


def reference_loop(params, support, query, alpha, steps, first_order):
    """Written here independently of maml.py: per task, autograd.grad(create_graph=True) inner steps."""
    losses = []
    for i in range(query["x"].shape[0]):
        fast = dict(params)
        for j in range(steps):
            b = support[j % len(support)]
            loss = tanh_mlp_loss(fast, {"x": b["x"][i], "y": b["y"][i]})
            names = list(fast)
            gs = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
            fast = {n: fast[n] - alpha * g for n, g in zip(names, gs)}
        losses.append(tanh_mlp_loss(fast, {"x": query["x"][i], "y": query["y"][i]}))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_loop_float64(first_order):
    params, support, query = tanh_mlp_tasks(5)
    l_ref, g_ref = meta_grad(reference_loop, params, support, query, 0.3, 3, first_order)
    for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
        l, g = meta_grad(fn, params, tanh_mlp_loss, support, query, 0.3, 3, first_order)
        what = f"{fn.__name__}(first_order={first_order}), 5 tasks, 3 steps on 2 support batches cycled"
        assert_close(l, l_ref, f"{what}: the mean over the tasks of each one's query loss at its own θ_i^(k)")
        for k in params:
            assert_close(g[k], g_ref[k], f"{what}: the meta-gradient of {k}", rtol=1e-10)


def meta_loss_by_loop(params, loss_fn, support, query, alpha, steps, first_order):
    """Written here, by recursion on k: θ_i^(k) = θ_i^(k-1) - α ∇L(θ_i^(k-1); support batch k-1, cycled), the
    gradient left in the graph for second order; then the query loss of each task i at θ_i^(k), averaged."""
    def theta(i, k):
        if k == 0:
            return params
        before, names = theta(i, k - 1), sorted(params)
        inner = loss_fn(before, task_of(support[(k - 1) % len(support)], i))
        grads = torch.autograd.grad(inner, [before[n] for n in names], create_graph=not first_order)
        return dict(zip(names, (before[n] - alpha * g for n, g in zip(names, grads))))
    n_tasks = len(next(iter(query.values())))
    return sum(loss_fn(theta(i, steps), task_of(query, i)) for i in range(n_tasks)) / n_tasks


def test_meta_loss_over_a_family_equals_a_loop():
    # a generated family: 1 or 3 tasks; no inner step and no support batch at all (support [], MAML with k = 0: the
    # multi-task baseline of meta_train), one batch in a list, two in a tuple cycled over 3 steps; first and second
    # order; a new loss function each time; the default device "meta" while the tensors stay on the CPU
    wrong = []
    cases = [(3, [], 0, False, False), (1, [], 0, True, True), (3, [0], 1, False, True), (1, (0, 1), 3, True, False),
             (3, (0, 1), 3, False, False)]
    for case, (n_tasks, which, steps, first_order, meta_default) in enumerate(cases):
        params, support, query = tanh_mlp_tasks(n_tasks, seed=case)
        support = type(which)(support[j] for j in which)
        loss_fn = scaled_tanh_mlp_loss(1.0 + 0.5 * case)
        l_ref, g_ref = meta_grad(meta_loss_by_loop, params, loss_fn, support, query, 0.3, steps, first_order)
        for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
            what = (f"{fn.__name__}, {n_tasks} task{'s' * (n_tasks > 1)}, support {type(which).__name__} of "
                    f"{len(support)} batch{'es' * (len(support) != 1)}, {steps} steps, first_order={first_order}"
                    f"{', default device meta' * meta_default}")
            try:
                with torch.device("meta") if meta_default else torch.device("cpu"):
                    l, g = meta_grad(fn, params, loss_fn, support, query, 0.3, steps, first_order)
            except Exception as e:
                wrong.append(f"  {what}: raised {type(e).__name__}: {str(e)[:120]}")
                continue
            if l.shape != () or not torch.allclose(l, l_ref, rtol=1e-10, atol=1e-12):
                wrong.append(f"  {what}: expected the mean query loss {show(l_ref)}, got {show(l)}")
            for k in params:
                if not torch.allclose(g[k], g_ref[k], rtol=1e-10, atol=1e-12):
                    wrong.append(f"  {what}: the meta-gradient of {k}: expected {show(g_ref[k])}, got {show(g[k])}")
    # a loss over a class dimension (softmax regression: cross-entropy of x @ W against labels y): loss_fn gets each
    # task's own batch, x (4, 3) and y (4,), with no leading task dimension of 1 (which the losses above broadcast)
    def softmax_regression_loss(params, batch):
        return F.cross_entropy(batch["x"] @ params["W"], batch["y"])
    gen = torch.Generator().manual_seed(0)
    params = {"W": torch.randn(3, 2, dtype=torch.float64, generator=gen)}
    support = [{"x": torch.randn(2, 4, 3, dtype=torch.float64, generator=gen),
                "y": torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])}]
    query = {"x": torch.randn(2, 4, 3, dtype=torch.float64, generator=gen),
             "y": torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]])}
    for first_order in (False, True):
        l_ref, g_ref = meta_grad(meta_loss_by_loop, params, softmax_regression_loss, support, query, 0.5, 2,
                                 first_order)
        for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
            what = f"{fn.__name__}, softmax regression (x (2, 4, 3), y (2, 4)), 2 steps, first_order={first_order}"
            try:
                l, g = meta_grad(fn, params, softmax_regression_loss, support, query, 0.5, 2, first_order)
            except Exception as e:
                wrong.append(f"  {what}: raised {type(e).__name__}: {str(e)[:120]}")
                continue
            if l.shape != () or not torch.allclose(l, l_ref, rtol=1e-10, atol=1e-12):
                wrong.append(f"  {what}: expected the mean query loss {show(l_ref)}, got {show(l)}")
            if not torch.allclose(g["W"], g_ref["W"], rtol=1e-10, atol=1e-12):
                wrong.append(f"  {what}: the meta-gradient of W: expected {show(g_ref['W'])}, got {show(g['W'])}")
    assert not wrong, "the meta-loss over a family of calls:\n" + "\n".join(wrong[:10])
    # the caller's support list of 1 batch, cycled over 3 steps, stays a list of 1 batch
    params, support, query = tanh_mlp_tasks(1, seed=0)
    for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
        given = [support[0]]
        meta_grad(fn, params, tanh_mlp_loss, given, query, 0.3, 3, False)
        assert len(given) == 1 and given[0] is support[0], (
            f"{fn.__name__} of a support list of 1 batch over 3 steps: expected the caller's list left as it was (1 "
            f"batch), got {len(given)} batches in it afterwards")


def test_finite_differences_tanh_mlp():
    params, support, query = tanh_mlp_tasks(2, seed=3)
    alpha, steps = 0.5, 2

    def objective(p):  # the meta-objective's value only: no gradient flows through it here
        return maml.meta_loss_vmap(p, tanh_mlp_loss, support, query, alpha, steps).item()

    _, g2 = meta_grad(maml.meta_loss_vmap, params, tanh_mlp_loss, support, query, alpha, steps, False)
    _, g1 = meta_grad(maml.meta_loss_vmap, params, tanh_mlp_loss, support, query, alpha, steps, True)
    g = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(3):
        d = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        plus = objective({k: params[k] + eps * d[k] for k in params})
        minus = objective({k: params[k] - eps * d[k] for k in params})
        fd = (plus - minus) / (2 * eps)
        analytic = sum((g2[k] * d[k]).sum().item() for k in params)
        first = sum((g1[k] * d[k]).sum().item() for k in params)
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-8), (
            f"meta_loss_vmap's second-order gradient along a random direction: {analytic:.8g}; the central finite "
            f"difference of the meta-objective: {fd:.8g}")
        assert abs(first - fd) > 1e-4, (  # the first-order gradient is not the true gradient
            f"meta_loss_vmap(first_order=True) along a random direction gave {first:.8g}, the true (finite-difference)"
            f" derivative {fd:.8g}: first order must drop the inner gradients' dependence on θ")


# ---------------------------------------------------------------------------- Reptile


def reptile_by_loop(params, support, alpha, steps):
    """Written here: each task's own `steps` SGD steps from θ, with .backward(); then mean_i(θ_i^(k) − θ)."""
    n_tasks = support[0]["x"].shape[0]
    moved = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(n_tasks):
        p = {k: v.detach().clone() for k, v in params.items()}
        for j in range(steps):
            b = support[j % len(support)]
            leaves = {k: v.requires_grad_() for k, v in p.items()}
            tanh_mlp_loss(leaves, {"x": b["x"][i], "y": b["y"][i]}).backward()
            p = {k: (v - alpha * v.grad).detach() for k, v in leaves.items()}
        for k in moved:
            moved[k] += (p[k] - params[k]) / n_tasks
    return moved


def test_reptile_direction_by_hand():
    # L = c·θ², inner_lr 0.1, θ = 1: a task's θ^(k) = Π_j (1 − 0.2 c_j); the direction is mean_i(θ_i^(k) − 1)
    cases = [  # (support: one {"c": per-task values} per inner step, steps, expected, how)
        ([[1.0, 0.5]], 2, -0.275, "tasks c = 1 and 0.5, two steps: ((0.8² − 1) + (0.9² − 1)) / 2"),
        ([[1.0, 0.5], [0.5, 1.0]], 3, -0.388, "task 0 c = 1, 0.5, 1; task 1 c = 0.5, 1, 0.5: (0.576 + 0.648) / 2 − 1"),
        ([[1.0, 0.5, 2.0]], 1, -0.7 / 3, "three tasks, one step: (−0.2 − 0.1 − 0.4) / 3"),
    ]
    wrong = []
    for cs, steps, expected, how in cases:
        support = [{"c": torch.tensor(c, dtype=torch.float64)} for c in cs]
        got = maml.reptile_direction({"theta": scalar(1.0)}, quadratic_loss, support, 0.1, steps)["theta"]
        if got.shape != () or got.item() != pytest.approx(expected, abs=1e-12):
            wrong.append(f"  support c = {cs}, {steps} step{'s' * (steps != 1)}: expected {expected:.6g} ({how}), got {show(got)} "
                         f"of shape {tuple(got.shape)}")
    # θ the caller's trainable leaf in one dict, changed in place between calls (as meta_train's optimizer changes
    # it): each call starts from θ as it is now; one step on c = 1 moves it by −0.1·2θ
    theta = scalar(1.0).requires_grad_()
    params, support = {"theta": theta}, [{"c": torch.tensor([1.0], dtype=torch.float64)}]
    for value in (1.0, 2.0, -3.0):
        with torch.no_grad():
            theta.fill_(value)
        got = maml.reptile_direction(params, quadratic_loss, support, 0.1, 1)["theta"]
        if got.item() != pytest.approx(-0.2 * value, abs=1e-12):
            wrong.append(f"  one task c = 1, one step, the same dict with θ set to {value} in place since the last "
                         f"call: expected {-0.2 * value:.6g} (−0.1·2θ, from θ as it is now), got {show(got)}")
    assert not wrong, "reptile_direction on L = c·θ² from θ = 1, inner_lr 0.1:\n" + "\n".join(wrong)


def loss_runs_for_2_5_and_100_tasks(name):
    # the text asks for every task of the meta-batch at once, with vmap: the Python body of loss_fn then runs as many
    # times for 5 or 100 tasks as for 2 (once per inner step and query, on batched tensors), where a loop runs it per
    # task (and vmap's chunk_size per chunk of tasks)
    calls, runs = [], {}
    counted_loss = counted(quadratic_loss, calls)
    for n in (2, 5, 100):
        support = [{"c": torch.linspace(0.5, 1.0, n, dtype=torch.float64)}] * 2
        calls.clear()
        if name == "reptile_direction":
            maml.reptile_direction({"theta": scalar(1.0)}, counted_loss, support, 0.1, 2)
        else:
            maml.meta_loss_vmap({"theta": scalar(1.0)}, counted_loss, support, support[0], 0.1, 2)
        runs[n] = len(calls)
    assert runs[2] == runs[5] == runs[100], (
        f"{name}: loss_fn ran {runs[2]}, {runs[5]} and {runs[100]} times for meta-batches of 2, 5 and 100 tasks; under "
        "vmap every task runs at once (no chunk_size), as many times for any number of tasks")
    want = 2 if name == "reptile_direction" else 3  # 2 inner steps, and the query for MAML
    assert runs[2] == want, (f"{name}, 2 inner steps: loss_fn ran {runs[2]} times, want {want} (one per inner step"
                             f"{' and one for the query' if want == 3 else ''}; see counted)")


def test_reptile_direction_runs_its_tasks_at_once_under_vmap():
    loss_runs_for_2_5_and_100_tasks("reptile_direction")


def test_meta_loss_vmap_runs_its_tasks_at_once_under_vmap():
    loss_runs_for_2_5_and_100_tasks("meta_loss_vmap")


def test_reptile_direction_equals_a_loop_over_tasks():
    params, support, _ = tanh_mlp_tasks(3)
    expected = reptile_by_loop(params, support, 0.3, 3)
    got = maml.reptile_direction(params, tanh_mlp_loss, support, 0.3, 3)
    assert set(got) == set(params), f"reptile_direction returned the names {sorted(got)}, expected {sorted(params)}"
    for k in params:
        assert_close(got[k].detach(), expected[k], f"reptile_direction on a tanh MLP, 3 tasks, 3 inner steps on 2 "
                     f"support batches cycled: mean_i(θ_i^(k) − θ) of {k}", rtol=1e-10)
    # float32 θ (the project's own model): the direction comes back in θ's dtype, float32 (meta_step writes it as θ's
    # .grad, which must have θ's dtype), equal to the loop in float64 to float32's precision
    params32, support32, _ = tanh_mlp_tasks(3, dtype=torch.float32)
    expected = reptile_by_loop({k: v.double() for k, v in params32.items()},
                               [{k: v.double() for k, v in b.items()} for b in support32], 0.3, 3)
    got = maml.reptile_direction(params32, tanh_mlp_loss, support32, 0.3, 3)
    for k in params32:
        assert got[k].dtype == torch.float32, (
            f"reptile_direction of float32 θ, parameter {k}: expected a float32 direction (θ's dtype: meta_step "
            f"assigns it as θ's gradient), got {got[k].dtype}")
        assert_close(got[k].double(), expected[k], f"reptile_direction of float32 θ on a tanh MLP, 3 tasks, 3 inner "
                     f"steps: mean_i(θ_i^(k) − θ) of {k}, against the loop in float64", rtol=1e-4, atol=1e-5)


def test_reptile_direction_holds_no_graph():
    # Reptile is first order: the direction is a constant, no graph back to θ (that would be a second-order
    # graph through the inner gradients, kept in memory for nothing)
    params, support, _ = tanh_mlp_tasks(3)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    direction = maml.reptile_direction(leaves, tanh_mlp_loss, support, 0.3, 2)
    kept = [k for k, v in direction.items() if v.requires_grad]
    assert not kept, (f"reptile_direction returned {kept} still attached to θ's graph: run the inner loops on "
                      "detached parameters (Reptile has no second derivative)")


def test_reptile_direction_under_dropout_draws_a_mask_per_task():
    # two copies of one task under dropout: each task of the meta-batch draws its own mask, so the two copies move
    # θ apart and, from the same seed, their mean is not the move of the task alone (with one mask shared by every
    # task, vmap's randomness="same", it would be, exactly); vmap's default randomness refuses dropout altogether
    params, one = dropout_mlp_copies(1)
    _, two = dropout_mlp_copies(2)
    torch.manual_seed(0)
    alone = maml.reptile_direction(params, dropout_mlp_loss, [one], 0.1, 2)
    torch.manual_seed(0)
    twice = maml.reptile_direction(params, dropout_mlp_loss, [two], 0.1, 2)
    gap = max((twice[k] - alone[k]).abs().max().item() for k in params)
    assert all(torch.isfinite(v).all() for v in twice.values()), f"reptile_direction with dropout: {twice}"
    assert gap > 1e-6, (
        f"reptile_direction with dropout in the loss, from the same seed: the direction of two copies of a task "
        f"equals that of the task alone (largest difference {gap:.3g}): the copies drew the same dropout mask; each "
        "task must draw its own (vmap's randomness=\"different\")")
    assert_same_from_one_seed("reptile_direction", lambda: maml.reptile_direction(params, dropout_mlp_loss, [two], 0.1,
                                                                                  2))


def test_reptile_one_step_is_one_sgd_step():
    params, support, query = tanh_mlp_tasks(1)
    alpha, beta = 0.1, 0.5
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = torch.optim.SGD(leaves.values(), lr=beta)
    maml.meta_step("reptile", leaves, tanh_mlp_loss, [support[0]], query, alpha, 1, opt)
    # oracle: θ + β(θ' - θ) = θ - βα ∇L_S(θ), with the gradient from plain autograd
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = tanh_mlp_loss(p, {"x": support[0]["x"][0], "y": support[0]["y"][0]})
    gs = torch.autograd.grad(loss, list(p.values()))
    for (k, v), gk in zip(params.items(), gs):
        assert_close(leaves[k].detach(), v - beta * alpha * gk, f"meta_step('reptile') with one task and one inner "
                     f"step, outer SGD at β: θ + β(θ' − θ) = θ − βα∇L_S(θ), parameter {k}")


def test_reptile_direction_over_a_family_equals_a_loop_and_leaves_theta_alone():
    # a generated family: 1 or 3 tasks, one or two support batches (a list or a tuple), 1 to 3 steps, θ as the
    # caller's trainable leaves or as plain tensors, a new loss function each time, the default device "meta" while
    # the tensors stay on the CPU; against a loop of .backward() steps written here. The caller's θ must come back
    # as it went in: the same values, still trainable leaves (fine-tuning follows meta-training on them)
    wrong = []
    cases = [(1, (0,), 1, list, True, False), (3, (0, 1), 3, tuple, True, True), (3, (1,), 2, list, False, False),
             (1, (0, 1), 2, tuple, False, True)]
    for case, (n_tasks, which, steps, container, trainable, meta_default) in enumerate(cases):
        params, support, _ = tanh_mlp_tasks(n_tasks, seed=case)
        support = container(support[j] for j in which)
        loss_fn = scaled_tanh_mlp_loss(1.0 + 0.5 * case)
        theta = {k: v.clone().requires_grad_(trainable) for k, v in params.items()}
        what = (f"reptile_direction, {n_tasks} task{'s' * (n_tasks > 1)}, {len(support)} support batch"
                f"{'es' * (len(support) > 1)} in a {container.__name__}, {steps} steps, θ "
                f"{'trainable leaves' if trainable else 'plain tensors'}{', default device meta' * meta_default}")
        try:
            with torch.device("meta") if meta_default else torch.device("cpu"):
                got = maml.reptile_direction(theta, loss_fn, support, 0.3, steps)
        except Exception as e:
            wrong.append(f"  {what}: raised {type(e).__name__}: {str(e)[:120]}")
            continue
        moved = [adapt_by_loop(params, loss_fn, task_of(support, i), 0.3, steps) for i in range(n_tasks)]
        for k in params:
            expected = sum(m[k] - params[k] for m in moved) / n_tasks
            if got[k].requires_grad or not torch.allclose(got[k].detach(), expected, rtol=1e-10, atol=1e-12):
                wrong.append(f"  {what}, {k}: expected mean_i(θ_i^(k) − θ) {show(expected)}, with no graph, got "
                             f"{show(got[k])} (requires_grad {got[k].requires_grad})")
            if not (theta[k].is_leaf and theta[k].requires_grad == trainable and torch.equal(theta[k].detach(),
                                                                                             params[k])):
                wrong.append(f"  {what}: the caller's θ[{k!r}] changed (requires_grad now "
                             f"{theta[k].requires_grad}, a leaf: {theta[k].is_leaf})")
    # two calls in a row under dropout, from one seed: each draws its own masks from the caller's random stream
    params, two = dropout_mlp_copies(2)
    torch.manual_seed(0)
    first = maml.reptile_direction(params, dropout_mlp_loss, [two], 0.1, 2)
    second = maml.reptile_direction(params, dropout_mlp_loss, [two], 0.1, 2)
    if all(torch.equal(first[k], second[k]) for k in params):
        wrong.append("  two calls in a row with dropout in the loss gave the same direction: each call must draw new "
                     "masks from the caller's random stream (no seed set inside)")
    assert not wrong, "reptile_direction over a family of calls:\n" + "\n".join(wrong[:10])


# ---------------------------------------------------------------------------- dropout under vmap, samplers


def test_dropout_under_vmap_draws_a_mask_per_task():
    def loss_fn(params, batch):
        h = F.dropout(batch["x"] @ params["w"], p=0.5, training=True)
        return (h ** 2).mean()
    params = {"w": torch.ones(4, 8)}
    x = torch.ones(6, 3, 4)  # six identical tasks
    support, query = [{"x": x}], {"x": x}
    with pytest.raises(RuntimeError):  # vmap's default refuses random ops: randomness must be chosen
        vmap(lambda b: loss_fn(params, b))({"x": x})
    per_task = vmap(lambda b: loss_fn(params, b), randomness="different")({"x": x})
    assert len(set(per_task.tolist())) > 1  # identical inputs, different masks
    leaves = {"w": params["w"].clone().requires_grad_()}
    loss = maml.meta_loss_vmap(leaves, loss_fn, support, query, 0.1, 2)
    loss.backward()
    assert torch.isfinite(leaves["w"].grad).all() and leaves["w"].grad.abs().sum() > 0, (
        f"meta_loss_vmap with dropout in the loss: expected a finite, non-zero gradient, got {show(leaves['w'].grad)}")
    # two copies of one task: from the same seed, their mean query loss is not the task's alone (it would be,
    # exactly, were one mask shared by every task: vmap's randomness="same")
    params, one = dropout_mlp_copies(1)
    _, two = dropout_mlp_copies(2)
    torch.manual_seed(0)
    alone = maml.meta_loss_vmap(params, dropout_mlp_loss, [one], one, 0.1, 2).item()
    torch.manual_seed(0)
    twice = maml.meta_loss_vmap(params, dropout_mlp_loss, [two], two, 0.1, 2).item()
    assert math.isfinite(twice) and abs(twice - alone) > 1e-6 * abs(alone), (
        f"meta_loss_vmap with dropout in the loss, from the same seed: two copies of a task gave the mean query "
        f"loss {twice:.12g}, the task alone {alone:.12g}: the copies drew the same dropout mask; each task must draw "
        "its own (vmap's randomness=\"different\")")
    # meta_loss_loop under dropout draws from the caller's random stream too, no seed set inside: two calls in a row
    # from one seed draw new masks (two losses), and what the caller draws next depends on the seed it set before
    params, two = dropout_mlp_copies(2)
    params = {k: v.requires_grad_() for k, v in params.items()}  # θ trainable: autograd.grad differentiates the loop
    first, after = {}, {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        first[seed] = [maml.meta_loss_loop(params, dropout_mlp_loss, [two], two, 0.1, 2).item() for _ in range(2)]
        after[seed] = torch.rand(1).item()
    assert first[0][0] != first[0][1], (
        f"meta_loss_loop with dropout in the loss, twice in a row from torch.manual_seed(0): the same loss "
        f"{first[0][0]:.12g} both times, the same dropout masks: each call must draw new masks from the caller's "
        "random stream (no seed set inside)")
    assert after[0] != after[1], (
        f"torch.rand(1) after two calls of meta_loss_loop with dropout, from torch.manual_seed(0) and from "
        f"torch.manual_seed(1): {after[0]:.9f} both times: the caller's random stream was reset inside (a seed set "
        "per task?); the draws after a call must follow the caller's seed")
    # and from one seed, the same: the same loss, and the same draw after it (no seed taken from the system inside)
    for fn in (maml.meta_loss_loop, maml.meta_loss_vmap):
        assert_same_from_one_seed(fn.__name__, lambda: fn(params, dropout_mlp_loss, [two], two, 0.1, 2).item())



def test_task_probabilities_leave_the_sizes_alone():
    # the sizes are the caller's (the datasets' lengths): normalising them in place would rewrite them
    for sampling, expected in (("uniform", [0.25, 0.25, 0.25, 0.25]), ("pps", [0.1, 0.2, 0.3, 0.4]),
                               ("mixed", [0.175, 0.225, 0.275, 0.325])):
        for sizes in (np.array([100.0, 200.0, 300.0, 400.0]), np.array([100, 200, 300, 400]), [100, 200, 300, 400]):
            got = leaves_inputs_alone(maml.task_probabilities, sizes, sampling)
            np.testing.assert_allclose(got, expected, err_msg=f"task_probabilities({sizes!r}, {sampling!r})")
    # and the array returned is the caller's to change (renormalised or masked in place): a later call is not
    # affected, whatever the name (uniform depends on n alone: an array made once per n is shared too)
    for sampling, expected in (("uniform", [0.5, 0.5]), ("pps", [0.25, 0.75]), ("mixed", [0.375, 0.625])):
        first = maml.task_probabilities([1, 3], sampling)
        first *= 0
        again = maml.task_probabilities([1, 3], sampling)
        assert np.allclose(again, expected), (
            f"task_probabilities([1, 3], {sampling!r}) after the caller zeroed the array of an earlier call in place: "
            f"expected {expected}, got {np.asarray(again).tolist()} (the earlier call's array kept and handed out "
            f"again?)")
    # float64 sizes that already sum to 1 are still the caller's: each name returns a new array, not the sizes
    # themselves (np.asarray of a float64 array is no copy), so zeroing the result leaves the sizes as they were
    for sampling, expected in (("uniform", [0.5, 0.5]), ("pps", [0.25, 0.75]), ("mixed", [0.375, 0.625])):
        sizes = np.array([0.25, 0.75])
        first = maml.task_probabilities(sizes, sampling)
        shared = np.shares_memory(first, sizes)
        first *= 0
        again = maml.task_probabilities(sizes, sampling)
        assert not shared and sizes.tolist() == [0.25, 0.75] and np.allclose(again, expected), (
            f"task_probabilities(np.array([0.25, 0.75]), {sampling!r}) (sizes that already sum to 1), the result then "
            f"zeroed in place by the caller: expected an array of its own, the sizes still [0.25, 0.75] and the next "
            f"call {expected}; got {'the sizes array itself' if shared else 'a new array'}, sizes {sizes.tolist()}, "
            f"then {np.asarray(again).tolist()}")


def test_task_samplers():
    third = 1 / 3
    cases = [  # (sizes, sampling, expected p)
        ([100, 300, 600], "uniform", [third] * 3),
        ([100, 300, 600], "pps", [0.1, 0.3, 0.6]),
        ([100, 300, 600], "mixed", [(third + 0.1) / 2, (third + 0.3) / 2, (third + 0.6) / 2]),
        ([1, 3], "uniform", [0.5, 0.5]),
        ([1, 3], "pps", [0.25, 0.75]),
        ([1, 3], "mixed", [0.375, 0.625]),
        ([7], "pps", [1.0]),
        ([7], "mixed", [1.0]),
        ([0, 2, 6], "uniform", [third] * 3),  # uniform counts tasks, as the docstring's 1/n: an empty one too
        ([0, 2, 6], "mixed", [third / 2, (third + 0.25) / 2, (third + 0.75) / 2]),
        ([1.5, 2.0], "pps", [1.5 / 3.5, 2.0 / 3.5]),  # sizes as floats (weights): divided as they are
        ([2 ** 31, 1], "pps", [2 ** 31 / (2 ** 31 + 1), 1 / (2 ** 31 + 1)]),  # past int32
    ]
    for sizes, sampling, expected in cases:
        got = maml.task_probabilities(sizes, sampling)
        np.testing.assert_allclose(got, expected, err_msg=f"task_probabilities({sizes}, {sampling!r})")
    # an unknown name (near ones too, and None, no name at all): never guess, whatever the sizes (with one task, or
    # equal sizes, every method gives the same p: the name is still checked first)
    for sizes in ([100, 300, 600], [5], [4, 4, 4], [4, 4]):
        for name in ("nope", "PPS", "Uniform", " mixed", "pps\n", "", "unifrom", "mixd", "proportional", "p", "pp", "uni", "mix", "|", None):  # None: no default
            with pytest.raises(ValueError, match="sampling"):
                got = maml.task_probabilities(sizes, name)
                pytest.fail(f"task_probabilities({sizes}, {name!r}) returned {got}: an unknown sampling (the names "
                            "are exactly uniform, pps and mixed) must raise a ValueError naming the setting")
    # a name read at run time (argparse, a JSON config) is a new str, equal to the literal but not it: compared by ==
    for literal, expected in (("uniform", [third] * 3), ("pps", [0.1, 0.3, 0.6]),
                              ("mixed", [(third + 0.1) / 2, (third + 0.3) / 2, (third + 0.6) / 2])):
        name = json.loads(json.dumps(literal))  # an equal string, another object
        try:
            got = maml.task_probabilities([100, 300, 600], name)
        except ValueError as e:
            pytest.fail(f"task_probabilities([100, 300, 600], {name!r}) with the name read from JSON (equal to "
                        f"{literal!r}, another str object): expected {expected}, got ValueError: {e}")
        np.testing.assert_allclose(got, expected, err_msg=f"task_probabilities([100, 300, 600], {name!r}) with the "
                                                          f"name read from JSON (equal to {literal!r}, another object)")


def test_task_probabilities_over_a_family_are_float64_arrays_numpy_can_draw_from():
    # what maml.meta_train does with them: rng.choice(n, size=meta_batch, p=p), which wants n probabilities summing to
    # 1 within about 1e-8; a family of sizes (one task, equal sizes, a size of 1 beside 10^9, sizes no float32 holds,
    # 49 tasks; a list, a tuple, int64, int32 and float32 arrays) against the closed forms in exact arithmetic
    from fractions import Fraction
    families = [[7], [1, 1, 1], [500, 500, 500], [100, 300, 600], [1, 10 ** 9], [1, 123456789], [16777217, 3],
                list(range(1, 50)), (3, 5, 11),
                np.array([2, 7, 1, 9], dtype=np.int64), np.array([3, 7, 11, 9001], dtype=np.float32),
                np.array([16777216, 1, 1, 1], dtype=np.float32),  # a total float32 cannot hold: sum in float64
                np.array([5, 2], dtype=np.int32)]
    wrong = []
    for sizes in families:
        n, total = len(sizes), sum(int(s) for s in sizes)
        exact = {"uniform": [Fraction(1, n)] * n, "pps": [Fraction(int(s), total) for s in sizes]}
        exact["mixed"] = [(u + q) / 2 for u, q in zip(exact["uniform"], exact["pps"])]
        for sampling, want in exact.items():
            got = maml.task_probabilities(sizes, sampling)
            call = f"task_probabilities({sizes!r}, {sampling!r})"
            if not isinstance(got, np.ndarray) or got.dtype != np.float64 or got.shape != (n,):
                wrong.append(f"  {call}: expected a float64 numpy array of shape ({n},), got {got!r}")
                continue
            if abs(got.sum() - 1.0) > 1e-12 or not np.allclose(got, [float(w) for w in want], rtol=1e-14, atol=0):
                wrong.append(f"  {call}: expected {[float(w) for w in want]} (sum 1), got {got.tolist()} "
                             f"(sum 1 {got.sum() - 1.0:+.3g})")
                continue
            try:
                np.random.default_rng(0).choice(n, size=8, p=got)
            except ValueError as e:
                wrong.append(f"  {call}: numpy's Generator.choice refused it: {e}")
    assert not wrong, "task_probabilities over a family of sizes:\n" + "\n".join(wrong[:10])


# ---------------------------------------------------------------------------- learning


def test_meta_training_lowers_post_adaptation_loss_on_sines():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(123)
    amp, phase = maml.sine_tasks(100, g)
    support, query = maml.sine_points(amp, phase, 10, g), maml.sine_points(amp, phase, 50, g)

    def post_adaptation(params):
        return maml.meta_loss_vmap(params, maml.sine_loss, [support], query, maml.SINE.inner_lr, 1).item()

    init = {k: v.detach() for k, v in maml.sine_mlp_init(torch.Generator().manual_seed(0)).items()}
    trained = maml.train_sine("maml", dataclasses.replace(maml.SINE, steps=400), seed=0)
    before, after = post_adaptation(init), post_adaptation(trained)
    assert after < 0.6 * before, (before, after)
    assert math.isfinite(after)


def test_run_sinusoid_writes_its_table(tmp_path, caplog):
    caplog.set_level(logging.INFO)  # the table is logged by evaluation.save_results
    cfg = dataclasses.replace(maml.SINE, steps=3, eval_tasks=20)
    out = maml.run_sinusoid(cfg, str(tmp_path), seed=0)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(out))
    assert set(out["methods"]) == {"maml", "fomaml", "reptile", "pretrained"}
    assert set(out["methods"]["maml"]) == {"0", "1", "5", "10"}
    assert out["config"]["steps"] == 3 and out["environment"]["threads"] == torch.get_num_threads()
    assert "| pretrained |" in caplog.text


def test_a_diverged_sinusoid_test_is_refused_not_tabled(tmp_path):
    # 50 steps at inner_lr 0.5 send the held-out sines' weights to inf: the mean MSE is nan, not a number to print
    cfg = dataclasses.replace(maml.SINE, steps=2, eval_tasks=5, inner_lr=0.5, eval_steps=(1, 50))
    with pytest.raises(maml.UserError, match="diverged: maml's held-out MSE is not finite"):
        maml.run_sinusoid(cfg, str(tmp_path), seed=0)
    assert not (tmp_path / "results.json").exists()


def test_sine_settings_are_checked(tmp_path):
    with pytest.raises(maml.UserError, match="inner_lr"):
        maml.run_sinusoid(dataclasses.replace(maml.SINE, inner_lr=-0.1), str(tmp_path), seed=0)
    assert not (tmp_path / "results.json").exists()
