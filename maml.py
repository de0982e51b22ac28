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
    python train.py --task maml --data data/glue --aux MNLI,QNLI,QQP,SST-2 \\
        --targets CoLA,MRPC,STS-B,RTE
"""

import dataclasses
import logging
import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from tqdm import tqdm

import data
from model import (GPT, GPTConfig, RunState, UserError, average_gradients, mean_pool, peak_memory_mb, rank_and_world,
                   save_checkpoint, save_json, second_order_ops, train_and_select)

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# 1. the functional core
#
# Parameters are a dict {name: tensor}. A task's loss is `loss_fn(params, batch) -> scalar`. The inner loop
# takes `steps` plain gradient steps from the shared initialisation θ:
#     θ^(0) = θ,   θ^(j+1) = θ^(j) - α ∇L_S(θ^(j))
# `torch.func.grad` returns a gradient that ordinary autograd can differentiate again, so a loss computed
# at θ^(k) back-propagates *through* the inner steps into θ: that is second-order MAML, with no
# create_graph bookkeeping. Detaching each inner gradient gives first-order MAML (FOMAML).


@dataclass(frozen=True)
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


def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False, chunk_size=None):
    """Mean over the tasks of a meta-batch of L_Q(θ_i^(k)), all tasks at once with vmap.

    support: list (one per inner step) of batches whose tensors have a leading task dimension (N, ...);
    query: one such batch. The tasks share every shape (padded sequences, fixed support/query sizes).
    randomness="different": each task draws its own dropout mask. chunk_size trades speed for memory.
    """
    def one_task(task_support, task_query):  # L_Q(θ^(k)): adapt on the task's support batches, score its query
        return loss_fn(adapt(params, loss_fn, task_support, inner_lr, steps, first_order), task_query)
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


def optimizer_params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


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
        average_gradients(optimizer_params(optimizer))  # under torchrun: the mean over every process's tasks
        optimizer.step()
        return None
    first_order = method == "fomaml"
    if use_vmap:
        loss = meta_loss_vmap(params, loss_fn, support, query, inner.lr, inner.steps, first_order)
    else:
        loss = meta_loss_loop(params, loss_fn, support, query, inner.lr, inner.steps, first_order)
    loss.backward()
    average_gradients(optimizer_params(optimizer))
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
    """Pearson's r; 0 for a constant input, nan when a prediction is not finite (a diverged model)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
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
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):  # ranks would hide a diverged model
        return float("nan")
    return pearson(average_ranks(x), average_ranks(y))


def task_metrics(metric_names, pred, gold):
    """{name: value} for the metrics a task reports (see data.GLUE_TASKS)."""
    fns = dict(accuracy=accuracy, f1=f1, mcc=mcc, pearson=pearson, spearman=spearman)
    return {name: fns[name](pred, gold) for name in metric_names}


def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def mean_ci95(values):
    """Mean and the half-width of a normal 95% confidence interval, 1.96 std / sqrt(n)."""
    mean, std = mean_std(values)
    return mean, 1.96 * std / math.sqrt(len(values))


# -----------------------------------------------------------------------------
# 4. the sinusoid check (Finn et al. 2017, section 5.1)
#
# Each task is a sine y = A sin(x - φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5]; a learner sees K = 10
# points of a new sine and must fit the whole curve. A network pretrained on all sines jointly can only
# learn the mean function (≈ 0) and needs many steps to fit a new one; MAML's initialisation fits it in one.

@dataclass(frozen=True)
class SineConfig:
    hidden: int = 40                    # MLP 1 -> hidden -> hidden -> 1, ReLU [paper]
    k: int = 10                         # support (and query) points per task [paper]
    meta_batch: int = 25                # tasks per meta-update [paper]
    outer_lr: float = 1e-3              # Adam [paper]
    inner: InnerLoop = InnerLoop(lr=0.01, steps=1)  # α and k, for meta-training and test-time adaptation [paper]
    reptile_steps: int = 5              # [ours] Reptile with k = 1 is joint training; it needs several steps
    steps: int = 6000                   # meta-updates per method [ours; the paper runs 70,000]
    eval_tasks: int = 600               # held-out sines
    eval_points: int = 100              # query points per held-out sine
    eval_steps: tuple = (1, 5, 10)      # report the MSE after 0 and each of these many steps


SINE = SineConfig()
SINE_METHODS = ("maml", "fomaml", "reptile", "pretrained")
# Finn et al. (2017) show these as curves (their Fig. 3), not a table; read off the K = 10 panel, so
# approximate: MAML ≈ 0.5 after one step, pretrained ≈ 2.3 and barely moving with more steps.
SINE_PAPER = {"maml": {1: "≈0.5"}, "pretrained": {1: "≈2.3"}}


