"""
CALRec: sequential recommendation as text generation, with a two-tower contrastive alignment.

Paper: Li, Zhai, Alzantot, Yu, Vulic, Korhonen, Hammad. "CALRec: Contrastive Alignment of Generative LLMs
for Sequential Recommendation." RecSys 2024 (arXiv 2405.02429). What the paper specifies and what we decided
where it is silent: docs/calrec.md, whose sections this file follows.

One small GPT (model.py) reads a user's purchase history as text and writes the next item's text. The same
weights are also two towers: pooled over the history they give the user vector v_U, pooled over the target
(read after the history) v_T|U, and over the item text alone v_T. Training mixes next-item generation with
two InfoNCE alignments, in two stages; inference beam-searches item texts and grounds them in the catalog
with BM25. Read in this order: 1. text -> 2. towers -> 3. losses -> 4. the two stages -> 5. inference ->
6. beyond the paper (the dense path, catalog beams, the generator check) -> 7. the run.

    python train.py --task calrec                    # the built-in world, CPU, about 2 minutes
    python train.py --task calrec --data data/amazon/Video_Games data/amazon/Industrial_and_Scientific
                                                     # real data: stage 1 on both, stage 2 on the last
"""

import dataclasses
import functools
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import evaluation as ev
from engine import (RunState, all_reduce_sum, autocast, check_settings, environment, fingerprint, gather_rows,
                    grad_scaler, load_init, lr_at, peak_memory_mb, rank_and_world, save_checkpoint, save_json,
                    setting, train_and_select)
from model import GPT, GPTConfig, UserError, mean_pool

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# 1. text (docs/calrec.md section 1): an item is 'Title: ..., Category: ..., Brand: ...' (data.item_text); a
#    history is a prompt in the style of few-shot examples, ending where the next item's text goes:
#
#        User purchase history: This is a summary of the user's purchase history.
#        The first purchased item is as follows: <item>.
#        The next purchased item is as follows: <item>.
#        The next purchased item is as follows:
#
#    data.PromptBuilder assembles prompts and training rows from tokens encoded once per item.
#
# 2. the towers: one GPT, three mean-pooled views (docs/calrec.md section 1)
#
# Every batch is right-padded, so no attention mask is needed: under plain causal attention a real token only
# sees the real tokens before it, and the padded positions are never read (the pooling spans and the loss skip
# them). The fastest attention kernel then does the work.


def item_vectors(lm, idx, mask):
    """The item tower: v_T, the normalised mean of the final hidden states over the item's text. (B, C)"""
    return F.normalize(mean_pool(lm.hidden_states(idx), mask), dim=-1)


def user_vectors(h, rows, ends):
    """The user tower: v_U, the normalised mean of the hidden states h (B, T, C) over a prompt, positions
    [0, ends[p]) of row rows[p]. One row of the joint sequence holds a prompt before each of its predicted
    items, each a prefix of the next: a running mean gives all of them from one pass. (P, C)"""
    running = h.cumsum(1)                                              # (B, T, C) sums over positions 0..t
    return F.normalize(running[rows, ends - 1] / ends[:, None].to(h.dtype), dim=-1)


def target_vectors(h, rows, starts, ends):
    """v_T|U: the normalised mean of h over each predicted item's tokens [starts[p], ends[p]), as read after
    its prompt. (P, C)"""
    running = F.pad(h.cumsum(1), (0, 0, 1, 0))                         # (B, T + 1, C) sums over 0..t-1
    span = running[rows, ends] - running[rows, starts]
    return F.normalize(span / (ends - starts)[:, None].to(h.dtype), dim=-1)


