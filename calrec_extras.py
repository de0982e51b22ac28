"""
CALRec beyond the paper: what this project adds to the paper's method, each reported beside the paper's path in
every table (docs/calrec.md section 2 says why each is here and what it buys on validation).

  - the recent items and the popularity prior of the dense path (calrec.py section 6 ranks the catalog by the
    towers' cosine): item j scored q_U . v_T_j / tau + lambda log(1 + n_j), both terms explained below;
  - catalog beams: beam search that can only write the catalog's items;
  - the generator check: which text the LM prefers to write after a prompt.
"""

import torch
import torch.nn.functional as F

import data
import evaluation as ev


# The recent items. A prompt holds only the last few history items (max_history), yet the item tower has placed every
# item the user bought: their vectors, weighted by recency, give a second query from the same towers,
#     r_U = sum_i gamma^a_i v_T_i / sum_i gamma^a_i,   a_i the age of history item i (0 for the last one),
# and the dense path scores item j by q_U . v_T_j, q_U = (1 - mu) v_U + mu r_U: the towers' cosines mixed,
#     (1 - mu) cos(v_U, v_T_j) + mu r_U . v_T_j,   q_U not rescaled to length 1 (its length is 1 at mu = 0),
# which orders items as the cosine to q_U does, but for the prior. With recent_in_loss, L_UT trains the cosine to that
# query too (at fixed mu and gamma, over the last few history items), so that the item tower learns what follows
# what. The popularity prior: the contrastive losses draw their negatives from the batch's targets, that is, by
# popularity, and so learn cos / tau ~ log p(j | u) - log q(j) (Yi et al., RecSys 2019); full-catalog ranking
# needs log p(j | u), so log q(j) ~ lambda log(1 + n_j) is added back. mu, gamma and lambda are chosen together
# on validation; mu = 0 and lambda = 0 are candidates.


def recent_vectors(v_items, histories, decay):
    """r_U of every history (B, C): the mean of its items' vectors weighted decay ** age (age 0: the last item),
    zeros for an empty history, in v_items' dtype but weighed and summed in float32 at least. histories: lists of rows
    of v_items (N, C), oldest first."""
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)         # (H,) whose history item
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)      # (H,) which item
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))                  # (H,) 0: a history's last
    dtype = torch.promote_types(v_items.dtype, torch.float32)  # bfloat16 would round decay (0.97 to 0.96875) and sums
    w = (decay ** age.to(dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=dtype, device=v_items.device).index_add_(0, owner, w)
    total.index_add_(0, owner, w[:, None] * v_items[item].to(dtype))
    return (total / norm.clamp(min=torch.finfo(dtype).tiny)[:, None]).to(v_items.dtype)


def loss_query(v_u, v_t, n_keys, histories, decay, mu):
    """The query that L_UT trains with recent_in_loss: q_U = (1 - mu) v_U + mu r_U, r_U over each prediction's
    last history items, whose v_T are the rows of v_t after its n_keys keys, in order. Returns (q_U, keys' v_T)."""
    at = iter(range(len(v_t) - n_keys))
    r_u = recent_vectors(v_t[n_keys:], [[next(at) for _ in hist] for hist in histories], decay)
    return F.normalize(dense_queries(v_u, r_u, mu), dim=-1), v_t[:n_keys]


def dense_queries(v_u, r_u, mu):
    """The dense path's query: (1 - mu) v_U + mu r_U."""
    return (1 - mu) * v_u + mu * r_u


def rank_vectors(v_u, v_t, examples, tau=1.0, prior=None, chunk=1024):
    """Ranks of the targets when item j is scored by v_U . v_T_j / tau + prior_j (prior (N,), or none)."""
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
    histories = [hist for hist, _ in examples]
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
    return max(grid, key=ndcg.get), ndcg  # max keeps the first of equals


def describe_dense_weights(mu, gamma, lam):
    """The chosen weights as the log and the table's header print them (gamma only when it is used)."""
    return f"mu {mu:g}" + ("" if gamma is None else f", gamma {gamma:g}") + f", lambda {lam:g}"


class CatalogTrie:
    """A prefix tree of the catalog's item texts as tokens, each ended by end-of-text. As beam search's
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
        allowed = torch.zeros(B, K, self.V, dtype=torch.bool, device="cpu")  # small writes: fastest on the CPU
        for b, beams in enumerate(tokens.tolist()):
            for k, beam in enumerate(beams):
                node = None if self.eot_id in beam else self.node(tuple(beam))
                if node is not None:
                    allowed[b, k, list(self.children[node])] = True
        return allowed.to(tokens.device)

    def ranked_items(self, found, histories, k):
        """Per user, the items its finished beams wrote, best beam first, its history left out: the top k."""
        lists = []
        for beams, history in zip(found, histories):
            leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
            lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
        return lists


@torch.no_grad()
def text_log_probs(lm, prompts, continuations, device, batch=64):
    """log p(continuation | prompt) under the LM for each pair: the sum of its tokens' log-probabilities. Rows
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
    prompts = [builder.prompt([catalog[i] for i in hist]) for hist, _ in examples]
    def log_p(items):
        return text_log_probs(lm, prompts, [builder.item_ids[catalog[i]] + [eot_id] for i in items], device)
    target, last = log_p([t for _, t in examples]), log_p([hist[-1] for hist, _ in examples])
    top = log_p([popular] * len(examples))
    return dict(next_item=target.mean().item(), last_item=last.mean().item(), most_popular=top.mean().item(),
                popular_beats_next=(top > target).double().mean().item(), users=len(examples))
