"""
Evaluation, for both papers: CALRec's full-catalog ranking metrics and the baselines every table holds beside it
(most popular, the last item's text through BM25, a first-order Markov chain, SASRec); GLUE's metrics for MAML;
the results.json every run ends with.

Every ranking scores the whole catalog of the target domain, a chunk of users at a time (no sampled negatives);
a user's history is excluded from the candidates and ties count against the target, so a constant scorer earns
nothing. SASRec, the one baseline with a choice, is chosen on validation; every method is scored on test once.
"""

import logging
import math
import os
import platform
import sys
from collections import Counter

import numpy as np
import tokenizers
import torch
import torch.nn.functional as F

import data
from engine import WARNINGS, lr_at, save_json, train_and_select
from model import GPT, GPTConfig, last_token_pool

log = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)

# -----------------------------------------------------------------------------
# full-catalog ranking: ranks, Recall@K and NDCG@K (one relevant item per user)


def ranks_from_scores(scores, targets, histories):
    """Rank (from 1) of each user's target among all catalog items; 0 when it cannot be ranked.

    scores (B, N) over the whole catalog, compared in float32; targets (B,); histories: list of item lists,
    excluded from the candidates by a score of -inf. A target scored -inf cannot be ranked: one in its own
    history, or one its scorer ruled out. Ties count against the target (rank = number of candidates scoring >=
    the target), so a constant scorer earns nothing.
    """
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t).sum(1, dtype=torch.int32)                    # (B,) includes the target itself
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)


def ranks_in_chunks(scores, examples, chunk=1024):
    """ranks_from_scores of every example, `chunk` users at a time: scores(rows) gives the (chunk, N) scores of
    examples[rows] (rows a slice). Memory stays (chunk, N) however many users: the whole (users, N) matrix of a
    Games-sized split (50k users, 17k items) would take 3.4 GB."""
    ranks = []
    for s in range(0, len(examples), chunk):
        rows = slice(s, s + chunk)
        part = examples[rows]
        ranks.append(ranks_from_scores(scores(rows), torch.tensor([t for _, t in part]), [hist for hist, _ in part]))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int32)


def ranks_from_lists(ranked_lists, targets, histories=None, twins=None):
    """Rank (from 1) of each target in its user's ranked list of item indices; 0 when absent or in its history.
    twins: a key per item, equal for items the ranker cannot tell apart (the same text); as ties count against the
    target, its rank is then the worst of its twins' outside the history (0 if one is absent from the list)."""
    group = {}
    for i, key in enumerate(twins or ()):
        group.setdefault(key, []).append(i)
    ranks = []
    for lst, t, hist in zip(ranked_lists, targets, histories or [()] * len(ranked_lists)):
        alike = group[twins[t]] if twins else [t]
        found = [lst.index(i) + 1 if i in lst else 0 for i in alike if i == t or i not in hist]
        ranks.append(0 if t in hist or 0 in found else max(found))
    return torch.tensor(ranks)


def rank_metrics(ranks):
    """Recall@K and NDCG@K from ranks (0 = not retrieved): NDCG = 1 / log2(rank + 1) within K, else 0; and the
    standard error of NDCG@10 over the users, std / sqrt(n), what a difference between two rows is read against."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    hit = ranks > 0
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = (hit & (ranks <= k)).double().mean().item()
    for k in NDCG_KS:
        gain = torch.where(hit & (ranks <= k), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = gain.mean().item()
        if k == 10:
            out["ndcg@10_se"] = (gain.std() / len(gain) ** 0.5).item() if len(gain) > 1 else 0.0
    return out


# -----------------------------------------------------------------------------
# the baselines: most popular, the last item's text through BM25, a first-order Markov chain, and SASRec
# (model.GPT over item ids)


def popularity(domain):
    """Training-interaction counts of every item (N,)."""
    return torch.bincount(torch.tensor([i for seq in domain.train_sequences for i in seq], dtype=torch.long),
                          minlength=domain.n_items).float()


def rank_popular(domain, examples):
    """Every user gets the same scores: the items' training-interaction counts."""
    count = popularity(domain)
    return ranks_in_chunks(lambda rows: count.expand(len(examples[rows]), -1), examples)


