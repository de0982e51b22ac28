"""
Meta-learning an initialisation for low-resource text classification: MAML, first-order MAML and Reptile.

Papers: Dou, Yu and Anastasopoulos, "Investigating Meta-Learning Algorithms for Low-Resource Natural
Language Understanding Tasks" (EMNLP 2019); the algorithm is Finn, Abbeel and Levine, "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks" (ICML 2017); Reptile is Nichol, Achiam and Schulman,
"On First-Order Meta-Learning Algorithms" (2018).

Read it top to bottom:
  1. the functional core: `adapt` (the inner loop) and the three meta-updates, written once over a dict of
     parameters and a `loss_fn(params, batch)`, so that the same code serves any model;
  2. task samplers (uniform, proportional to size, mixed);
  3. GLUE's metrics in numpy;
  4. the sinusoid regression check of Finn et al. (section 5.1): `run_sinusoid`;
  5. the classifier on model.GPT: sentence / pair input, mean pooling, one masked head row per task;
  6. meta-training, the multi-task baseline, fine-tuning and evaluation of the target tasks: `run`.

Run it (CPU):
    python train.py --task sinusoid              # MAML / FOMAML / Reptile / pretrained on sine waves
    python train.py --task maml                  # the built-in task family, all initialisations
    python train.py --task maml --data ../shared/data/glue --aux MNLI,QNLI,QQP,SST-2 \\
        --targets CoLA,MRPC,STS-B,RTE
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from tqdm import tqdm

# -----------------------------------------------------------------------------
# 1. the functional core
#
# Parameters are a dict {name: tensor}. A task's loss is `loss_fn(params, batch) -> scalar`. The inner loop
# takes `steps` plain gradient steps from the shared initialisation θ:
#     θ^(0) = θ,   θ^(j+1) = θ^(j) - α ∇L_S(θ^(j))
# `torch.func.grad` returns a gradient that ordinary autograd can differentiate again, so a loss computed
# at θ^(k) back-propagates *through* the inner steps into θ: that is second-order MAML, with no
# create_graph bookkeeping. Detaching each inner gradient gives first-order MAML (FOMAML).


@dataclass
class InnerLoop:
    """The inner loop's settings, named once and used by meta-training AND by adaptation at test time."""
    lr: float      # α, the inner learning rate
    steps: int     # k, the number of inner gradient steps


def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    """k steps of gradient descent from `params`; returns the adapted dict θ^(k).

    batches: one batch (used at every step) or a list with one batch per step (a new support batch per
    step, as the authors' code draws them; the list is cycled if shorter than `steps`).
    first_order: treat each inner gradient as a constant (FOMAML / Reptile): the result still depends on
    `params` through θ^(0) but not through the gradients.
    """
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    grad_fn = grad(loss_fn)  # d loss_fn / d params, as a dict like params
    for j in range(steps):
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params


def task_query_loss(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    """L_Q(θ^(k)): adapt on the task's support batches, then score the query batch. One task."""
    adapted = adapt(params, loss_fn, support, inner_lr, steps, first_order)
    return loss_fn(adapted, query)


def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False, chunk_size=None):
    """Mean over the tasks of a meta-batch of L_Q(θ_i^(k)), all tasks at once with vmap.

    support: list (one per inner step) of batches whose tensors have a leading task dimension (N, ...);
    query: one such batch. The tasks share every shape (padded sequences, fixed support/query sizes).
    randomness="different": each task draws its own dropout mask. chunk_size trades speed for memory.
    """
    def one_task(task_support, task_query):
        return task_query_loss(params, loss_fn, task_support, task_query, inner_lr, steps, first_order)
    losses = vmap(one_task, randomness="different", chunk_size=chunk_size)(support, query)  # (N,)
    return losses.mean()


def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    """The reference path: the same mean query loss, one task at a time, with plain autograd.

    The inner gradient comes from torch.autograd.grad(create_graph=True) (second order) or without it
    (first order). Same inputs as meta_loss_vmap. Slow but obviously right; the tests compare the two.
    """
    n_tasks = query_size(query)
    losses = []
    for i in range(n_tasks):
        fast = dict(params)
        for j in range(steps):
            batch = task_slice(support[j % len(support)], i)
            loss = loss_fn(fast, batch)
            gs = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), gs)}
        losses.append(loss_fn(fast, task_slice(query, i)))
    return torch.stack(losses).mean()