def sine_mlp_init(generator, hidden=SINE.hidden):
    """Parameters of the 1 -> hidden -> hidden -> 1 MLP (PyTorch's default Linear init)."""
    params = {}
    shapes = dict(l1=(1, hidden), l2=(hidden, hidden), l3=(hidden, 1))  # (in, out)
    for name, (n_in, n_out) in shapes.items():
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


def sine_tasks(n_tasks, generator):
    """Amplitudes and phases (n_tasks,) of new sines: A ~ U[0.1, 5], φ ~ U[0, π]."""
    return 0.1 + 4.9 * torch.rand(n_tasks, generator=generator), math.pi * torch.rand(n_tasks, generator=generator)


def sine_points(amp, phase, n_points, generator):
    """A batch {"x", "y"} of shape (n_tasks, n_points, 1): x ~ U[-5, 5] on each task's sine."""
    x = -5.0 + 10.0 * torch.rand(len(amp), n_points, 1, generator=generator)
    return {"x": x, "y": amp[:, None, None] * torch.sin(x - phase[:, None, None])}


def train_sine(method, cfg, seed):
    """Meta-train (maml | fomaml | reptile) or jointly pretrain (pretrained) the sine MLP; returns params."""
    g = torch.Generator().manual_seed(seed)
    params = {k: v.requires_grad_() for k, v in sine_mlp_init(torch.Generator().manual_seed(seed), cfg.hidden).items()}
    opt = torch.optim.Adam(params.values(), lr=cfg.outer_lr)
    inner = dataclasses.replace(cfg.inner, steps=cfg.reptile_steps) if method == "reptile" else cfg.inner
    for _ in tqdm(range(cfg.steps), desc=f"sinusoid {method}", leave=False, mininterval=2.0):
        amp, phase = sine_tasks(cfg.meta_batch, g)
        support, query = sine_points(amp, phase, cfg.k, g), sine_points(amp, phase, cfg.k, g)
        if method == "pretrained":  # one network fit to every task's points at once
            opt.zero_grad(set_to_none=True)
            both = {k: torch.cat([support[k], query[k]], 1).reshape(-1, 1) for k in support}
            sine_loss(params, both).backward()
            opt.step()
        else:
            meta_step(method, params, sine_loss, [support], query, inner, opt)
    return {k: v.detach() for k, v in params.items()}


def eval_sine(params, cfg, seed):
    """Query MSE on held-out sines after 0 and each of cfg.eval_steps plain SGD steps on K points.
    Returns {steps: (mean, 95% CI half-width)} over cfg.eval_tasks tasks."""
    g = torch.Generator().manual_seed(seed)
    amp, phase = sine_tasks(cfg.eval_tasks, g)
    support, query = sine_points(amp, phase, cfg.k, g), sine_points(amp, phase, cfg.eval_points, g)
    out = {}
    for k in (0,) + tuple(cfg.eval_steps):
        def one_task(s, q):
            return sine_loss(adapt(params, sine_loss, s, cfg.inner.lr, k), q)
        out[k] = mean_ci95(vmap(one_task)(support, query).numpy())
    return out


def prepare_sinusoid(args):
    """`--task sinusoid` takes the paper's fixed settings; --max-steps and --set change them."""
    flags = {} if args.max_steps is None else {"steps": args.max_steps}
    return args, dataclasses.replace(SINE, **{**flags, **dict(args.set or ())})


def run_sinusoid(prepared):
    """`python train.py --task sinusoid`: the table of K-shot MSE after 1, 5, 10 steps, and results.json."""
    args, cfg = prepared
    t0 = time.time()
    results = {}
    for method in SINE_METHODS:
        t = time.time()
        results[method] = eval_sine(train_sine(method, cfg, args.seed), cfg, seed=args.seed + 10_000)  # held out
        log.info(f"{method:>10}: trained {cfg.steps} steps in {time.time() - t:.0f}s")
    columns = (0,) + tuple(cfg.eval_steps)
    log.info(f"\nK = {cfg.k} shot sine regression, {cfg.eval_tasks} held-out tasks, inner lr {cfg.inner.lr}; "
             "mean ± 95% CI\n")
    log.info("| method | " + " | ".join(f"MSE after {k} step{'s' * (k != 1)}" for k in columns) + " | paper, 1 step |")
    log.info("|" + "---|" * (len(columns) + 2))
    for method in SINE_METHODS:
        cells = [f"{m:.3f} ± {ci:.3f}" for m, ci in (results[method][k] for k in columns)]
        log.info(f"| {method} | " + " | ".join(cells) + f" | {SINE_PAPER.get(method, {}).get(1, '–')} |")
    wall = time.time() - t0
    out = {"methods": {m: {str(k): {"mse": v[0], "mse_ci95": v[1]} for k, v in r.items()}
                       for m, r in results.items()},
           "config": dict(dataclasses.asdict(cfg), seed=args.seed), "paper": SINE_PAPER, "wall_s": wall,
           "peak_memory_mb": peak_memory_mb()}
    save_json(os.path.join(args.out_dir, "results.json"), out)
    log.info(f"\nwall time {wall:.0f}s; peak memory {out['peak_memory_mb']} MB; "
             f"wrote {os.path.join(args.out_dir, 'results.json')}")
    return out


