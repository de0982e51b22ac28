"""
CALRec: sequential recommendation as text generation, with a two-tower contrastive alignment.

Paper: Li, Zhai, Alzantot, Yu, Vulic, Korhonen, Hammad. "CALRec: Contrastive Alignment of Generative LLMs
for Sequential Recommendation." RecSys 2024 (arXiv 2405.02429). What the paper specifies and what we decided
where it is silent: docs/calrec.md.

One small GPT (model.py) reads a user's purchase history as text and writes the next item's text. The same
weights are also two towers: pooled over the history they give the user vector v_U, pooled over the target
(read after the history) v_T|U, and over the item text alone v_T. Training mixes next-item generation with
two InfoNCE alignments; inference beam-searches item texts and grounds them in the catalog with BM25.

Read in this order: settings -> metrics -> InfoNCE -> the towers and the loss mixture -> BM25 -> the
quasi-round-robin merge -> ranking the catalog (generative, constrained to the catalog, dense) -> the baselines
-> training (one step, then the two stages) -> the run: prepare (read and check everything) and run (train,
evaluate, write).

    python train.py --task calrec                    # the built-in world, CPU, about 2 minutes
    python train.py --task calrec --data data/amazon/Video_Games data/amazon/Industrial_and_Scientific
                                                     # real data: stage 1 on both, stage 2 on the last
"""

import dataclasses
import functools
import hashlib
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from model import (GPT, GPTConfig, RunState, UserError, all_reduce_sum, autocast, gather_rows, grad_scaler,
                   last_token_pool, mean_pool, peak_memory_mb, rank_and_world, save_checkpoint, save_json,
                   train_and_select)

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# settings (the paper gives the method; every number below is ours unless a comment says otherwise)


@dataclass(frozen=True)
class CALRecConfig:
    # the LM (model.GPTConfig)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256
    dropout: float = 0.0
    vocab_size: int = 2048        # BPE trained on prompts built from the item texts
    # text (spec section 1)
    max_words: int = 24           # cap on every attribute value, in words
    max_history: int = 3          # most recent history items in a prompt (then as many as fit block_size)
    max_item_tokens: int = 64     # cap on an item's text in tokens (after the word cap), everywhere
    fit_item_texts: bool = True   # [ours] an item over max_item_tokens loses words from its longest values
                                  # (data.fitted_item_texts) and keeps every attribute; false: its tokens are
                                  # cut at the end, which can drop the last attributes (the brand) whole
    # losses (spec section 3): L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT
    alpha: float = 0.2
    beta: float = 0.2
    tau: float = 0.05
    every_position: bool = True   # [beyond the paper] predict every history item of a row, not only the last
    softmax_over: str = "items"   # InfoNCE normalised over the batch's "items" (ours) or "users" (the paper)
    extra_negatives: int = 0      # [beyond the paper] random catalog items per batch, as extra negatives
    negative_bank: int = 0        # [beyond the paper] every this many steps, v_T of the whole catalog (no gradient)
                                  # is recomputed; those vectors join every batch's negatives (0: no bank)
    same_prompt_room: bool = True  # training prompts keep room for the longest item, as inference's do
    user_pool: str = "mean"       # v_U: the "mean" over the prompt (the paper) or its "last" token [beyond the paper]
    popularity_prior: bool = True  # [beyond the paper] the dense path scores cos(v_U, v_T) / tau + lambda log(1 + n_j),
                                   # n_j: item j's training interactions; lambda chosen on validation (PRIOR_WEIGHTS)
    recent_items: bool = True     # [beyond the paper] the dense path's query mixes v_U with the recency-weighted
                                  # mean item vector of the history; weights chosen on validation (RECENT_WEIGHTS)
    recent_in_loss: int = 0       # [beyond the paper] L_UT trains that mixed query (LOSS_RECENT), r_U over this many
                                  # last history items, through the item tower; 0: L_UT trains v_U alone (the paper)
    # training, per stage (spec section 4)
    stage1_steps: int = 300
    stage2_steps: int = 200
    batch_size: int = 32          # rows (one per user sequence, or per training example) per step
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 30
    eval_interval: int = 100
    domain_temperature: float = 1.0  # stage-1 mixture: P(domain) ~ n_train ** (1 / temperature)
    select_users: int = 500          # validation users for model selection during training (0: all of them); on
                                     # real data 10,000: all of Scientific's 8,442, and a bounded cost on a larger
                                     # category (an evaluation grows with users x items)
    select_full: bool = True         # model selection scores the dense path as reported, at the best weights of its
                                     # grid (choose_dense_weights); false: by the cosine alone
    # inference (spec section 5)
    beams: int = 10
    constrained_beams: int = 20      # beams of the catalog-constrained path (each beam is one item); 0: off
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    top_k: int = 20                  # length of every ranked list (the largest K of the metrics)
    eval_batch: int = 50             # users per beam-search batch
    bm25_valid_users: int = 200      # 0: all; else the generative paths' valid rows use the first this many
    evaluate_test: bool = True       # false: validation rows only (a sweep never looks at test)
    baselines: bool = True           # false: CALRec's rows only (SASRec, popularity, Markov, last item skipped)
    # SASRec baseline (an item-id GPT of model.py)
    sasrec_layers: int = 2
    sasrec_heads: int = 2
    sasrec_embd: int = 64
    sasrec_len: int = 50
    sasrec_dropout: float = 0.2
    sasrec_steps: int = 600
    sasrec_batch_size: int = 128
    sasrec_lr: float = 2e-3
    sasrec_decay: bool = True        # warmup, then cosine decay of the learning rate (lr_at), as CALRec's

    def check(self):
        if self.alpha + self.beta > 1.0:
            raise UserError(f"--alpha + --beta must be <= 1 (L_NIG's weight is 1 - alpha - beta); got {self.alpha} "
                            f"+ {self.beta}")
        if self.softmax_over not in ("items", "users"):
            raise UserError(f"softmax_over must be items or users, not {self.softmax_over!r}")
        if self.user_pool not in USER_POOLS:
            raise UserError(f"user_pool must be {' or '.join(USER_POOLS)}, not {self.user_pool!r}")
        if self.softmax_over == "users" and (self.extra_negatives or self.negative_bank):
            raise UserError("extra_negatives and negative_bank are items: they need softmax_over=items")
        return self


BUILT_IN = CALRecConfig(  # sized to finish in under 3 minutes on one CPU core
    stage1_steps=200, stage2_steps=100, batch_size=24, lr=4e-3, warmup=20, eval_interval=100, select_users=300,
    beams=6, constrained_beams=10, sasrec_steps=400)
REAL_DATA = CALRecConfig(  # 45 minutes alone on 2 CPU cores; chosen on Scientific's validation split (results.md)
    n_layer=2, n_head=4, n_embd=128, block_size=256, vocab_size=4096, max_words=10, max_history=1,
    max_item_tokens=32, stage1_steps=600, stage2_steps=1200, batch_size=32, lr=1e-3, warmup=100,
    eval_interval=200, domain_temperature=2.0, select_users=10_000, beams=5, eval_batch=64, bm25_valid_users=1000,
    extra_negatives=256, recent_in_loss=4, constrained_beams=5, sasrec_steps=3000, sasrec_dropout=0.5, sasrec_len=50)