class Towers(torch.nn.Module):
    """One training batch through the two towers: the joint sequences give the generation loss's terms and
    v_U, v_T|U at every prediction; the item texts give v_T. A module, so that DistributedDataParallel can
    wrap it (it syncs gradients through a module's forward)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, idx, targets, row, start, end, item_idx=None, item_mask=None):
        h = self.lm.hidden_states(idx)                                 # (B, T, C), right-padded rows
        predict = targets != -100                                      # positions whose next token is a target's
        nig_sum = F.cross_entropy(self.lm.lm_head(h[predict]), targets[predict], reduction="sum")
        v_t = None if item_idx is None else item_vectors(self.lm, item_idx, item_mask)
        return nig_sum, predict.sum(), user_vectors(h, row, start), target_vectors(h, row, start, end), v_t


# -----------------------------------------------------------------------------
# 3. InfoNCE with in-batch negatives, and the loss mixture (docs/calrec.md section 1)


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


def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    """L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT, and its parts {"nig", "tt", "ut"} as floats.

    l_nig: next-item generation, the cross-entropy of the target tokens. v_u, v_tu (P, C): the user vector and
    the target read after the history, one per prediction; v_t (N >= P, C): the item tower's vectors of those
    P targets, then of any extra negative items; items (N,) the item behind each row of v_t. Each user (or
    v_T|U) is contrasted with the batch's items; over_users (the spec's formula) contrasts each target item
    with the batch's users instead.
    """
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}


# -----------------------------------------------------------------------------
# 4. training: one step, then the two stages (docs/calrec.md section 1: stage 1 a mixture of domains, stage 2
#    the target domain)


def training_rows(domains, offsets, every_position):
    """Per domain, the rows a stage draws from, in global item indices: each user's training sequence with
    every_position [beyond the paper: every history item is predicted], else every training example (history
    + target, one prediction: the paper)."""
    if every_position:
        return [[[o + i for i in seq] for seq in d.train_sequences if len(seq) >= 2] for d, o in zip(domains, offsets)]
    return [[[o + i for i in h] + [o + t] for h, t in d.train] for d, o in zip(domains, offsets)]


def train_step(towers, optimizer, scaler, builder, rows, extra, cfg, device, dtype):
    """One optimiser step on a batch of rows (item sequences) and extra negative items. The plumbing lives here
    -- devices, mixed precision, several processes -- so that calrec_loss reads like the paper."""
    rank, world = rank_and_world()
    mine = slice(rank * len(rows) // world, (rank + 1) * len(rows) // world)  # this process's share
    batch = builder.training_batch(rows[mine], cfg.every_position)
    extra = extra[rank * len(extra) // world:(rank + 1) * len(extra) // world]
    items = torch.cat([batch["item"], torch.tensor(extra, dtype=torch.long)])
    history = []  # [beyond the paper] L_UT on the dense path's query: the last history items of each prediction
    if cfg.recent_in_loss and cfg.beta > 0:
        history = [rows[mine][b][max(0, p - cfg.recent_in_loss):p]
                   for b, p in zip(batch["row"].tolist(), batch["position"].tolist())]
    inputs = {k: batch[k].to(device) for k in ("idx", "targets", "row", "start", "end")}
    if cfg.alpha + cfg.beta > 0:  # the history items go through the item tower after the keys
        flat = items.tolist() + [i for h in history for i in h]
        inputs["item_idx"], inputs["item_mask"] = (t.to(device) for t in builder.item_batch(flat))
    with autocast(device, dtype):
        nig_sum, n_tokens, v_u, v_tu, v_t = towers(**inputs)
        if history:  # each prediction's history items are the rows after the keys, in order
            v_t, v_hist, at = v_t[:len(items)], v_t[len(items):], iter(range(len(flat) - len(items)))
            r_u = recent_vectors(v_hist, [[next(at) for _ in h] for h in history], cfg.recent_loss_decay)
            v_u = F.normalize(dense_queries(v_u, r_u, cfg.recent_loss_weight), dim=-1)
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
        loss, parts = calrec_loss(l_nig, v_u, v_tu, v_t, items, cfg.alpha, cfg.beta, cfg.tau,
                                  cfg.softmax_over == "users")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    torch.nn.utils.clip_grad_norm_(towers.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), parts


def train_stage(exp, stage, validate):
    """Stage 1: rows drawn from a mixture of every domain, P(domain) ~ n_train ** (1 / domain_temperature);
    stage 2: the target domain alone. validate() every eval_interval steps picks the weights the LM ends with."""
    cfg, lm, device = exp.cfg, exp.lm, exp.device
    sizes = np.array([len(r) for r in exp.rows], dtype=np.float64) ** (1.0 / cfg.domain_temperature)
    probs = sizes / sizes.sum() if stage == 1 else np.eye(len(exp.domains))[exp.target]
    steps = cfg.stage1_steps if stage == 1 else cfg.stage2_steps
    catalog = np.concatenate([np.arange(exp.offsets[d], exp.offsets[d + 1]) for d in np.flatnonzero(probs)])
    log.info(f"stage {stage}: {steps} steps on " + ", ".join(f"{d.name} {p:.2f}" for d, p in zip(exp.domains, probs)
                                                             if p > 0))
    towers = Towers(lm)
    if rank_and_world()[1] > 1:
        dev = torch.device(device)
        towers = torch.nn.parallel.DistributedDataParallel(towers, device_ids=None if dev.type == "cpu" else
                                                           [dev.index or 0])
    if exp.compile:
        towers = torch.compile(towers, dynamic=True)  # batches are padded to different lengths
    optimizer, scaler = lm.configure_optimizers(cfg.lr, cfg.weight_decay), grad_scaler(device, exp.dtype)
    rng = np.random.default_rng([exp.seed, stage])
    start, best, _ = exp.state.restore_loop(f"stage{stage}", lm, optimizer, rng)

    def train(step):
        lm.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup, steps)
        domains = rng.choice(len(exp.rows), size=cfg.batch_size, p=probs)
        rows = [exp.rows[d][rng.integers(len(exp.rows[d]))] for d in domains]
        extra = rng.choice(catalog, size=min(cfg.extra_negatives, len(catalog)), replace=False).tolist()
        loss, parts = train_step(towers, optimizer, scaler, exp.builder, rows, extra, cfg, device, exp.dtype)
        if step % max(1, cfg.eval_interval // 4) == 0:
            log.debug(f"  step {step:5d}  loss {loss:.4f}  " + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()))
        return loss

    best = train_and_select(lm, train, steps, cfg.eval_interval, validate, start, best,
                            save_state=exp.state.loop_saver(f"stage{stage}", lm, optimizer, rng))
    exp.state.finish(f"stage{stage}", dict(score=best[0], step=best[1], weights=best[2]))


# -----------------------------------------------------------------------------
# 5. inference: beam search writes item texts, BM25 grounds each in the catalog, and the quasi-round-robin merge
#    makes one list (docs/calrec.md section 1; the exact BM25 and merge are ours, section 2)


def words(text):
    """BM25's analyser: lower-cased runs of letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Okapi BM25 with Lucene's idf = log(1 + (N - n + 0.5) / (n + 0.5)).

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
        `chunk` queries are scored at a time, so memory does not grow with the number of queries.
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
            for idx, v, n in zip(top.tolist(), vals.tolist(), (vals > 0).sum(1).tolist()):
                out.append((idx[:n], v[:n]))
        return out


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


