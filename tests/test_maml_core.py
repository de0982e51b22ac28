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


# ---------------------------------------------------------------------------- closed forms


def test_one_dimensional_hand_check():
    # L_S = θ², L_Q = θ²/2, α = 0.1, θ = 1: θ' = 0.8; MAML gradient θ'(1 - 2α) = 0.64; FOMAML θ' = 0.8
    def loss_fn(params, batch):
        return batch["c"] * params["theta"] ** 2
    theta = {"theta": torch.tensor(1.0, dtype=torch.float64)}
    support = {"c": torch.tensor(1.0, dtype=torch.float64)}
    query = {"c": torch.tensor(0.5, dtype=torch.float64)}
    adapted = maml.adapt(theta, loss_fn, support, inner_lr=0.1, steps=1)
    assert adapted["theta"].item() == pytest.approx(0.8)
    batched = lambda b: {k: v[None] for k, v in b.items()}  # one task  # noqa: E731
    for first_order, expected in ((False, 0.64), (True, 0.8)):
        for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
            _, g = meta_grad(fn, theta, loss_fn, [batched(support)], batched(query), 0.1, 1, first_order)
            assert g["theta"].item() == pytest.approx(expected, abs=1e-12), (fn.__name__, first_order)


@pytest.mark.parametrize("steps", [1, 3])
def test_least_squares_closed_form(steps):
    rng = np.random.default_rng(0)
    d, n_s, n_q, alpha = 4, 8, 9, 0.05
    Xs, ys = rng.normal(size=(n_s, d)), rng.normal(size=n_s)
    Xq, yq = rng.normal(size=(n_q, d)), rng.normal(size=n_q)
    theta = rng.normal(size=d)
    # the oracle, in numpy: k steps on the same support set, then the chain rule by hand
    Hs = 2.0 / n_s * Xs.T @ Xs
    th = theta.copy()
    for _ in range(steps):
        th = th - alpha * (2.0 / n_s * Xs.T @ (Xs @ th - ys))
    grad_q = 2.0 / n_q * Xq.T @ (Xq @ th - yq)
    maml_oracle = np.linalg.matrix_power(np.eye(d) - alpha * Hs, steps) @ grad_q
    fomaml_oracle = grad_q

    t = lambda a: torch.tensor(a, dtype=torch.float64)[None]  # add the task dimension  # noqa: E731
    support, query = [{"X": t(Xs), "y": t(ys)}], {"X": t(Xq), "y": t(yq)}
    params = {"theta": torch.tensor(theta)}
    for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
        _, g2 = meta_grad(fn, params, lsq_loss, support, query, alpha, steps, False)
        _, g1 = meta_grad(fn, params, lsq_loss, support, query, alpha, steps, True)
        np.testing.assert_allclose(g2["theta"].numpy(), maml_oracle, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g1["theta"].numpy(), fomaml_oracle, rtol=1e-10, atol=1e-12)
        # second order differs from first order exactly by the (I - αH)^k factor
        assert np.abs(g2["theta"].numpy() - g1["theta"].numpy()).max() > 1e-3


def test_maml_equals_fomaml_when_inner_lr_is_zero():
    params, support, query = tanh_mlp_tasks(3)
    _, g2 = meta_grad(maml.meta_loss_vmap, params, tanh_mlp_loss, support, query, 0.0, 2, False)
    _, g1 = meta_grad(maml.meta_loss_vmap, params, tanh_mlp_loss, support, query, 0.0, 2, True)
    for k in params:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-12, atol=1e-12)


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
        torch.testing.assert_close(l, l_ref, rtol=1e-12, atol=1e-12)
        for k in params:
            torch.testing.assert_close(g[k], g_ref[k], rtol=1e-10, atol=1e-12)


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
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-8)
        assert abs(first - fd) > 1e-4  # the first-order gradient is not the true gradient


# ---------------------------------------------------------------------------- Reptile, dropout, samplers


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
        torch.testing.assert_close(leaves[k].detach(), v - beta * alpha * gk, rtol=1e-12, atol=1e-12)


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
    assert torch.isfinite(leaves["w"].grad).all() and leaves["w"].grad.abs().sum() > 0


def test_task_samplers():
    sizes = [100, 300, 600]
    np.testing.assert_allclose(maml.task_probabilities(sizes, "uniform"), [1 / 3] * 3)
    np.testing.assert_allclose(maml.task_probabilities(sizes, "pps"), [0.1, 0.3, 0.6])
    np.testing.assert_allclose(maml.task_probabilities(sizes, "mixed"), [(1 / 3 + 0.1) / 2, (1 / 3 + 0.3) / 2,
                                                                         (1 / 3 + 0.6) / 2])
    with pytest.raises(ValueError, match="sampling"):
        maml.task_probabilities(sizes, "nope")


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
    caplog.set_level(logging.INFO, logger="maml")
    cfg = dataclasses.replace(maml.SINE, steps=3, eval_tasks=20)
    out = maml.run_sinusoid(cfg, str(tmp_path), seed=0)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(out))
    assert set(out["methods"]) == {"maml", "fomaml", "reptile", "pretrained"}
    assert set(out["methods"]["maml"]) == {"0", "1", "5", "10"}
    assert out["config"]["steps"] == 3 and out["environment"]["threads"] == torch.get_num_threads()
    assert "| pretrained |" in caplog.text


def test_sine_settings_are_checked(tmp_path):
    with pytest.raises(maml.UserError, match="inner_lr"):
        maml.run_sinusoid(dataclasses.replace(maml.SINE, inner_lr=-0.1), str(tmp_path), seed=0)
    assert not (tmp_path / "results.json").exists()