RECALL_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)


def settings(args):
    """The run's CALRecConfig: the defaults of its kind of data, then the flags (--set NAME=VALUE last)."""
    flags = {name: getattr(args, name) for name in ("alpha", "beta", "tau", "beams")
             if getattr(args, name, None) is not None}
    if args.max_steps is not None:  # the steps of each stage, and at most that many for SASRec
        flags.update(stage1_steps=args.max_steps, stage2_steps=args.max_steps,
                     sasrec_steps=min(REAL_DATA.sasrec_steps if args.data else BUILT_IN.sasrec_steps, args.max_steps))
    if args.eval_interval is not None:
        flags["eval_interval"] = args.eval_interval
    base = REAL_DATA if args.data else BUILT_IN
    return dataclasses.replace(base, **{**flags, **dict(args.set or ())}).check()


# -----------------------------------------------------------------------------
# 1. metrics: full ranking over the catalog, one relevant item per user (spec section 6)


def ranks_from_scores(scores, targets, histories):
    """Rank (from 1) of each user's target among all catalog items; 0 when it cannot be ranked.

    scores (B, N) over the whole catalog; targets (B,); histories: list of item lists, excluded from the
    candidates (a target that is in its own history is thus unrankable: rank 0). Ties count against the
    target (rank = number of candidates scoring >= the target), so a constant scorer earns nothing.
    """
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(h) for h in histories]))
    scores[users, torch.tensor([i for h in histories for i in h], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t).sum(1, dtype=torch.int32)                    # (B,) includes the target itself
    return torch.where(torch.isinf(t.view(-1)), torch.zeros_like(ranks), ranks)


def ranks_in_chunks(scores, examples, chunk=1024):
    """ranks_from_scores of every example, `chunk` users at a time: scores(rows) gives the (chunk, N) scores of
    examples[rows] (rows a slice). Memory stays (chunk, N) however many users: the whole (users, N) matrix of a
    Games-sized split (50k users, 17k items) would take 3.4 GB."""
    ranks = []
    for s in range(0, len(examples), chunk):
        rows = slice(s, s + chunk)
        part = examples[rows]
        ranks.append(ranks_from_scores(scores(rows), torch.tensor([t for _, t in part]), [h for h, _ in part]))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int32)


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
# 2. InfoNCE with in-batch negatives (spec section 3), CLIP-shaped


def info_nce(query, key, key_items, tau):
    """L = -1/B sum_i log( exp(cos(q_i, k_i)/tau) / sum_j exp(cos(q_i, k_j)/tau) ).

    query (B, C) and key (N >= B, C) are L2-normalised; key i < B is query i's positive, every other key a
    negative -- except a key of the same item as row i's (key_items (N,) equal): that one is masked out, not a
    negative. Keys beyond B are extra negatives.
    """
    logits = query @ key.t() / tau                                    # (B, N) cosine similarities / tau
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]         # (B, N) keys of row i's own item ...
    same[rows, rows] = False                                          # ... except its positive
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)


# -----------------------------------------------------------------------------
# 3. the towers and the loss mixture (spec sections 2 and 3)


# Every batch of CALRec is right-padded, so no attention mask is needed: under plain causal attention a real
# token only sees the real tokens before it, exactly as with the padding mask, and the padded positions are
# never read (the pooling spans and the loss skip them). The fastest attention kernel then does the work.


def item_vectors(lm, idx, mask):
    """The item tower: v_T, the normalised mean of the final hidden states over the item's text. (B, C)"""
    return F.normalize(mean_pool(lm.hidden_states(idx), mask), dim=-1)


def user_vectors(h, rows, ends):
    """The user tower: v_U, the normalised mean of the hidden states h (B, T, C) over a prompt, positions
    [0, ends[p]) of row rows[p]. One row of the joint sequence holds a prompt before each of its predicted
    items, each a prefix of the next: a running mean gives all of them from one pass. (P, C)"""
    running = h.cumsum(1)                                              # (B, T, C) sums over positions 0..t
    return F.normalize(running[rows, ends - 1] / ends[:, None].to(h.dtype), dim=-1)


def last_token_vectors(h, rows, ends):
    """v_U read at the prompt's last token [beyond the paper]: the hidden state at position ends[p] - 1 of row
    rows[p], which attends to the whole prompt and weighs its parts as the model learns to. (P, C)"""
    return F.normalize(h[rows, ends - 1], dim=-1)


USER_POOLS = {"mean": user_vectors, "last": last_token_vectors}


def target_vectors(h, rows, starts, ends):
    """v_T|U: the normalised mean of h over each predicted item's tokens [starts[p], ends[p]), as read after
    its prompt. (P, C)"""
    running = F.pad(h.cumsum(1), (0, 0, 1, 0))                         # (B, T + 1, C) sums over 0..t-1
    span = running[rows, ends] - running[rows, starts]
    return F.normalize(span / (ends - starts)[:, None].to(h.dtype), dim=-1)


def calrec_loss(l_nig, v_u, v_tu, v_t, items, cfg):
    """L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT, and its parts.

    l_nig: next-item generation, the cross-entropy of the target tokens. v_u, v_tu (P, C): the user vector and
    the target read after the history, one per prediction; v_t (N >= P, C): the item tower's vectors of those
    P targets, then of any extra negative items; items (N,) the item behind each row of v_t.
    softmax_over="items": each user (or v_T|U) against the batch's items; "users" (the spec's formula): each
    target item against the batch's users.
    """
    P = len(v_u)
    def nce(q):
        return info_nce(q, v_t, items, cfg.tau) if cfg.softmax_over == "items" else \
            info_nce(v_t[:P], q, items[:P], cfg.tau)
    l_tt = nce(v_tu) if cfg.alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if cfg.beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - cfg.alpha - cfg.beta) * l_nig + cfg.alpha * l_tt + cfg.beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}


# [beyond the paper] With recent_in_loss, L_UT's query is the one the dense path ranks by (see recent_vectors),
# at fixed weights: q_U = (1 - mu) v_U + mu r_U, r_U the decay ** age weighted mean of the last history items' v_T.
# The item tower then learns "what follows what" directly, not only through v_U. (mu, decay):
LOSS_RECENT = (0.5, 0.5)


class Towers(torch.nn.Module):
    """One training batch through the two towers: the joint sequences give the generation loss's terms and
    v_U, v_T|U at every prediction; the item texts give v_T. A module, so that DistributedDataParallel can
    wrap it (it syncs gradients through a module's forward)."""

    def __init__(self, lm, user_pool="mean"):
        super().__init__()
        self.lm = lm
        self.user_vectors = USER_POOLS[user_pool]

    def forward(self, idx, targets, row, start, end, item_idx=None, item_mask=None, recent=None):
        """recent: (owner, weight) (H,) when the last H item texts are history items, each weighted into the r_U
        of prediction owner[i] (the weights of a prediction sum to 1); v_U is then q_U (LOSS_RECENT)."""
        h = self.lm.hidden_states(idx)                                 # (B, T, C), right-padded rows
        predict = targets != -100                                      # positions whose next token is a target's
        nig_sum = F.cross_entropy(self.lm.lm_head(h[predict]), targets[predict], reduction="sum")
        v_u = self.user_vectors(h, row, start)
        v_t = None if item_idx is None else item_vectors(self.lm, item_idx, item_mask)
        if recent is not None:
            (owner, weight), n = recent, len(v_t) - len(recent[0])
            r_u = torch.zeros(len(v_u), v_t.shape[1], dtype=v_t.dtype, device=v_t.device)
            r_u = r_u.index_add(0, owner, weight[:, None].to(v_t.dtype) * v_t[n:])
            v_u, v_t = F.normalize(dense_queries(v_u, r_u, LOSS_RECENT[0]), dim=-1), v_t[:n]
        return nig_sum, predict.sum(), v_u, target_vectors(h, row, start, end), v_t