def beam_batches(lm, builder, tokenizer, examples, catalog, beams, batch, trie=None, show=False):
    """Beam search after the prompt of every example, `batch` users at a time: yields (chunk of examples, per user
    its beams as (tokens, score), the beams' texts). catalog: the global indices of the target domain's items;
    examples use local ones (positions in catalog). trie: constrained decoding (section 6)."""
    lm.eval()
    for s in tqdm(range(0, len(examples), batch), desc="beam search", disable=not show, leave=False):
        chunk = examples[s:s + batch]
        prompts = [builder.prompt([catalog[i] for i in h]) for h, _ in chunk]
        found = lm.beam_search(prompts, beams, builder.room, tokenizer.eot_id, allowed_next=trie)
        yield chunk, found, tokenizer.decode_batch([tokens for user in found for tokens, _ in user])


def rank_generative(lm, builder, tokenizer, examples, catalog, bm25, cfg, show=False):
    """Ranks of the targets in the top-k lists of the paper's inference: each beam's text is a BM25 query and
    the beams' lists are merged quasi-round-robin. Also returns the best beam of the first users, to look at."""
    lists, samples = [], []
    for chunk, _, texts in beam_batches(lm, builder, tokenizer, examples, catalog, cfg.beams, cfg.eval_batch,
                                        show=show):
        hits = bm25.search(texts, depth=2 * cfg.top_k + cfg.beams)
        for b, (history, _) in enumerate(chunk):
            per_beam = hits[b * cfg.beams:(b + 1) * cfg.beams]
            lists.append(merge_round_robin([lst for lst, _ in per_beam], [sc for _, sc in per_beam], history,
                                           cfg.top_k))
        samples.append(texts[0])
    return ev.ranks_from_lists(lists, [t for _, t in examples]), samples[:3]


# -----------------------------------------------------------------------------
# 6. beyond the paper (docs/calrec.md section 2), each reported beside the paper's path:
#    6a. the dense path: the two towers rank the whole catalog, cos(v_U, v_T); with the recent items in its
#        query and a popularity prior, their weights chosen on validation;
#    6b. catalog beams: beam search that can only write the catalog's items;
#    6c. the generator check: which text the LM prefers to write after a prompt.


@torch.no_grad()
def catalog_vectors(lm, builder, items, device, batch=256):
    """v_T of the given items (N, C), computed once per evaluation."""
    out = []
    for s in range(0, len(items), batch):
        idx, mask = builder.item_batch(items[s:s + batch])
        out.append(item_vectors(lm, idx.to(device), mask.to(device)))
    return torch.cat(out)


@torch.no_grad()
def dense_vectors(lm, builder, examples, catalog, device, batch=64):
    """v_U of every example's history (B, C) and v_T of every catalog item (N, C), on the CPU. catalog: global
    indices; examples use local ones."""
    lm.eval()
    v_t = catalog_vectors(lm, builder, list(catalog), device)         # (N, C)
    v_u = []
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        idx, _, prompts = builder.prompt_batch([[catalog[i] for i in h] for h, _ in chunk])
        hidden = lm.hidden_states(idx.to(device))                      # (B, T, C), right-padded prompts
        ends = torch.tensor([len(p) for p in prompts], device=device)
        v_u.append(user_vectors(hidden, torch.arange(len(chunk), device=device), ends))
    return torch.cat(v_u).cpu(), v_t.cpu()


# The recent items. A prompt holds only the last few history items (max_history), yet the item tower has placed
# every item the user bought: their vectors, weighted by recency, give a second query from the same towers,
#     r_U = sum_i gamma^a_i v_T_i / sum_i gamma^a_i,   a_i the age of history item i (0 for the last one),
# and the dense path ranks by the cosine to q_U = (1 - mu) v_U + mu r_U. With recent_in_loss, L_UT trains that
# query too (at fixed mu and gamma, over the last few history items), so that the item tower learns what follows
# what. The popularity prior: the contrastive losses draw their negatives from the batch's targets, that is, by
# popularity, and so learn cos / tau ~ log p(j | u) - log q(j) (Yi et al., RecSys 2019); full-catalog ranking
# needs log p(j | u), so log q(j) ~ lambda log(1 + n_j) is added back. mu, gamma and lambda are chosen together
# on validation; mu = 0 and lambda = 0 are candidates.


def recent_vectors(v_items, histories, decay):
    """r_U of every history (B, C): the mean of its items' vectors weighted decay ** age (age 0: the last item),
    zeros for an empty history. histories: lists of rows of v_items (N, C), oldest first."""
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)         # (H,) whose history item
    item = torch.tensor([i for h in histories for i in h], dtype=torch.long)      # (H,) which item
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))                  # (H,) 0: a history's last
    w = (decay ** age.to(v_items.dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=v_items.dtype, device=v_items.device).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=torch.finfo(w.dtype).tiny)[:, None]


def dense_queries(v_u, r_u, mu):
    """The dense path's query: (1 - mu) v_U + mu r_U."""
    return (1 - mu) * v_u + mu * r_u


def rank_vectors(v_u, v_t, examples, tau=1.0, prior=None, chunk=1024):
    """Ranks of the targets when item j is scored by cos(v_U, v_T_j) / tau + prior_j (prior (N,), or none)."""
    def scores(rows):
        cos = v_u[rows] @ v_t.t() / tau                                # (chunk, N)
        return cos if prior is None else cos + prior
    return ev.ranks_in_chunks(scores, examples, chunk)


