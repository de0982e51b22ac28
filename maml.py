"""Meta-learning an initialisation for low-resource text classification: MAML, first-order MAML and Reptile.

Papers: Dou, Yu and Anastasopoulos, "Investigating Meta-Learning Algorithms for Low-Resource Natural Language
Understanding Tasks" (EMNLP 2019); Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning" (ICML 2017); Nichol,
Achiam and Schulman, "On First-Order Meta-Learning Algorithms" (Reptile, 2018). Method and decisions: docs/maml.md.

Read it top to bottom: 1. the functional core, for any model, and task sampling; 2. the sinusoid check of Finn et
al.; 3. the classifier on model.GPT; 4. meta-training and fine-tuning; 5. the run (`MAMLConfig`, `prepare`, `run`).
GLUE's metrics are in evaluation.py; checkpoints, the run state and processes in engine.py.

Run it (CPU):  python train.py --task sinusoid      # MAML / FOMAML / Reptile / pretrained on sine waves
               python train.py --task maml          # the built-in task family, every initialisation
               python train.py --task maml --data data/glue --show-config   # GLUE's settings, and what they allow
"""

import dataclasses
import functools
import logging
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from tqdm import tqdm

import data
import engine
from engine import setting, train_and_select
from evaluation import mean_ci95, plus_minus, save_results, split_metrics, summarize_seeds
from model import GPT, GPTConfig, UserError, mean_pool, second_order_ops

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# 1. the functional core
#
# Parameters are a dict {name: tensor}. A task's loss is `loss_fn(params, batch) -> scalar`. The inner loop
# takes `steps` plain gradient steps from the shared initialisation θ:
#     θ^(0) = θ,   θ^(j+1) = θ^(j) - inner_lr ∇L_S(θ^(j))
# `torch.func.grad` returns a gradient that ordinary autograd can differentiate again, so a loss computed
# at θ^(k) back-propagates *through* the inner steps into θ: that is second-order MAML, with no
# create_graph bookkeeping. Detaching each inner gradient gives first-order MAML (FOMAML).


def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    """k steps of gradient descent from `params` (each gradient by torch.func.grad: adapt runs under vmap, on params
    that need not require grad); returns θ^(k). batches: one batch (every step) or one per step (a new support batch
    per step, as the authors' code draws them; cycled if shorter than `steps`). first_order: each inner gradient a
    constant (FOMAML / Reptile): the result depends on `params` through θ^(0), not through the gradients."""
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)  # d loss_fn / d params, as a dict like params
    for j in range(steps):
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params


def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    """Mean over the tasks of a meta-batch of L_Q(θ_i^(k)), all tasks at once with vmap.
    support: list (one per inner step) of batches whose tensors have a leading task dimension (N, ...);
    query: one such batch. The tasks share every shape (padded sequences, fixed support/query sizes).
    randomness="different": each task draws its own dropout mask."""
    def one_task(task_support, task_query):  # L_Q(θ^(k)): adapt on the task's support batches, score its query
        return loss_fn(adapt(params, loss_fn, task_support, inner_lr, steps, first_order), task_query)
    return vmap(one_task, randomness="different")(support, query).mean()  # the mean of N losses


def task_slice(batch, i):
    """Task i (an index or a slice) of a batch dict whose tensors have a leading task dimension."""
    return {k: v[i] for k, v in batch.items()}


def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    """The reference path: the same mean query loss, one task at a time, the inner gradient from autograd.grad
    (create_graph=True for second order). Slow but obviously right; the tests compare the two."""
    losses = []
    for i in range(next(iter(query.values())).shape[0]):  # the tasks
        fast = dict(params)
        for j in range(steps):
            loss = loss_fn(fast, task_slice(support[j % len(support)], i))
            gs = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), gs)}
        losses.append(loss_fn(fast, task_slice(query, i)))
    return torch.stack(losses).mean()


def reptile_direction(params, loss_fn, support, inner_lr, steps):
    """mean_i(θ_i^(k) - θ): where the tasks' own inner loops moved, averaged over the meta-batch (vmap).
    No query batch and no second derivative: the inner loop runs on detached parameters."""
    start = {name: p.detach() for name, p in params.items()}

    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    adapted = vmap(one_task, randomness="different")(support)  # each value (N, *shape)
    return {name: (adapted[name] - start[name]).mean(0) for name in start}


def meta_step(method, params, loss_fn, support, query, inner_lr, inner_steps, optimizer):
    """One outer update of `params` (leaf tensors the optimizer holds) for maml | fomaml | reptile.
    MAML / FOMAML: the gradient of the mean query loss goes to .grad, and that loss is returned. Reptile:
    -(θ' - θ) goes to .grad as a pseudo-gradient, so that the same optimizer (Adam) takes the step; None."""
    optimizer.zero_grad(set_to_none=True)
    loss = None
    if method == "reptile":
        direction = reptile_direction(params, loss_fn, support, inner_lr, inner_steps)
        for name, p in params.items():
            p.grad = -direction[name]
    else:
        loss = meta_loss_vmap(params, loss_fn, support, query, inner_lr, inner_steps, first_order=method == "fomaml")
        loss.backward()
    engine.average_gradients(params.values())  # under torchrun: the mean over every process's tasks
    optimizer.step()
    return None if loss is None else loss.detach()