def rank_last_item_bm25(bm25, texts, examples):
    """The text of the user's last history item as the BM25 query: what copying the last item gives."""
    return ranks_in_chunks(lambda rows: bm25.scores([texts[hist[-1]] for hist, _ in examples[rows]]), examples)


def rank_markov(domain, examples):
    """A first-order Markov chain: score(j) = how often j followed the user's last item in the training
    sequences, ties broken by popularity. The counts are kept sparse (dense, the (N, N) matrix of a 17k-item
    catalog takes 2.3 GB); each chunk of users reads the rows of its last items."""
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()  # a then b
    pop = popularity(domain).long()
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):                                                  # (chunk, N) counts first, then popularity
        key = nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop  # exact, in int64
        # ranks_from_scores compares float32, exact only below 2**24 (count * pop.max() passes it): each row's keys
        # as their dense rank within the row (< N), which orders like the keys themselves
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)


def sasrec_inputs(sequences, L, pad):
    """Item sequences -> inputs (B, T) right-padded with `pad`, and next-item targets (B, T), -100 at padding."""
    seqs = [s[-(L + 1):] for s in sequences]
    idx, _ = data.pad_batch([s[:-1] for s in seqs], pad)
    targets, _ = data.pad_batch([s[1:] for s in seqs], -100)  # position t predicts item t+1
    return idx, targets


def sasrec_loss(net, idx, targets):
    """Cross-entropy of the next item at every real position, a full softmax over the catalog. Right-padded rows
    need no attention mask (a real position never sees the padding after it), and only real positions go
    through the output layer: most of a batch is padding (Scientific: 82% of its positions)."""
    h = net.hidden_states(idx)                                         # (B, T, C)
    real = targets != -100
    return F.cross_entropy(net.lm_head(h[real]), targets[real])


@torch.no_grad()
def rank_sasrec(net, domain, examples, device, batch=256):
    """Ranks from SASRec's logits over every item at each history's last position."""
    net.eval()
    L = net.config.block_size
    def scores(rows):
        idx, mask = (t.to(device) for t in data.pad_batch([hist[-L:] for hist, _ in examples[rows]], domain.n_items))
        last = last_token_pool(net.hidden_states(idx, mask), mask)     # (B, C) each history's last position
        return net.lm_head(last)[:, :domain.n_items].cpu()             # (B, N) the logits, padding id dropped
    return ranks_in_chunks(scores, examples, batch)


def sasrec_config(domain, cfg):
    """SASRec's GPT: a token per item of the domain, and one for padding."""
    return GPTConfig(block_size=cfg.sasrec_len, vocab_size=domain.n_items + 1, n_layer=cfg.sasrec_layers,
                     n_head=cfg.sasrec_heads, n_embd=cfg.sasrec_embd, dropout=cfg.sasrec_dropout)