def recent_history(sequences, row, position, n, decay):
    """The last n history items of every prediction (row[p], position[p] of training_batch) and their weights,
    decay ** age normalised per prediction (age 0: the item just before it). Returns items (H,) as a list, and
    owner, weight (H,) tensors: Towers' `recent`."""
    items, owner, weight = [], [], []
    for p, (b, pos) in enumerate(zip(row.tolist(), position.tolist())):
        history = sequences[b][max(0, pos - n):pos]
        w = [decay ** age for age in range(len(history) - 1, -1, -1)]
        items += history
        owner += [p] * len(history)
        weight += [x / sum(w) for x in w]
    return items, torch.tensor(owner, dtype=torch.long), torch.tensor(weight)


# -----------------------------------------------------------------------------
# 4. BM25 over the catalog: a sparse term-document matrix, queries scored a chunk at a time


def words(text):
    """BM25's analyser: lower-cased runs of letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Okapi BM25 with Lucene's idf = log(1 + (N - n + 0.5) / (n + 0.5)) (spec section 5).

    score(q, d) = sum over the query's words w (with repeats) of
                  idf(w) * tf(w, d) * (k1 + 1) / (tf(w, d) + k1 * (1 - b + b * |d| / avgdl)).
    The per-(document, word) factor is precomputed into a sparse (D, V) matrix W, so the scores of a chunk of
    queries are one sparse-dense product W @ Q^T, Q (n, V) holding each query's word counts. `search` goes
    chunk by chunk and keeps only each chunk's top documents, so memory stays bounded however many queries.
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
        q, w = [], []                                                    # (query, word) index pairs, one per
        for j, text in enumerate(queries):                               # occurrence of a known word
            ids = [self.vocab[x] for x in words(text) if x in self.vocab]
            q += [j] * len(ids)
            w += ids
        Q = torch.zeros(len(self.vocab), len(queries))                   # (V, nq) word counts of the queries,
        Q.index_put_(tuple(torch.tensor([w, q], dtype=torch.long)),      # filled in one call: repeated
                     torch.ones(len(q)), accumulate=True)                # pairs add up
        return (self.matrix @ Q).t().contiguous()                        # (nq, D)

    def search(self, queries, depth, chunk=256):
        """Top `depth` documents of each query with a positive score: lists of (indices, scores).

        Best first; equal scores go by document index, lower first. Scores are >= 0, and a float32 >= 0 orders
        like its bits read as an integer, so the key (bits << 32) - index sorts by score, then by index.
        `chunk` queries are scored at a time: a small (chunk, D) block (256 x 4,385 x 8 bytes = 9 MB for the
        Scientific catalog) measured fastest, and memory does not grow with the number of queries.
        """
        index = torch.arange(self.matrix.size(0))                        # (D,)
        out = []
        for start in range(0, len(queries), chunk):
            s = self.scores(queries[start:start + chunk])                # (n, D), n <= chunk
            key = s.view(torch.int32).long()                             # (n, D) the scores' bits, as int64
            key <<= 32                                                   # (in place: no more (n, D) copies)
            key -= index
            top = torch.topk(key, min(depth, s.size(1)), dim=1).indices  # (n, depth)
            vals = s.gather(1, top)                                      # (n, depth), descending
            n_pos = (vals > 0).sum(1).tolist()
            for idx, v, n in zip(top.tolist(), vals.tolist(), n_pos):
                out.append((idx[:n], v[:n]))
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
# 6. ranking the catalog: generative (beam search -> BM25 -> merge), constrained to the catalog, and dense


class CatalogTrie:
    """A prefix tree of the catalog's item texts as tokens, each ended by end-of-text [beyond the paper]. As beam
    search's `allowed_next`, it lets a beam write only a prefix of some item, so a finished beam is an item."""

    def __init__(self, item_tokens, eot_id, vocab_size):
        self.children, self.items = [{}], {}                         # node -> {token: node}; leaf -> items
        self.eot_id, self.V = eot_id, vocab_size
        for i, tokens in enumerate(item_tokens):
            node = 0
            for t in list(tokens) + [eot_id]:
                if t not in self.children[node]:
                    self.children[node][t] = len(self.children)
                    self.children.append({})
                node = self.children[node][t]
            self.items.setdefault(node, []).append(i)  # items whose texts tokenise alike share a leaf
        self.node_of = {(): 0}

    def node(self, prefix):
        """The node a beam's tokens lead to, or None if no item starts so (each prefix looked up once, from its
        parent's node). Only a dead beam -- score -inf, when fewer than K continuations exist -- gets None."""
        if prefix not in self.node_of:
            parent = self.node(prefix[:-1])
            self.node_of[prefix] = None if parent is None else self.children[parent].get(prefix[-1])
        return self.node_of[prefix]

    def __call__(self, tokens):
        """tokens (B, K, t): each beam so far -> (B, K, V) bool, the tokens that may come next (none after the
        end-of-text: beam search keeps a finished beam as it is)."""
        B, K, _ = tokens.shape
        allowed = torch.zeros(B, K, self.V, dtype=torch.bool)
        for b, beams in enumerate(tokens.tolist()):
            for k, beam in enumerate(beams):
                node = None if self.eot_id in beam else self.node(tuple(beam))
                if node is not None:
                    allowed[b, k, list(self.children[node])] = True
        return allowed.to(tokens.device)


@torch.no_grad()
def rank_generative(lm, builder, tokenizer, examples, catalog, cfg, bm25=None, trie=None, show=False):
    """Ranks of the targets in top-k lists written by beam search over item texts. Grounding: with bm25, each
    beam's text is a query and the m lists are merged quasi-round-robin (the paper); with a trie, beam search
    can only write catalog items, taken in order of beam score [beyond the paper]. catalog: the global indices
    of the target domain's items (the builder's); examples, bm25 and trie use local ones (positions in catalog).
    Returns the ranks and, for a look at what the model writes, the best beam of the first users."""
    lm.eval()
    lists, samples = [], []
    beams = cfg.beams if trie is None else cfg.constrained_beams
    for s in tqdm(range(0, len(examples), cfg.eval_batch), desc="beam search", disable=not show, leave=False):
        chunk = examples[s:s + cfg.eval_batch]
        _, _, prompts = builder.prompt_batch([[catalog[i] for i in h] for h, _ in chunk])
        found = lm.beam_search(prompts, beams, builder.room, tokenizer.eot_id, allowed_next=trie)
        texts = tokenizer.decode_batch([tokens for user in found for tokens, _ in user])  # (B * m,)
        if trie is None:
            hits = bm25.search(texts, depth=2 * cfg.top_k + beams)
        for b, (history, _) in enumerate(chunk):
            if trie is None:
                per_beam = hits[b * beams:(b + 1) * beams]
                ranked = merge_round_robin([lst for lst, _ in per_beam], [sc for _, sc in per_beam], history,
                                           cfg.top_k)
            else:
                leaves = [trie.items.get(trie.node(tuple(tokens)), []) for tokens, score in found[b]
                          if score > float("-inf")]
                ranked = [i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history]
            lists.append(ranked[:cfg.top_k])
        if len(samples) < 3:
            samples.append(texts[0])
    return ranks_from_lists(lists, [t for _, t in examples]), samples


