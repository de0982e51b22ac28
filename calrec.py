"""
CALRec: sequential recommendation as text generation, with a two-tower contrastive alignment.

Paper: Li, Zhai, Alzantot, Yu, Vulic, Korhonen, Hammad. "CALRec: Contrastive Alignment of Generative LLMs
for Sequential Recommendation." RecSys 2024 (arXiv 2405.02429). The method and every decision of ours
where the paper is silent: ../shared/docs/calrec.md.

One small GPT (model.py) reads a user's purchase history as text and writes the next item's text. The same
weights are also two towers: pooled over the history they give the user vector v_U, pooled over the target
(read after the history) v_T|U, and over the item text alone v_T. Training mixes next-item generation with
two InfoNCE alignments; inference beam-searches item texts and grounds them in the catalog with BM25.

Read in this order: metrics -> InfoNCE -> towers and the loss mixture -> BM25 -> the quasi-round-robin
merge -> the two ways to rank -> training (one function, used by both stages) -> baselines -> run().

    python train.py --task calrec                    # the built-in world, CPU, about 2 minutes
    python train.py --task calrec --data ../shared/data/amazon/Games ../shared/data/amazon/Scientific \
        --target Scientific                          # real data: stage 1 on both, stage 2 on Scientific
"""

import copy
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import model as gpt

# -----------------------------------------------------------------------------
# settings (the paper gives the method; every number below is ours unless a comment says otherwise)


@dataclass
class CALRecConfig:
    # the LM (model.GPTConfig)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256
    dropout: float = 0.0
    vocab_size: int = 2048        # BPE trained on the item texts and the prompt template
    # text (spec section 1)
    max_words: int = 24           # cap on every attribute value, in words
    max_history: int = 3          # most recent history items kept (then as many as fit block_size)
    max_item_tokens: int = 64     # cap on an item's text in tokens (after the word cap), everywhere
    # losses (spec section 3): L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT
    alpha: float = 0.2
    beta: float = 0.2
    tau: float = 0.05
    # training, per stage (spec section 4)
    stage1_steps: int = 300
    stage2_steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 30
    eval_interval: int = 100
    domain_temperature: float = 1.0  # stage-1 mixture: P(domain) ~ n_train ** (1 / temperature)
    select_users: int = 500          # validation users used for model selection during training
    # inference (spec section 5)
    beams: int = 10
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    top_k: int = 20                  # length of every ranked list (the largest K of the metrics)
    eval_batch: int = 50             # users per beam-search batch
    bm25_valid_users: int = 200      # 0: all; else the generative path's valid row uses the first this many
    # SASRec baseline (an item-id GPT of model.py)
    sasrec_layers: int = 2
    sasrec_heads: int = 2
    sasrec_embd: int = 64
    sasrec_len: int = 50
    sasrec_dropout: float = 0.2
    sasrec_steps: int = 600
    sasrec_batch: int = 128
    sasrec_lr: float = 2e-3


def default_config(real_data):
    """The built-in world's defaults, or the real-data defaults (sized for about an hour on 2 CPU cores)."""
    if not real_data:
        return CALRecConfig()
    return CALRecConfig(n_layer=2, n_head=4, n_embd=128, block_size=256, vocab_size=4096, max_words=10,
                        max_history=8, max_item_tokens=32, stage1_steps=1500, stage2_steps=1000, batch_size=32,
                        lr=1e-3, warmup=100, eval_interval=250, domain_temperature=2.0, select_users=500,
                        beams=5, eval_batch=64, bm25_valid_users=1000, sasrec_steps=2000, sasrec_len=50)


RECALL_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)


# -----------------------------------------------------------------------------
# 1. metrics: full ranking over the catalog, one relevant item per user (spec section 6)


