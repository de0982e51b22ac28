"""
CALRec: sequential recommendation as text generation, with a two-tower contrastive alignment.

Paper: Li, Zhai, Alzantot, Yu, Vulic, Korhonen, Hammad. "CALRec: Contrastive Alignment of Generative LLMs
for Sequential Recommendation." RecSys 2024 (arXiv 2405.02429). What the paper specifies and what we decided
where it is silent: docs/calrec.md; this file follows its section 1, in order.

One small GPT (model.py) reads a user's purchase history as text and writes the next item's text. The same
weights are also two towers: pooled over the history they give the user vector v_U, pooled over the target
(read after the history) v_T|U, and over the item text alone v_T. Training mixes next-item generation with
two InfoNCE alignments, in two stages; inference beam-searches item texts and grounds them in the catalog
with BM25. Sections: 1. text, 2. towers, 3. losses, 4. the two stages, 5. inference, 6. the towers as a ranker
(beyond the paper, with calrec_extras.py), 7. the run.

    python train.py --task calrec                    # the built-in world, CPU, about 2 minutes
    python train.py --task calrec --data data/amazon/Video_Games data/amazon/Industrial_and_Scientific
"""

import dataclasses
import functools
import logging
import os
import re
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import calrec_extras as extras
import evaluation as ev
from engine import (RunState, all_reduce_sum, autocast, beam_floats, check_memory, check_settings,
                    fingerprint, gather_rows, grad_scaler, load_init, lr_at, my_share, rank_and_world, save_checkpoint,
                    save_tokenizer, setting, train_and_select, training_floats)
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
# Every batch is right-padded, so no attention mask is needed: under causal attention a real token only sees the
# real tokens before it, and padded positions are never read (the spans and the loss skip them).


def item_vectors(lm, idx, mask):
    """The item tower: v_T, the normalised mean of the final hidden states over the item's text. (B, C)"""
    return F.normalize(mean_pool(lm.hidden_states(idx), mask), dim=-1)


def user_vectors(h, rows, ends):
    """The user tower: v_U, the normalised mean of the hidden states h (B, T, C) over a prompt, positions
    [0, ends[p]) of row rows[p]. One row of the joint sequence holds a prompt before each of its predicted
    items, each a prefix of the next: a running mean gives all of them from one pass. (P, C)"""
    running = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))  # (B, T, C) sums over 0..t, >= float32
    return F.normalize(running[rows, ends - 1] / ends[:, None].to(running.dtype), dim=-1).to(h.dtype)