def query_size(batch):
    """Number of tasks (the leading dimension) of a batch dict."""
    return next(iter(batch.values())).shape[0]


def task_slice(batch, i):
    """Task i of a batch dict whose tensors have a leading task dimension."""
    return {k: v[i] for k, v in batch.items()}


def reptile_direction(params, loss_fn, support, inner_lr, steps):
    """mean_i(θ_i^(k) - θ): where the tasks' own inner loops moved, averaged over the meta-batch (vmap).

    No query batch and no second derivative: the inner loop runs on detached parameters.
    """
    start = {name: p.detach() for name, p in params.items()}

    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    adapted = vmap(one_task, randomness="different")(support)  # each value (N, *shape)
    return {name: (adapted[name] - start[name]).mean(0) for name in start}


def meta_step(method, params, loss_fn, support, query, inner, optimizer, use_vmap=True):
    """One outer update of `params` (leaf tensors the optimizer holds) for maml | fomaml | reptile.

    MAML / FOMAML: the gradient of the mean query loss goes to .grad. Reptile: -(θ' - θ) goes to .grad as
    a pseudo-gradient, so that the same optimizer (Adam) takes the step. Returns the meta-batch's loss:
    the mean query loss after adaptation (MAML, FOMAML) or None (Reptile).
    """
    optimizer.zero_grad(set_to_none=True)
    if method == "reptile":
        direction = reptile_direction(params, loss_fn, support, inner.lr, inner.steps)
        for name, p in params.items():
            p.grad = -direction[name]
        optimizer.step()
        return None
    first_order = method == "fomaml"
    if use_vmap:
        loss = meta_loss_vmap(params, loss_fn, support, query, inner.lr, inner.steps, first_order)
    else:
        loss = meta_loss_loop(params, loss_fn, support, query, inner.lr, inner.steps, first_order)
    loss.backward()
    optimizer.step()
    return loss.detach()


# -----------------------------------------------------------------------------
# 2. task samplers: which auxiliary task each slot of a meta-batch draws


def task_probabilities(sizes, sampling):
    """p_i for every task. uniform: 1/n. pps: |D_i| / sum_j |D_j| (Dou et al.'s best). mixed [ours]: each
    draw is uniform with probability 1/2, else PPS, i.e. the average of the two distributions."""
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform = np.full(len(sizes), 1.0 / len(sizes))
    pps = sizes / sizes.sum()
    if sampling == "uniform":
        return uniform
    if sampling == "pps":
        return pps
    if sampling == "mixed":
        return 0.5 * uniform + 0.5 * pps
    raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")


def sample_tasks(sizes, n, sampling, rng):
    """n task indices (with replacement) for one meta-batch; rng: a numpy Generator."""
    return rng.choice(len(sizes), size=n, p=task_probabilities(sizes, sampling))


# -----------------------------------------------------------------------------
# 3. GLUE's metrics (numpy; the names are GLUE's: mcc, f1, accuracy, pearson, spearman)


def accuracy(pred, gold):
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1(pred, gold):
    """F1 of the positive class 1 (MRPC, QQP)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.sum((pred == 1) & (gold == 1))
    fp = np.sum((pred == 1) & (gold != 1))
    fn = np.sum((pred != 1) & (gold == 1))
    return float(2 * tp / (2 * tp + fp + fn)) if tp > 0 else 0.0


def mcc(pred, gold):
    """Matthews correlation of a binary labelling (CoLA); 0 when a row or column of the table is empty."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom > 0 else 0.0