@torch.no_grad()
def text_log_probs(lm, prompts, continuations, device, batch=64):
    """log p(continuation | prompt) under the LM for each pair: the sum of its tokens' log-probabilities. Rows are
    right-padded, so causal attention needs no mask: padding comes after every token that is read. Only the
    positions that predict a continuation's token go through the output layer."""
    lm.eval()
    out = []
    for s in range(0, len(prompts), batch):
        pairs = list(zip(prompts[s:s + batch], continuations[s:s + batch]))
        idx, _ = data.pad_batch([p + c for p, c in pairs], 0)
        row = torch.tensor([b for b, (p, c) in enumerate(pairs) for _ in c])                   # (P,) whose token
        at = torch.tensor([len(p) - 1 + i for p, c in pairs for i in range(len(c))])          # (P,) predicted from
        token = torch.tensor([t for _, c in pairs for t in c])                                 # (P,) the token
        h = lm.hidden_states(idx.to(device))[row.to(device), at.to(device)]                    # (P, C)
        logp = -F.cross_entropy(lm.lm_head(h).float(), token.to(device), reduction="none").cpu()
        out.append(torch.zeros(len(pairs)).index_add_(0, row, logp))
    return torch.cat(out) if out else torch.zeros(0)


def generator_check(lm, builder, eot_id, examples, catalog, popular, device):
    """What the generator prefers to write [a diagnostic]: after each user's prompt, the log-probability of three
    item texts (each with its end-of-text) -- the user's next item, its last history item (copying it), and the
    catalog's most popular item (local index `popular`). Returns the three means and the share of users for whom
    the most popular item's text is more likely than their next item's."""
    prompts = [builder.prompt([catalog[i] for i in h]) for h, _ in examples]
    def log_p(items):
        return text_log_probs(lm, prompts, [builder.item_ids[catalog[i]] + [eot_id] for i in items], device)
    target = log_p([t for _, t in examples])
    last = log_p([h[-1] for h, _ in examples])
    top = log_p([popular] * len(examples))
    return dict(next_item=target.mean().item(), last_item=last.mean().item(), most_popular=top.mean().item(),
                popular_beats_next=(top > target).double().mean().item(), users=len(examples))


@torch.no_grad()
def catalog_vectors(lm, builder, items, device, batch=256):
    """v_T of the given items (N, C), computed once per evaluation."""
    out = []
    for s in range(0, len(items), batch):
        idx, mask = builder.item_batch(items[s:s + batch])
        out.append(item_vectors(lm, idx.to(device), mask.to(device)))
    return torch.cat(out)


@torch.no_grad()
def dense_vectors(lm, builder, examples, catalog, device, batch=64, user_pool="mean"):
    """The dense path's two towers [beyond the paper]: v_U of every example's history (B, C) and v_T of every
    catalog item (N, C). catalog: the global indices of the target domain's items; examples use local indices
    (positions in catalog)."""
    lm.eval()
    v_t = catalog_vectors(lm, builder, list(catalog), device)         # (N, C)
    v_u = []
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        idx, mask, prompts = builder.prompt_batch([[catalog[i] for i in h] for h, _ in chunk])
        hidden = lm.hidden_states(idx.to(device))                      # (B, T, C), right-padded prompts
        ends = torch.tensor([len(p) for p in prompts], device=device)
        v_u.append(USER_POOLS[user_pool](hidden, torch.arange(len(chunk), device=device), ends))
    return torch.cat(v_u).cpu(), v_t.cpu()


def rank_vectors(v_u, v_t, examples, tau=1.0, prior=None, chunk=1024):
    """Ranks of the targets when item j is scored by cos(v_U, v_T_j) / tau + prior_j (prior (N,), or none)."""
    def scores(rows):
        cos = v_u[rows] @ v_t.t() / tau                                # (chunk, N)
        return cos if prior is None else cos + prior
    return ranks_in_chunks(scores, examples, chunk)


def rank_dense(lm, builder, examples, catalog, device, batch=64, user_pool="mean"):
    """Ranks of the targets when every catalog item is scored by cos(v_U, v_T) alone."""
    return rank_vectors(*dense_vectors(lm, builder, examples, catalog, device, batch, user_pool), examples)


# The popularity prior [beyond the paper]. The contrastive losses score each target against the batch's other
# targets, so an item serves as a negative about as often as it is bought: InfoNCE with such negatives learns
# cos / tau ~ log p(j | u) - log q(j) + const, with q(j) the rate at which j is drawn as a negative (Yi et al.,
# RecSys 2019, "sampling-bias-corrected" two-tower retrieval). Ranking the whole catalog needs log p(j | u), so
# log q(j) is added back: q(j) ~ 1 + n_j for the in-batch negatives, uniform for the extra ones, a mixture in
# between -- hence a weight lambda in [0, 1], chosen on the validation split, 0 among the candidates.
PRIOR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)

# The recent items [beyond the paper]. A prompt holds only the last few history items (max_history), yet the item
# tower has placed every item the user bought: their vectors, weighted by recency, give a second query from the same
# towers -- what "items like the ones just bought" means to the model, at no cost in training:
#     r_U = sum_i gamma^a_i v_T_i / sum_i gamma^a_i,   a_i the age of history item i (0 for the last one),
# and the dense path ranks by the cosine to q_U = (1 - mu) v_U + mu r_U, that is, item vectors being unit length,
# (1 - mu) cos(v_U, v_T_j) + mu sum_i w_i cos(v_T_i, v_T_j). gamma, mu and lambda are chosen together on the
# validation split after training; mu = 0 (v_U alone) is among the candidates.
RECENT_WEIGHTS = (0.2, 0.4, 0.6, 0.8)      # mu, besides 0
RECENT_DECAYS = (0.25, 0.5, 0.75, 1.0)     # gamma; 1: the plain mean of the history


def recent_vectors(v_t, examples, decay):
    """r_U of every example (B, C): its history items' v_T weighted decay ** age, the weights summing to 1; zeros
    for an empty history. All histories at once, as one flat list of (user, item, age)."""
    lengths = torch.tensor([len(h) for h, _ in examples], dtype=torch.long)
    user = torch.repeat_interleave(torch.arange(len(examples)), lengths)          # (H,) whose history item
    item = torch.tensor([i for h, _ in examples for i in h], dtype=torch.long)   # (H,) which item
    age = lengths.cumsum(0)[user] - 1 - torch.arange(len(item))                  # (H,) 0: a history's last item
    w = decay ** age.to(v_t.dtype)
    total = torch.zeros(len(examples), v_t.shape[1], dtype=v_t.dtype).index_add_(0, user, w[:, None] * v_t[item])
    norm = torch.zeros(len(examples), dtype=v_t.dtype).index_add_(0, user, w)
    return total / norm.clamp(min=torch.finfo(v_t.dtype).tiny)[:, None]