def train_sasrec(domain, cfg, device, seed, state):
    """SASRec (Kang & McAuley, 2018) as a causal transformer over item ids: model.GPT with one token per
    item (+ padding), trained with full-softmax cross-entropy at every position, the learning rate warmed up
    and decayed as CALRec's (lr_at); the weights best on validation (every user) are kept."""
    torch.manual_seed(seed)
    net = GPT(sasrec_config(domain, cfg)).to(device)
    optimizer = net.configure_optimizers(cfg.sasrec_lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    sequences = [s for s in domain.train_sequences if len(s) >= 2]
    start, best, _ = state.restore_loop("sasrec", net, optimizer, rng)

    def train(step):
        net.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.sasrec_lr, cfg.warmup, cfg.sasrec_steps)
        rows = rng.integers(len(sequences), size=cfg.sasrec_batch_size)
        idx, targets = (t.to(device) for t in sasrec_inputs([sequences[r] for r in rows], cfg.sasrec_len,
                                                            domain.n_items))
        loss = sasrec_loss(net, idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def validate():
        return rank_metrics(rank_sasrec(net, domain, domain.valid, device))["ndcg@10"]

    train_and_select(net, train, cfg.sasrec_steps, max(1, cfg.sasrec_steps // 5), validate, start, best,
                     save_state=state.loop_saver("sasrec", net, optimizer, rng), label="sasrec step")
    return net


# -----------------------------------------------------------------------------
# GLUE's metrics (numpy; the names are GLUE's: mcc, f1, accuracy, pearson, spearman)


def accuracy(pred, gold):
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1(pred, gold):
    """F1 of the positive class 1 (MRPC, QQP), a Python float (as every metric here)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.sum((pred == 1) & (gold == 1))
    fp = np.sum((pred == 1) & (gold != 1))
    fn = np.sum((pred != 1) & (gold == 1))
    return float(2 * tp / (2 * tp + fp + fn)) if tp > 0 else 0.0


def mcc(pred, gold):
    """Matthews correlation (CoLA), a Python float; 0 when a row or column of the binary table is empty."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom > 0 else 0.0


def pearson(x, y):
    """Pearson's r, a Python float; 0 for a constant input, nan when a prediction is not finite (a diverged model)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if x.min() == x.max() or y.min() == y.max():  # (not by the centred values: a mean can be inexact)
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum())))


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


def split_metrics(model, enc, metric_names, device, batch_size=128):
    """GLUE's metrics of a MAML classifier's predictions on a split encoded by maml.encode_split: classes, or scores
    back on the task's scale."""
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(enc["ids"]), batch_size):
            idx, mask = data.pad_batch(enc["ids"][i:i + batch_size], enc["pad_id"])
            out = model(idx.to(device), mask.to(device), torch.tensor(enc["task_id"], device=device))
            outs.append(out[:, 0] if enc["regression"] else out.argmax(-1))
    model.train()
    pred, gold = torch.cat(outs).cpu().numpy(), np.asarray(enc["y"])
    if enc["regression"]:
        pred, gold = pred * enc["scale"], gold * enc["scale"]
    return task_metrics(metric_names, pred, gold)


def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize_seeds(metric_dicts, metric_names):
    """{metric: mean, metric_std: std, ...} of a run's metrics over seeds, GLUE's names, and the number of seeds."""
    out = {}
    for name in metric_names:
        out[name], out[name + "_std"] = mean_std([m[name] for m in metric_dicts])
    return dict(out, n_seeds=len(metric_dicts))


def plus_minus(cell, name):
    """'mean ± std' of one of summarize_seeds' metrics; the mean alone from one seed, which shows no spread."""
    return f"{cell[name]:.3f}" + (f" ± {cell[name + '_std']:.3f}" if cell["n_seeds"] > 1 else "")


def mean_ci95(values):
    """Mean and the half-width of a normal 95% confidence interval, 1.96 std / sqrt(n)."""
    mean, std = mean_std(values)
    return mean, 1.96 * std / math.sqrt(len(values))


# -----------------------------------------------------------------------------
# results.json: a run's numbers, and the machine that computed them


def save_results(out_dir, out, device, wall_s, table=None):
    """A table (title, header, rows) to the log, then out_dir/results.json: out, time, memory, machine, warnings."""
    if table is not None:
        title, header, rows = table
        for line in (f"\n{title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                     *("| " + " | ".join(row) + " |" for row in rows)):
            log.info(line)
    out = dict(out, wall_s=wall_s, peak_memory_mb=peak_memory_mb(), environment=environment(device),
               warnings=list(WARNINGS.messages))
    save_json(os.path.join(out_dir, "results.json"), out)
    log.info(f"wall time {wall_s:.0f} s; peak memory {out['peak_memory_mb']} MB; wrote {out_dir}/results.json")
    return out


def peak_memory_mb():
    """This process's peak resident memory in MB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10))


def environment(device):
    """The versions, threads and processor a run's numbers depend on: another machine can move the last digits."""
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else None
    return dict(torch=torch.__version__, numpy=np.__version__, tokenizers=tokenizers.__version__,
                python=platform.python_version(), threads=torch.get_num_threads(), cpu=cpu, gpu=gpu)