def choose_dense_weights(v_u, v_t, examples, tau, log_counts, mus, decays, lams, chunk=128):
    """The (mu, gamma, lambda) of the grid with the best NDCG@10 on examples, and every triple's NDCG@10. The
    grid: mu = 0 (gamma unused: None) and every other mu with every gamma, each with every lambda; ties go to
    the first. Each query's cosines are computed once per chunk of users and serve every lambda."""
    pairs = [(0.0, None)] * (0.0 in mus) + [(m, g) for m in mus if m != 0 for g in decays]
    grid = [(m, g, w) for m, g in pairs for w in lams]
    histories = [h for h, _ in examples]
    r_u = {g: recent_vectors(v_t, histories, g) for g in dict.fromkeys(g for _, g in pairs) if g is not None}
    ranks = {c: [] for c in grid}
    for m, g in pairs:
        q_u = v_u if g is None else dense_queries(v_u, r_u[g], m)
        for s in range(0, len(examples), chunk):
            targets, part = torch.tensor([t for _, t in examples[s:s + chunk]]), histories[s:s + chunk]
            cos = q_u[s:s + chunk] @ v_t.t() / tau                     # (chunk, N)
            for w in lams:
                ranks[m, g, w].append(ev.ranks_from_scores(cos + w * log_counts, targets, part))
    ndcg = {c: ev.rank_metrics(torch.cat(r))["ndcg@10"] for c, r in ranks.items()}
    return max(grid, key=lambda c: (ndcg[c], -grid.index(c))), ndcg


def describe_dense_weights(mu, gamma, lam):
    """The chosen weights as the log and the table's header print them (gamma only when it is used)."""
    return f"mu {mu:g}" + ("" if gamma is None else f", gamma {gamma:g}") + f", lambda {lam:g}"


class CatalogTrie:
    """6b. A prefix tree of the catalog's item texts as tokens, each ended by end-of-text. As beam search's
    `allowed_next`, it lets a beam write only a prefix of some item, so a finished beam is an item."""

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


def rank_catalog_beams(lm, builder, tokenizer, examples, catalog, trie, cfg, show=False):
    """Ranks of the targets when beam search can only write catalog items, taken in order of beam score."""
    lists, samples = [], []
    for chunk, found, texts in beam_batches(lm, builder, tokenizer, examples, catalog, cfg.constrained_beams,
                                            cfg.eval_batch, trie, show):
        for (history, _), beams in zip(chunk, found):
            leaves = [trie.items.get(trie.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
            lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:cfg.top_k])
        samples.append(texts[0])
    return ev.ranks_from_lists(lists, [t for _, t in examples]), samples[:3]


@torch.no_grad()
def text_log_probs(lm, prompts, continuations, device, batch=64):
    """6c. log p(continuation | prompt) under the LM for each pair: the sum of its tokens' log-probabilities. Rows
    are right-padded, so causal attention needs no mask; only the positions that predict a continuation's token go
    through the output layer."""
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
    """What the generator prefers to write: after each user's prompt, the log-probability of three item texts
    (each with its end-of-text) -- the user's next item, its last history item (copying it), and the catalog's
    most popular item (local index `popular`). Returns the three means and the share of users for whom the most
    popular item's text is more likely than their next item's."""
    prompts = [builder.prompt([catalog[i] for i in h]) for h, _ in examples]
    def log_p(items):
        return text_log_probs(lm, prompts, [builder.item_ids[catalog[i]] + [eot_id] for i in items], device)
    target, last, top = log_p([t for _, t in examples]), log_p([h[-1] for h, _ in examples]), \
        log_p([popular] * len(examples))
    return dict(next_item=target.mean().item(), last_item=last.mean().item(), most_popular=top.mean().item(),
                popular_beats_next=(top > target).double().mean().item(), users=len(examples))


# -----------------------------------------------------------------------------
# 7. the run: python train.py --task calrec. The settings (every number is ours unless its help says otherwise),
#    then prepare (reads and checks everything, writes nothing), run (trains, evaluates, writes).