# -----------------------------------------------------------------------------
# 5. the classifier on model.GPT
#
# Every task (auxiliary and target) owns one row of a shared head tensor (n_tasks, M, C), M = the largest
# number of classes; a task with fewer classes masks the rest out, and a regression task (STS-B) reads its
# score from output 0. One head tensor, indexed by a task-id tensor, is what lets vmap run a meta-batch of
# tasks with different label spaces as one program.

HEAD_INIT_STD = 0.02
MASKED_LOGIT = -1e9


class TaskClassifier(nn.Module):
    """GPT encoder -> mean pooling over real tokens -> the task's row of the head."""

    def __init__(self, gpt, n_outputs, regression):
        """n_outputs: classes per task (1 for regression); regression: one bool per task."""
        super().__init__()
        self.gpt = gpt
        n_tasks, M, C = len(n_outputs), max(n_outputs), gpt.config.n_embd
        self.head_weight = nn.Parameter(torch.randn(n_tasks, M, C) * HEAD_INIT_STD)  # (n_tasks, M, C)
        self.head_bias = nn.Parameter(torch.zeros(n_tasks, M))                       # (n_tasks, M)
        self.register_buffer("class_mask", torch.arange(M)[None, :] < torch.tensor(n_outputs)[:, None])
        self.register_buffer("is_regression", torch.tensor(regression, dtype=torch.bool))  # (n_tasks,)

    def forward(self, idx, attention_mask, task):
        """idx, attention_mask: (B, T); task: 0-d long tensor. Returns (B, M): logits, or the score in
        column 0 for a regression task; masked classes hold MASKED_LOGIT."""
        h = self.gpt.hidden_states(idx, attention_mask)                     # (B, T, C)
        pooled = mean_pool(h, attention_mask)                         # (B, C)
        t = task.reshape(1)
        w = self.head_weight.index_select(0, t)[0]                    # (M, C)
        b = self.head_bias.index_select(0, t)[0]                      # (M,)
        out = pooled @ w.T + b                                         # (B, M)
        keep = self.class_mask.index_select(0, t)                      # (1, M)
        return torch.where(keep, out, torch.full_like(out, MASKED_LOGIT))


def classifier_loss(model, params, batch):
    """Cross-entropy (classification) or squared error (regression) of one task's batch
    {"idx" (B, T), "mask" (B, T), "task" 0-d, "y" (B,) float}. Both are computed and one is selected with
    a tensor, not an `if`, so that tasks of both kinds can share a vmap."""
    out = functional_call(model, params, (batch["idx"], batch["mask"], batch["task"]))  # (B, M)
    y = batch["y"]
    is_regression = model.is_regression.index_select(0, batch["task"].reshape(1))[0]
    ce = F.cross_entropy(out, y.long().clamp(0, out.size(1) - 1))
    mse = F.mse_loss(out[:, 0], y)
    return torch.where(is_regression, mse, ce)


def adapted_names(model, which):
    """The parameters the inner loop adapts: "all"; "head" (the task heads only); or "top<n>" (the last n
    transformer blocks, the final LayerNorm and the heads). The others stay at θ inside the inner loop;
    MAML and FOMAML still meta-learn them through the outer gradient, Reptile (whose update is θ' − θ) does
    not move them."""
    names = [n for n, _ in model.named_parameters()]
    if which == "all":
        return names
    if which == "head":
        return [n for n in names if n.startswith("head_")]
    if which.startswith("top") and which[3:].isdigit():
        n_layer = model.gpt.config.n_layer
        top = {f"gpt.transformer.h.{i}." for i in range(n_layer - int(which[3:]), n_layer)}
        return [n for n in names if n.startswith("head_") or n.startswith("gpt.transformer.ln_f.")
                or any(n.startswith(p) for p in top)]
    raise UserError(f"unknown parameter selection {which!r}; expected all, head or top<n>")


def make_task_loss(model, fast_names):
    """(fast params, loss_fn): loss_fn(fast, batch) runs the model with the adapted `fast` tensors and the
    model's own tensors for everything else."""
    params = dict(model.named_parameters())
    fast = {n: params[n] for n in fast_names}
    frozen = {n: p for n, p in params.items() if n not in fast}

    def loss_fn(fast_params, batch):
        return classifier_loss(model, {**frozen, **fast_params}, batch)
    return fast, loss_fn