def task_probabilities(sizes, sampling):
    """How often each auxiliary task fills a slot of a meta-batch, p_i. uniform: 1/n. pps: |D_i| / sum_j |D_j|
    (Dou et al.'s best). mixed [ours]: uniform with probability 1/2, else PPS (the average). Else: ValueError."""
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]


# -----------------------------------------------------------------------------
# 2. the sinusoid check (Finn et al. 2017, section 5.1)
#
# Each task is a sine y = A sin(x - φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5]; a learner sees K = 10
# points of a new sine and must fit the whole curve. A network pretrained on all sines jointly can only
# learn the mean function (≈ 0) and needs many steps to fit a new one; MAML's initialisation fits it in one.
@dataclasses.dataclass(frozen=True)
class SineConfig:
    """The sinusoid check: the paper's settings, but for the number of meta-updates and Reptile's steps."""
    hidden: int = setting(40, "> 0", "width of the MLP 1 -> hidden -> hidden -> 1, ReLU [paper]")
    k: int = setting(10, "> 0", "K of K-shot: support (and query) points per task [paper]")
    meta_batch: int = setting(25, "> 0", "tasks per meta-update [paper]")
    outer_lr: float = setting(1e-3, "0..1e30", "Adam's learning rate on θ [paper]")
    inner_lr: float = setting(0.01, "0..1e30", "the inner loop's learning rate, in meta-training and at test [paper]")
    inner_steps: int = setting(1, "> 0", "inner steps of MAML and FOMAML while meta-training [paper]")
    reptile_steps: int = setting(5, "> 0", "Reptile's inner steps [ours]: with one step Reptile is joint training")
    steps: int = setting(6000, "> 0", "meta-updates per method [ours; the paper runs 70,000]")
    eval_tasks: int = setting(600, ">= 2", "held-out sines (2 at least: their 95% CI)")
    eval_points: int = setting(100, "> 0", "query points per held-out sine")
    eval_steps: tuple[int, ...] = setting((1, 5, 10), "> 0", "report the MSE after 0 and each of these many steps")

    def check(self):
        """The largest tensors of a run (lower bounds) against the machine's memory."""
        engine.check_memory("cpu", {"a meta-step (meta_batch, k, hidden)": 2 * self.meta_batch * self.k * self.hidden,
                                    "the test (eval_tasks, eval_points, hidden)": 2 * self.eval_tasks
                                    * self.eval_points * self.hidden})


SINE = SineConfig()
SINE_METHODS = ("maml", "fomaml", "reptile", "pretrained")
SINE_PAPER = {"maml": {1: "≈0.5"}, "pretrained": {1: "≈2.3"}}  # approximate: read off Finn et al.'s Fig. 3, K = 10


def sine_mlp_init(generator, hidden=SINE.hidden):
    """Parameters of the 1 -> hidden -> hidden -> 1 MLP (PyTorch's default Linear init)."""
    params = {}
    for name, (n_in, n_out) in dict(l1=(1, hidden), l2=(hidden, hidden), l3=(hidden, 1)).items():
        bound = 1.0 / math.sqrt(n_in)
        params[name + ".weight"] = (torch.rand(n_out, n_in, generator=generator) * 2 - 1) * bound
        params[name + ".bias"] = (torch.rand(n_out, generator=generator) * 2 - 1) * bound
    return params


def sine_loss(params, batch):
    """Mean squared error of the MLP on one task's batch {"x": (n, 1), "y": (n, 1)}."""
    h = F.relu(F.linear(batch["x"], params["l1.weight"], params["l1.bias"]))
    h = F.relu(F.linear(h, params["l2.weight"], params["l2.bias"]))
    return F.mse_loss(F.linear(h, params["l3.weight"], params["l3.bias"]), batch["y"])


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
    inner_steps = cfg.reptile_steps if method == "reptile" else cfg.inner_steps
    for _ in tqdm(range(cfg.steps), desc=f"sinusoid {method}", leave=False, mininterval=2.0):
        amp, phase = sine_tasks(cfg.meta_batch, g)
        support, query = sine_points(amp, phase, cfg.k, g), sine_points(amp, phase, cfg.k, g)
        if method == "pretrained":  # one network fit to every task's points at once
            opt.zero_grad(set_to_none=True)
            both = {k: torch.cat([support[k], query[k]], 1).reshape(-1, 1) for k in support}
            sine_loss(params, both).backward()
            opt.step()
        else:
            meta_step(method, params, sine_loss, [support], query, cfg.inner_lr, inner_steps, opt)
    if not all(torch.isfinite(v).all() for v in params.values()):
        raise UserError(f"training diverged: sinusoid {method}'s weights are not finite; lower outer_lr or inner_lr")
    return {k: v.detach() for k, v in params.items()}