@dataclass(frozen=True)
class CALRecConfig:
    # the LM (model.GPTConfig) and its text
    n_layer: int = setting(2, ">= 1", "transformer blocks of the LM")
    n_head: int = setting(4, ">= 1", "attention heads per block")
    n_embd: int = setting(128, ">= 1", "width of the residual stream")
    block_size: int = setting(256, ">= 16", "longest sequence the LM reads, in tokens")
    dropout: float = setting(0.0, "0..0.9", "dropout of the LM")
    vocab_size: int = setting(2048, ">= 259", "BPE trained on the items' prompts (at least 256 bytes + 3 specials)")
    max_words: int = setting(24, ">= 1", "cap on every attribute value, in words")
    max_history: int = setting(3, ">= 1", "most recent history items in a prompt (as many as fit block_size)")
    max_item_tokens: int = setting(64, ">= 1", "an item's tokens; a longer item loses words of its longest values")
    # the losses: L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT
    alpha: float = setting(0.2, "0..1", "weight of L_TT")
    beta: float = setting(0.2, "0..1", "weight of L_UT")
    tau: float = setting(0.05, "> 0", "temperature of both contrastive losses")
    softmax_over: str = setting("items", ("items", "users"), "InfoNCE over the batch's items (ours) or users (paper)")
    every_position: bool = setting(True, None, "[beyond] predict every history item of a row; false: the paper")
    extra_negatives: int = setting(0, ">= 0", "[beyond] random catalog items per batch as negatives (0: the paper)")
    recent_in_loss: int = setting(0, ">= 0", "[beyond] L_UT trains q_U, r_U over this many last items (0: v_U)")
    recent_loss_weight: float = setting(0.5, "0..1", "mu of the q_U that L_UT trains")
    recent_loss_decay: float = setting(0.5, "0..1", "gamma of the q_U that L_UT trains")
    # training
    stages: str = setting("both", ("1", "2", "both"), "1: the mixture of domains, 2: the target alone, both: 1 then 2")
    target: str = setting("", None, "the target domain, a --data folder's name (empty: the last)")
    stage1_steps: int = setting(300, ">= 1", "steps of stage 1")
    stage2_steps: int = setting(200, ">= 1", "steps of stage 2")
    batch_size: int = setting(32, ">= 1", "rows (user sequences or training examples) per step")
    lr: float = setting(2e-3, "> 0", "peak learning rate (warmup, then cosine decay to a tenth)")
    weight_decay: float = setting(0.01, ">= 0", "AdamW's weight decay on matrices")
    warmup: int = setting(30, ">= 0", "warmup steps (CALRec's and SASRec's)")
    eval_interval: int = setting(100, ">= 1", "validate every this many steps; each stage keeps its best weights")
    domain_temperature: float = setting(1.0, "> 0", "stage 1 draws a domain with P ~ n_train ** (1 / temperature)")
    select_users: int = setting(500, ">= 0", "validation users scored for model selection (0: all)")
    # inference and evaluation
    beams: int = setting(10, ">= 1", "beams of the generative path")
    constrained_beams: int = setting(20, ">= 0", "[beyond] beams of the catalog-constrained path (0: off)")
    bm25_k1: float = setting(1.2, ">= 0", "BM25's k1")
    bm25_b: float = setting(0.75, "0..1", "BM25's b")
    top_k: int = setting(20, ">= 1", "length of every ranked list")
    eval_batch: int = setting(50, ">= 1", "users per beam-search batch")
    bm25_valid_users: int = setting(200, ">= 0", "validation users of the generative rows (0: all)")
    prior_weights: tuple[float, ...] = setting((0.0, 0.25, 0.5, 0.75, 1.0), ">= 0", "[beyond] lambda candidates")
    recent_weights: tuple[float, ...] = setting((0.0, 0.2, 0.4, 0.6, 0.8), "0..1", "[beyond] mu candidates")
    recent_decays: tuple[float, ...] = setting((0.25, 0.5, 0.75, 1.0), "0..1", "[beyond] gamma candidates")
    evaluate_test: bool = setting(True, None, "false: validation rows only (an ablation never looks at test)")
    baselines: bool = setting(True, None, "false: CALRec's rows only")
    # SASRec, an item-id GPT of model.py
    sasrec_layers: int = setting(2, ">= 1", "SASRec's blocks")
    sasrec_heads: int = setting(2, ">= 1", "SASRec's heads")
    sasrec_embd: int = setting(64, ">= 1", "SASRec's width")
    sasrec_len: int = setting(50, ">= 2", "SASRec's longest history")
    sasrec_dropout: float = setting(0.2, "0..0.9", "SASRec's dropout")
    sasrec_steps: int = setting(600, ">= 1", "SASRec's training steps")
    sasrec_batch_size: int = setting(128, ">= 1", "SASRec's sequences per step")
    sasrec_lr: float = setting(2e-3, "> 0", "SASRec's peak learning rate")

    def check(self):
        """What one field cannot say alone."""
        if self.alpha + self.beta > 1.0:
            raise UserError(f"setting alpha + beta = {self.alpha} + {self.beta}: must be <= 1 (L_NIG's weight is "
                            "1 - alpha - beta)")
        for width, heads in (("n_embd", "n_head"), ("sasrec_embd", "sasrec_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise UserError(f"setting {width}={getattr(self, width)}: not divisible by {heads}="
                                f"{getattr(self, heads)}")
        if self.softmax_over == "users" and self.extra_negatives:
            raise UserError("setting extra_negatives: extra negatives are items; they need softmax_over=items")
        if self.batch_size % rank_and_world()[1]:
            raise UserError(f"setting batch_size={self.batch_size}: does not split over {rank_and_world()[1]} processes")


BUILT_IN = CALRecConfig(  # sized to finish in under 3 minutes on one CPU core
    stage1_steps=200, stage2_steps=100, batch_size=24, lr=4e-3, warmup=20, select_users=300, beams=6,
    constrained_beams=10, sasrec_steps=400)
REAL_DATA = dataclasses.replace(  # 45 minutes alone on 2 CPU cores; chosen on Scientific's validation split
    BUILT_IN, vocab_size=4096, max_words=10, max_history=1, max_item_tokens=32, stage1_steps=600, stage2_steps=1200,
    batch_size=32, lr=1e-3, warmup=100, eval_interval=200, domain_temperature=2.0, select_users=10_000, beams=5,
    eval_batch=64, bm25_valid_users=1000, extra_negatives=256, recent_in_loss=4, constrained_beams=5,
    sasrec_steps=3000, sasrec_dropout=0.5)


@dataclass
class Experiment:
    """Everything a run needs, read and checked by prepare() before anything is written."""
    cfg: CALRecConfig
    domains: list
    target: int                  # index of the target domain
    offsets: list                # global index of each domain's first item (items of all domains in one list)
    texts: list                  # every item's whole text, global indices (BM25 and the baselines read these)
    lm: GPT
    tokenizer: data.TextTokenizer
    builder: data.PromptBuilder  # over the LM's item texts, fitted to max_item_tokens
    rows: list                   # per domain, the training rows (training_rows)
    state: RunState
    out_dir: str
    seed: int
    device: str
    init: str = None
    dtype: str = "float32"
    compile: bool = False
    vectors: dict = dataclasses.field(default_factory=dict)  # split -> the dense path's (v_U, v_T), once
    sasrec: GPT = None           # trained once, when the table first needs it

    @property
    def domain(self):
        return self.domains[self.target]

    @property
    def catalog(self):
        """Global indices of the target domain's items: the catalog every method ranks."""
        return range(self.offsets[self.target], self.offsets[self.target + 1])

    @functools.cached_property
    def bm25(self):
        """The target catalog's BM25 index over the whole item texts (local item indices)."""
        return BM25([self.texts[i] for i in self.catalog], self.cfg.bm25_k1, self.cfg.bm25_b)


def load_data(cfg, data_dirs, seed):
    """The domains (data_dirs, or the built-in world), the target's index and every domain's rows, checked."""
    domains = data.load_domains(data_dirs) if data_dirs else data.make_world(seed=seed)
    names = [d.name for d in domains]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--data: two folders are named {twice[0]}; a domain takes its folder's name, so rename one")
    if (cfg.target or names[-1]) not in names:
        raise UserError(f"setting target={cfg.target}: not among the domains {names}")
    target = names.index(cfg.target or names[-1])
    where = data_dirs or names  # what an error names: the folder a domain came from
    for split in ("valid", "test"):
        if not getattr(domains[target], split):
            raise UserError(f"{where[target]}: has no {split} users (every user needs at least 3 items)")
    rows = training_rows(domains, np.cumsum([0] + [d.n_items for d in domains]).tolist(), cfg.every_position)
    for folder, r in zip(where, rows):
        if not r:
            raise UserError(f"{folder}: has no training sequence of two items or more to learn from")
    return domains, target, rows


def build_lm(cfg, texts, init, resume, out_dir):
    """The tokenizer and the LM: with resume, the run's own tokenizer (its LM comes from the run state); --init's;
    or new ones -- a BPE trained on prompts of the items (so that the template's words are single tokens)."""
    if resume:
        return None, data.load_tokenizer(os.path.join(out_dir, "tokenizer.json"))
    if init:
        return load_init(init, dropout=cfg.dropout)
    tokenizer = data.train_tokenizer([data.history_prompt(texts[i:i + 4]) for i in range(0, len(texts), 4)],
                                     vocab_size=cfg.vocab_size)
    return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)), tokenizer