def dense_queries(v_u, r_u, mu):
    """The dense path's query: (1 - mu) v_U + mu r_U."""
    return (1 - mu) * v_u + mu * r_u


def choose_dense_weights(v_u, v_t, examples, tau, log_counts, mus=RECENT_WEIGHTS, decays=RECENT_DECAYS,
                         weights=PRIOR_WEIGHTS, chunk=128):
    """The (mu, gamma, lambda) of the grid with the best NDCG@10 on examples, and every triple's NDCG@10. The grid
    starts with mu = 0 (gamma unused: None), then every mu of mus with every gamma; ties go to the first.
    Each query's cosines are computed once per chunk of users and serve every lambda; small chunks keep the
    temporaries in cache, and the same few sizes reused do not grow the heap from one evaluation to the next."""
    grid = [(0.0, None, w) for w in weights] + [(m, g, w) for m in mus for g in decays for w in weights]
    r_u = {g: recent_vectors(v_t, examples, g) for g in decays}
    ranks = {c: [] for c in grid}
    for m, g in dict.fromkeys((m, g) for m, g, _ in grid):
        q_u = v_u if g is None else dense_queries(v_u, r_u[g], m)
        for s in range(0, len(examples), chunk):
            part = examples[s:s + chunk]
            targets, histories = torch.tensor([t for _, t in part]), [h for h, _ in part]
            cos = q_u[s:s + chunk] @ v_t.t() / tau                     # (chunk, N)
            for w in weights:
                ranks[m, g, w].append(ranks_from_scores(cos + w * log_counts, targets, histories))
    ndcg = {c: rank_metrics(torch.cat(r))["ndcg@10"] for c, r in ranks.items()}
    return max(grid, key=lambda c: (ndcg[c], -grid.index(c))), ndcg


def dense_grid(cfg):
    """The candidates of the dense path's weights under cfg, as choose_dense_weights takes them: (mus, gammas,
    lambdas); mu = 0 and lambda = 0 are always candidates."""
    return ((RECENT_WEIGHTS, RECENT_DECAYS) if cfg.recent_items else ((), ())) + \
        (PRIOR_WEIGHTS if cfg.popularity_prior else (0.0,),)


def describe_dense_weights(mu, gamma, lam):
    """The chosen weights as the log and the table's header print them (gamma only when it is used)."""
    return f"mu {mu:g}" + ("" if gamma is None else f", gamma {gamma:g}") + f", lambda {lam:g}"


# -----------------------------------------------------------------------------
# 7. baselines on the same split: most popular, the last item's text through BM25, a first-order Markov chain,
#    and SASRec (model.GPT over item ids)


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
    return ranks_in_chunks(lambda rows: bm25.scores([texts[h[-1]] for h, _ in examples[rows]]), examples)


def rank_markov(domain, examples):
    """A first-order Markov chain: score(j) = how often j followed the user's last item in the training
    sequences, ties broken by popularity. The counts are kept sparse (dense, the (N, N) matrix of a 17k-item
    catalog takes 1.1 GB); each chunk of users reads the rows of its last items."""
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.float32),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()  # a then b
    pop = popularity(domain)
    last = torch.tensor([h[-1] for h, _ in examples], dtype=torch.long)
    def scores(rows):                                                  # (chunk, N) counts first, then popularity
        return nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop
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
def rank_sasrec(net, domain, examples, cfg, device, batch=256):
    """Ranks from SASRec's logits over every item at each history's last position."""
    net.eval()
    def scores(rows):
        idx, mask = (t.to(device) for t in data.pad_batch([h[-cfg.sasrec_len:] for h, _ in examples[rows]],
                                                          domain.n_items))
        last = last_token_pool(net.hidden_states(idx, mask), mask)     # (B, C) each history's last position
        return net.lm_head(last)[:, :domain.n_items].cpu()             # (B, N) the logits, padding id dropped
    return ranks_in_chunks(scores, examples, batch)