def target_vectors(h, rows, starts, ends):
    """v_T|U: the normalised mean of h over each predicted item's tokens [starts[p], ends[p]), as read after
    its prompt. (P, C)"""
    running = F.pad(h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32)), (0, 0, 1, 0))  # sums over 0..t-1
    span = running[rows, ends] - running[rows, starts]                 # (P, C) each one's own sum, >= float32
    return F.normalize(span / (ends - starts)[:, None].to(span.dtype), dim=-1).to(h.dtype)


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
    v_T|U) is contrasted with the batch's items; over_users (the paper's, as docs/calrec.md reads it)
    contrasts each target item with the batch's users instead.
    """
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}


# -----------------------------------------------------------------------------
# 4. training: one step, then the two stages: a mixture of domains, then the target (docs/calrec.md section 1)


def training_rows(domains, offsets, every_position):
    """Per domain, the rows a stage draws from (global item indices): with every_position [beyond the paper] each
    user's training sequence (its prompt's kept history items predicted too); else every training example (paper)."""
    if every_position:
        return [[[o + i for i in seq] for seq in d.train_sequences if len(seq) >= 2] for d, o in zip(domains, offsets)]
    return [[[o + i for i in hist] + [o + t] for hist, t in d.train] for d, o in zip(domains, offsets)]


def train_step(towers, optimizer, scaler, builder, rows, extra, cfg, device, dtype):
    """One optimiser step on a batch of rows (item sequences) and extra negative items. The plumbing lives here
    -- devices, mixed precision, several processes -- so that calrec_loss reads like the paper."""
    world = rank_and_world()[1]
    rows, extra = rows[my_share(len(rows))], extra[my_share(len(extra))]
    batch = builder.training_batch(rows, cfg.every_position)
    items = torch.cat([batch["item"], torch.tensor(extra, dtype=torch.long)])
    histories = [rows[b][max(0, p - cfg.recent_in_loss):p] for b, p in zip(batch["row"].tolist(),  # section 6
                 batch["position"].tolist())] if cfg.recent_in_loss and cfg.beta > 0 else []
    inputs = {k: batch[k].to(device) for k in ("idx", "targets", "row", "start", "end")}
    if cfg.alpha + cfg.beta > 0:  # the keys, then the history items, through the item tower
        keys = builder.item_batch(items.tolist() + [i for hist in histories for i in hist])
        inputs["item_idx"], inputs["item_mask"] = (t.to(device) for t in keys)
    with autocast(device, dtype):
        nig_sum, n_tokens, v_u, v_tu, v_t = towers(**inputs)
        if histories:
            v_u, v_t = extras.loss_query(v_u, v_t, len(items), histories, cfg.recent_loss_decay, cfg.recent_loss_weight)
        # several processes (torchrun): L_NIG is the mean over the global batch's target tokens (DDP then averages
        # the gradients over the processes, hence * world), and the contrastive losses see every process's vectors
        l_nig = nig_sum * world / all_reduce_sum(n_tokens.detach()).clamp(min=1)
        v_u, v_tu, v_t, items = gather_batch(v_u, v_tu, v_t, items.to(device))
        loss, parts = calrec_loss(l_nig, v_u, v_tu, v_t, items, cfg.alpha, cfg.beta, cfg.tau,
                                  cfg.softmax_over == "users")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    torch.nn.utils.clip_grad_norm_(towers.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), parts


def gather_batch(v_u, v_tu, v_t, items):
    """Every process's vectors, gradients flowing back to their owners (engine.gather_rows): the users', and the
    keys as every process's targets followed by every process's extra items."""
    P = len(v_u)
    if v_t is not None:
        v_t = torch.cat([gather_rows(v_t[:P]), gather_rows(v_t[P:])])
        items = torch.cat([gather_rows(items[:P]), gather_rows(items[P:])])
    return gather_rows(v_u), gather_rows(v_tu), v_t, items


def train_stage(exp, stage, validate):
    """Stage 1: rows drawn from a mixture of every domain, P(domain) ~ its rows ** (1 / domain_temperature);
    stage 2: the target domain alone. validate() every eval_interval steps picks the weights the LM ends with."""
    cfg, lm, device = exp.cfg, exp.lm, exp.device
    logs = np.log([len(r) or 1 for r in exp.rows])
    w = np.exp((logs - logs.max()) / cfg.domain_temperature)  # the largest 1: no inf nor nan at a temperature near 0
    probs = w / w.sum() if stage == 1 else np.eye(len(exp.domains))[exp.target_index]
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
    rng = np.random.default_rng([exp.seed, stage])  # the batches; below, dropout's masks, as a resumed run draws them
    torch.manual_seed(int(np.random.default_rng([exp.seed, stage, 1]).integers(2**62)))
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
    """BM25's analyser: lower-cased runs of letters and digits, of any script; each hiragana and CJK ideograph is a
    word of its own, as in Lucene's StandardTokenizer (such text is written without spaces)."""
    cjk = "\u3040-\u309f\u3400-\u9fff\uf900-\ufaff"
    return re.findall(f"[{cjk}]|[^\\W_{cjk}]+", text.lower())


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
        """BM25 scores (nq, D), float32 (search sorts their bits), of every document for every query string."""
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
        """Top `depth` documents of each query with a positive score, best first: lists of (indices, scores). Equal
        scores go by document index, lower first: scores are >= 0, and a float32 >= 0 orders like its bits read as
        an integer, so the key (bits << 32) - index sorts by score, then by index."""
        index = torch.arange(self.matrix.size(0))                        # (D,)
        out = []
        for start in range(0, len(queries), chunk):
            s = self.scores(queries[start:start + chunk])                # (n, D), n <= chunk
            key = s.view(torch.int32).long()                             # (n, D) the scores' bits, as int64
            key <<= 32                                                   # (in place: no more (n, D) copies)
            key -= index
            top = torch.topk(key, min(depth, s.size(1)), dim=1).indices  # (n, depth)
            vals = s.gather(1, top)                                      # (n, depth), descending
            out += [(idx[:n], v[:n]) for idx, v, n in zip(top.tolist(), vals.tolist(), (vals > 0).sum(1).tolist())]
        return out


def merge_round_robin(lists, list_scores, exclude, k):
    """Merge m ranked lists into one of at most k items: round p takes the p-th item of every list; within a round
    the candidates go in order of their BM25 score (ties: the better beam first); an item already taken or in
    `exclude` (the user's history) is skipped. Stops at k items."""
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if len(taken) >= k:                                          # k taken (k = 0: none at all)
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken


def rank_generative(lm, builder, tokenizer, examples, catalog, cfg, twins, bm25=None, trie=None, show=False):
    """Ranks of the targets in the top-k lists that beam search writes after each example's prompt, eval_batch users
    at a time, grounded in the catalog by BM25 (the paper's: bm25_lists) or, with a trie (calrec_extras.CatalogTrie,
    beyond the paper), written as catalog items in beam order. catalog: the target's global indices (examples hold
    local ones); twins: a key per item, equal where the path cannot tell items apart. Also 3 users' best beams."""
    lm.eval()
    lists, samples, beams = [], [], cfg.beams if trie is None else cfg.constrained_beams
    for s in tqdm(range(0, len(examples), cfg.eval_batch), desc="beam search", disable=not show, leave=False):
        histories = [hist for hist, _ in examples[s:s + cfg.eval_batch]]
        prompts = [builder.prompt([catalog[i] for i in hist]) for hist in histories]
        found = lm.beam_search(prompts, beams, builder.room, tokenizer.eot_id, allowed_next=trie)
        texts = [tokenizer.decode(tokens) for user in found for tokens, _ in user]
        lists += (bm25_lists(bm25, texts, histories, beams, cfg.top_k) if trie is None
                  else trie.ranked_items(found, histories, cfg.top_k))
        samples += texts[::beams][:3 - len(samples)]  # the best beam of each of the first three users
    return ev.ranks_from_lists(lists, [t for _, t in examples], [hist for hist, _ in examples], twins), samples


def bm25_lists(bm25, texts, histories, beams, k):
    """Each beam's text is a BM25 query; each user's beams' lists are merged quasi-round-robin."""
    hits = bm25.search(texts, depth=2 * k + beams + max(map(len, histories)))  # the history is left out after
    per_user = [hits[b * beams:(b + 1) * beams] for b in range(len(histories))]
    return [merge_round_robin([lst for lst, _ in user_hits], [sc for _, sc in user_hits], history, k)
            for user_hits, history in zip(per_user, histories)]


# -----------------------------------------------------------------------------
# 6. the towers as a ranker [beyond the paper]: v_U against the v_T of every catalog item, an exact full ranking
#    (the dense path). calrec_extras.py adds the recent items and the popularity prior to it, and holds the other
#    beyond-the-paper pieces: catalog beams and the generator check.


@torch.no_grad()
def dense_vectors(lm, builder, examples, catalog, device, batch=64):
    """v_U of every example's history (B, C) and v_T of every catalog item (N, C), on the CPU. catalog: global
    indices; examples use local ones."""
    lm.eval()
    v_t = [item_vectors(lm, *(t.to(device) for t in builder.item_batch(catalog[s:s + 4 * batch])))
           for s in range(0, len(catalog), 4 * batch)]
    v_u = []
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        idx, _, prompts = builder.prompt_batch([[catalog[i] for i in hist] for hist, _ in chunk])
        hidden = lm.hidden_states(idx.to(device))                      # (B, T, C), right-padded prompts
        ends = torch.tensor([len(p) for p in prompts], device=device)
        v_u.append(user_vectors(hidden, torch.arange(len(chunk), device=device), ends))
    return torch.cat(v_u).cpu(), torch.cat(v_t).cpu()


# -----------------------------------------------------------------------------
# 7. the run: the settings (every number ours unless its help says otherwise), prepare (reads and checks
#    everything, writes nothing), run (trains, evaluates, writes).