def eval_sine(params, cfg, seed):
    """{steps: (mean, 95% CI half-width)} of the held-out sines' query MSE after that many SGD steps at inner_lr."""
    def mse_after(k, s, q):  # one sine's query MSE after k steps on its support points
        return sine_loss(adapt(params, sine_loss, s, cfg.inner_lr, k), q)
    g = torch.Generator().manual_seed(seed)
    amp, phase = sine_tasks(cfg.eval_tasks, g)
    support, query = sine_points(amp, phase, cfg.k, g), sine_points(amp, phase, cfg.eval_points, g)
    return {k: mean_ci95(vmap(functools.partial(mse_after, k))(support, query).numpy()) for k in (0, *cfg.eval_steps)}


def run_sinusoid(cfg, out_dir, seed):
    """`python train.py --task sinusoid`: train each method, log the table and write out_dir/results.json."""
    engine.check_settings(cfg)
    t0, results, columns = time.time(), {}, (0,) + tuple(cfg.eval_steps)
    for method in SINE_METHODS:
        t = time.time()
        results[method] = eval_sine(train_sine(method, cfg, seed), cfg, seed=seed + 10_000)  # held out
        if not all(math.isfinite(mse) for mse, _ in results[method].values()):  # nan in a table reads as a result
            raise UserError(f"the test diverged: {method}'s held-out MSE is not finite; lower inner_lr")
        log.info(f"{method:>10}: trained {cfg.steps} steps in {time.time() - t:.0f}s")
    header = ["method", *(f"MSE after {k} step{'s' * (k != 1)}" for k in columns), "paper, 1 step"]
    rows = [[m, *(f"{mse:.3f} ± {ci:.3f}" for mse, ci in (results[m][k] for k in columns)),
             SINE_PAPER.get(m, {}).get(1, "–")] for m in SINE_METHODS]
    title = f"K = {cfg.k} shot sine regression, {cfg.eval_tasks} held-out tasks, inner_lr {cfg.inner_lr}; mean ± 95% CI"
    methods = {m: {str(k): {"mse": v[0], "mse_ci95": v[1]} for k, v in r.items()} for m, r in results.items()}
    out = dict(methods=methods, config=dict(dataclasses.asdict(cfg), seed=seed), paper=SINE_PAPER)
    return save_results(out_dir, out, "cpu", time.time() - t0, (title, header, rows))


# -----------------------------------------------------------------------------
# 3. the classifier on model.GPT
#
# Every task (auxiliary and target) owns one row of a shared head tensor (n_tasks, M, C), M = the largest
# number of classes; a task with fewer classes masks the rest out, and a regression task (STS-B) reads its
# score from output 0. One head tensor, indexed by a task-id tensor, is what lets vmap run a meta-batch of
# tasks with different label spaces as one program.
MASKED_LOGIT = -1e9


class TaskClassifier(nn.Module):
    """GPT -> mean pooling over real tokens -> the task's head row. n_outputs: classes per task (1: regression)."""

    def __init__(self, gpt, n_outputs, regression):
        super().__init__()
        self.gpt = gpt
        n_tasks, M, C = len(n_outputs), max(n_outputs), gpt.config.n_embd
        self.head_weight = nn.Parameter(torch.randn(n_tasks, M, C) * 0.02)  # (n_tasks, M, C), N(0, 0.02) as GPT's
        self.head_bias = nn.Parameter(torch.zeros(n_tasks, M))               # (n_tasks, M)
        self.register_buffer("class_mask", torch.arange(M)[None, :] < torch.tensor(n_outputs)[:, None])
        self.register_buffer("is_regression", torch.tensor(regression, dtype=torch.bool))  # (n_tasks,)

    def forward(self, idx, attention_mask, task):
        """idx, attention_mask: (B, T); task: 0-d long tensor. Returns (B, M): logits, or the score in
        column 0 for a regression task; masked classes hold MASKED_LOGIT."""
        pooled = mean_pool(self.gpt.hidden_states(idx, attention_mask), attention_mask)  # (B, T, C) -> (B, C)
        t = task.reshape(1)
        out = pooled @ self.head_weight.index_select(0, t)[0].T + self.head_bias.index_select(0, t)[0]  # (B, M)
        return torch.where(self.class_mask.index_select(0, t), out, torch.full_like(out, MASKED_LOGIT))


def classifier_loss(model, params, batch):
    """Cross-entropy or squared error (regression) of one task's batch {"idx", "mask" (B, T), "task" 0-d, "y" (B,)}.
    Both are computed and one is selected with a tensor, not an `if`, so that both kinds can share a vmap."""
    out, y = functional_call(model, params, (batch["idx"], batch["mask"], batch["task"])), batch["y"]  # (B, M), (B,)
    is_regression = model.is_regression.index_select(0, batch["task"].reshape(1))[0]
    ce = F.cross_entropy(out, y.long().clamp(0, out.size(1) - 1))
    return torch.where(is_regression, F.mse_loss(out[:, 0], y), ce)