def predict(model, enc, device, batch_size=128):
    """Predicted class indices, or scores for a regression task, of a whole encoded split."""
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(enc["ids"]), batch_size):
            idx, mask = data.pad_batch(enc["ids"][i:i + batch_size], enc["pad_id"])
            out = model(idx.to(device), mask.to(device), torch.tensor(enc["task_id"], device=device))
            outs.append(out[:, 0] if enc["regression"] else out.argmax(-1))
    model.train()
    return torch.cat(outs).cpu().numpy()


def evaluate(model, enc, metric_names, device):
    pred = predict(model, enc, device)
    gold = np.asarray(enc["y"])
    if enc["regression"]:
        pred = pred * enc["scale"]
        gold = gold * enc["scale"]
    return task_metrics(metric_names, pred, gold)


# -----------------------------------------------------------------------------
# 6. meta-training, the multi-task baseline, fine-tuning the targets: `prepare` and `run`


@dataclass(frozen=True)
class RunConfig:
    """Sizes of one setting; the built-in family's and GLUE's defaults are below."""
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int            # of the BPE trained on the setting's text
    max_len: int               # tokens per example (pairs are trimmed to fit)
    inner: InnerLoop           # α and k: meta-training's inner loop AND the test-time learning rate
    adapted_params: str        # which parameters the inner loop adapts (adapted_names: all, head, top<n>)
    meta_batch: int            # tasks per meta-update
    meta_steps: int            # meta-updates (also the multi-task baseline's steps)
    outer_lr: float            # Adam on θ
    shot: int                  # examples per support batch (each inner step draws one) and per query batch
    ft_steps: int              # fine-tuning steps on a target (plain SGD at inner.lr, batch `shot`)
    ft_eval: int               # evaluate on validation every this many fine-tuning steps
    n_train: tuple             # training-set sizes of the targets (GLUE also runs its 16-shot folders)
    seeds: int                 # seeds per size
    val_max: int               # at most this many validation examples


FAMILY = RunConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=512, max_len=48, inner=InnerLoop(lr=0.02, steps=2),
                   adapted_params="all", meta_batch=4, meta_steps=200, outer_lr=1e-3, shot=8, ft_steps=60, ft_eval=15,
                   n_train=(16, 64), seeds=3, val_max=100)
GLUE = RunConfig(n_layer=2, n_head=2, n_embd=128, vocab_size=4096, max_len=64, inner=InnerLoop(lr=0.01, steps=2),
                 adapted_params="all", meta_batch=4, meta_steps=400, outer_lr=5e-4, shot=8, ft_steps=100, ft_eval=25,
                 n_train=(100, 1000), seeds=3, val_max=200)
FT_CLIP = 1.0                                        # gradient-norm clip while fine-tuning [ours]
GLUE_AUX = ("MNLI", "QNLI", "QQP", "SST-2")          # [paper, secondary]
GLUE_TARGETS = ("CoLA", "MRPC", "STS-B", "RTE")      # [paper]
INITS = ("none", "multitask", "maml", "fomaml", "reptile")


def encode_split(tokenizer, task, split, task_id, max_len, scale):
    """Token ids and targets of one split, with what batching and evaluation need to know."""
    y = np.asarray(split["y"], dtype=np.float32) / scale  # regression scores to [0, 1]; classes unchanged
    return dict(ids=data.encode_examples(tokenizer, split, max_len), y=y, task_id=task_id,
                regression=task["kind"] == "regression", scale=scale, pad_id=tokenizer.pad_id)


def subset(enc, rows):
    return dict(enc, ids=[enc["ids"][i] for i in rows], y=enc["y"][rows])