def prepare(cfg, data_dirs, out_dir, seed, device, init=None, resume=False, dtype="float32", compile=False):
    """Settings, data, tokenizer and LM, all read and checked before anything is written; with resume, the saved
    run's key (settings, data, tokenizer) is compared with this one first."""
    cfg = check_settings(cfg)
    domains, target, rows = load_data(cfg, data_dirs, seed)
    items = [(it, d.attributes) for d in domains for it in d.items]  # every item, global indices
    texts = [data.item_text(it, attributes, cfg.max_words) for it, attributes in items]
    lm, tokenizer = build_lm(cfg, texts, init, resume, out_dir)
    key = dict(task="calrec", settings=dataclasses.asdict(cfg), data=fingerprint([(d.name, d.items, d.train, d.valid,
               d.test) for d in domains]), tokenizer=tokenizer.fingerprint, seed=seed, init=init, dtype=dtype,
               processes=rank_and_world()[1])
    state = RunState(os.path.join(out_dir, "state.pt"), key, resume)
    lm = lm or GPT(GPTConfig(**state.done["lm_config"]))
    tokenizer.check_fits(lm.config.vocab_size)
    c = lm.config  # the LM's own sizes (--init's may differ from the settings), as results.json reports them
    cfg = dataclasses.replace(cfg, block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.n_layer,
                              n_head=c.n_head, n_embd=c.n_embd)
    builder = data.PromptBuilder(tokenizer, data.fitted_item_texts(items, cfg.max_words, tokenizer, cfg.max_item_tokens),
                                 c.block_size, cfg.max_history, cfg.max_item_tokens)
    offsets = np.cumsum([0] + [d.n_items for d in domains]).tolist()
    return Experiment(cfg, domains, target, offsets, texts, lm.to(device), tokenizer, builder, rows, state, out_dir,
                      seed, device, init, dtype, compile)


def run(exp):
    """Train CALRec (stage 1 and/or 2), evaluate it and the baselines on the same split, write results.json."""
    cfg, state, lm = exp.cfg, exp.state, exp.lm
    if "lm_config" not in state.done:
        if rank_and_world()[0] == 0:
            exp.tokenizer.save(os.path.join(exp.out_dir, "tokenizer.json"))
        state.finish("lm_config", dataclasses.asdict(lm.config))
    describe_run(exp)
    stages = {"1": [1], "2": [2], "both": [1, 2]}[cfg.stages]
    for stage in stages:
        if f"stage{stage}" in state.done:
            lm.load_state_dict(state.done[f"stage{stage}"]["weights"])  # finished before an interruption
        else:
            train_stage(exp, stage, functools.partial(validate, exp))
    if rank_and_world()[0] != 0:
        return None  # every process holds the same weights; process 0 evaluates and writes
    if "checkpoint" not in state.done:
        save_checkpoint(os.path.join(exp.out_dir, "ckpt.pt"), lm, exp.tokenizer, cfg.stage1_steps + cfg.stage2_steps,
                        {f"stage{s}_valid_ndcg@10": state.done[f"stage{s}"]["score"] for s in stages})
        state.finish("checkpoint", True)
    return write_results(exp, evaluate(exp), stages)