def task_loss(model):
    """(θ, loss_fn(params, batch)): every parameter as a dict (the inner loop adapts them all, as the paper);
    named_parameters() gives the tied token embedding once, which functional_call needs."""
    return dict(model.named_parameters()), functools.partial(classifier_loss, model)


def pair_lengths(n_a, n_b, budget):
    """Tokens text_a and text_b keep of n_a, n_b to fit `budget`, as BERT's _truncate_seq_pair cuts them: the longer
    side first, text_b when they are as long."""
    if n_a + n_b <= budget:
        return n_a, n_b
    if 2 * min(n_a, n_b) <= budget:  # the shorter side stays whole; the longer is cut to the rest
        return (n_a, budget - n_a) if n_a <= n_b else (budget - n_b, n_b)
    return budget - budget // 2, budget // 2  # both are cut to a half, text_b one token shorter if budget is odd


def encode_examples(tokenizer, split, max_len):
    """Token ids of each example, at most max_len: text_a, or text_a <sep> text_b cut to fit, then <eot>."""
    a_ids = tokenizer.encode_batch(split["text_a"])
    if split["text_b"] is None:
        return [ids[:max_len - 1] + [tokenizer.eot_id] for ids in a_ids]
    b_ids = tokenizer.encode_batch(split["text_b"])
    keep = [pair_lengths(len(a), len(b), max_len - 2) for a, b in zip(a_ids, b_ids)]  # room for <sep> and <eot>
    return [a[:i] + [tokenizer.sep_id] + b[:j] + [tokenizer.eot_id] for a, b, (i, j) in zip(a_ids, b_ids, keep)]


def encode_split(tokenizer, task, split, task_id, max_len, scale):
    """Token ids and targets of one split, with what batching and evaluation need to know."""
    y = np.asarray(split["y"], dtype=np.float32) / scale  # regression scores to [0, 1]; classes unchanged
    return dict(ids=encode_examples(tokenizer, split, max_len), y=y, task_id=task_id,
                regression=task["kind"] == "regression", scale=scale, pad_id=tokenizer.pad_id)


def regression_scale(task):
    """A regression task's scores are divided by the largest training score, to [0, 1], for the loss."""
    return (max(task["train"]["y"]) or 1.0) if task["kind"] == "regression" else 1.0


def subset(enc, rows):
    return dict(enc, ids=[enc["ids"][i] for i in rows], y=enc["y"][rows])


def stack_tasks(encs, n_batches, shot, rng, pad_id, device="cpu"):
    """For each task enc of a meta-batch, `n_batches` random batches of `shot` examples, all padded to one
    length. Returns a list of n_batches dicts {"idx" (N, shot, T), "mask", "task" (N,), "y" (N, shot)}."""
    drawn = [[rng.choice(len(e["ids"]), shot, replace=len(e["ids"]) < shot) for e in encs] for _ in range(n_batches)]
    T = max(len(e["ids"][i]) for rows in drawn for e, r in zip(encs, rows) for i in r)
    batches = []
    for rows in drawn:
        idx, mask = zip(*(data.pad_batch([e["ids"][i] for i in r], pad_id, T) for e, r in zip(encs, rows)))
        batch = {"idx": torch.stack(idx), "mask": torch.stack(mask), "task": torch.tensor([e["task_id"] for e in encs]),
                 "y": torch.stack([torch.from_numpy(e["y"][r]) for e, r in zip(encs, rows)])}
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def encoder_config(tokenizer, cfg):
    """The config of a run's from-scratch GPT (its vocabulary rounded up to a multiple of 64)."""
    return GPTConfig(block_size=cfg.max_len, vocab_size=64 * math.ceil(tokenizer.vocab_size / 64),
                     n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)


def classifier_for(gpt, tasks):
    """The classifier over {name: task}: one head row per task, in that order (the task ids)."""
    return TaskClassifier(gpt, [1 if t["kind"] == "regression" else len(t["labels"]) for t in tasks.values()],
                          [t["kind"] == "regression" for t in tasks.values()])


# -----------------------------------------------------------------------------
# 4. meta-training, the multi-task baseline, fine-tuning a target