def stack_tasks(encs, n_batches, shot, rng, pad_id, device="cpu"):
    """For each task enc of a meta-batch, `n_batches` random batches of `shot` examples, all padded to one
    length. Returns a list of n_batches dicts {"idx" (N, shot, T), "mask", "task" (N,), "y" (N, shot)} of
    tensors on `device`."""
    drawn = [[rng.choice(len(e["ids"]), size=shot, replace=len(e["ids"]) < shot) for e in encs]
             for _ in range(n_batches)]
    T = max(len(e["ids"][i]) for rows in drawn for e, r in zip(encs, rows) for i in r)
    batches = []
    for rows in drawn:
        idx, mask = zip(*(data.pad_batch([e["ids"][i] for i in r], pad_id, T) for e, r in zip(encs, rows)))
        batch = {"idx": torch.stack(idx), "mask": torch.stack(mask),
                 "task": torch.tensor([e["task_id"] for e in encs]),
                 "y": torch.stack([torch.from_numpy(e["y"][r]) for e, r in zip(encs, rows)])}
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def meta_train(model, aux_encs, sizes, method, cfg, sampling, rng, device, state=None, phase=None):
    """θ <- MAML / FOMAML / Reptile / multi-task training on the auxiliary tasks. Returns the loss curve.

    Every method runs its tasks under vmap, inside model.second_order_ops(): attention on the MATH kernel and
    LayerNorm written out, so that second derivatives are right there (tests/test_model.py and
    tests/test_maml_classifier.py check vmap == the per-task loop). With a RunState, the loop saves what it
    needs to continue exactly (weights, optimizer, random stream, loss curve) every tenth of the run.
    """
    fast, loss_fn = make_task_loss(model, adapted_names(model, cfg.adapted_params))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
    # under torchrun every process draws the same meta-batch and takes its own contiguous share of the tasks;
    # average_gradients then gives every process the meta-gradient of the whole meta-batch
    rank, world = rank_and_world()
    mine = slice(rank * cfg.meta_batch // world, (rank + 1) * cfg.meta_batch // world)
    saved = state.loop(phase) if state is not None else None
    losses = restore_meta_train(saved, model, opt, rng)

    def step(_):
        chosen = [aux_encs[i] for i in sample_tasks(sizes, cfg.meta_batch, sampling, rng)]
        if method == "multitask":  # the MT-DNN-style baseline: the same tasks and as much data, no inner loop
            batch = stack_tasks(chosen, 1, cfg.shot * (cfg.inner.steps + 1), rng, chosen[0]["pad_id"], device)[0]
            loss = multitask_step(fast, loss_fn, task_slice(batch, mine), opt)
        else:
            batches = stack_tasks(chosen, cfg.inner.steps + 1, cfg.shot, rng, chosen[0]["pad_id"], device)
            batches = [task_slice(b, mine) for b in batches]
            loss = meta_step(method, fast, loss_fn, batches[:-1], batches[-1], cfg.inner, opt)
        losses.append(float("nan") if loss is None else loss.item())
        bar.update()

    def save(step, best):
        state.save_loop(phase, step=step, weights=model.state_dict(), optimizer=opt.state_dict(),
                        rng=rng.bit_generator.state, losses=list(losses))

    with second_order_ops(), tqdm(total=cfg.meta_steps, initial=saved["step"] if saved else 0,
                                  desc=f"meta-train {method}", leave=False, mininterval=5.0,
                                  disable=rank > 0) as bar:
        train_and_select(model, step, cfg.meta_steps, max(1, cfg.meta_steps // 10), start=saved["step"] if saved
                         else 0, save_state=save if state is not None else None)
    return losses


def multitask_step(fast, loss_fn, batch, opt):
    """One step of the multi-task baseline: the mean loss of the batch's tasks at θ itself, no inner loop."""
    opt.zero_grad(set_to_none=True)
    loss = vmap(loss_fn, in_dims=(None, 0), randomness="different")(fast, batch).mean()
    loss.backward()
    average_gradients(optimizer_params(opt))
    opt.step()
    return loss.detach()


def restore_meta_train(saved, model, opt, rng):
    """Put back a meta-training loop that a resumed run continues; returns its loss curve so far."""
    if saved is None:
        return []
    model.load_state_dict(saved["weights"])
    opt.load_state_dict(saved["optimizer"])
    rng.bit_generator.state = saved["rng"]
    return list(saved["losses"])


def fine_tune(model, init_state, train, val, test, metric_names, cfg, seed, device):
    """Fine-tune every parameter from `init_state` with plain SGD at the shared inner lr, on batches of
    `cfg.shot` of the `train` examples; keep the state with the best validation score (first metric,
    checked at step 0 and every cfg.ft_eval steps); report `test` once, from that state."""
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.inner.lr)
    fast, loss_fn = make_task_loss(model, adapted_names(model, "all"))
    rng = np.random.default_rng(seed)

    def step(_):
        batch = stack_tasks([train], 1, min(cfg.shot, len(train["ids"])), rng, train["pad_id"], device)[0]
        opt.zero_grad(set_to_none=True)
        loss_fn(fast, task_slice(batch, 0)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), FT_CLIP)
        opt.step()

    score, stop_step, _ = train_and_select(model, step, cfg.ft_steps, cfg.ft_eval,
                                           lambda: evaluate(model, val, metric_names[:1], device)[metric_names[0]],
                                           label=None)
    if stop_step is None:  # a nan score (diverged) is never the best
        raise UserError(f"fine-tuning diverged: every validation {metric_names[0]} was nan; lower --inner-lr "
                        f"(now {cfg.inner.lr})")
    return dict(evaluate(model, test, metric_names, device), val=score, stop_step=stop_step)