def describe_run(exp):
    """The log's account of the data and the model."""
    cfg = exp.cfg
    for d in exp.domains:
        log.info(f"domain {d.name}: {d.n_items} items, {len(d.train)} training examples, {len(d.valid)} valid, "
                 f"{len(d.test)} test users")
    lengths = np.array([len(ids) for ids in exp.tokenizer.encode_batch([" " + t for t in exp.texts])])
    over = [np.mean(lengths[a:b] > cfg.max_item_tokens) for a, b in zip(exp.offsets, exp.offsets[1:])]
    log.info(f"item texts longer than max_item_tokens={cfg.max_item_tokens}: " +
             ", ".join(f"{d.name} {share:.1%}" for d, share in zip(exp.domains, over)) +
             "; each keeps every attribute, its longest values shortened")
    log.info(f"model: {exp.lm.num_params() / 1e6:.2f}M parameters, vocab {exp.tokenizer.vocab_size}, "
             f"block {exp.lm.config.block_size}; selection: the {'dense' if cfg.beta > 0 else 'generative'} path")


def validate(exp):
    """Validation NDCG@10 for model selection, on the first select_users validation users (0: all): of the dense
    path as reported (at the best mu, gamma, lambda of its grid for the weights at hand) when L_UT trains the
    towers (beta > 0), else of the generative path."""
    cfg, examples = exp.cfg, exp.domain.valid[:exp.cfg.select_users or None]
    if cfg.beta == 0:
        ranks, _ = rank_generative(exp.lm, exp.builder, exp.tokenizer, examples, exp.catalog, exp.bm25, cfg)
        return ev.rank_metrics(ranks)["ndcg@10"]
    v_u, v_t = dense_vectors(exp.lm, exp.builder, examples, exp.catalog, exp.device)
    _, ndcg = choose_dense_weights(v_u, v_t, examples, cfg.tau, torch.log1p(ev.popularity(exp.domain)),
                                   cfg.recent_weights, cfg.recent_decays, cfg.prior_weights)
    return max(ndcg.values())


# Evaluation: every method ranks the target's whole catalog for the valid and the test split; test is evaluated
# once, here, after every choice was made on validation. Each entry: name -> (row label, ranks(exp, split)).


def split_of(exp, split):
    """The examples a method ranks: the generative paths read the first bm25_valid_users of validation."""
    examples = getattr(exp.domain, split)
    return examples[:exp.cfg.bm25_valid_users or None] if split == "valid" else examples


def ranks_generative(exp, split):
    return rank_generative(exp.lm, exp.builder, exp.tokenizer, split_of(exp, split), exp.catalog, exp.bm25, exp.cfg,
                           show=True)


def ranks_catalog_beams(exp, split):
    trie = CatalogTrie([exp.builder.item_ids[i] for i in exp.catalog], exp.tokenizer.eot_id, exp.lm.config.vocab_size)
    return rank_catalog_beams(exp.lm, exp.builder, exp.tokenizer, split_of(exp, split), exp.catalog, trie, exp.cfg,
                              show=True)


def dense_of(exp, split):
    """The dense path's (v_U, v_T) of a split, computed once."""
    if split not in exp.vectors:
        exp.vectors[split] = dense_vectors(exp.lm, exp.builder, getattr(exp.domain, split), exp.catalog, exp.device)
    return exp.vectors[split]


def ranks_dense(exp, split):
    """q_U = (1 - mu) v_U + mu r_U scored with the prior, at the (mu, gamma, lambda) chosen on validation once."""
    cfg, (v_u, v_t), examples = exp.cfg, dense_of(exp, split), getattr(exp.domain, split)
    log_counts = torch.log1p(ev.popularity(exp.domain))
    if "dense_weights" not in exp.state.done:
        chosen, ndcg = choose_dense_weights(*dense_of(exp, "valid"), exp.domain.valid, cfg.tau, log_counts,
                                            cfg.recent_weights, cfg.recent_decays, cfg.prior_weights)
        log.info("dense path, validation NDCG@10 for lambda = " + ", ".join(f"{w:g}" for w in cfg.prior_weights) + ":")
        for m, g in dict.fromkeys((m, g) for m, g, _ in ndcg):
            log.info(f"  mu {m:g}, gamma {'-' if g is None else f'{g:g}'}: " +
                     " ".join(f"{ndcg[m, g, w]:.4f}" for w in cfg.prior_weights))
        log.info("chosen: " + describe_dense_weights(*chosen))
        exp.state.finish("dense_weights", dict(mu=chosen[0], gamma=chosen[1], lam=chosen[2],
                                               valid_ndcg={f"{m:g},{g},{w:g}": v for (m, g, w), v in ndcg.items()}))
    w = exp.state.done["dense_weights"]
    q_u = v_u if w["gamma"] is None else dense_queries(v_u, recent_vectors(v_t, [h for h, _ in examples], w["gamma"]),
                                                       w["mu"])
    return rank_vectors(q_u, v_t, examples, cfg.tau, w["lam"] * log_counts), None