def pearson(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0


def average_ranks(x):
    """Ranks 1..n, ties sharing the mean of their ranks (what Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1  # positions i..j share their mean rank
        i = j + 1
    return ranks


def spearman(x, y):
    return pearson(average_ranks(x), average_ranks(y))


def task_metrics(metric_names, pred, gold):
    """{name: value} for the metrics a task reports (see data.GLUE_TASKS)."""
    fns = dict(accuracy=accuracy, f1=f1, mcc=mcc, pearson=pearson, spearman=spearman)
    return {name: fns[name](pred, gold) for name in metric_names}


def mean_ci95(values):
    """Mean and the half-width of a normal 95% confidence interval."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


# -----------------------------------------------------------------------------
# 4. the sinusoid check (Finn et al. 2017, section 5.1)
#
# Each task is a sine y = A sin(x - φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5]; a learner sees K = 10
# points of a new sine and must fit the whole curve. A network pretrained on all sines jointly can only
# learn the mean function (≈ 0) and needs many steps to fit a new one; MAML's initialisation fits it in one.

SINE_HIDDEN = 40          # MLP 1 -> 40 -> 40 -> 1, ReLU [paper]
SINE_K = 10               # support (and query) points per task [paper]
SINE_META_BATCH = 25      # tasks per meta-update [paper]
SINE_OUTER_LR = 1e-3      # Adam [paper]
SINE_INNER = InnerLoop(lr=0.01, steps=1)   # α and k, for meta-training and for test-time adaptation [paper]
SINE_REPTILE_STEPS = 5    # [ours] Reptile with k = 1 is joint training; it needs several inner steps
SINE_STEPS = 6000         # meta-updates per method [ours; the paper runs 70,000]
SINE_EVAL_TASKS = 600     # held-out sines
SINE_EVAL_POINTS = 100    # query points per held-out sine
SINE_EVAL_STEPS = (1, 5, 10)


def sine_mlp_init(generator):
    """Parameters of the 1 -> 40 -> 40 -> 1 MLP (PyTorch's default Linear init)."""
    params = {}
    for name, (n_in, n_out) in dict(l1=(1, SINE_HIDDEN), l2=(SINE_HIDDEN, SINE_HIDDEN), l3=(SINE_HIDDEN, 1)).items():
        bound = 1.0 / math.sqrt(n_in)
        params[name + ".weight"] = (torch.rand(n_out, n_in, generator=generator) * 2 - 1) * bound
        params[name + ".bias"] = (torch.rand(n_out, generator=generator) * 2 - 1) * bound
    return params


def sine_mlp(params, x):
    """x: (n, 1) -> (n, 1)."""
    h = F.relu(F.linear(x, params["l1.weight"], params["l1.bias"]))
    h = F.relu(F.linear(h, params["l2.weight"], params["l2.bias"]))
    return F.linear(h, params["l3.weight"], params["l3.bias"])


def sine_loss(params, batch):
    """Mean squared error of one task's batch {"x": (n, 1), "y": (n, 1)}."""
    return F.mse_loss(sine_mlp(params, batch["x"]), batch["y"])


def sample_sines(n_tasks, n_points, generator):
    """Amplitudes, phases (n_tasks,) and a batch {"x", "y"} of shape (n_tasks, n_points, 1)."""
    amp = 0.1 + 4.9 * torch.rand(n_tasks, generator=generator)
    phase = math.pi * torch.rand(n_tasks, generator=generator)
    x = -5.0 + 10.0 * torch.rand(n_tasks, n_points, 1, generator=generator)
    y = amp[:, None, None] * torch.sin(x - phase[:, None, None])
    return amp, phase, {"x": x, "y": y}


def sine_points(amp, phase, n_points, generator):
    x = -5.0 + 10.0 * torch.rand(len(amp), n_points, 1, generator=generator)
    return {"x": x, "y": amp[:, None, None] * torch.sin(x - phase[:, None, None])}


def train_sine(method, steps, seed):
    """Meta-train (maml | fomaml | reptile) or jointly pretrain (pretrained) the sine MLP; returns params."""
    g = torch.Generator().manual_seed(seed)
    params = {k: v.requires_grad_() for k, v in sine_mlp_init(torch.Generator().manual_seed(seed)).items()}
    opt = torch.optim.Adam(params.values(), lr=SINE_OUTER_LR)
    inner = InnerLoop(SINE_INNER.lr, SINE_REPTILE_STEPS) if method == "reptile" else SINE_INNER
    for _ in tqdm(range(steps), desc=f"sinusoid {method}", leave=False, mininterval=2.0):
        amp, phase, support = sample_sines(SINE_META_BATCH, SINE_K, g)
        query = sine_points(amp, phase, SINE_K, g)
        if method == "pretrained":  # one network fit to every task's points at once
            opt.zero_grad(set_to_none=True)
            both = {k: torch.cat([support[k], query[k]], 1).reshape(-1, 1) for k in support}
            sine_loss(params, both).backward()
            opt.step()
        else:
            meta_step(method, params, sine_loss, [support], query, inner, opt)
    return {k: v.detach() for k, v in params.items()}


def eval_sine(params, seed, eval_steps=SINE_EVAL_STEPS, inner_lr=SINE_INNER.lr):
    """Query MSE on held-out sines after 0 and each of `eval_steps` plain SGD steps on K = 10 points.
    Returns {steps: (mean, 95% CI half-width)} over SINE_EVAL_TASKS tasks."""
    g = torch.Generator().manual_seed(seed)
    amp, phase, support = sample_sines(SINE_EVAL_TASKS, SINE_K, g)
    query = sine_points(amp, phase, SINE_EVAL_POINTS, g)
    out = {}
    for k in (0,) + tuple(eval_steps):
        def one_task(s, q):
            return sine_loss(adapt(params, sine_loss, s, inner_lr, k), q)
        out[k] = mean_ci95(vmap(one_task)(support, query).numpy())
    return out


# Finn et al. (2017) show these as curves (their Fig. 3), not a table; read off the K = 10 panel, so
# approximate: MAML ≈ 0.5 after one step, pretrained ≈ 2.3 and barely moving with more steps.
SINE_PAPER = {"maml": {1: "≈0.5"}, "pretrained": {1: "≈2.3"}}


def run_sinusoid(args):
    """`python train.py --task sinusoid`: the table of K-shot MSE after 1, 5, 10 steps, and results.json."""
    t0 = time.time()
    steps = args.max_steps or SINE_STEPS
    torch.set_num_threads(1)  # tiny matrices: one thread (OpenMP threads on shared cores only wait)
    methods = ("maml", "fomaml", "reptile", "pretrained")
    results = {}
    for method in methods:
        t = time.time()
        params = train_sine(method, steps, args.seed)
        results[method] = eval_sine(params, seed=args.seed + 10_000)  # held-out tasks: another stream
        print(f"{method:>10}: trained {steps} steps in {time.time() - t:.0f}s")
    header = "| method | " + " | ".join(f"MSE after {k} step{'s' * (k != 1)}" for k in (0,) + SINE_EVAL_STEPS)
    print(f"\nK = {SINE_K} shot sine regression, {SINE_EVAL_TASKS} held-out tasks, inner lr "
          f"{SINE_INNER.lr}; mean ± 95% CI\n")
    print(header + " | paper, 1 step |")
    print("|" + "---|" * (len(SINE_EVAL_STEPS) + 3))
    for method in methods:
        cells = [f"{m:.3f} ± {ci:.3f}" for m, ci in (results[method][k] for k in (0,) + SINE_EVAL_STEPS)]
        paper = SINE_PAPER.get(method, {}).get(1, "–")
        print(f"| {method} | " + " | ".join(cells) + f" | {paper} |")
    wall = time.time() - t0
    out = {"methods": {m: {str(k): {"mse": v[0], "mse_ci95": v[1]} for k, v in r.items()}
                       for m, r in results.items()},
           "config": {"steps": steps, "k_shot": SINE_K, "meta_batch": SINE_META_BATCH, "inner": asdict(SINE_INNER),
                      "reptile_inner_steps": SINE_REPTILE_STEPS, "outer_lr": SINE_OUTER_LR,
                      "eval_tasks": SINE_EVAL_TASKS, "seed": args.seed},
           "paper": SINE_PAPER, "wall_s": wall}
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nwall time {wall:.0f}s; wrote {os.path.join(args.out_dir, 'results.json')}")
    return out