def train_sasrec(domain, cfg, device, seed, state):
    """SASRec (Kang & McAuley, 2018) as a causal transformer over item ids: model.GPT with one token per
    item (+ padding), trained with full-softmax cross-entropy at every position; best on validation."""
    torch.manual_seed(seed)
    config = GPTConfig(block_size=cfg.sasrec_len, vocab_size=domain.n_items + 1, n_layer=cfg.sasrec_layers,
                       n_head=cfg.sasrec_heads, n_embd=cfg.sasrec_embd, dropout=cfg.sasrec_dropout)
    net = GPT(config).to(device)
    optimizer = net.configure_optimizers(cfg.sasrec_lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    sequences = [s for s in domain.train_sequences if len(s) >= 2]
    start, best = restore_loop(state.loop("sasrec"), net, optimizer, rng)

    def train(step):
        net.train()
        if cfg.sasrec_decay:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.sasrec_lr, cfg.warmup, cfg.sasrec_steps)
        rows = rng.integers(len(sequences), size=cfg.sasrec_batch_size)
        idx, targets = (t.to(device) for t in sasrec_inputs([sequences[r] for r in rows], cfg.sasrec_len,
                                                            domain.n_items))
        loss = sasrec_loss(net, idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def validate():  # cheap enough to use every validation user
        return rank_metrics(rank_sasrec(net, domain, domain.valid, cfg, device))["ndcg@10"]

    train_and_select(net, train, cfg.sasrec_steps, max(1, cfg.sasrec_steps // 5), validate, start, best,
                     save_state=loop_saver(state, "sasrec", net, optimizer, rng), label="sasrec step")
    return net


# -----------------------------------------------------------------------------
# 8. training: one step, then the two stages (stage 1: a mixture of domains; stage 2: the target domain)


def lr_at(step, lr, warmup, steps):
    """Linear warmup to lr, then cosine decay to a tenth of it at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_step(towers, optimizer, scaler, builder, rows, extra, cfg, device, dtype, bank=None):
    """One optimiser step on a batch of rows (item sequences) and extra negative items (and a bank of catalog
    vectors, (vectors, items), when there is one). The plumbing lives here -- devices, mixed precision, several
    processes -- so that calrec_loss reads like the paper."""
    rank, world = rank_and_world()
    mine = slice(rank * len(rows) // world, (rank + 1) * len(rows) // world)  # this process's share
    batch = builder.training_batch(rows[mine], cfg.every_position, cfg.same_prompt_room)
    extra = extra[rank * len(extra) // world:(rank + 1) * len(extra) // world]
    items = torch.cat([batch["item"], torch.tensor(extra, dtype=torch.long)])
    inputs = {k: batch[k].to(device) for k in ("idx", "targets", "row", "start", "end")}
    history = []
    if cfg.recent_in_loss and cfg.beta > 0:  # the history items go through the item tower after the keys
        history, owner, weight = recent_history(rows[mine], batch["row"], batch["position"], cfg.recent_in_loss,
                                                LOSS_RECENT[1])
        inputs["recent"] = owner.to(device), weight.to(device)
    if cfg.alpha + cfg.beta > 0:
        inputs["item_idx"], inputs["item_mask"] = (t.to(device) for t in builder.item_batch(items.tolist() + history))
    with autocast(device, dtype):
        nig_sum, n_tokens, v_u, v_tu, v_t = towers(**inputs)
        # several processes (torchrun): L_NIG is the mean over the global batch's target tokens (DDP then
        # averages the gradients over the processes, hence * world), and the contrastive losses see every
        # process's vectors (gather_rows keeps their gradients)
        l_nig = nig_sum * world / all_reduce_sum(n_tokens.detach()).clamp(min=1)
        P = len(v_u)
        v_u, v_tu = gather_rows(v_u), gather_rows(v_tu)
        if v_t is not None:
            v_t = torch.cat([gather_rows(v_t[:P]), gather_rows(v_t[P:])])  # every target, then every extra
            items = items.to(device)
            items = torch.cat([gather_rows(items[:P]), gather_rows(items[P:])])
            if bank is not None:  # the bank's vectors of items not already among the live keys
                keep = ~torch.isin(bank[1], items)
                v_t, items = torch.cat([v_t, bank[0][keep].to(v_t.dtype)]), torch.cat([items, bank[1][keep]])
        loss, parts = calrec_loss(l_nig, v_u, v_tu, v_t, items, cfg)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    torch.nn.utils.clip_grad_norm_(towers.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), parts


def loop_saver(state, phase, net, optimizer, rng, more=dict):
    """save_state for train_and_select: everything the loop needs to continue exactly (`more()`: anything else
    the loop keeps, such as a bank of negatives)."""
    def save(step, best):
        state.save_loop(phase, step=step, best=best, weights=net.state_dict(), optimizer=optimizer.state_dict(),
                        rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(), more=more())
    return save


def restore_loop(saved, net, optimizer, rng):
    """Put a loop saved by loop_saver back; returns (start step, best) for train_and_select."""
    if saved is None:
        return 0, None
    net.load_state_dict(saved["weights"])
    optimizer.load_state_dict(saved["optimizer"])
    rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    return saved["step"], saved["best"]


def training_rows(domains, offsets, every_position):
    """Per domain, the rows a stage draws from, in global item indices: each user's training sequence with
    every_position, else every training example (history + target)."""
    if every_position:
        return [[[o + i for i in seq] for seq in d.train_sequences if len(seq) >= 2] for d, o in zip(domains, offsets)]
    return [[[o + i for i in h] + [o + t] for h, t in d.train] for d, o in zip(domains, offsets)]


def train_stage(exp, stage):
    """Stage 1: rows drawn from a mixture of every domain; stage 2: from the target domain alone (spec
    section 4). Validation NDCG@10 every eval_interval steps picks the weights the LM ends with."""
    cfg, lm, device = exp.cfg, exp.lm, exp.args.device
    sizes = np.array([len(r) for r in exp.rows], dtype=np.float64) ** (1.0 / cfg.domain_temperature)
    probs = sizes / sizes.sum() if stage == 1 else np.eye(len(exp.domains))[exp.target]
    steps = cfg.stage1_steps if stage == 1 else cfg.stage2_steps
    catalog = np.concatenate([np.arange(exp.offsets[d], exp.offsets[d + 1]) for d in np.flatnonzero(probs)])
    log.info(f"stage {stage}: {steps} steps on " + ", ".join(f"{d.name} {p:.2f}" for d, p in zip(exp.domains, probs)
                                                             if p > 0) + f"; selection: {exp.select_path} path")
    towers = Towers(lm, cfg.user_pool)
    if rank_and_world()[1] > 1:
        dev = torch.device(device)
        towers = torch.nn.parallel.DistributedDataParallel(towers, device_ids=None if dev.type == "cpu" else
                                                           [dev.index or 0])
    if exp.args.compile:
        towers = torch.compile(towers, dynamic=True)  # batches are padded to different lengths
    optimizer, scaler = lm.configure_optimizers(cfg.lr, cfg.weight_decay), grad_scaler(device, exp.args.dtype)
    rng = np.random.default_rng([exp.args.seed, stage])
    saved = exp.state.loop(f"stage{stage}")
    start, best = restore_loop(saved, lm, optimizer, rng)
    bank = dict(saved["more"]) if saved else {}  # {"vectors": (N, C), "items": (N,)} of the last refresh

    def train(step):
        if cfg.negative_bank and step % cfg.negative_bank == 0:
            bank.update(vectors=catalog_vectors(lm, exp.builder, catalog.tolist(), device),
                        items=torch.as_tensor(catalog, device=device))
        lm.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup, steps)
        domains = rng.choice(len(exp.rows), size=cfg.batch_size, p=probs)
        rows = [exp.rows[d][rng.integers(len(exp.rows[d]))] for d in domains]
        extra = rng.choice(catalog, size=min(cfg.extra_negatives, len(catalog)), replace=False).tolist()
        loss, parts = train_step(towers, optimizer, scaler, exp.builder, rows, extra, cfg, device, exp.args.dtype,
                                 (bank["vectors"], bank["items"]) if bank else None)
        if step % max(1, cfg.eval_interval // 4) == 0:
            log.debug(f"  step {step:5d}  loss {loss:.4f}  " + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()))

    best = train_and_select(lm, train, steps, cfg.eval_interval, exp.validate, start, best,
                            save_state=loop_saver(exp.state, f"stage{stage}", lm, optimizer, rng, lambda: bank))
    exp.state.finish(f"stage{stage}", dict(score=best[0], step=best[1], weights=best[2]))


# -----------------------------------------------------------------------------
# 9. the whole experiment: python train.py --task calrec
#    prepare reads and checks everything before anything is written; run trains, evaluates and writes


@dataclass
class Experiment:
    """Everything a run needs, read and checked by prepare() before anything is written."""
    args: object
    cfg: CALRecConfig
    domains: list
    target: int                  # index of the target domain
    offsets: list                # global index of each domain's first item (items of all domains in one list)
    texts: list                  # every item's text, global indices
    lm: GPT
    tokenizer: data.TextTokenizer
    builder: data.PromptBuilder
    state: RunState
    rows: list                   # per domain, the training rows (training_rows)

    @property
    def catalog(self):
        """Global indices of the target domain's items: the catalog every method ranks."""
        return range(self.offsets[self.target], self.offsets[self.target + 1])

    @property
    def select_path(self):  # the path L_UT trains; without it, the generative one
        return "dense" if self.cfg.beta > 0 else "generative"

    def validate(self):
        """Validation NDCG@10 of the LM on the first select_users validation users (0: all) for model selection.
        The dense path is scored as it is reported, at the best (mu, gamma, lambda) of its grid for these weights
        (select_full), or by the cosine alone."""
        cfg, domain = self.cfg, self.domains[self.target]
        examples = domain.valid[:cfg.select_users or None]
        if self.select_path == "generative":
            ranks = rank_generative(self.lm, self.builder, self.tokenizer, examples, self.catalog, cfg, bm25=self.bm25)
            return rank_metrics(ranks[0])["ndcg@10"]
        v_u, v_t = dense_vectors(self.lm, self.builder, examples, self.catalog, self.args.device,
                                 user_pool=cfg.user_pool)
        if not cfg.select_full:
            return rank_metrics(rank_vectors(v_u, v_t, examples))["ndcg@10"]
        best, ndcg = choose_dense_weights(v_u, v_t, examples, cfg.tau, torch.log1p(popularity(domain)),
                                          *dense_grid(cfg))
        return ndcg[best]

    @functools.cached_property
    def bm25(self):
        """The target catalog's BM25 index (local item indices)."""
        return BM25([self.texts[i] for i in self.catalog], self.cfg.bm25_k1, self.cfg.bm25_b)


def fingerprint(domains):
    """A short hash of the domains' items and examples: --resume refuses data that changed."""
    h = hashlib.sha1()
    for d in domains:
        h.update(repr((d.name, d.items, d.train, d.valid, d.test)).encode())
    return h.hexdigest()[:16]


def load_data(args, cfg):
    """The domains (--data, or the built-in world), the target's index and every domain's training rows, checked."""
    domains = data.load_domains(args.data) if args.data else data.make_world(seed=args.seed)
    names = [d.name for d in domains]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--data: two folders are named {twice[0]}; a domain takes its folder's name, so rename one")
    target_name = args.target or names[-1]
    if target_name not in names:
        raise UserError(f"--target {target_name}: not among the domains {names}")
    where = args.data or names  # what an error names: the folder a domain came from
    for split in ("valid", "test"):
        if not getattr(domains[names.index(target_name)], split):
            raise UserError(f"{where[names.index(target_name)]}: has no {split} users (every user needs at least 3 "
                            "items)")
    rows = training_rows(domains, np.cumsum([0] + [d.n_items for d in domains]).tolist(), cfg.every_position)
    for folder, r in zip(where, rows):
        if not r:
            raise UserError(f"{folder}: has no training sequence of two items or more to learn from")
    return domains, names.index(target_name), rows


def build_lm(args, cfg, texts, state):
    """The tokenizer and the LM: the ones of the run --resume continues (its weights come later), --init's, or
    new ones -- a BPE trained on prompts of the items (so that the template's words are single tokens)."""
    if args.resume:
        return GPT(GPTConfig(**state.done["lm_config"])), data.load_tokenizer(os.path.join(args.out_dir,
                                                                                            "tokenizer.json"))
    if args.init:
        return data.load_pretrained(args.init, dropout=cfg.dropout)
    tokenizer = data.train_tokenizer([data.history_prompt(texts[i:i + 4]) for i in range(0, len(texts), 4)],
                                     vocab_size=cfg.vocab_size)
    return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)), tokenizer