def load_setting(args):
    """(setting name, aux tasks, target tasks, default RunConfig, few-shot root or None) from the flags."""
    if args.data is None:
        if args.aux or args.targets:
            raise UserError("--aux/--targets name GLUE tasks; give --data with the GLUE folder")
        aux, targets = data.task_family()
        return "family", aux, targets, FAMILY, None
    if len(args.data) != 1:
        raise UserError(f"--task maml takes one GLUE folder, got {len(args.data)}: {args.data}")
    root = args.data[0]
    aux_names, target_names = args.aux or list(GLUE_AUX), args.targets or list(GLUE_TARGETS)
    for names, flag in ((aux_names, "--aux"), (target_names, "--targets")):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"{flag}: {twice[0]} is named twice")
        for n in names:
            data.check_glue_task(n)
            if not os.path.isdir(os.path.join(root, n)):
                raise UserError(f"{flag} {n}: {os.path.join(root, n)} is not there (python data.py glue fetches it)")
    overlap = set(aux_names) & set(target_names)
    if overlap:
        raise UserError(f"tasks {sorted(overlap)} are both auxiliary (--aux) and target (--targets)")
    aux, targets = data.load_glue(root, aux_names), data.load_glue(root, target_names)
    few_shot = os.path.join(os.path.dirname(os.path.abspath(root)), "glue-16shot")
    return "glue", aux, targets, GLUE, few_shot if os.path.isdir(few_shot) else None


def settings(args, base):
    """The setting's RunConfig with the flags applied (--set NAME=VALUE last)."""
    inner = InnerLoop(args.inner_lr if args.inner_lr is not None else base.inner.lr,
                      args.inner_steps if args.inner_steps is not None else base.inner.steps)
    flags = dict(inner=inner, meta_batch=args.meta_batch or base.meta_batch,
                 meta_steps=args.max_steps or base.meta_steps, ft_eval=args.eval_interval or base.ft_eval,
                 n_train=tuple(args.n_train) if args.n_train else base.n_train)
    cfg = dataclasses.replace(base, **{**flags, **dict(args.set or ())})
    if not (cfg.adapted_params in ("all", "head") or re.fullmatch(r"top[0-9]+", cfg.adapted_params)):
        raise UserError(f"--set adapted_params={cfg.adapted_params}: expected all, head or top<n>")
    _, world = rank_and_world()
    if cfg.meta_batch % world:
        raise UserError(f"a meta-batch of {cfg.meta_batch} tasks does not split over {world} processes")
    return cfg