def meta_train(model, aux_encs, method, cfg, rng, device, state=None):
    """θ <- MAML / FOMAML / Reptile / multi-task training on the auxiliary tasks; returns the loss curve. Every
    method runs its tasks under vmap inside second_order_ops(model) (attention on the MATH kernel and LayerNorm
    written out), so that second derivatives are right there. A RunState saves the loop every tenth of the run."""
    params, loss_fn = task_loss(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
    mine = engine.my_share(cfg.meta_batch)  # torchrun: every process draws the same meta-batch, and takes its share
    phase, p = f"meta_{method}", task_probabilities([len(e["ids"]) for e in aux_encs], cfg.sampling)
    start, best, more = state.restore_loop(phase, model, opt, rng) if state else (0, None, {})
    losses = list(more.get("losses", []))

    def step(_):
        chosen = [aux_encs[i] for i in rng.choice(len(aux_encs), size=cfg.meta_batch, p=p)]  # with replacement
        pad_id = chosen[0]["pad_id"]
        if method == "multitask":  # the MT-DNN-style baseline, the same tasks and as much data: MAML with k = 0
            batch = task_slice(stack_tasks(chosen, 1, cfg.shot * (cfg.inner_steps + 1), rng, pad_id, device)[0], mine)
            loss = meta_step("maml", params, loss_fn, [], batch, cfg.inner_lr, 0, opt)  # mean loss at θ itself
        else:
            batches = stack_tasks(chosen, cfg.inner_steps + 1, cfg.shot, rng, pad_id, device)
            batches = [task_slice(b, mine) for b in batches]
            loss = meta_step(method, params, loss_fn, batches[:-1], batches[-1], cfg.inner_lr, cfg.inner_steps, opt)
        losses.append(float("nan") if loss is None else loss.item())  # Reptile has no query loss
        bar.update()
        return None if loss is None else losses[-1]
    saver = state.loop_saver(phase, model, opt, rng, more=lambda: dict(losses=list(losses))) if state else None
    with second_order_ops(model), tqdm(total=cfg.meta_steps, initial=start, desc=f"meta-train {method}",
                                       leave=False, mininterval=5.0, disable=engine.rank_and_world()[0] > 0) as bar:
        train_and_select(model, step, cfg.meta_steps, max(1, cfg.meta_steps // 10), start=start, best=best,
                         save_state=saver)
    return losses


def fine_tune(model, init_state, train, val, test, metric_names, cfg, seed, device):
    """Fine-tune every parameter from `init_state` with plain SGD at inner_lr (the step MAML learned its initialisation
    for) on batches of cfg.shot train examples; report `test` once, from the state with the best validation
    score (first metric, every cfg.eval_interval steps). A loss that is not finite stops the run: lower inner_lr."""
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)
    params, loss_fn = task_loss(model)
    rng = np.random.default_rng(seed)

    def step(_):
        batch = stack_tasks([train], 1, min(cfg.shot, len(train["ids"])), rng, train["pad_id"], device)[0]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(params, task_slice(batch, 0))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.ft_clip)
        opt.step()
        return loss.item()  # not finite: a diverged fine-tune, which the selection must not hide behind step 0

    def validate():
        return split_metrics(model, val, metric_names[:1], device)[metric_names[0]]
    score, stop_step, _ = train_and_select(model, step, cfg.ft_steps, cfg.eval_interval, validate, label=None)
    if stop_step is None:
        raise UserError(f"fine-tuning diverged: every validation {metric_names[0]} was nan; lower inner_lr")
    return dict(split_metrics(model, test, metric_names, device), val=score, stop_step=stop_step)


# -----------------------------------------------------------------------------
# 5. the run: its settings; prepare() reads and checks every input; run() learns and fine-tunes


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
    """One run: the tasks, the encoder, meta-training, fine-tuning. The defaults are the built-in family's."""
    aux: tuple[str, ...] = setting(tuple(data.FAMILY_AUX), None, "auxiliary (meta-training) tasks")
    targets: tuple[str, ...] = setting(tuple(data.FAMILY_TARGETS), None, "low-resource target tasks")
    method: str = setting("all", ("all", "maml", "fomaml", "reptile", "multitask", "none"),
                          "how θ is learned: all compares every way; X runs none (θ as it starts) and X")
    sampling: str = setting("pps", ("uniform", "pps", "mixed"), "how auxiliary tasks are drawn: uniform, "
                            "proportional to size [paper's best], or half of each [ours]")
    n_layer: int = setting(2, "> 0", "transformer blocks of the GPT trained from scratch")
    n_head: int = setting(2, "> 0", "attention heads per block")
    n_embd: int = setting(64, "> 0", "width of the GPT's hidden states")
    vocab_size: int = setting(512, "259..1048576", "BPE tokens at most (fewer if the tasks hold too little text)")
    max_len: int = setting(48, ">= 4", "tokens per example (a pair is trimmed to fit)")
    inner_lr: float = setting(0.02, "0..1e30", "the inner loop's learning rate, and fine-tuning's")
    inner_steps: int = setting(2, "> 0", "k: inner steps per task while meta-training, each on a new support batch")
    meta_batch: int = setting(4, "> 0", "tasks per meta-update")
    meta_steps: int = setting(200, "> 0", "meta-updates (also the multi-task baseline's steps)")
    outer_lr: float = setting(1e-3, "0..1e30", "Adam's learning rate on θ")
    shot: int = setting(8, "> 0", "examples per support, query and fine-tuning batch")
    ft_steps: int = setting(60, "> 0", "fine-tuning steps on a target (plain SGD at inner_lr)")
    eval_interval: int = setting(15, "> 0", "score validation every this many fine-tuning steps")
    ft_clip: float = setting(1.0, "> 0", "gradient-norm clip while fine-tuning [ours]")
    n_train: tuple[int, ...] = setting((16, 64), "> 0", "random training-set sizes per target (GLUE: 16-shot too)")
    seeds: int = setting(3, "> 0", "random training subsets (seeds) per size")
    val_max: int = setting(100, "> 0", "at most this many validation examples per target")

    def check(self):
        """Relations between fields; prepare checks the task names against the data."""
        world, tasks = engine.rank_and_world()[1], self.aux + self.targets
        if self.n_embd % self.n_head:
            raise UserError(f"settings n_embd={self.n_embd}, n_head={self.n_head}: the width must split into the heads")
        if self.meta_batch % world:
            raise UserError(f"setting meta_batch={self.meta_batch}: a meta-batch must split over the {world} processes")
        twice = [n for n in dict.fromkeys(tasks) if tasks.count(n) > 1]
        if twice:
            raise UserError(f"settings aux and targets: {', '.join(twice)} named twice (a task is one or the other)")