@dataclasses.dataclass(frozen=True)
class CALRecConfig:
    # the LM (model.GPTConfig) and its text
    n_layer: int = setting(2, ">= 1", "transformer blocks of the LM")
    n_head: int = setting(4, ">= 1", "attention heads per block")
    n_embd: int = setting(128, ">= 1", "width of the residual stream")
    block_size: int = setting(256, ">= 16", "longest sequence the LM reads, in tokens")
    dropout: float = setting(0.0, "0..0.9", "dropout of the LM")
    vocab_size: int = setting(2048, "259..1048576", "BPE tokens at most (fewer if the items' prompts are too short)")
    max_words: int = setting(24, ">= 1", "cap on every attribute value, in words")
    max_history: int = setting(3, ">= 1", "most recent history items in a prompt (as many as fit block_size)")
    max_item_tokens: int = setting(64, ">= 1", "an item's tokens; a longer item loses words of its longest values")
    # the losses: L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT
    alpha: float = setting(0.2, "0..1", "weight of L_TT")
    beta: float = setting(0.2, "0..1", "weight of L_UT")
    tau: float = setting(0.05, "> 0", "temperature of both contrastive losses")
    softmax_over: str = setting("items", ("items", "users"), "InfoNCE over the batch's items (ours) or users (paper)")
    every_position: bool = setting(True, None, "[beyond] predict the prompt's kept history items too; false: the paper")
    extra_negatives: int = setting(0, ">= 0", "[beyond] random catalog items per batch as negatives (0: the paper)")
    recent_in_loss: int = setting(0, ">= 0", "[beyond] L_UT trains q_U, r_U over this many last items (0: v_U)")
    recent_loss_weight: float = setting(0.5, "0..1", "mu of the q_U that L_UT trains")
    recent_loss_decay: float = setting(0.5, "0..1", "gamma of the q_U that L_UT trains")
    # training
    stages: str = setting("both", ("1", "2", "both"), "1: the mixture of domains, 2: the target alone, both: 1 then 2")
    target: str = setting("", None, "the target domain, by name: X of its X.train.inter (empty: the last)")
    stage1_steps: int = setting(200, ">= 1", "steps of stage 1")
    stage2_steps: int = setting(100, ">= 1", "steps of stage 2")
    batch_size: int = setting(24, ">= 1", "rows (user sequences or training examples) per step")
    lr: float = setting(4e-3, "0..1e30", "peak learning rate (warmup, then cosine decay to a tenth)")
    weight_decay: float = setting(0.01, ">= 0", "AdamW's weight decay on matrices")
    warmup: int = setting(20, ">= 0", "warmup steps (CALRec's and SASRec's)")
    eval_interval: int = setting(100, ">= 1", "validate every this many steps; each stage keeps its best weights")
    domain_temperature: float = setting(1.0, "> 0", "stage 1 draws a domain with P ~ its rows ** (1 / temperature)")
    select_users: int = setting(300, ">= 0", "validation users scored for model selection (0: all)")
    # inference and evaluation
    beams: int = setting(6, ">= 1", "beams of the generative path")
    constrained_beams: int = setting(10, ">= 0", "[beyond] beams of the catalog-constrained path (0: off)")
    bm25_k1: float = setting(1.2, "0..1000", "BM25's k1")
    bm25_b: float = setting(0.75, "0..1", "BM25's b")
    top_k: int = setting(20, ">= 20", "length of every ranked list (the metrics read it to rank 20)")
    eval_batch: int = setting(50, ">= 1", "users per beam-search batch")
    bm25_valid_users: int = setting(200, ">= 0", "validation users of beam search's rows and check (0: all)")
    prior_weights: tuple[float, ...] = setting((0.0, 0.25, 0.5, 0.75, 1.0), "0..1e30", "[beyond] lambda candidates")
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
    sasrec_steps: int = setting(400, ">= 1", "SASRec's training steps")
    sasrec_batch_size: int = setting(128, ">= 1", "SASRec's sequences per step")
    sasrec_lr: float = setting(2e-3, "0..1e30", "SASRec's peak learning rate")

    def check(self):
        """What one field cannot say alone."""
        if self.alpha + self.beta > 1.0:
            raise UserError(f"setting alpha + beta = {self.alpha} + {self.beta}: must be <= 1 (L_NIG's weight is "
                            "1 - alpha - beta)")
        for width, heads in (("n_embd", "n_head"), ("sasrec_embd", "sasrec_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            if w % h:
                raise UserError(f"setting {width}={w}: not divisible by {heads}={h}")
        if self.softmax_over == "users" and self.extra_negatives:
            raise UserError("setting softmax_over=users: add --set extra_negatives=0 (extra negatives are items)")
        if self.batch_size % rank_and_world()[1]:
            raise UserError(f"setting batch_size={self.batch_size}: does not split over {rank_and_world()[1]} "
                            "processes")


BUILT_IN = CALRecConfig()  # the defaults: sized to finish in under 3 minutes on one CPU core
REAL_DATA = dataclasses.replace(  # 32 minutes on 2 CPU cores (docs/results.md); chosen on Scientific's validation
    BUILT_IN, vocab_size=4096, max_words=10, max_history=1, max_item_tokens=32, stage1_steps=600, stage2_steps=1200,
    batch_size=32, lr=1e-3, warmup=100, eval_interval=200, domain_temperature=2.0, select_users=10_000, beams=5,
    eval_batch=64, bm25_valid_users=1000, extra_negatives=256, recent_in_loss=4, constrained_beams=5,
    sasrec_steps=3000, sasrec_dropout=0.5)


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, read and checked by prepare() before anything is written."""
    cfg: CALRecConfig
    domains: list
    target_index: int            # the target domain's, in domains
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
    cache: dict = dataclasses.field(default_factory=dict)  # what evaluation computes once: vectors, SASRec

    @property
    def domain(self):
        return self.domains[self.target_index]

    @property
    def catalog(self):  # global indices of the target domain's items: the catalog every method ranks
        return range(self.offsets[self.target_index], self.offsets[self.target_index + 1])

    @functools.cached_property
    def documents(self):  # the target catalog's whole item texts (local item indices), what BM25 indexes
        return [self.texts[i] for i in self.catalog]

    @functools.cached_property
    def bm25(self):
        return BM25(self.documents, self.cfg.bm25_k1, self.cfg.bm25_b)


def load_data(cfg, data_dirs, seed):
    """The domains (data_dirs, or the built-in world), the target's index and every domain's rows, checked."""
    domains = [data.read_atomic(d) for d in data_dirs] if data_dirs else data.make_world(seed=seed)
    names = [d.name for d in domains]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        both = " and ".join(d for d, n in zip(data_dirs, names) if n == twice[0])
        raise UserError(f"--data {both}: both hold the domain {twice[0]} ({twice[0]}.*): give it once or rename one")
    if (cfg.target or names[-1]) not in names:
        raise UserError(f"setting target={cfg.target}: not among the domains {names}")
    target, where = names.index(cfg.target or names[-1]), data_dirs or names  # an error names the folder
    for split in ("valid", "test"):
        if not getattr(domains[target], split):
            raise UserError(f"{where[target]}: has no {split} users (every user needs at least 3 items)")
    rows = training_rows(domains, np.cumsum([0] + [d.n_items for d in domains]).tolist(), cfg.every_position)
    for folder, r in zip(where, rows):
        if not r and (cfg.stages != "2" or folder == where[target]):  # stage 2 trains on the target alone
            raise UserError(f"{folder}: has no training sequence of two items or more to learn from")
    return domains, target, rows


def fitted_item_texts(items, max_words, tokenizer, max_tokens):
    """data.item_text of each (item, attributes), at most max_tokens tokens (after a space, as PromptBuilder encodes
    it) with every attribute: while too long, its longest value (in words; the first of equals) loses its last word,
    down to one. A cut at the end would drop the brand of nearly all of Scientific's items (82% exceed 32 tokens)."""
    caps = [[min(len(item.get(a, "Unknown").split()), max_words) for a in attributes] for item, attributes in items]
    pending = list(range(len(items)))
    while pending:  # one round shortens every item still too long by one word
        texts = [data.item_text(*items[i], caps[i]) for i in pending]
        lengths = [len(ids) for ids in tokenizer.encode_batch([" " + t for t in texts])]
        longer = []
        for i, n in zip(pending, lengths):
            j = max(range(len(caps[i])), key=lambda k: caps[i][k], default=None)
            if n > max_tokens and j is not None and caps[i][j] > 1:
                caps[i][j] -= 1
                longer.append(i)
        pending = longer
    return [data.item_text(*pair, cap) for pair, cap in zip(items, caps)]


def build_tokenizer(cfg, texts, init, resume, out_dir):
    """--init's LM (else None; a resumed run's saved stage replaces its weights) and the run's tokenizer, --init's,
    or a new BPE trained on prompts of the items (the template's words single tokens)."""
    saved = os.path.join(out_dir, "tokenizer.json")  # a resumed run's; if deleted, trained again (the key checks it)
    if resume and (init or os.path.exists(saved)):
        return (load_init(init, dropout=cfg.dropout)[0] if init else None), data.load_tokenizer(saved)
    if init:
        return load_init(init, dropout=cfg.dropout)
    return None, data.train_tokenizer([data.history_prompt(texts[i:i + 4]) for i in range(0, len(texts), 4)],
                                      vocab_size=cfg.vocab_size)


def prepare(cfg, data_dirs, out_dir, seed, device, init=None, resume=False, dtype="float32", compile=False):
    """Settings, data, tokenizer and LM, all read and checked before anything is written; with resume, the saved
    run's key (settings, data, tokenizer) is compared with this one first."""
    cfg = check_settings(cfg)
    domains, target, rows = load_data(cfg, data_dirs, seed)
    items = [(it, d.attributes) for d in domains for it in d.items]  # every item, global indices
    texts = [data.item_text(it, attributes, cfg.max_words) for it, attributes in items]
    lm, tokenizer = build_tokenizer(cfg, texts, init, resume, out_dir)
    key = dict(task="calrec", **dataclasses.asdict(cfg), data=fingerprint([(d.name, d.items, d.attributes,
               d.train, d.valid, d.test) for d in domains]), tokenizer=tokenizer.fingerprint, seed=seed, dtype=dtype,
               init=init and fingerprint(lm.state_dict()), processes=rank_and_world()[1])  # init: its weights
    state = RunState(os.path.join(out_dir, "state.pt"), key, resume)
    c = (lm.config if lm else GPTConfig(**state.done["lm_config"]) if resume else  # a state holds it from its 1st save
         GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                   n_embd=cfg.n_embd, dropout=cfg.dropout))
    # the LM's own sizes (--init's may differ from the settings), as results.json reports them
    cfg = dataclasses.replace(cfg, block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.n_layer,
                              n_head=c.n_head, n_embd=c.n_embd)
    fitted = fitted_item_texts(items, cfg.max_words, tokenizer, cfg.max_item_tokens)
    try:
        builder = data.PromptBuilder(tokenizer, fitted, c.block_size, cfg.max_history, cfg.max_item_tokens)
    except UserError as e:  # the LM of --init fixes block_size: name its file
        raise UserError(f"{init}: its model reads at most {c.block_size} tokens: {e}" if init else str(e)) from None
    beams = max(cfg.beams, cfg.constrained_beams)
    users = min(cfg.eval_batch, len(domains[target].valid[:cfg.bm25_valid_users or None]))  # the first beam search
    check_memory(device, {  # lower bounds of each phase; a row: at least the header and a target; room: an item
        "a training step (n_layer, n_embd, block_size, vocab_size, batch_size)": training_floats(
            c, cfg.batch_size * len(builder.header), cfg.batch_size),
        "SASRec's training step (sasrec_*)": cfg.baselines * training_floats(ev.sasrec_config(domains[target], cfg),
                                                                             *[cfg.sasrec_batch_size] * 2),
        "beam search (eval_batch, beams, constrained_beams)": beam_floats(c, users, beams, builder.room)})
    lm = lm or GPT(c)
    offsets = np.cumsum([0] + [d.n_items for d in domains]).tolist()
    return Experiment(cfg, domains, target, offsets, texts, lm.to(device), tokenizer, builder, rows, state, out_dir,
                      seed, device, init, dtype, compile)


def run(exp):
    """Train CALRec (stage 1 and/or 2), evaluate it and the baselines on the same split, write results.json."""
    cfg, state, lm = exp.cfg, exp.state, exp.lm
    if rank_and_world()[0] == 0:  # by a resumed run too: a tokenizer.json deleted since is there again
        save_tokenizer(exp.out_dir, exp.tokenizer)
    if "lm_config" not in state.done:
        state.finish("lm_config", dataclasses.asdict(lm.config))
    for d in exp.domains:
        log.info(f"domain {d.name}: {d.n_items} items, {len(d.train)} training examples, {len(d.valid)} valid, "
                 f"{len(d.test)} test users")
    lengths = np.array([len(ids) for ids in exp.tokenizer.encode_batch([" " + t for t in exp.texts])])
    shares = [np.mean(lengths[a:b] > cfg.max_item_tokens) for a, b in zip(exp.offsets, exp.offsets[1:])]
    log.info(f"item texts longer than max_item_tokens={cfg.max_item_tokens}, shortened: " +
             ", ".join(f"{d.name} {share:.1%}" for d, share in zip(exp.domains, shares)))
    log.info(f"model: {lm.num_params() / 1e6:.2f}M parameters, vocab {exp.tokenizer.vocab_size}, block "
             f"{lm.config.block_size}; selection: the {'dense' if cfg.beta > 0 else 'generative'} path")
    stages = {"1": [1], "2": [2], "both": [1, 2]}[cfg.stages]
    for stage in stages:
        if f"stage{stage}" in state.done:
            lm.load_state_dict(state.done[f"stage{stage}"]["weights"])  # finished before an interruption
        else:
            train_stage(exp, stage, functools.partial(validate, exp))
    if rank_and_world()[0] != 0:
        return None  # every process holds the same weights; process 0 evaluates and writes
    # written by every run that gets here, a resumed one too: a checkpoint deleted or damaged since is whole again
    save_checkpoint(os.path.join(exp.out_dir, "ckpt.pt"), lm, exp.tokenizer, cfg.stage1_steps + cfg.stage2_steps,
                    {f"stage{s}_valid_ndcg@10": state.done[f"stage{s}"]["score"] for s in stages})
    return write_results(exp, evaluate(exp), stages)


def validate(exp):
    """Validation NDCG@10 for model selection on the first select_users validation users (0: all): the dense path's
    as reported (at the best mu, gamma, lambda of its grid) when L_UT trains the towers (beta > 0), else generative."""
    cfg, examples = exp.cfg, exp.domain.valid[:exp.cfg.select_users or None]
    if cfg.beta == 0:
        return ev.rank_metrics(rank_generative(exp.lm, exp.builder, exp.tokenizer, examples, exp.catalog, cfg,
                                               exp.documents, bm25=exp.bm25)[0])["ndcg@10"]
    v_u, v_t = dense_vectors(exp.lm, exp.builder, examples, exp.catalog, exp.device)
    _, ndcg = extras.choose_dense_weights(v_u, v_t, examples, cfg.tau, torch.log1p(ev.popularity(exp.domain)),
                                          cfg.recent_weights, cfg.recent_decays, cfg.prior_weights)
    return max(ndcg.values())


# Evaluation: every method ranks the target's whole catalog for the valid and the test split; test is evaluated
# once, here, after every choice was made on validation. A method: (exp, its users) -> (ranks, texts or None).


def once(exp, name, make):
    """exp.cache[name], made by make() the first time it is asked for."""
    return exp.cache[name] if name in exp.cache else exp.cache.setdefault(name, make())


def dense_weights(exp):
    """The dense path's (mu, gamma, lambda), chosen on every validation user once (the run state keeps them)."""
    cfg, log_counts = exp.cfg, torch.log1p(ev.popularity(exp.domain))
    if "dense_weights" not in exp.state.done:
        v = once(exp, "valid", lambda: dense_vectors(exp.lm, exp.builder, exp.domain.valid, exp.catalog, exp.device))
        chosen, ndcg = extras.choose_dense_weights(*v, exp.domain.valid, cfg.tau, log_counts, cfg.recent_weights,
                                                   cfg.recent_decays, cfg.prior_weights)
        log.info("dense path, validation NDCG@10 for lambda = " + ", ".join(f"{w:g}" for w in cfg.prior_weights) + ":")
        for m, g in dict.fromkeys((m, g) for m, g, _ in ndcg):
            log.info(f"  mu {m:g}, gamma {'-' if g is None else f'{g:g}'}: " +
                     " ".join(f"{ndcg[m, g, w]:.4f}" for w in cfg.prior_weights))
        log.info("chosen: " + extras.describe_dense_weights(*chosen))
        exp.state.finish("dense_weights", dict(zip(("mu", "gamma", "lam"), chosen), grid={
            f"mu {m:g}, gamma {g}, lambda {w:g}": v for (m, g, w), v in ndcg.items()}))
    return exp.state.done["dense_weights"]


def ranks_dense(exp, examples, split):
    """q_U = (1 - mu) v_U + mu r_U scored with the prior lambda log(1 + n_j), at the weights chosen on validation."""
    w, (v_u, v_t) = dense_weights(exp), once(exp, split, lambda: dense_vectors(exp.lm, exp.builder, examples,
                                                                               exp.catalog, exp.device))
    if w["gamma"] is not None:
        v_u = extras.dense_queries(v_u, extras.recent_vectors(v_t, [hist for hist, _ in examples], w["gamma"]), w["mu"])
    return extras.rank_vectors(v_u, v_t, examples, exp.cfg.tau, w["lam"] * torch.log1p(ev.popularity(exp.domain))), None


def ranks_cosine(exp, examples, split):
    """The dense path by cos(v_U, v_T) alone: the two towers as the paper trains them."""
    vectors = once(exp, split, lambda: dense_vectors(exp.lm, exp.builder, examples, exp.catalog, exp.device))
    return extras.rank_vectors(*vectors, examples), None


def ranks_catalog_beams(exp, examples, split):
    tokens = [exp.builder.item_ids[i] for i in exp.catalog]  # items that tokenise alike share a leaf: twins
    trie = extras.CatalogTrie(tokens, exp.tokenizer.eot_id, exp.lm.config.vocab_size)
    return rank_generative(exp.lm, exp.builder, exp.tokenizer, examples, exp.catalog, exp.cfg, list(map(tuple, tokens)),
                           trie=trie, show=True)


def ranks_sasrec(exp, examples, split):
    sasrec = once(exp, "sasrec", lambda: ev.train_sasrec(exp.domain, exp.cfg, exp.device, exp.seed, exp.state))
    return ev.rank_sasrec(sasrec, exp.domain, examples, exp.device), None


METHODS = {  # name -> (row label, ranks(exp, examples, split), whether it beam-searches)
    "calrec_generative": ("CALRec generative+BM25", lambda exp, examples, split: rank_generative(
        exp.lm, exp.builder, exp.tokenizer, examples, exp.catalog, exp.cfg, exp.documents, exp.bm25, show=True), True),
    "calrec_constrained": ("CALRec generative, catalog beams", ranks_catalog_beams, True),
    "calrec_dense": ("CALRec dense (two-tower)", ranks_dense, False),
    "calrec_dense_cos": ("CALRec dense, cosine alone", ranks_cosine, False),
    "sasrec": ("SASRec", ranks_sasrec, False),
    "popular": ("most popular", lambda exp, examples, split: (ev.rank_popular(exp.domain, examples), None), False),
    "last_item_bm25": ("last item's text, BM25", lambda exp, examples, split: (ev.rank_last_item_bm25(
        exp.bm25, exp.documents, examples), None), False),
    "markov": ("first-order Markov", lambda exp, examples, split: (ev.rank_markov(exp.domain, examples), None), False),
}


def evaluate(exp):
    """The generator check, then each method (baselines: if `baselines`) on valid, and on test if `evaluate_test`,
    each result kept in the run state (a resumed run skips it); beam search reads bm25_valid_users of valid."""
    cfg, state = exp.cfg, exp.state
    generative_valid = exp.domain.valid[:cfg.bm25_valid_users or None]
    if "generator_check" not in state.done:
        check = extras.generator_check(exp.lm, exp.builder, exp.tokenizer.eot_id, generative_valid, exp.catalog,
                                       int(ev.popularity(exp.domain).argmax()), exp.device)
        log.info(f"generator check, first {check['users']} validation users: mean log-probability of the text of "
                 f"the next item {check['next_item']:.1f}, of the last history item {check['last_item']:.1f}, of the "
                 f"most popular item {check['most_popular']:.1f}; the most popular one is the likelier for "
                 f"{check['popular_beats_next']:.0%} of them")
        state.finish("generator_check", check)
    results = state.done.get("results", {s: {} for s in (("valid", "test") if cfg.evaluate_test else ("valid",))})
    for method, (label, ranks_of, beams) in METHODS.items():
        if (method == "calrec_constrained" and not cfg.constrained_beams) or \
                (not cfg.baselines and not method.startswith("calrec")):
            continue
        for split in (s for s in results if method not in results[s]):
            examples = generative_valid if beams and split == "valid" else getattr(exp.domain, split)
            ranks, samples = ranks_of(exp, examples, split)
            results[split][method] = ev.rank_metrics(ranks)
            if samples and split == "test":
                log.info(f"{label}: best beams of the first test users: " + " | ".join(samples))
            state.finish("results", results)
    return results


def write_results(exp, results, stages):
    """Print the table and write results.json (atomically)."""
    cfg, domain, chosen = exp.cfg, exp.domain, exp.state.done["dense_weights"]
    w = {k: chosen[k] for k in ("mu", "gamma", "lam")}
    cols = [f"recall@{k}" for k in ev.RECALL_KS] + [f"ndcg@{k}" for k in ev.NDCG_KS]
    table = [f"{'split':6s} {'method':33s} " + " ".join(f"{c:>9s}" for c in cols)] + [
        f"{split:6s} {METHODS[m][0]:33s} " + " ".join(f"{row[c]:9.4f}" for c in cols)
        for split, rows in results.items() for m, row in rows.items()]
    config = dict(dataclasses.asdict(cfg), domains=[d.name for d in exp.domains], target=domain.name, seed=exp.seed,
                  device=exp.device, dtype=exp.dtype, init=exp.init, dense_weights=w, dense_grid=chosen["grid"],
                  n_valid=len(domain.valid), n_valid_generative=len(domain.valid[:cfg.bm25_valid_users or None]),
                  n_test=len(domain.test), **{f"stage{s}_valid_ndcg@10": exp.state.done[f"stage{s}"]["score"]
                                              for s in stages})
    log.info(f"\nCALRec on {domain.name} (stages {cfg.stages}; alpha {cfg.alpha}, beta {cfg.beta}, tau {cfg.tau}; "
             f"{cfg.beams} beams, {cfg.constrained_beams} catalog beams; dense path: "
             f"{extras.describe_dense_weights(*w.values())}); full ranking over {domain.n_items} items\n"
             + "\n".join(table))
    out = dict(**results, config=config, generator_check=exp.state.done["generator_check"], resumed=exp.state.resumes)
    return ev.save_results(exp.out_dir, out, exp.device, exp.state.seconds())