def target_runs(task, tid, tokenizer, cfg, scale, few_shot_root, seed):
    """[(size label, seed, train enc, val enc, test enc)] for one target task, and the reported split.

    With a labelled test split: validation = dev, report = test. Without one (GLUE's public files): a
    validation split is carved out of train (never trained on), and dev is reported.
    """
    enc = {s: encode_split(tokenizer, task, task[s], tid, cfg.max_len, scale)
           for s in ("train", "dev", "test") if s in task}
    rng = np.random.default_rng(seed)
    if "test" in enc:
        pool, val, test, reported = enc["train"], enc["dev"], enc["test"], "test"
    else:
        order = rng.permutation(len(enc["train"]["ids"]))
        n_val = min(cfg.val_max, len(order) // 10)
        val, pool = subset(enc["train"], order[:n_val]), subset(enc["train"], order[n_val:])
        test, reported = enc["dev"], "dev"
    val = subset(val, np.arange(min(cfg.val_max, len(val["ids"]))))
    if len(val["ids"]) == 0:
        raise UserError(f"{task['name']}: too few training examples to set aside a validation split")
    runs = []
    for n in cfg.n_train:
        if n > len(pool["ids"]):
            raise UserError(f"--n-train {n} is more than the {len(pool['ids'])} training examples of "
                            f"{task['name']} (after setting aside validation)")
        for s in range(cfg.seeds):
            rows = np.random.default_rng(seed + 1000 * s + n).permutation(len(pool["ids"]))[:n]
            runs.append((str(n), s, subset(pool, rows), val, test))
    if few_shot_root is not None:  # LM-BFF's 16-shot folders: their own train and dev
        def pairs(split):
            return list(zip(split["text_a"], split["text_b"] or [None] * len(split["text_a"])))
        reported_pairs = pairs(task[reported])
        for folder in data.few_shot_folders(few_shot_root, task["name"]):
            shot = data.glue_task(task["name"], folder)
            # the few-shot examples were drawn from GLUE's training set; the few that also sit in the
            # reported split (when it is a re-split of the training set) are left out of it for this seed
            seen = set(pairs(shot["train"]) + pairs(shot["dev"]))
            keep = np.array([i for i, p in enumerate(reported_pairs) if p not in seen], dtype=np.int64)
            runs.append(("16-shot", folder.rsplit("-", 1)[1],
                         encode_split(tokenizer, task, shot["train"], tid, cfg.max_len, scale),
                         encode_split(tokenizer, task, shot["dev"], tid, cfg.max_len, scale), subset(test, keep)))
    return runs, reported


def new_encoder(tokenizer, cfg):
    """The from-scratch GPT of a setting (its vocabulary rounded up to a multiple of 64)."""
    return GPT(GPTConfig(block_size=cfg.max_len, vocab_size=64 * math.ceil(tokenizer.vocab_size / 64),
                         n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))


def classifier_for(gpt, tasks):
    """The classifier over {name: task}: one head row per task, in that order (the task ids)."""
    return TaskClassifier(gpt, [1 if t["kind"] == "regression" else len(t["labels"]) for t in tasks.values()],
                          [t["kind"] == "regression" for t in tasks.values()])


def regression_scale(task):
    """A regression task's scores are divided by the largest training score, to [0, 1], for the loss."""
    return (max(task["train"]["y"]) or 1.0) if task["kind"] == "regression" else 1.0


@dataclass
class Experiment:
    """Everything a run needs, read and checked by prepare() before anything is written."""
    args: object
    cfg: RunConfig
    setting: str
    aux: dict
    targets: dict
    inits: tuple
    tokenizer: data.TextTokenizer
    model: TaskClassifier
    init_state: dict           # the classifier before any meta-training (random, or --init's encoder)
    aux_encs: list
    runs: dict                 # target -> (runs, reported split) of target_runs
    state: RunState


def prepare(args):
    """Settings, tasks, tokenizer and classifier, checked before anything is written; with --resume, the saved
    run's settings are compared with these before any work."""
    setting, aux, targets, base, few_shot_root = load_setting(args)
    cfg = settings(args, base)
    inits = INITS if args.method == "all" else ("none", args.method) if args.method != "none" else ("none",)
    names = list(aux) + list(targets)
    run_key = dict(task="maml", setting=setting, tasks=names, sampling=args.sampling, seed=args.seed,
                   config=dataclasses.asdict(cfg), init=args.init, inits=list(inits),
                   world=rank_and_world()[1])
    state = RunState(os.path.join(args.out_dir, "state.pt"), run_key, args.resume)
    # the tokenizer and the encoder: --init's (GPT-2's, or a project checkpoint's), else trained here
    if args.resume:
        tokenizer = data.load_tokenizer(os.path.join(args.out_dir, "tokenizer.json"))
    if args.init:
        gpt, tokenizer = data.load_pretrained(args.init)
        if gpt.config.block_size < cfg.max_len:
            raise UserError(f"{args.init}: the model reads {gpt.config.block_size} tokens, but this setting "
                            f"feeds it up to {cfg.max_len}")
    else:
        if not args.resume:
            texts = [t for task in list(aux.values()) + list(targets.values())
                     for t in task["train"]["text_a"] + (task["train"]["text_b"] or [])]
            tokenizer = data.train_tokenizer(texts, vocab_size=cfg.vocab_size)
        gpt = new_encoder(tokenizer, cfg)
    all_tasks = {**aux, **targets}
    scales = {n: regression_scale(t) for n, t in all_tasks.items()}
    model = classifier_for(gpt, all_tasks).to(args.device)
    aux_encs = [encode_split(tokenizer, aux[n], aux[n]["train"], names.index(n), cfg.max_len, scales[n]) for n in aux]
    runs = {n: target_runs(targets[n], names.index(n), tokenizer, cfg, scales[n], few_shot_root, args.seed)
            for n in targets}
    return Experiment(args, cfg, setting, aux, targets, inits, tokenizer, model,
                      {k: v.clone() for k, v in model.state_dict().items()}, aux_encs, runs, state)


def learn_init(exp, init):
    """Meta-train (or multi-task train) one initialisation from the common start, save it as init_<init>.pt
    (its encoder a plain GPT checkpoint, usable as --init; the task heads beside it); returns its weights."""
    args, cfg, model, state = exp.args, exp.cfg, exp.model, exp.state
    model.load_state_dict(exp.init_state)
    if init == "none" or f"learned_{init}" in state.done:
        return state.done.get(f"learned_{init}", {}).get("weights", exp.init_state)
    rng = np.random.default_rng([args.seed, INITS.index(init)])  # its own stream: the same with any --method
    curve = meta_train(model, exp.aux_encs, [len(e["ids"]) for e in exp.aux_encs], init, cfg, args.sampling, rng,
                       args.device, state, phase=f"meta_{init}")
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("gpt.")}
    if rank_and_world()[0] == 0:
        save_checkpoint(os.path.join(args.out_dir, f"init_{init}.pt"), model.gpt, None, model.gpt.config,
                        cfg.meta_steps, {"loss_last": curve[-1]}, heads=heads)
    tenth = max(1, len(curve) // 10)  # one meta-batch's loss is noisy: the means over the first and last tenth
    summary = [] if math.isnan(curve[0]) else [float(np.mean(curve[:tenth])), float(np.mean(curve[-tenth:]))]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state.finish(f"learned_{init}", dict(weights=weights, loss_first_last_tenth=summary))
    return weights


def fine_tune_targets(exp, init, learned):
    """Fine-tune every target from `learned` at every size and seed; each run's metrics are stored in the run
    state as it ends (a resumed run skips those). Returns {target: {size: summary over seeds}}."""
    done = exp.state.done.setdefault(f"fine_tuned_{init}", {})
    for n, (task_runs, _) in exp.runs.items():
        for size, seed, train, val, test in task_runs:
            key = f"{n}/{size}/{seed}"
            if key not in done:
                done[key] = fine_tune(exp.model, learned, train, val, test, exp.targets[n]["metrics"], exp.cfg,
                                      exp.args.seed + int(seed), exp.args.device)
                exp.state.save(f"fine_tuned_{init} {key}")
    out = {}
    for n, (task_runs, _) in exp.runs.items():
        per_size = {}
        for size, seed, *_ in task_runs:
            per_size.setdefault(size, []).append(done[f"{n}/{size}/{seed}"])
        out[n] = {size: summarize(ms, exp.targets[n]["metrics"]) for size, ms in per_size.items()}
    return out


def run(exp):
    """`python train.py --task maml`: learn each initialisation, fine-tune every target from it at every
    size and seed, print the table and write results.json."""
    args, cfg = exp.args, exp.cfg
    rank, _ = rank_and_world()
    if rank == 0 and not args.resume:
        exp.tokenizer.save(os.path.join(args.out_dir, "tokenizer.json"))  # so that out_dir/init_*.pt can be --init
    log.info(f"setting {exp.setting}: {len(exp.aux)} auxiliary tasks {list(exp.aux)}, targets {list(exp.targets)}; "
             f"GPT {exp.model.gpt.num_params() / 1e6:.2f}M parameters; tokenizer {exp.tokenizer.vocab_size} tokens")
    results = {n: {} for n in exp.targets}
    for init in exp.inits:
        t = time.time()
        learned = learn_init(exp, init)
        t_meta = time.time() - t
        if rank > 0:
            continue  # fine-tuning the targets is process 0's
        for n, by_size in fine_tune_targets(exp, init, learned).items():
            results[n][init] = by_size
        log.info(f"{init:>10}: learned in {t_meta:.0f}s, targets fine-tuned in {time.time() - t - t_meta:.0f}s")
    if rank > 0:
        return None
    reported = {n: r[1] for n, r in exp.runs.items()}
    print_table(results, exp.targets, exp.inits, reported)
    out = {"targets": results,
           "config": dict(dataclasses.asdict(cfg), setting=exp.setting, aux=list(exp.aux), targets=list(exp.targets),
                          sampling=args.sampling, inits=list(exp.inits), seed=args.seed, init=args.init,
                          reported_split=reported, device=args.device, threads=torch.get_num_threads(),
                          meta_loss_first_last_tenth={i: exp.state.done[f"learned_{i}"]["loss_first_last_tenth"]
                                                      for i in exp.inits if f"learned_{i}" in exp.state.done
                                                      and exp.state.done[f"learned_{i}"]["loss_first_last_tenth"]}),
           "wall_s": exp.state.seconds(), "peak_memory_mb": peak_memory_mb(), "resumed": exp.state.resumes}
    save_json(os.path.join(args.out_dir, "results.json"), out)
    log.info(f"\nwall time {out['wall_s']:.0f}s; peak memory {out['peak_memory_mb']} MB; "
             f"wrote {os.path.join(args.out_dir, 'results.json')}")
    return out


def summarize(metric_dicts, metric_names):
    """{metric: mean, metric_std: std, ...} over seeds, GLUE's names, plus the number of seeds."""
    out = {}
    for name in metric_names:
        out[name], out[name + "_std"] = mean_std([m[name] for m in metric_dicts])
    out["n_seeds"] = len(metric_dicts)
    return out


def print_table(results, targets, inits, reported):
    """One Markdown table: rows target x size, columns the initialisations; mean ± std over seeds."""
    log.info(f"\nTarget tasks after fine-tuning from each initialisation (mean ± std over seeds; split reported: "
             f"{', '.join(f'{n}={s}' for n, s in reported.items())})\n")
    log.info("| target | metric | size | " + " | ".join(inits) + " |")
    log.info("|---|---|---|" + "---|" * len(inits))
    for n in targets:
        sizes = list(results[n][inits[0]])
        for metric in targets[n]["metrics"]:
            for size in sizes:
                cells = [f"{results[n][i][size][metric]:.3f} ± {results[n][i][size][metric + '_std']:.3f}"
                         for i in inits]
                log.info(f"| {n} | {metric} | {size} | " + " | ".join(cells) + " |")