FAMILY = MAMLConfig()
GLUE = MAMLConfig(aux=("MNLI", "QNLI", "QQP", "SST-2"),      # [paper: its auxiliary tasks]
                  targets=("CoLA", "MRPC", "STS-B", "RTE"),  # [paper]
                  n_embd=128, vocab_size=4096, max_len=64, inner_lr=0.01, meta_steps=400, outer_lr=5e-4,
                  ft_steps=100, eval_interval=25, n_train=(100, 1000), val_max=200)
INITS = ("none", "multitask", "maml", "fomaml", "reptile")


def load_tasks(cfg, data_dir):
    """(benchmark, aux tasks, target tasks, few-shot root or None), each {name: task} in cfg's order."""
    family = data.task_family() if data_dir is None else ({}, {})
    known = {**family[0], **family[1]} if data_dir is None else data.GLUE_TASKS
    where = "GLUE" if data_dir else "the built-in family (GLUE's need the GLUE folder)"
    for field in ("aux", "targets"):
        for n in getattr(cfg, field):
            if n not in known:
                raise UserError(f"setting {field}: {n!r} is not a task of {where}; its tasks: {', '.join(known)}")
            if data_dir and not os.path.isdir(os.path.join(data_dir, n)):
                raise UserError(f"setting {field}: {n}: {os.path.join(data_dir, n)} is not there (python data.py glue)")
    if data_dir is None:
        return "family", {n: known[n] for n in cfg.aux}, {n: known[n] for n in cfg.targets}, None
    few_shot = os.path.join(os.path.dirname(os.path.abspath(data_dir)), "glue-16shot")
    return "glue", data.load_glue(data_dir, cfg.aux), data.load_glue(data_dir, cfg.targets, target=True), few_shot


def few_shot_runs(task, encode, root, test, reported):
    """One run per LM-BFF 16-shot folder of a target: its own train and dev, scored on the reported split."""
    def pairs(split):
        return list(zip(split["text_a"], split["text_b"] or [None] * len(split["text_a"])))
    reported_pairs, runs, splits, folders = pairs(task[reported]), [], {}, data.few_shot_folders(root, task["name"])
    if not folders:  # where data.py few-shot writes them, with its default --k
        log.warning(f"{os.path.join(root, task['name'])}: no 16-shot splits (16-<seed>/), so no 16-shot rows")
    for folder in folders:
        shot = data.glue_task(task["name"], folder)
        for split, y in ((s, shot[s]["y"]) for s in ("train", "dev")):  # 16 of each label (STS-B: score < 2.5 or not)
            per_label = np.unique(np.asarray(y) >= 2.5 if task["kind"] == "regression" else y, return_counts=True)[1]
            if per_label.tolist() != [16] * (2 if task["kind"] == "regression" else len(task["labels"])):
                raise UserError(f"{folder}: {split} holds {per_label.tolist()} examples per label, not 16 of each")
        train, dev = frozenset(pairs(shot["train"])), frozenset(pairs(shot["dev"]))
        if dev <= train or train in splits:  # LM-BFF draws each seed's two splits apart: a copy is no other seed
            raise UserError(f"{folder}: train.tsv holds every example of {splits.get(train, 'its dev.tsv')}")
        seen, splits[train] = train | dev, os.path.join(folder, "train.tsv")  # reported examples seen here: left out
        keep = np.array([i for i, p in enumerate(reported_pairs) if p not in seen], dtype=np.int64)
        if len(keep) == 0:
            raise UserError(f"{folder}: holds every example of the {reported} split; none is left to report on")
        runs.append(("16-shot", folder.rsplit("-", 1)[1], encode(shot["train"]), encode(shot["dev"]),
                     subset(test, keep)))
    return runs