def ranks_from_scores(scores, targets, histories):
    """Rank (from 1) of each user's target among all catalog items; 0 when it cannot be ranked.

    scores (B, N) over the whole catalog; targets (B,); histories: list of item lists, excluded from the
    candidates (a target that is in its own history is thus unrankable: rank 0). Ties count against the
    target (rank = number of candidates scoring >= the target), so a constant scorer earns nothing.
    """
    scores = scores.clone().float()
    for b, h in enumerate(histories):
        if h:
            scores[b, torch.as_tensor(h, dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t).sum(1)                                       # (B,) includes the target itself
    return torch.where(torch.isinf(t.view(-1)), torch.zeros_like(ranks), ranks)


def ranks_from_lists(ranked_lists, targets):
    """Rank (from 1) of each target in its user's ranked list of item indices; 0 when absent."""
    return torch.tensor([lst.index(t) + 1 if t in lst else 0 for lst, t in zip(ranked_lists, targets)])


def rank_metrics(ranks):
    """Recall@K and NDCG@K from ranks (0 = not retrieved): NDCG = 1 / log2(rank + 1) within K, else 0."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    hit = ranks > 0
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = (hit & (ranks <= k)).double().mean().item()
    for k in NDCG_KS:
        gain = torch.where(hit & (ranks <= k), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = gain.mean().item()
    return out


# -----------------------------------------------------------------------------
# 2. InfoNCE with in-batch negatives (spec section 3)


def info_nce(query, key, item_ids, tau):
    """L = -1/N sum_i log( exp(cos(q_i, k_i)/tau) / sum_j exp(cos(q_j, k_i)/tau) ).

    query (B, C): v_T|U (for L_TT) or v_U (for L_UT); key (B, C): v_T, the target items; both L2-normalised.
    For each target item i the positive is its own query; the other rows' queries are the negatives --
    except rows whose target is the same item (item_ids (B,) equal): those are masked out, not negatives.
    With several processes (torchrun) each holds B rows of the global batch of N = W*B: the queries and
    item ids of every process are gathered, so the negatives span the global batch as on one process.
    """
    rank, _ = gpt.rank_and_world()
    query_all, ids_all = gpt.gather_rows(query), gpt.gather_rows(item_ids)   # (N, C), (N,)
    logits = key @ query_all.t() / tau                                 # (B, N) [i, j] = cos(k_i, q_j) / tau
    labels = rank * len(key) + torch.arange(len(key), device=key.device)  # (B,) where row i's own query is
    columns = torch.arange(len(ids_all), device=key.device)
    same = item_ids.view(-1, 1) == ids_all.view(1, -1)                  # (B, N) rows sharing a target item
    own = labels.view(-1, 1) == columns.view(1, -1)
    logits = logits.masked_fill(same & ~own, float("-inf"))
    return F.cross_entropy(logits, labels)


# -----------------------------------------------------------------------------
# 3. the towers and the loss mixture (spec sections 2 and 3)


def item_vectors(model, idx, mask):
    """The item tower: v_T = normalised mean of the final hidden states over the item text. (B, C)"""
    h = model.hidden_states(idx, mask)                                        # (B, T, C)
    return F.normalize(gpt.mean_pool(h, mask), dim=-1)


def calrec_loss(model, joint, items, item_ids, alpha, beta, tau):
    """One batch's loss and its parts.

    joint: data.PromptBuilder.joint_batch output (idx, attention_mask, targets, history_mask, target_mask),
    each (B, T); items: (idx, mask) of the target items alone, (B, Ti); item_ids (B,) global item indices.
    """
    idx, attention_mask, targets, history_mask, target_mask = joint
    h = model.hidden_states(idx, attention_mask)                              # (B, T, C) the joint (user) tower
    predict = targets != -100                                          # (B, T) positions that predict target tokens
    logits = model.lm_head(h[predict])                                 # (n, V) only where a loss is taken
    # next item generation: the mean over the target tokens of the global batch. With W processes each
    # holds a shard; the sum of its shard over the global count, times W, averages (as DDP does) to that mean
    _, world = gpt.rank_and_world()
    n_global = gpt.all_reduce_sum(predict.sum()).clamp(min=1)
    l_nig = F.cross_entropy(logits, targets[predict], reduction="sum") * world / n_global
    parts = {"nig": l_nig.item()}
    loss = (1.0 - alpha - beta) * l_nig
    if alpha > 0 or beta > 0:
        v_t = item_vectors(model, *items)                              # (B, C) item tower
        if alpha > 0:
            v_tu = F.normalize(gpt.mean_pool(h, target_mask), dim=-1)  # (B, C) target read after the history
            l_tt = info_nce(v_tu, v_t, item_ids, tau)
            loss = loss + alpha * l_tt
            parts["tt"] = l_tt.item()
        if beta > 0:
            v_u = F.normalize(gpt.mean_pool(h, history_mask), dim=-1)  # (B, C) the user
            l_ut = info_nce(v_u, v_t, item_ids, tau)
            loss = loss + beta * l_ut
            parts["ut"] = l_ut.item()
    return loss, parts


# -----------------------------------------------------------------------------
# 4. BM25 over the catalog: a sparse term-document matrix, all queries scored in one product


def words(text):
    """BM25's analyser: lower-cased runs of letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Okapi BM25 with Lucene's idf = log(1 + (N - n + 0.5) / (n + 0.5)) (spec section 5).

    score(q, d) = sum over the query's words w (with repeats) of
                  idf(w) * tf(w, d) * (k1 + 1) / (tf(w, d) + k1 * (1 - b + b * |d| / avgdl)).
    The per-(document, word) factor is precomputed into a sparse (D, V) matrix W, so the scores of a batch of
    queries are one sparse-dense product W @ Q^T, Q (nq, V) holding each query's word counts.
    """

    def __init__(self, documents, k1=1.2, b=0.75):
        self.vocab = {}
        rows, cols, tfs, lengths = [], [], [], []
        for d, doc in enumerate(documents):
            ws = words(doc)
            lengths.append(len(ws))
            for w, tf in Counter(ws).items():
                rows.append(d)
                cols.append(self.vocab.setdefault(w, len(self.vocab)))
                tfs.append(tf)
        N, V = len(documents), len(self.vocab)
        rows, cols = torch.tensor(rows), torch.tensor(cols)
        tf = torch.tensor(tfs, dtype=torch.float32)
        dl = torch.tensor(lengths, dtype=torch.float32)
        df = torch.bincount(cols, minlength=V).float()                  # documents holding each word
        self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))          # (V,)
        norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
        weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)          # one value per (document, word)
        self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V),
                                              check_invariants=True).coalesce()  # (D, V) sparse

    def scores(self, queries):
        """BM25 scores (nq, D) of every document for every query string."""
        Q = torch.zeros(len(self.vocab), len(queries))                   # (V, nq) word counts of the queries
        for j, q in enumerate(queries):
            for w in words(q):
                i = self.vocab.get(w)
                if i is not None:
                    Q[i, j] += 1.0
        return (self.matrix @ Q).t()                                     # (nq, D)

    def search(self, queries, depth):
        """Top `depth` documents of each query with a positive score: lists of (indices, scores)."""
        s = self.scores(queries)
        top = torch.topk(s, min(depth, s.size(1)), dim=1)
        out = []
        for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
            n = sum(v > 0 for v in vals)
            out.append((idx[:n], vals[:n]))
        return out


# -----------------------------------------------------------------------------
# 5. the quasi-round-robin merge of the beams' BM25 lists (spec section 5; the exact rule is ours)


def merge_round_robin(lists, list_scores, exclude, k):
    """Merge m ranked lists into one of at most k items.

    Round p takes the p-th item of every list; within a round the candidates go in order of their BM25
    score (ties: the better beam first); an item already taken or in `exclude` (the user's history) is
    skipped. Stops at k items.
    """
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if item not in seen:
                seen.add(item)
                taken.append(item)
                if len(taken) == k:
                    return taken
    return taken


# -----------------------------------------------------------------------------
# 6. ranking the catalog: dense (two towers) and generative (beam search -> BM25 -> merge)


@torch.no_grad()
def catalog_vectors(model, builder, item_range, device, batch=256):
    """v_T of every catalog item (N, C), computed once per evaluation."""
    out = []
    for s in range(item_range.start, item_range.stop, batch):
        idx, mask = builder.item_batch(range(s, min(s + batch, item_range.stop)))
        out.append(item_vectors(model, idx.to(device), mask.to(device)))
    return torch.cat(out)


@torch.no_grad()
def rank_dense(model, builder, examples, item_range, device, batch=64):
    """Ranks of the targets when every catalog item is scored by cos(v_U, v_T). examples are global indices."""
    model.eval()
    v_t = catalog_vectors(model, builder, item_range, device)          # (N, C)
    ranks = []
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        idx, mask, _ = builder.prompt_batch([h for h, _ in chunk])
        h = model.hidden_states(idx.to(device), mask.to(device))              # (B, T, C)
        v_u = F.normalize(gpt.mean_pool(h, mask.to(device)), dim=-1)   # (B, C) the prompt is the history span
        scores = (v_u @ v_t.t()).cpu()                                 # (B, N) cosine with every item
        off = item_range.start
        ranks.append(ranks_from_scores(scores, torch.tensor([t - off for _, t in chunk]),
                                       [[i - off for i in h] for h, _ in chunk]))
    return torch.cat(ranks)


@torch.no_grad()
def rank_generative(model, builder, tokenizer, bm25, examples, item_range, cfg, device, show=False):
    """Ranks of the targets in the top-k lists of beam search -> BM25 -> quasi-round-robin merge.
    Returns the ranks and, for a look at what the model writes, the best beam's text of the first user of
    each of the first three batches."""
    model.eval()
    off, lists, samples = item_range.start, [], []
    max_new = builder.max_target_len()
    for s in tqdm(range(0, len(examples), cfg.eval_batch), desc="beam search", disable=not show, leave=False):
        chunk = examples[s:s + cfg.eval_batch]
        _, _, prompts = builder.prompt_batch([h for h, _ in chunk])
        beams = model.beam_search(prompts, cfg.beams, max_new, tokenizer.eot_id)
        texts = tokenizer.decode_batch([toks for user in beams for toks, _ in user])  # (B * m,) beam texts
        hits = bm25.search(texts, depth=2 * cfg.top_k + cfg.beams)
        for b, (history, _) in enumerate(chunk):
            per_beam = hits[b * cfg.beams:(b + 1) * cfg.beams]
            lists.append(merge_round_robin([l for l, _ in per_beam], [sc for _, sc in per_beam],
                                           [i - off for i in history], cfg.top_k))
        if len(samples) < 3:
            samples.append(texts[0])
    return ranks_from_lists(lists, [t - off for _, t in examples]), samples


# -----------------------------------------------------------------------------
# 7. training: one loop for both stages (stage 1: a mixture of domains; stage 2: the target domain)


def lr_at(step, cfg, steps):
    """Linear warmup, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class Objective(torch.nn.Module):
    """CALRec's loss as a module: DistributedDataParallel syncs gradients through a module's forward, and
    calrec_loss reads the GPT through encode and lm_head rather than its forward."""

    def __init__(self, model, cfg):
        super().__init__()
        self.model, self.alpha, self.beta, self.tau = model, cfg.alpha, cfg.beta, cfg.tau

    def forward(self, joint, items, item_ids):
        return calrec_loss(self.model, joint, items, item_ids, self.alpha, self.beta, self.tau)


def train_stage(model, builder, train_sets, probs, select, cfg, steps, device, seed, log, ckpt_path=None,
                stage=1, start_step=0, optimizer_state=None, dtype="float32", compile_model=False):
    """Train on a mixture of example sets, evaluating on validation (NDCG@10) every cfg.eval_interval steps.

    train_sets: one list of (history, target) examples (global item indices) per domain; probs: P(domain)
    for each batch row; select: a function model -> validation NDCG@10. Returns the best state (a copy of
    the weights at the best validation score) and that score. Model selection never looks at test.
    Every new best is also saved to ckpt_path (weights, optimizer, stage, step), which --resume continues from.
    Under torchrun every process draws the same global batch and trains on its own contiguous shard of it;
    DDP averages the gradients, so W processes take the same steps as one (tests/test_calrec_ddp.py).
    """
    rank, world = gpt.rank_and_world()
    if cfg.batch_size % world:
        raise SystemExit(f"error: the batch of {cfg.batch_size} rows does not split evenly over {world} processes")
    shard = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    objective = Objective(model, cfg)
    if world > 1:
        dev = torch.device(device)
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=None if dev.type == "cpu" else [dev.index or 0])
    if compile_model:
        objective = torch.compile(objective, dynamic=True)  # batches are padded to different lengths
    scaler = gpt.grad_scaler(device, dtype)
    rng = np.random.default_rng([seed, start_step])
    optimizer = model.configure_optimizers(cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    best_score, best_state = -1.0, None
    for step in range(start_step, steps + 1):
        if step % cfg.eval_interval == 0 or step == steps:
            score = select(model)  # every process evaluates the same weights: the same choice everywhere
            log(f"  step {step:5d}  valid ndcg@10 {score:.4f}" + ("  (best)" if score > best_score else ""))
            if score > best_score:
                best_score, best_state = score, copy.deepcopy(model.state_dict())
                if ckpt_path and rank == 0:
                    gpt.save_checkpoint(ckpt_path, model, optimizer, model.config, step, {"valid_ndcg@10": score},
                                        stage=stage)
        if step == steps:
            break
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, steps)
        domains = rng.choice(len(train_sets), size=cfg.batch_size, p=probs)
        examples = [train_sets[d][rng.integers(len(train_sets[d]))] for d in domains][shard]
        joint = [t.to(device) for t in builder.joint_batch(examples)]
        item_ids = torch.tensor([t for _, t in examples], device=device)
        items = [t.to(device) for t in builder.item_batch(item_ids.tolist())]
        with gpt.autocast(device, dtype):
            loss, parts = objective(joint, items, item_ids)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        if step % max(1, cfg.eval_interval // 4) == 0:
            log(f"  step {step:5d}  loss {loss.item():.4f}  " + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    return best_state, best_score


# -----------------------------------------------------------------------------
# 8. baselines on the same split: most popular, and SASRec (model.GPT over item ids)


def popularity_scores(domain):
    """Training-interaction counts of every item (N,)."""
    counts = torch.zeros(domain.n_items)
    for seq in domain.train_sequences:
        for i in seq:
            counts[i] += 1
    return counts


def rank_popular(domain, examples):
    counts = popularity_scores(domain)
    scores = counts.expand(len(examples), -1)
    return ranks_from_scores(scores, torch.tensor([t for _, t in examples]), [h for h, _ in examples])


def sasrec_batch(sequences, L, pad):
    """Item sequences -> inputs (B, T) right-padded with `pad`, mask (B, T), next-item targets (B, T)."""
    seqs = [s[-(L + 1):] for s in sequences]
    idx, mask = data.pad_batch([s[:-1] for s in seqs], pad)
    targets, _ = data.pad_batch([s[1:] for s in seqs], -100)  # position t predicts item t+1
    return idx, mask, targets


@torch.no_grad()
def rank_sasrec(net, domain, examples, cfg, device, batch=256):
    """Ranks from SASRec's logits over every item at each history's last position."""
    net.eval()
    ranks = []
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        hist = [h[-cfg.sasrec_len:] for h, _ in chunk]
        T = max(len(h) for h in hist)
        idx = torch.full((len(hist), T), domain.n_items, dtype=torch.long)
        mask = torch.zeros(len(hist), T, dtype=torch.long)
        for b, h in enumerate(hist):
            idx[b, :len(h)] = torch.tensor(h)
            mask[b, :len(h)] = 1
        logits, _ = net(idx.to(device), mask.to(device))                # (B, T, n_items + 1)
        last = gpt.last_token_pool(logits, mask.to(device))[:, :domain.n_items]  # (B, N), padding id dropped
        ranks.append(ranks_from_scores(last.cpu(), torch.tensor([t for _, t in chunk]), [h for h, _ in chunk]))
    return torch.cat(ranks)


def train_sasrec(domain, cfg, device, seed, log):
    """SASRec (Kang & McAuley, 2018) as a causal transformer over item ids: model.GPT with one token per
    item (+ padding), trained with full-softmax cross-entropy at every position; best on validation."""
    torch.manual_seed(seed)
    config = gpt.GPTConfig(block_size=cfg.sasrec_len, vocab_size=domain.n_items + 1, n_layer=cfg.sasrec_layers,
                           n_head=cfg.sasrec_heads, n_embd=cfg.sasrec_embd, dropout=cfg.sasrec_dropout)
    net = gpt.GPT(config).to(device)
    optimizer = net.configure_optimizers(cfg.sasrec_lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    sequences = [s for s in domain.train_sequences if len(s) >= 2]
    select = domain.valid  # cheap enough to use every validation user
    best, best_state = -1.0, None
    interval = max(1, cfg.sasrec_steps // 5)
    for step in range(cfg.sasrec_steps + 1):
        if step % interval == 0 or step == cfg.sasrec_steps:
            score = rank_metrics(rank_sasrec(net, domain, select, cfg, device))["ndcg@10"]
            if score > best:
                best, best_state = score, copy.deepcopy(net.state_dict())
            log(f"  sasrec step {step:5d}  valid ndcg@10 {score:.4f}")
        if step == cfg.sasrec_steps:
            break
        net.train()
        rows = rng.integers(len(sequences), size=cfg.sasrec_batch)
        idx, mask, targets = sasrec_batch([sequences[r] for r in rows], cfg.sasrec_len, domain.n_items)
        _, loss = net(idx.to(device), mask.to(device), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.load_state_dict(best_state)
    return net


# -----------------------------------------------------------------------------
# 9. the whole experiment: python train.py --task calrec


def to_global(examples, offset):
    return [([offset + i for i in h], offset + t) for h, t in examples]


def format_table(results):
    cols = [f"recall@{k}" for k in RECALL_KS] + [f"ndcg@{k}" for k in NDCG_KS]
    names = {"calrec_bm25": "CALRec generative+BM25", "calrec_dense": "CALRec dense (two-tower)",
             "sasrec": "SASRec", "popular": "most popular"}
    lines = [f"{'split':6s} {'method':26s} " + " ".join(f"{c:>9s}" for c in cols)]
    for split in ("valid", "test"):
        for method, m in results[split].items():
            lines.append(f"{split:6s} {names.get(method, method):26s} " + " ".join(f"{m[c]:9.4f}" for c in cols))
    return "\n".join(lines)


def run(args):
    """Load the domains, train CALRec (stage 1 and/or 2), the baselines, evaluate, print, write results.json."""
    t0 = time.time()
    cfg = default_config(real_data=args.data is not None)
    for name in ("alpha", "beta", "tau", "beams"):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.max_steps is not None:  # the steps of each stage, and at most that many for SASRec
        cfg.stage1_steps = cfg.stage2_steps = args.max_steps
        cfg.sasrec_steps = min(cfg.sasrec_steps, args.max_steps)
    if args.eval_interval is not None:
        cfg.eval_interval = args.eval_interval
    if cfg.alpha + cfg.beta > 1.0:
        raise SystemExit(f"error: --alpha + --beta must be <= 1 (L_NIG's weight is 1 - alpha - beta); "
                         f"got {cfg.alpha} + {cfg.beta}")
    rank = getattr(args, "rank", 0)  # under torchrun only process 0 logs, saves and evaluates at the end
    log_file = open(os.path.join(args.out_dir, "log.txt"), "w") if rank == 0 else None

    def log(line):
        if rank != 0:
            return
        line = f"[{time.time() - t0:6.1f}s] {line}"
        print(line, file=log_file, flush=True)
        if "  step" not in line or "valid" in line:
            tqdm.write(line)

    # --- data
    domains = data.load_domains(args.data) if args.data else data.make_world(seed=args.seed)
    names = [d.name for d in domains]
    target_name = args.target or names[-1]
    if target_name not in names:
        raise SystemExit(f"error: --target {target_name} is not among the domains {names}")
    ti = names.index(target_name)
    target = domains[ti]
    offsets = np.cumsum([0] + [d.n_items for d in domains]).tolist()
    item_range = range(offsets[ti], offsets[ti + 1])
    texts = [data.item_text(it, d.attributes, cfg.max_words) for d in domains for it in d.items]
    for d in domains:
        log(f"domain {d.name}: {d.n_items} items, {len(d.train)} training examples, {len(d.valid)} valid, "
            f"{len(d.test)} test users")

    # --- tokenizer and model (from scratch, --init, or --resume)
    resume = None
    if args.resume:  # the weights, optimizer, stage and step of the last best checkpoint of this out_dir
        tokenizer = data.load_tokenizer(os.path.join(args.out_dir, "tokenizer.json"))
        model, resume = gpt.gpt_from_checkpoint(os.path.join(args.out_dir, "ckpt.pt"))
        log(f"resuming stage {resume.get('stage', 1)} at step {resume['step']} from {args.out_dir}/ckpt.pt")
    elif args.init:
        tokenizer = data.load_tokenizer(args.init if os.path.isdir(args.init) else os.path.dirname(args.init))
        model = gpt.load_init(args.init, dropout=cfg.dropout)
        cfg.block_size = model.config.block_size
    else:
        tokenizer = data.train_tokenizer(texts + [data.history_prompt(texts[:2])], vocab_size=cfg.vocab_size)
        model = gpt.GPT(gpt.GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.vocab_size,
                                      n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                      dropout=cfg.dropout))
    tokenizer.check_fits(model.config.vocab_size)
    if rank == 0:
        tokenizer.save(os.path.join(args.out_dir, "tokenizer.json"))
    model.to(args.device)
    builder = data.PromptBuilder(tokenizer, texts, model.config.block_size, cfg.max_history, cfg.max_item_tokens)
    log(f"model: {model.num_params() / 1e6:.2f}M parameters, vocab {tokenizer.vocab_size}, "
        f"block {model.config.block_size}")

    valid_g, test_g = to_global(target.valid, offsets[ti]), to_global(target.test, offsets[ti])
    select_examples = valid_g[:cfg.select_users]
    select_path = "dense" if cfg.beta > 0 else "bm25"  # the path L_UT trains; without it, the generative one
    bm25 = BM25(texts[item_range.start:item_range.stop], cfg.bm25_k1, cfg.bm25_b)

    def select(m):
        if select_path == "dense":
            ranks = rank_dense(m, builder, select_examples, item_range, args.device)
        else:
            ranks = rank_generative(m, builder, tokenizer, bm25, select_examples, item_range, cfg,
                                    args.device)[0]
        return rank_metrics(ranks)["ndcg@10"]

    # --- stage 1: every domain; stage 2: the target domain (spec section 4)
    train_sets = [to_global(d.train, o) for d, o in zip(domains, offsets)]
    sizes = np.array([len(s) for s in train_sets], dtype=np.float64) ** (1.0 / cfg.domain_temperature)
    stages = {"1": [1], "2": [2], "both": [1, 2]}[args.stages]
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    stage_scores = {}
    for stage in stages:
        start, opt_state = 0, None
        if resume is not None:
            if stage < resume.get("stage", 1):
                continue  # finished before the interruption
            if stage == resume.get("stage", 1):
                start, opt_state = resume["step"], resume["optimizer"]
        if stage == 1:
            probs, steps = sizes / sizes.sum(), cfg.stage1_steps
        else:
            probs, steps = np.eye(len(domains))[ti], cfg.stage2_steps
        log(f"stage {stage}: {steps} steps on " + ", ".join(f"{n} {p:.2f}" for n, p in zip(names, probs) if p > 0)
            + f"; selection on {len(select_examples)} valid users ({select_path} path)")
        best_state, best = train_stage(model, builder, train_sets, probs, select, cfg, steps, args.device,
                                       args.seed + stage, log, ckpt_path, stage, start, opt_state,
                                       dtype=args.dtype, compile_model=args.compile)
        model.load_state_dict(best_state)
        stage_scores[f"stage{stage}_valid_ndcg@10"] = best

    if rank != 0:
        return None  # the other processes are done: every process holds the same weights

    # --- evaluate CALRec both ways, then the baselines, on the same split
    results = {"valid": {}, "test": {}}
    valid_bm25 = valid_g[:cfg.bm25_valid_users] if cfg.bm25_valid_users else valid_g
    for split, examples, gen_examples in (("valid", valid_g, valid_bm25), ("test", test_g, test_g)):
        ranks, samples = rank_generative(model, builder, tokenizer, bm25, gen_examples, item_range, cfg,
                                         args.device, show=True)
        results[split]["calrec_bm25"] = rank_metrics(ranks)
        results[split]["calrec_dense"] = rank_metrics(rank_dense(model, builder, examples, item_range, args.device))
        if split == "test":
            log("best beams of the first test users: " + " | ".join(samples))
    log("SASRec baseline")
    sasrec = train_sasrec(target, cfg, args.device, args.seed, log)
    for split, examples in (("valid", target.valid), ("test", target.test)):
        results[split]["sasrec"] = rank_metrics(rank_sasrec(sasrec, target, examples, cfg, args.device))
        results[split]["popular"] = rank_metrics(rank_popular(target, examples))

    wall = time.time() - t0
    config = dict(asdict(cfg), domains=names, target=target_name, stages=args.stages, seed=args.seed,
                  device=args.device, n_valid_bm25=len(valid_bm25), n_valid=len(valid_g), n_test=len(test_g),
                  **stage_scores)
    out = {"valid": results["valid"], "test": results["test"], "config": config, "wall_s": wall}
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nCALRec on {target_name} (stages {args.stages}; alpha {cfg.alpha}, beta {cfg.beta}, tau {cfg.tau}; "
          f"{cfg.beams} beams); full ranking over {target.n_items} items")
    print(format_table(results))
    print(f"wall time {wall:.0f} s; results in {os.path.join(args.out_dir, 'results.json')}")
    log_file.close()
    return out