def ranks_cosine(exp, split):
    """The dense path by cos(v_U, v_T) alone: the two towers as the paper trains them, no beyond-the-paper term."""
    return rank_vectors(*dense_of(exp, split), getattr(exp.domain, split)), None


def ranks_sasrec(exp, split):
    if exp.sasrec is None:
        log.info("SASRec baseline")
        exp.sasrec = ev.train_sasrec(exp.domain, exp.cfg, exp.device, exp.seed, exp.state)
    return ev.rank_sasrec(exp.sasrec, exp.domain, getattr(exp.domain, split), exp.device), None


def ranks_popular(exp, split):
    return ev.rank_popular(exp.domain, getattr(exp.domain, split)), None


def ranks_last_item(exp, split):
    return ev.rank_last_item_bm25(exp.bm25, [exp.texts[i] for i in exp.catalog], getattr(exp.domain, split)), None


def ranks_markov(exp, split):
    return ev.rank_markov(exp.domain, getattr(exp.domain, split)), None


METHODS = {
    "calrec_generative": ("CALRec generative+BM25", ranks_generative),
    "calrec_constrained": ("CALRec generative, catalog beams", ranks_catalog_beams),
    "calrec_dense": ("CALRec dense (two-tower)", ranks_dense),
    "calrec_dense_cos": ("CALRec dense, cosine alone", ranks_cosine),
    "sasrec": ("SASRec", ranks_sasrec),
    "popular": ("most popular", ranks_popular),
    "last_item_bm25": ("last item's text, BM25", ranks_last_item),
    "markov": ("first-order Markov", ranks_markov),
}


def methods_of(cfg):
    """The methods a run evaluates: every CALRec path and baseline its settings switch on."""
    return [m for m in METHODS if (m != "calrec_constrained" or cfg.constrained_beams)
            and (m.startswith("calrec") or cfg.baselines)]


def evaluate(exp):
    """Every method on the valid and the test split of the target domain, each entry stored in the run state as
    it is done (a resumed run skips it). First the generator check: what the LM prefers to write."""
    cfg, domain, state = exp.cfg, exp.domain, exp.state
    if "generator_check" not in state.done:
        check = generator_check(exp.lm, exp.builder, exp.tokenizer.eot_id, split_of(exp, "valid"), exp.catalog,
                                int(ev.popularity(domain).argmax()), exp.device)
        log.info(f"generator check, first {check['users']} validation users: mean log-probability of the text of "
                 f"the next item {check['next_item']:.1f}, of the last history item {check['last_item']:.1f}, of the "
                 f"most popular item {check['most_popular']:.1f}; the most popular one is the likelier for "
                 f"{check['popular_beats_next']:.0%} of them")
        state.finish("generator_check", check)
    results = state.done.get("results", {s: {} for s in (("valid", "test") if cfg.evaluate_test else ("valid",))})
    for method in methods_of(cfg):
        label, ranks_of = METHODS[method]
        for split in results:
            if method not in results[split]:
                ranks, samples = ranks_of(exp, split)
                results[split][method] = ev.rank_metrics(ranks)
                if samples and split == "test":
                    log.info(f"{label}: best beams of the first test users: " + " | ".join(samples))
                state.finish("results", results)
    return results


def format_table(results):
    cols = [f"recall@{k}" for k in ev.RECALL_KS] + [f"ndcg@{k}" for k in ev.NDCG_KS]
    lines = [f"{'split':6s} {'method':33s} " + " ".join(f"{c:>9s}" for c in cols)]
    for split, rows in results.items():
        for method, m in rows.items():
            lines.append(f"{split:6s} {METHODS[method][0]:33s} " + " ".join(f"{m[c]:9.4f}" for c in cols))
    return "\n".join(lines)


def write_results(exp, results, stages):
    """Print the table and write results.json (atomically)."""
    cfg, domain, w = exp.cfg, exp.domain, exp.state.done["dense_weights"]
    config = dict(dataclasses.asdict(cfg), domains=[d.name for d in exp.domains], target=domain.name, seed=exp.seed,
                  device=exp.device, dtype=exp.dtype, init=exp.init,
                  n_valid_generative=len(split_of(exp, "valid")), n_valid=len(domain.valid), n_test=len(domain.test),
                  dense_weights=dict(mu=w["mu"], gamma=w["gamma"], lam=w["lam"]),
                  **{f"stage{s}_valid_ndcg@10": exp.state.done[f"stage{s}"]["score"] for s in stages})
    out = dict(**results, config=config, generator_check=exp.state.done["generator_check"],
               wall_s=exp.state.seconds(), peak_memory_mb=peak_memory_mb(), resumed=exp.state.resumes,
               environment=environment(exp.device))
    save_json(os.path.join(exp.out_dir, "results.json"), out)
    log.info(f"\nCALRec on {domain.name} (stages {cfg.stages}; alpha {cfg.alpha}, beta {cfg.beta}, tau {cfg.tau}; "
             f"{cfg.beams} beams, {cfg.constrained_beams} catalog beams; dense path: "
             f"{describe_dense_weights(w['mu'], w['gamma'], w['lam'])}); full ranking over {domain.n_items} items")
    log.info(format_table(results))
    log.info(f"wall time {out['wall_s']:.0f} s; peak memory {out['peak_memory_mb']} MB; "
             f"results in {os.path.join(exp.out_dir, 'results.json')}")
    return out