def target_runs(task, encode, cfg, few_shot_root, seed):
    """[(size label, seed, train enc, val enc, test enc)] for one target, and the reported split: cfg.seeds random
    subsets of each size in cfg.n_train, then LM-BFF's 16-shot folders. With a labelled test split: validation
    = val_max of dev, report = test; without one (GLUE's public files): validation carved out of train, report = dev."""
    enc = {s: encode(task[s]) for s in ("train", "dev", "test") if s in task}
    if "test" in enc:
        pool, val, test, reported = enc["train"], enc["dev"], enc["test"], "test"
    else:
        order = np.random.default_rng(seed).permutation(len(enc["train"]["ids"]))
        n_val = min(cfg.val_max, len(order) // 10)
        val, pool = subset(enc["train"], order[:n_val]), subset(enc["train"], order[n_val:])
        test, reported = enc["dev"], "dev"
    val = subset(val, np.sort(np.random.default_rng(seed).permutation(len(val["ids"]))[:cfg.val_max]))  # a draw
    for name, split in (("validation" + " (a tenth of train.tsv)" * (reported == "dev"), val), (reported, test)):
        if len(set(split["y"].tolist())) < 2:  # one label or score: MCC, F1, Pearson alike whatever the model
            raise UserError(f"{task['name']}: {len(split['y'])} examples in its {name} split, under 2 labels or scores")
    runs = []
    for n in cfg.n_train:
        if n > len(pool["ids"]):
            raise UserError(f"setting n_train: {n} is more than the {len(pool['ids'])} training examples of "
                            f"{task['name']} (after setting aside validation)")
        for s in range(cfg.seeds):
            rows = np.random.default_rng([seed, s, n]).permutation(len(pool["ids"]))[:n]  # a stream per (seed, s, n)
            runs.append((str(n), s, subset(pool, rows), val, test))
    return runs + (few_shot_runs(task, encode, few_shot_root, test, reported) if few_shot_root else []), reported


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, read and checked by prepare() before anything is written."""
    cfg: MAMLConfig
    device: str
    seed: int
    out_dir: str
    init: str | None      # the GPT it starts from (a checkpoint or a GPT-2 folder); None: from scratch
    benchmark: str        # family | glue
    targets: dict         # {name: task}
    inits: tuple          # the initialisations compared (from cfg.method)
    tokenizer: data.TextTokenizer
    model: TaskClassifier
    init_state: dict      # the classifier's weights before any meta-training
    aux_encs: list        # the auxiliary tasks' encoded training sets
    runs: dict            # target -> (runs, reported split) of target_runs
    state: engine.RunState


def prepare(cfg, data_dir, out_dir, seed, device, init=None, resume=False):
    """Read and check everything a run needs, writing nothing; with resume, the saved run's key must be this one's."""
    engine.check_settings(cfg)
    benchmark, aux, targets, few_shot_root = load_tasks(cfg, data_dir)
    tasks = {**aux, **targets}
    torch.manual_seed(seed)  # the classifier's first weights
    if init:  # GPT-2's or a project checkpoint's
        gpt, tokenizer = engine.load_init(init)
        if gpt.config.block_size < cfg.max_len:
            raise UserError(f"{init}: the model reads {gpt.config.block_size} tokens; max_len={cfg.max_len} is more")
    else:  # a BPE trained on the tasks' training text (a resumed run reads it back); a from-scratch GPT below
        texts = [t for task in tasks.values() for t in task["train"]["text_a"] + (task["train"]["text_b"] or [])]
        saved = os.path.join(out_dir, "tokenizer.json")  # if deleted, trained again (the run's key checks it)
        tokenizer = (data.load_tokenizer(saved) if resume and os.path.exists(saved)
                     else data.train_tokenizer(texts, vocab_size=cfg.vocab_size))

    def encode(n, split):  # the task id is the task's place in `tasks`, its head row
        return encode_split(tokenizer, tasks[n], split, list(tasks).index(n), cfg.max_len, regression_scale(tasks[n]))
    aux_encs = [encode(n, aux[n]["train"]) for n in aux]
    runs = {n: target_runs(targets[n], functools.partial(encode, n), cfg, few_shot_root, seed) for n in targets}
    c = gpt.config if init else encoder_config(tokenizer, cfg)
    cfg = dataclasses.replace(cfg, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size)
    shortest = min(len(ids) for e in aux_encs for ids in e["ids"])  # a meta-batch's examples are padded to the longest
    engine.check_memory(device, {"a meta-step (n_layer, n_embd, max_len, vocab_size, meta_batch, shot)":
                                 engine.training_floats(c, cfg.meta_batch * cfg.shot * shortest, 0)})
    gpt = gpt if init else GPT(c)
    model = classifier_for(gpt, tasks).to(device)
    key = dict(task="maml", benchmark=benchmark, **dataclasses.asdict(cfg), seed=seed,
               data=engine.fingerprint((tasks, runs)), tokenizer=tokenizer.fingerprint,  # data: the 16-shot splits too
               init=init and engine.fingerprint(gpt.state_dict()), world=engine.rank_and_world()[1])  # init: weights
    state = engine.RunState(os.path.join(out_dir, "state.pt"), key, resume)
    inits = INITS if cfg.method == "all" else ("none",) if cfg.method == "none" else ("none", cfg.method)
    return Experiment(cfg, device, seed, out_dir, init, benchmark, targets, inits, tokenizer, model,
                      engine.copy_weights(model), aux_encs, runs, state)


def learn_init(exp, init):
    """Meta-train (or multi-task train) one initialisation from the common start, save it as init_<init>.pt
    (its encoder a plain GPT checkpoint, usable as init; the task heads beside it); returns its weights."""
    cfg, model, state = exp.cfg, exp.model, exp.state
    model.load_state_dict(exp.init_state)
    if init == "none":
        return exp.init_state
    if f"learned_{init}" not in state.done:
        rng = np.random.default_rng([exp.seed, INITS.index(init)])  # its own stream: the same whatever cfg.method
        curve = meta_train(model, exp.aux_encs, init, cfg, rng, exp.device, state)
        tenth = max(1, len(curve) // 10)  # one meta-batch's loss is noisy: the means over the first and last tenth
        summary = [] if math.isnan(curve[0]) else [float(np.mean(curve[:tenth])), float(np.mean(curve[-tenth:]))]
        state.finish(f"learned_{init}", dict(weights=engine.copy_weights(model), loss_first_last_tenth=summary))
    learned = state.done[f"learned_{init}"]
    model.load_state_dict(learned["weights"])
    if engine.rank_and_world()[0] == 0:  # by a resumed run too: a file deleted since is there again
        heads = {k: v for k, v in model.state_dict().items() if not k.startswith("gpt.")}
        engine.save_checkpoint(os.path.join(exp.out_dir, f"init_{init}.pt"), model.gpt, exp.tokenizer, cfg.meta_steps,
                               {"loss_first_last_tenth": learned["loss_first_last_tenth"]}, heads=heads)
    return learned["weights"]


def fine_tune_targets(exp, init, learned):
    """{target: {size: mean and std over seeds}} fine-tuned from `learned`; a resumed run skips the runs done."""
    done, out = exp.state.done.setdefault(f"fine_tuned_{init}", {}), {}
    for n, (task_runs, _) in exp.runs.items():
        metrics, per_size = exp.targets[n]["metrics"], {}
        for i, (size, seed, train, val, test) in enumerate(task_runs):
            key = f"{n}/{size}/{seed}"
            if key not in done:  # batches drawn from a stream of their own: (the run's seed, the run's place)
                done[key] = fine_tune(exp.model, learned, train, val, test, metrics, exp.cfg, [exp.seed, i], exp.device)
                exp.state.save(f"fine_tuned_{init} {key}")
            per_size.setdefault(size, []).append(done[key])
        out[n] = {size: summarize_seeds(rs, metrics) for size, rs in per_size.items()}
    return out


def run(exp):
    """Learn each initialisation, fine-tune the targets from it, write results.json; returns it (None if rank > 0)."""
    rank = engine.rank_and_world()[0]
    if rank == 0:  # a resumed run too: a tokenizer.json deleted since is there again
        engine.save_tokenizer(exp.out_dir, exp.tokenizer)
    exp.state.save("start")  # from here on, --resume continues an interrupted run
    log.info(f"benchmark {exp.benchmark}: auxiliary tasks {list(exp.cfg.aux)}, targets {list(exp.targets)}; GPT "
             f"{exp.model.gpt.num_params() / 1e6:.2f}M parameters; tokenizer {exp.tokenizer.vocab_size} tokens")
    results = {n: {} for n in exp.targets}
    for init in exp.inits:
        t = time.time()
        learned = learn_init(exp, init)
        if rank == 0:  # fine-tuning the targets is process 0's
            for n, by_size in fine_tune_targets(exp, init, learned).items():
                results[n][init] = by_size
            log.info(f"{init:>10}: learned and targets fine-tuned in {time.time() - t:.0f}s")
    if rank > 0:
        return None
    reported = {n: r[1] for n, r in exp.runs.items()}
    rows = [[n, m, size, *(plus_minus(results[n][i][size], m) for i in exp.inits)]
            for n in exp.targets for m in exp.targets[n]["metrics"] for size in results[n][exp.inits[0]]]
    title = ("Target tasks after fine-tuning from each initialisation (mean ± std over seeds; split reported: "
             f"{', '.join(f'{n}={s}' for n, s in reported.items())})")
    curves = {i: exp.state.done[f"learned_{i}"]["loss_first_last_tenth"] for i in exp.inits
              if exp.state.done.get(f"learned_{i}", {}).get("loss_first_last_tenth")}
    config = dict(dataclasses.asdict(exp.cfg), benchmark=exp.benchmark, inits=list(exp.inits), seed=exp.seed,
                  init=exp.init, device=exp.device, reported_split=reported, meta_loss_first_last_tenth=curves)
    out = dict(targets=results, config=config, resumed=exp.state.resumes)
    return save_results(exp.out_dir, out, exp.device, exp.state.seconds(),
                        (title, ["target", "metric", "size", *exp.inits], rows))