def prepare(args):
    """Settings, data, tokenizer and LM, all read and checked before anything is written; with --resume, the
    saved run's settings are compared with these first."""
    cfg = settings(args)
    domains, target, rows = load_data(args, cfg)
    offsets = np.cumsum([0] + [d.n_items for d in domains]).tolist()
    items = [(it, d.attributes) for d in domains for it in d.items]  # every item, global indices
    texts = [data.item_text(it, attributes, cfg.max_words) for it, attributes in items]
    _, world = rank_and_world()
    if cfg.batch_size % world:
        raise UserError(f"the batch of {cfg.batch_size} rows does not split evenly over {world} processes")
    run_key = dict(task="calrec", config=dataclasses.asdict(cfg), data=fingerprint(domains),
                   target=domains[target].name, stages=args.stages, seed=args.seed, init=args.init, dtype=args.dtype,
                   world=world)
    state = RunState(os.path.join(args.out_dir, "state.pt"), run_key, args.resume)
    lm, tokenizer = build_lm(args, cfg, texts, state)
    tokenizer.check_fits(lm.config.vocab_size)
    c = lm.config  # the LM's own sizes (--init's may differ from the defaults), as results.json reports them
    cfg = dataclasses.replace(cfg, block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.n_layer,
                              n_head=c.n_head, n_embd=c.n_embd)
    lm_texts = data.fitted_item_texts(items, cfg.max_words, tokenizer, cfg.max_item_tokens) if cfg.fit_item_texts \
        else texts  # the LM's item texts; BM25 and the baselines read the whole texts
    builder = data.PromptBuilder(tokenizer, lm_texts, c.block_size, cfg.max_history, cfg.max_item_tokens)
    return Experiment(args, cfg, domains, target, offsets, texts, lm.to(args.device), tokenizer, builder, state, rows)


def run(exp):
    """Train CALRec (stage 1 and/or 2), evaluate it and the baselines on the same split, write results.json."""
    args, cfg, state, lm = exp.args, exp.cfg, exp.state, exp.lm
    rank, _ = rank_and_world()
    if "lm_config" not in state.done:
        if rank == 0:
            exp.tokenizer.save(os.path.join(args.out_dir, "tokenizer.json"))
        state.finish("lm_config", dataclasses.asdict(lm.config))
    for d in exp.domains:
        log.info(f"domain {d.name}: {d.n_items} items, {len(d.train)} training examples, {len(d.valid)} valid, "
                 f"{len(d.test)} test users")
    lengths = np.array([len(ids) for ids in exp.tokenizer.encode_batch([" " + t for t in exp.texts])])
    over = [np.mean(lengths[a:b] > cfg.max_item_tokens) for a, b in zip(exp.offsets, exp.offsets[1:])]
    log.info(f"item texts longer than max_item_tokens={cfg.max_item_tokens}: " +
             ", ".join(f"{d.name} {share:.1%}" for d, share in zip(exp.domains, over)) +
             ("; each keeps every attribute, its longest values shortened" if cfg.fit_item_texts else
              "; their tokens are cut at the end (fit_item_texts=false)"))
    log.info(f"model: {lm.num_params() / 1e6:.2f}M parameters, vocab {exp.tokenizer.vocab_size}, "
             f"block {lm.config.block_size}")
    stages = {"1": [1], "2": [2], "both": [1, 2]}[args.stages]
    for stage in stages:
        if f"stage{stage}" in state.done:
            lm.load_state_dict(state.done[f"stage{stage}"]["weights"])  # finished before an interruption
        else:
            train_stage(exp, stage)
    if rank != 0:
        return None  # every process holds the same weights; process 0 evaluates and writes
    if "checkpoint" not in state.done:
        save_checkpoint(os.path.join(args.out_dir, "ckpt.pt"), lm, None, lm.config, cfg.stage1_steps + cfg.stage2_steps,
                        {f"stage{s}_valid_ndcg@10": state.done[f"stage{s}"]["score"] for s in stages})
        state.finish("checkpoint", True)
    results = evaluate(exp)
    return write_results(exp, results, stages)


METHODS = {"calrec_generative": "CALRec generative+BM25", "calrec_constrained": "CALRec generative, catalog beams",
           "calrec_dense": "CALRec dense (two-tower)", "calrec_dense_cos": "CALRec dense, cosine alone",
           "sasrec": "SASRec", "popular": "most popular",
           "last_item_bm25": "last item's text, BM25", "markov": "first-order Markov"}


def evaluate(exp):
    """Every path of CALRec and every baseline on the valid and the test split of the target domain, each
    entry stored in the run state as it is done (a resumed run skips it). Test is evaluated once, here."""
    cfg, lm, device, state = exp.cfg, exp.lm, exp.args.device, exp.state
    domain, bm25 = exp.domains[exp.target], exp.bm25
    trie = CatalogTrie([exp.builder.item_ids[i] for i in exp.catalog], exp.tokenizer.eot_id, lm.config.vocab_size)
    local_texts = [exp.texts[i] for i in exp.catalog]

    def generative(split, **grounding):  # the valid row uses the first bm25_valid_users users (beam search is slow)
        examples = getattr(domain, split)[:cfg.bm25_valid_users or None] if split == "valid" else domain.test
        return rank_generative(lm, exp.builder, exp.tokenizer, examples, exp.catalog, cfg, show=True, **grounding)

    @functools.cache
    def dense(split):
        return dense_vectors(lm, exp.builder, getattr(domain, split), exp.catalog, device, user_pool=cfg.user_pool)

    # mu, gamma and lambda of the dense path, chosen on the validation split once (stored: a resumed run reuses them)
    def weights():
        log_counts = torch.log1p(popularity(domain))
        if "dense_weights" not in state.done:
            mus, gammas, lams = dense_grid(cfg)
            (mu, gamma, lam), ndcg = choose_dense_weights(*dense("valid"), domain.valid, cfg.tau, log_counts, mus,
                                                          gammas, lams)
            log.info("dense path, validation NDCG@10 for lambda = " + ", ".join(f"{w:g}" for w in lams) + ":")
            for m, g in dict.fromkeys((m, g) for m, g, _ in ndcg):
                log.info(f"  mu {m:g}, gamma {'-' if g is None else f'{g:g}'}: " +
                         " ".join(f"{ndcg[m, g, w]:.4f}" for w in lams))
            log.info("chosen: " + describe_dense_weights(mu, gamma, lam))
            state.finish("dense_weights", dict(recent_weight=mu, recent_decay=gamma, weight=lam,
                                               valid_ndcg={f"{m:g},{g},{w:g}": v for (m, g, w), v in ndcg.items()}))
        chosen = state.done["dense_weights"]
        return chosen["recent_weight"], chosen["recent_decay"], chosen["weight"] * log_counts

    def dense_full(split):  # q_U = (1 - mu) v_U + mu r_U, scored with the prior
        (v_u, v_t), examples = dense(split), getattr(domain, split)
        mu, gamma, prior = weights()
        q_u = v_u if gamma is None else dense_queries(v_u, recent_vectors(v_t, examples, gamma), mu)
        return rank_vectors(q_u, v_t, examples, cfg.tau, prior)

    entries = {
        "calrec_generative": lambda split: generative(split, bm25=bm25),
        "calrec_constrained": lambda split: generative(split, trie=trie),
        "calrec_dense": lambda split: (dense_full(split), None),
        "calrec_dense_cos": lambda split: (rank_vectors(*dense(split), getattr(domain, split)), None),  # v_U alone
        "sasrec": lambda split: (rank_sasrec(sasrec, domain, getattr(domain, split), cfg, device), None),
        "popular": lambda split: (rank_popular(domain, getattr(domain, split)), None),
        "last_item_bm25": lambda split: (rank_last_item_bm25(bm25, local_texts, getattr(domain, split)), None),
        "markov": lambda split: (rank_markov(domain, getattr(domain, split)), None),
    }
    if not cfg.constrained_beams:
        del entries["calrec_constrained"]
    if not cfg.popularity_prior and not cfg.recent_items:  # the dense row is then the cosine alone
        del entries["calrec_dense_cos"]
    if not cfg.baselines:
        entries = {k: v for k, v in entries.items() if k.startswith("calrec")}
    if "generator_check" not in state.done:  # what the generator prefers to write (its log and results.json)
        check = generator_check(lm, exp.builder, exp.tokenizer.eot_id, domain.valid[:cfg.bm25_valid_users or None],
                                exp.catalog, int(popularity(domain).argmax()), device)
        log.info(f"generator check, first {check['users']} validation users: mean log-probability of the text of "
                 f"the next item {check['next_item']:.1f}, of the last history item {check['last_item']:.1f}, of the "
                 f"most popular item {check['most_popular']:.1f}; the most popular one is the likelier for "
                 f"{check['popular_beats_next']:.0%} of them")
        state.finish("generator_check", check)
    splits = ("valid", "test") if cfg.evaluate_test else ("valid",)
    results = state.done.get("results", {s: {} for s in splits})
    sasrec = None
    for method, rank_fn in entries.items():
        if method == "sasrec" and not all(method in results[s] for s in results):
            log.info("SASRec baseline")
            sasrec = train_sasrec(domain, cfg, device, exp.args.seed, state)
        for split in splits:
            if method in results[split]:
                continue
            ranks, samples = rank_fn(split)
            results[split][method] = rank_metrics(ranks)
            if samples and split == "test":
                log.info(f"{METHODS[method]}: best beams of the first test users: " + " | ".join(samples))
            state.finish("results", results)
    return results


def format_table(results, methods):
    cols = [f"recall@{k}" for k in RECALL_KS] + [f"ndcg@{k}" for k in NDCG_KS]
    lines = [f"{'split':6s} {'method':33s} " + " ".join(f"{c:>9s}" for c in cols)]
    for split in results:
        for method in methods:
            m = results[split][method]
            lines.append(f"{split:6s} {METHODS[method]:33s} " + " ".join(f"{m[c]:9.4f}" for c in cols))
    return "\n".join(lines)


def write_results(exp, results, stages):
    """Print the table and write results.json (atomically)."""
    args, cfg, domain = exp.args, exp.cfg, exp.domains[exp.target]
    n_valid_gen = min(cfg.bm25_valid_users or len(domain.valid), len(domain.valid))
    chosen = exp.state.done["dense_weights"]
    config = dict(dataclasses.asdict(cfg), domains=[d.name for d in exp.domains], target=domain.name,
                  stages=args.stages, seed=args.seed, device=args.device, init=args.init,
                  n_valid_generative=n_valid_gen, n_valid=len(domain.valid), n_test=len(domain.test),
                  dense_prior_weight=chosen["weight"], dense_recent_weight=chosen["recent_weight"],
                  dense_recent_decay=chosen["recent_decay"],
                  **{f"stage{s}_valid_ndcg@10": exp.state.done[f"stage{s}"]["score"] for s in stages})
    out = dict(**results, config=config, generator_check=exp.state.done["generator_check"],
               wall_s=exp.state.seconds(), peak_memory_mb=peak_memory_mb(), resumed=exp.state.resumes)
    save_json(os.path.join(args.out_dir, "results.json"), out)
    methods = [m for m in METHODS if m in results["valid"]]
    log.info(f"\nCALRec on {domain.name} (stages {args.stages}; alpha {cfg.alpha}, beta {cfg.beta}, tau {cfg.tau}; "
             f"{cfg.beams} beams, {cfg.constrained_beams} catalog beams; dense path: "
             f"{describe_dense_weights(chosen['recent_weight'], chosen['recent_decay'], chosen['weight'])}); "
             f"full ranking over {domain.n_items} items")
    log.info(format_table(results, methods))
    log.info(f"wall time {out['wall_s']:.0f} s; peak memory {out['peak_memory_mb']} MB; "
             f"results in {os.path.join(args.out_dir, 'results.json')}")
    return out
