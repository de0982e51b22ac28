"""Wrong answers to the exercises on calrec.py, evaluation.py and calrec_extras.py (see tests/wrong_answers.py):
each a believable student answer that runs, with the mistake named in a comment."""

import sys

CAPPED = sys.platform.startswith("linux")  # where tests/oracles.memory_capped can cap a call's memory

WRONG_CALREC = {
    "calrec-loss": [
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + beta * l_tt + alpha * l_ut  # alpha and beta swapped
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha) * l_nig + alpha * l_tt + beta * l_ut  # the NIG weight 1 - alpha
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig, "tt": l_tt, "ut": l_ut}  # the parts as tensors, not floats
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    nig = (1 - alpha - beta) * l_nig
    tt = alpha * nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    ut = beta * nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    return nig + tt + ut, {"nig": nig.item(), "tt": tt.item(), "ut": ut.item()}  # the parts weighted
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    l_tt = info_nce(v_tu, v_t, items, tau) if alpha > 0 else torch.zeros_like(l_nig)  # over_users ignored
    l_ut = info_nce(v_u, v_t, items, tau) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    def nce(q):  # over_users: every row of v_t a query, the extra negative items too
        return info_nce(v_t, q, items, tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    parts = {"nig": l_nig.item(), "tt": nce(v_tu).item() if alpha > 0 else 0.0,
             "ut": nce(v_u).item() if beta > 0 else 0.0}
    # the loss rebuilt from the floats: no gradient reaches the model
    loss = torch.tensor((1 - alpha - beta) * parts["nig"] + alpha * parts["tt"] + beta * parts["ut"])
    return loss, parts
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # the contrastive terms detached: the loss's value is right, but no gradient reaches v_U, v_T|U or v_T
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu).detach() if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u).detach() if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # a term of weight 0 as torch.zeros(1): the loss becomes shape (1,) on the CPU
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros(1)
    l_ut = nce(v_u) if beta > 0 else torch.zeros(1)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # both contrastive terms computed whatever their weights: with alpha = beta = 0 the project passes v_t = None
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt, l_ut = nce(v_tu), nce(v_u)                                  # both terms, reported even at weight 0
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''},
        {"calrec.py:calrec_loss": '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # a term of weight 0 as torch.zeros(1, dtype=l_nig.dtype): shape (1,), made on the default device
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros(1, dtype=l_nig.dtype)
    l_ut = nce(v_u) if beta > 0 else torch.zeros(1, dtype=l_nig.dtype)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''},
    ],
    "round-robin": [
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        for m in range(len(lists)):  # within a round by beam, not by BM25 score
            if p < len(lists[m]) and lists[m][p] not in seen:
                seen.add(lists[m][p])
                taken.append(lists[m][p])
                if len(taken) == k:
                    return taken
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    taken = []
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if item not in taken:  # the history is not skipped
                taken.append(item)
                if len(taken) == k:
                    return taken
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if item not in seen:
                seen.add(item)
                taken.append(item)
        if len(taken) >= k:  # stops at the end of the round: too late
            return taken
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(reverse=True)  # equal scores: the later beam first
        for _, _, item in round_p:
            if item not in seen:
                seen.add(item)
                taken.append(item)
                if len(taken) == k:
                    return taken
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    # every list's items by BM25 score at once: no rounds
    pooled = sorted((s, m, item) for m in range(len(lists)) for item, s in zip(lists[m], list_scores[m]))
    pooled.sort(key=lambda c: (-c[0], c[1]))
    taken, seen = [], set(exclude)
    for _, _, item in pooled:
        if item not in seen:
            seen.add(item)
            taken.append(item)
            if len(taken) == k:
                break
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    taken, seen = [], set(exclude)
    for p in range(len(lists[0]) if lists else 0):  # as many rounds as the first list has items
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if item not in seen:
                seen.add(item)
                taken.append(item)
                if len(taken) == k:
                    return taken
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    # equal scores within a round by item id, not by beam
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[2]))
        for _, _, item in round_p:
            if len(taken) >= k:
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    # the caller's history list used as the set of items seen: every item taken is appended to it
    taken, seen = [], exclude
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if len(taken) >= k:
                return taken
            if item not in seen:
                seen.append(item)
                taken.append(item)
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    # max() of the lists' lengths without a default: no lists at all crashes
    taken, seen = [], set(exclude)
    for p in range(max(len(lst) for lst in lists)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if len(taken) >= k:
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    # k checked only after an item is taken: k = 0 takes every item
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
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    # a round's candidates deduplicated by item first (setdefault): an item in two beams keeps the first beam's score
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        cands = {}                                                   # item -> (score, beam), one per item
        for m in range(len(lists)):
            if p < len(lists[m]):
                cands.setdefault(lists[m][p], (list_scores[m][p], m))
        for item, _ in sorted(cands.items(), key=lambda c: (-c[1][0], c[1][1])):
            if len(taken) >= k:
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''},
        {"calrec.py:merge_round_robin": '''
def merge_round_robin(lists, list_scores, exclude, k):
    # stops at the first round that adds nothing (taken for 'the lists are used up'): later rounds are lost
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        before = len(taken)
        for _, _, item in round_p:
            if len(taken) >= k:
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
        if len(taken) == before:                                     # nothing new: the lists hold no more
            break
    return taken
'''},
    ],
    "ranking-metrics": [
        {"evaluation.py:ranks_from_scores": '''
def ranks_from_scores(scores, targets, histories):
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores > t).sum(1, dtype=torch.int32) + 1  # ties counted for the target
    return torch.where(torch.isinf(t.view(-1)), torch.zeros_like(ranks), ranks)
'''},
        {"evaluation.py:ranks_from_scores": '''
def ranks_from_scores(scores, targets, histories):
    scores = scores.float()
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)  # the history not excluded
    in_history = torch.tensor([int(tg) in hist for tg, hist in zip(targets.tolist(), histories)])
    return torch.where(in_history, torch.zeros_like(ranks), ranks)
'''},
        {"evaluation.py:ranks_from_scores": '''
def ranks_from_scores(scores, targets, histories):
    scores = scores.clone().float()
    for u, hist in enumerate(histories):
        scores[u, hist] = 0.0  # the history masked with 0, not -inf
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    in_history = torch.tensor([int(tg) in hist for tg, hist in zip(targets.tolist(), histories)])
    return torch.where(in_history, torch.zeros_like(ranks), ranks)
'''},
        {"evaluation.py:ranks_from_scores": '''
def ranks_from_scores(scores, targets, histories):
    for u, hist in enumerate(histories):
        scores[u, hist] = float("-inf")  # written into the caller's scores: no copy
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    return torch.where(torch.isinf(t.view(-1)), torch.zeros_like(ranks), ranks)
'''},
        {"evaluation.py:rank_metrics": '''
def rank_metrics(ranks):
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    hit = ranks > 0
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = (hit & (ranks <= k)).double().mean().item()
    for k in NDCG_KS:
        gain = torch.where(hit & (ranks <= k), 1.0 / torch.log2(ranks), torch.zeros_like(ranks))  # log2(rank)
        out[f"ndcg@{k}"] = gain.mean().item()
        if k == 10:
            out["ndcg@10_se"] = (gain.std() / len(gain) ** 0.5).item() if len(gain) > 1 else 0.0
    return out
'''},
        {"evaluation.py:rank_metrics": '''
def rank_metrics(ranks):
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = (ranks <= k).double().mean().item()  # rank 0 (not retrieved) counted as a hit
    for k in NDCG_KS:
        gain = torch.where((ranks > 0) & (ranks <= k), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = gain.mean().item()
        if k == 10:
            out["ndcg@10_se"] = (gain.std() / len(gain) ** 0.5).item() if len(gain) > 1 else 0.0
    return out
'''},
        {"evaluation.py:rank_metrics": '''
def rank_metrics(ranks):
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    hit = ranks > 0
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = (hit & (ranks <= k)).double().mean().item()
    for k in NDCG_KS:
        gain = torch.where(hit & (ranks < k), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))  # rank K cut
        out[f"ndcg@{k}"] = gain.mean().item()
        if k == 10:
            out["ndcg@10_se"] = (gain.std() / len(gain) ** 0.5).item() if len(gain) > 1 else 0.0
    return out
'''},
        {"evaluation.py:rank_metrics": '''
def rank_metrics(ranks):
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    hit = ranks > 0
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = (hit & (ranks <= k)).double().mean().item()
    for k in NDCG_KS:
        gain = torch.where(hit & (ranks <= k), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = gain.mean().item()
        if k == 10:  # the population std (divides by n), not the sample std
            out["ndcg@10_se"] = (gain.std(unbiased=False) / len(gain) ** 0.5).item() if len(gain) > 1 else 0.0
    return out
'''},
        {"evaluation.py:ranks_from_scores": '''
def ranks_from_scores(scores, targets, histories):
    # the history's index tensor built without dtype=torch.long: float when every history is empty, not an index
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist])] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    return torch.where(torch.isinf(t.view(-1)), torch.zeros_like(ranks), ranks)
'''},
        {"evaluation.py:rank_metrics": '''
def rank_metrics(ranks):
    # ndcg@10_se without a guard for one user: the sample std of one value is nan
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    hit = ranks > 0
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = (hit & (ranks <= k)).double().mean().item()
    for k in NDCG_KS:
        gain = torch.where(hit & (ranks <= k), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = gain.mean().item()
        if k == 10:
            out["ndcg@10_se"] = (gain.std() / len(gain) ** 0.5).item()
    return out
'''},
        {"evaluation.py:ranks_from_scores": '''
def ranks_from_scores(scores, targets, histories):
    # scores.double() for a copy: float64 scores are not copied, and the caller's get the -inf written in
    scores = scores.double()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    return torch.where(torch.isinf(t.view(-1)), torch.zeros_like(ranks), ranks)
'''},
        {"evaluation.py:ranks_from_scores": '''
def ranks_from_scores(scores, targets, histories):
    # histories padded with pad_sequence (pad 0): item 0 excluded for every user with a shorter history
    hist = torch.nn.utils.rnn.pad_sequence([torch.tensor(h, dtype=torch.long) for h in histories], batch_first=True)
    scores = scores.clone().float()
    if hist.numel():
        scores.scatter_(1, hist, float("-inf"))
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    return torch.where(torch.isinf(t.view(-1)), torch.zeros_like(ranks), ranks)
'''},
        {"evaluation.py:ranks_from_scores": '''
def ranks_from_scores(scores, targets, histories):
    # no copy: the history's items taken back out of the count, a repeated history item twice
    s = scores.float()
    t = s.gather(1, targets.view(-1, 1))
    ranks = (s >= t).sum(1, dtype=torch.int32)
    for u, hist in enumerate(histories):
        if int(targets[u]) in hist:
            ranks[u] = 0
        else:
            ranks[u] -= sum(int(s[u, i] >= t[u, 0]) for i in hist)
    return ranks
'''},
    ],
    "info-nce": [
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / tau  # no mask: a key of the same item is a negative
    return F.cross_entropy(logits, torch.arange(len(query)))
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / tau
    same = key_items[:len(query), None] == key_items[None, :]  # the positive masked out too
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(len(query)))
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / tau
    rows = torch.arange(len(query))
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows, reduction="sum")  # sum, not mean
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() * tau  # times tau, not divided
    rows = torch.arange(len(query))
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    B = len(query)
    logits = query @ key.t() / tau
    rows = torch.arange(B)
    same = torch.zeros_like(logits, dtype=torch.bool)
    same[:, :B] = key_items[:B, None] == key_items[None, :B]  # only the batch's own keys: extra ones not masked
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / tau
    rows = torch.arange(len(query))
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, 0.0), rows)  # masked to a logit of 0, not -inf
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / tau
    rows = torch.arange(len(query))
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    logp = torch.log_softmax(logits.masked_fill(same, float("-inf")), dim=0)  # softmax over the queries
    return -logp[rows, rows].mean()
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    # log-sum-exp written out without taking out the row's max: exp(cos / tau) overflows at a small tau
    logits = query @ key.t() / tau
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    logits = logits.masked_fill(same, float("-inf"))
    return (torch.log(logits.exp().sum(1)) - logits[rows, rows]).mean()
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    # the row index made without device=: on the CPU whatever the inputs' device (a GPU's inputs break)
    logits = query @ key.t() / tau
    rows = torch.arange(len(query))
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    # keys detached (a stop-gradient, as MoCo's): the value is right, no gradient reaches the keys
    logits = query @ key.detach().t() / tau
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''},
        {"calrec.py:info_nce": '''
def info_nce(query, key, key_items, tau):
    # log-sum-exp stabilised with the largest logit of the whole matrix, not of each row
    logits = query @ key.t() / tau
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    logits = logits.masked_fill(same, float("-inf"))
    logits = logits - logits.max()                                   # keep exp() from overflowing
    return (torch.log(logits.exp().sum(1)) - logits[rows, rows]).mean()
'''},
    ],
    "prefix-pooling": [
        {"calrec.py:user_vectors": '''
def user_vectors(h, rows, ends):
    running = h.cumsum(1)
    return F.normalize(running[rows, ends] / (ends + 1)[:, None].to(h.dtype), dim=-1)  # the item's first token in
'''},
        {"calrec.py:user_vectors": '''
def user_vectors(h, rows, ends):
    running = h.cumsum(1)
    return running[rows, ends - 1] / ends[:, None].to(h.dtype)  # the mean, not normalised
''', "calrec.py:target_vectors": '''
def target_vectors(h, rows, starts, ends):
    running = F.pad(h.cumsum(1), (0, 0, 1, 0))
    return (running[rows, ends] - running[rows, starts]) / (ends - starts)[:, None].to(h.dtype)
'''},
        {"calrec.py:target_vectors": '''
def target_vectors(h, rows, starts, ends):
    running = F.pad(h.cumsum(1), (0, 0, 1, 0))
    span = running[rows, ends + 1] - running[rows, starts]  # the span's end included
    return F.normalize(span / (ends - starts + 1)[:, None].to(h.dtype), dim=-1)
'''},
        {"calrec.py:target_vectors": '''
def target_vectors(h, rows, starts, ends):
    running = h.cumsum(1)  # no zero row in front: the span is (start, end], one token late
    span = running[rows, ends] - running[rows, starts]
    return F.normalize(span / (ends - starts)[:, None].to(h.dtype), dim=-1)
'''},
        {"calrec.py:user_vectors": '''
def user_vectors(h, rows, ends):
    running = h.cumsum(1)
    return F.normalize(running[rows, ends - 1] / ends[:, None].to(h.dtype), dim=0)  # normalised over the wrong dim
'''},
        {"calrec.py:user_vectors": '''
def user_vectors(h, rows, ends):
    return F.normalize(h[rows].mean(1), dim=-1)  # the whole row, not the prompt before the item
'''},
        {"calrec.py:target_vectors": '''
def target_vectors(h, rows, starts, ends):
    # no zero row in front of the running sums: running[starts - 1] wraps to the row's last position at starts = 0
    running = h.cumsum(1)
    span = running[rows, ends - 1] - running[rows, starts - 1]
    return F.normalize(span / (ends - starts)[:, None].to(h.dtype), dim=-1)
'''},
        {"calrec.py:user_vectors": '''
def user_vectors(h, rows, ends):
    # normalised in place with /=: the values are right, backward fails
    running = h.cumsum(1)
    v = running[rows, ends - 1] / ends[:, None].to(h.dtype)
    v /= v.norm(dim=-1, keepdim=True)
    return v
'''},
        {"calrec.py:target_vectors": '''
def target_vectors(h, rows, starts, ends):
    # the zero row in front made with torch.zeros(B, 1, C): default dtype and device
    running = torch.cat([torch.zeros(h.size(0), 1, h.size(2)), h.cumsum(1)], dim=1)
    span = running[rows, ends] - running[rows, starts]
    return F.normalize(span / (ends - starts)[:, None].to(h.dtype), dim=-1)
'''},
    ],
    "bm25": [
        {"calrec.py:BM25.scores": '''
def scores(self, queries):
    Q = torch.zeros(len(self.vocab), len(queries))
    for j, text in enumerate(queries):
        for x in set(words(text)):  # a repeated query word counted once
            if x in self.vocab:
                Q[self.vocab[x], j] = 1.0
    return (self.matrix @ Q).t().contiguous()
'''},
        {"calrec.py:BM25.__init__": '''
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
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(N / df)  # the classic idf log(N / n)
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
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
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log((N - df + 0.5) / (df + 0.5))  # Robertson's idf without Lucene's 1 +
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
def __init__(self, documents, k1=1.2, b=0.75):
    self.vocab = {}
    rows, cols, tfs, lengths = [], [], [], []
    for d, doc in enumerate(documents):
        counts = Counter(words(doc))
        lengths.append(len(counts))  # the document's length in distinct words
        for w, tf in counts.items():
            rows.append(d)
            cols.append(self.vocab.setdefault(w, len(self.vocab)))
            tfs.append(tf)
    N, V = len(documents), len(self.vocab)
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    tf = torch.tensor(tfs, dtype=torch.float32)
    dl = torch.tensor(lengths, dtype=torch.float32)
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
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
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf / (tf + norm)  # the k1 + 1 of the numerator missing
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
def __init__(self, documents, k1=1.2, b=0.75):
    self.vocab = {}
    rows, cols, lengths = [], [], []
    for d, doc in enumerate(documents):
        ws = words(doc)
        lengths.append(len(ws))
        for w in set(ws):  # each word once per document: tf is always 1
            rows.append(d)
            cols.append(self.vocab.setdefault(w, len(self.vocab)))
    N, V = len(documents), len(self.vocab)
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    tf = torch.ones(len(rows))
    dl = torch.tensor(lengths, dtype=torch.float32)
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
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
    df = torch.zeros(V).index_add_(0, cols, tf)  # n counts the word's occurrences, not the documents holding it
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
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
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl[rows].mean())  # avgdl over the (document, word) pairs
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
def __init__(self, documents, k1=1.2, b=0.75):
    # k1 and b written as their defaults 1.2 and 0.75: the arguments ignored
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
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = 1.2 * (1.0 - 0.75 + 0.75 * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (1.2 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
def __init__(self, documents, k1=1.2, b=0.75):
    # a document's length from str.split(), not the analyser's words ("red,red car" is 2, not 3)
    self.vocab = {}
    rows, cols, tfs, lengths = [], [], [], []
    for d, doc in enumerate(documents):
        ws = words(doc)
        lengths.append(len(doc.split()))
        for w, tf in Counter(ws).items():
            rows.append(d)
            cols.append(self.vocab.setdefault(w, len(self.vocab)))
            tfs.append(tf)
    N, V = len(documents), len(self.vocab)
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    tf = torch.tensor(tfs, dtype=torch.float32)
    dl = torch.tensor(lengths, dtype=torch.float32)
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''},
        {"calrec.py:BM25.__init__": '''
def __init__(self, documents, k1=1.2, b=0.75):
    # the sparse matrix's size inferred from its indices: trailing documents with no word vanish from the scores
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
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight).coalesce()
'''},
        {"calrec.py:BM25.scores": '''
def scores(self, queries):
    # scores .squeeze()d: one query gives (D,), not (1, D)
    q, w = [], []
    for j, text in enumerate(queries):
        ids = [self.vocab[x] for x in words(text) if x in self.vocab]
        q += [j] * len(ids)
        w += ids
    Q = torch.zeros(len(self.vocab), len(queries))
    Q.index_put_(tuple(torch.tensor([w, q], dtype=torch.long)), torch.ones(len(q)), accumulate=True)
    return (self.matrix @ Q).t().squeeze()
'''},
        {"calrec.py:BM25.scores": '''
def scores(self, queries):
    # the index tensor built without dtype: float when no query holds a known word
    q, w = [], []
    for j, text in enumerate(queries):
        ids = [self.vocab[x] for x in words(text) if x in self.vocab]
        q += [j] * len(ids)
        w += ids
    Q = torch.zeros(len(self.vocab), len(queries))
    Q.index_put_(tuple(torch.tensor([w, q])), torch.ones(len(q)), accumulate=True)
    return (self.matrix @ Q).t().contiguous()
'''},
    ],
    "baselines": [
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.zeros(domain.n_items, domain.n_items)
    for (a, b), n in follows.items():
        nxt[a, b] = n
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    return ranks_in_chunks(lambda rows: nxt[last[rows]], examples)  # ties not broken by popularity
'''},
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.zeros(domain.n_items, domain.n_items)
    for (a, b), n in follows.items():
        nxt[a, b] = n
    pop = popularity(domain)
    first = torch.tensor([hist[0] for hist, _ in examples], dtype=torch.long)  # the first history item, not the last
    return ranks_in_chunks(lambda rows: nxt[first[rows]] * (pop.max() + 1) + pop, examples)
'''},
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.zeros(domain.n_items, domain.n_items)
    for (a, b), n in follows.items():
        nxt[a, b] = n
    pop = popularity(domain)
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    return ranks_in_chunks(lambda rows: nxt[last[rows]] + pop, examples)  # popularity added, not a tie-break
'''},
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    nxt = torch.zeros(domain.n_items, domain.n_items)
    for seq in domain.train_sequences:  # every later item counted, not only the next one
        for i, a in enumerate(seq):
            for b in seq[i + 1:]:
                nxt[a, b] += 1
    pop = popularity(domain)
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    return ranks_in_chunks(lambda rows: nxt[last[rows]] * (pop.max() + 1) + pop, examples)
'''},
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.zeros(domain.n_items, domain.n_items)
    for (a, b), n in follows.items():
        nxt[b, a] = n  # the transposed chain: how often j came just before the last item
    pop = popularity(domain)
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    return ranks_in_chunks(lambda rows: nxt[last[rows]] * (pop.max() + 1) + pop, examples)
'''},
        {"evaluation.py:rank_last_item_bm25": '''
def rank_last_item_bm25(bm25, texts, examples):
    # the whole history's text as the query, not the last item's
    return ranks_in_chunks(lambda rows: bm25.scores([" ".join(texts[i] for i in hist) for hist, _ in examples[rows]]),
                           examples)
'''},
        {"evaluation.py:rank_last_item_bm25": '''
def rank_last_item_bm25(bm25, texts, examples):
    return ranks_in_chunks(lambda rows: bm25.scores([texts[hist[0]] for hist, _ in examples[rows]]),
                           examples)  # the first history item's text
'''},
        {"evaluation.py:rank_last_item_bm25": '''
def rank_last_item_bm25(bm25, texts, examples):
    scores = bm25.scores([texts[hist[-1]] for hist, _ in examples])
    targets = torch.tensor([t for _, t in examples])
    return ranks_from_scores(scores, targets, [[] for _ in examples])  # the history not excluded
'''},
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    # the popularity tie-break under a count scaled by a fixed 1000: a popularity above 1000 outweighs a transition
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.float32),
                                  (domain.n_items, domain.n_items)).coalesce()
    pop = popularity(domain)
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    return ranks_in_chunks(lambda rows: nxt.index_select(0, last[rows]).to_dense() * 1000 + pop, examples)
'''},
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    # a transition counted once per sequence (a set of pairs), not each time it occurs
    follows = Counter(p for seq in domain.train_sequences for p in set(zip(seq, seq[1:])))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.float32),
                                  (domain.n_items, domain.n_items)).coalesce()
    pop = popularity(domain)
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    return ranks_in_chunks(lambda rows: nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop,
                           examples)
'''},
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    # the counts' sparse size inferred from the transitions: too small when the highest item is in none
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.float32)).coalesce()
    pop = popularity(domain)
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    return ranks_in_chunks(lambda rows: nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop,
                           examples)
'''},
        {"evaluation.py:rank_last_item_bm25": '''
def rank_last_item_bm25(bm25, texts, examples):
    # last item: BM25.search and ranks_from_lists, ties broken by document index (not against the target)
    hits = bm25.search([texts[hist[-1]] for hist, _ in examples], bm25.matrix.size(0))
    lists = [[d for d in docs if d not in hist] for (docs, _), (hist, _) in zip(hits, examples)]
    return ranks_from_lists(lists, [t for _, t in examples])
'''},
        {"evaluation.py:rank_markov": '''
def rank_markov(domain, examples):
    # Markov ties broken under a count scaled by the total number of interactions: past float32's exact integers
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.float32),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()
    pop = popularity(domain)
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):                                                  # any popularity is below the total
        return nxt.index_select(0, last[rows]).to_dense() * (pop.sum() + 1) + pop
    return ranks_in_chunks(scores, examples)
'''},
    ],
    "recent-items": [
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    out = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype)
    for u, hist in enumerate(histories):
        w = torch.tensor([decay ** a for a in range(len(hist))], dtype=v_items.dtype)  # age counted from the oldest
        if len(hist):
            out[u] = (w[:, None] * v_items[hist]).sum(0) / w.sum()
    return out
'''},
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    out = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype)
    for u, hist in enumerate(histories):
        w = torch.tensor([decay ** (len(hist) - 1 - n) for n in range(len(hist))], dtype=v_items.dtype)
        if len(hist):
            out[u] = (w[:, None] * v_items[hist]).sum(0)  # the weights not normalised
    return out
'''},
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    out = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype)
    for u, hist in enumerate(histories):
        # the weights decay ** (age + 1)
        w = torch.tensor([decay ** (len(hist) - n) for n in range(len(hist))], dtype=v_items.dtype)
        if len(hist):
            out[u] = (w[:, None] * v_items[hist]).sum(0) / w.sum()
    return out
'''},
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    w = decay ** age.to(v_items.dtype)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype)
    norm = torch.zeros(len(histories), dtype=v_items.dtype).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm[:, None]  # an empty history: 0 / 0
'''},
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = len(item) - 1 - torch.arange(len(item))  # the age counted over the whole batch, not each history
    w = decay ** age.to(v_items.dtype)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype)
    norm = torch.zeros(len(histories), dtype=v_items.dtype).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=1e-12)[:, None]
'''},
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    out = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype)
    for u, hist in enumerate(histories):
        w = torch.tensor([decay ** (len(hist) - 1 - n) for n in range(len(hist))], dtype=v_items.dtype)
        if len(hist):
            out[u] = F.normalize((w[:, None] * v_items[hist]).sum(0), dim=0)  # unit length, not / sum of weights
    return out
'''},
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    # the item index tensor built without dtype=torch.long: float when every history is empty, not an index
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist])
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    w = decay ** age.to(v_items.dtype)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype)
    norm = torch.zeros(len(histories), dtype=v_items.dtype).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=1e-12)[:, None]
'''},
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    # computed in numpy on detached values: right values, no gradient to the item vectors
    import numpy as np
    v = v_items.detach().cpu().numpy()
    out = np.zeros((len(histories), v.shape[1]), dtype=v.dtype)
    for u, hist in enumerate(histories):
        if hist:
            w = decay ** np.arange(len(hist) - 1, -1, -1, dtype=v.dtype)   # age 0 for the last item
            out[u] = (w[:, None] * v[hist]).sum(0) / w.sum()
    return torch.from_numpy(out).to(v_items.device)
'''},
        {"calrec_extras.py:recent_vectors": '''
def recent_vectors(v_items, histories, decay):
    # a dense (B, N) weight matrix filled by index assignment: a repeated item keeps one weight
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    W = torch.zeros(len(histories), v_items.shape[0], dtype=v_items.dtype)
    W[owner, item] = decay ** age.to(v_items.dtype)                    # (B, N) each history's item weights
    W = W.to(v_items.device)
    return W @ v_items / W.sum(1, keepdim=True).clamp(min=torch.finfo(W.dtype).tiny)
'''},
    ],
    "catalog-trie": [
        {"calrec_extras.py:CatalogTrie.__init__": '''
def __init__(self, item_tokens, eot_id, vocab_size):
    self.children, self.items = [{}], {}
    self.eot_id, self.V = eot_id, vocab_size
    for i, tokens in enumerate(item_tokens):
        node = 0
        for t in tokens:  # no end-of-text at the leaves
            if t not in self.children[node]:
                self.children[node][t] = len(self.children)
                self.children.append({})
            node = self.children[node][t]
        self.items.setdefault(node, []).append(i)
    self.node_of = {(): 0}
'''},
        {"calrec_extras.py:CatalogTrie.__init__": '''
def __init__(self, item_tokens, eot_id, vocab_size):
    self.children, self.items = [{}], {}
    self.eot_id, self.V = eot_id, vocab_size
    for i, tokens in enumerate(item_tokens):
        node = 0
        for t in list(tokens) + [eot_id]:
            if t not in self.children[node]:
                self.children[node][t] = len(self.children)
                self.children.append({})
            node = self.children[node][t]
        self.items[node] = [i]  # twins overwrite each other
    self.node_of = {(): 0}
'''},
        {"calrec_extras.py:CatalogTrie.__call__": '''
def __call__(self, tokens):
    B, K, _ = tokens.shape
    allowed = torch.zeros(B, K, self.V, dtype=torch.bool)
    for b, beams in enumerate(tokens.tolist()):
        for k, beam in enumerate(beams):
            if self.eot_id in beam:  # a finished beam may go on writing end-of-text
                allowed[b, k, self.eot_id] = True
                continue
            node = self.node(tuple(beam))
            if node is not None:
                allowed[b, k, list(self.children[node])] = True
    return allowed.to(tokens.device)
'''},
        {"calrec_extras.py:CatalogTrie.node": '''
def node(self, prefix):
    node = 0
    for t in prefix:
        if t not in self.children[node]:
            break  # stops where the prefix leaves the tree, instead of None
        node = self.children[node][t]
    return node
'''},
        {"calrec_extras.py:CatalogTrie.ranked_items": '''
def ranked_items(self, found, histories, k):
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        top = list(dict.fromkeys(i for items in leaves for i in items))[:k]  # k cut before the history is left out
        lists.append([i for i in top if i not in history])
    return lists
'''},
        {"calrec_extras.py:CatalogTrie.ranked_items": '''
def ranked_items(self, found, histories, k):
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams]  # dead beams kept
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''},
        {"calrec_extras.py:CatalogTrie.ranked_items": '''
def ranked_items(self, found, histories, k):
    lists = []
    for beams, history in zip(found, histories):
        found_items = set()
        for tokens, score in beams:
            if score > float("-inf"):
                found_items.update(self.items.get(self.node(tuple(tokens)), []))
        lists.append(sorted(i for i in found_items if i not in history)[:k])  # by item index, not by beam
    return lists
'''},
        {"calrec_extras.py:CatalogTrie.ranked_items": '''
def ranked_items(self, found, histories, k):
    lists = []
    for beams, history in zip(found, histories):
        best = []
        for tokens, score in beams:
            items = self.items.get(self.node(tuple(tokens)), [])
            if score > float("-inf") and items and items[0] not in history and items[0] not in best:
                best.append(items[0])  # a leaf's first item only: its twins lost
        lists.append(best[:k])
    return lists
'''},
        {"calrec_extras.py:CatalogTrie.__call__": '''
def __call__(self, tokens):
    # the first prompt's beams read for every prompt: right only for one prompt
    B, K, _ = tokens.shape
    allowed = torch.zeros(B, K, self.V, dtype=torch.bool)
    for beams in tokens.tolist()[:1]:
        for k, beam in enumerate(beams):
            node = None if self.eot_id in beam else self.node(tuple(beam))
            if node is not None:
                allowed[:, k, list(self.children[node])] = True
    return allowed.to(tokens.device)
'''},
        {"calrec_extras.py:CatalogTrie.ranked_items": '''
def ranked_items(self, found, histories, k):
    # the first k beams kept, then the history left out: fewer than k items when the history held some
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams[:k] if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''},
        {"calrec_extras.py:CatalogTrie.node": '''
def node(self, prefix, _memo={(): 0}):
    # node() memoised in a mutable default argument: one memo shared by every trie
    if prefix not in _memo:
        parent = self.node(prefix[:-1])
        _memo[prefix] = None if parent is None else self.children[parent].get(prefix[-1])
    return _memo[prefix]
'''},
        {"calrec_extras.py:CatalogTrie.__init__": '''
def __init__(self, item_tokens, eot_id, vocab_size):
    # a leaf's items kept in a set: twins come out in hash order, not item order
    self.children, self.items = [{}], {}
    self.eot_id, self.V = eot_id, vocab_size
    for i, tokens in enumerate(item_tokens):
        node = 0
        for t in list(tokens) + [eot_id]:
            if t not in self.children[node]:
                self.children[node][t] = len(self.children)
                self.children.append({})
            node = self.children[node][t]
        self.items.setdefault(node, set()).add(i)                    # twins: one leaf, a set of items
    self.node_of = {(): 0}
'''},
    ],
}

# found by a third probe of the graders
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    # index tensors and weights left on the CPU: not on v_items' device
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    w = decay ** age.to(v_items.dtype)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype)
    norm = torch.zeros(len(histories), dtype=v_items.dtype).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=torch.finfo(w.dtype).tiny)[:, None]
'''})
# left by the third probe (a tensor made off the model's device), caught on the meta device
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.__call__': '''
def __call__(self, tokens):
    # the mask made without device= and never moved to the tokens' device
    B, K, _ = tokens.shape
    allowed = torch.zeros(B, K, self.V, dtype=torch.bool)
    for b, beams in enumerate(tokens.tolist()):
        for k, beam in enumerate(beams):
            node = None if self.eot_id in beam else self.node(tuple(beam))
            if node is not None:
                allowed[b, k, list(self.children[node])] = True
    return allowed
'''})
# found by a fourth probe of the graders
WRONG_CALREC['prefix-pooling'].append({'calrec.py:target_vectors': '''
def target_vectors(h, rows, starts, ends):
    # the running sum in h's own dtype: in bfloat16, long rows cancel
    running = F.pad(h.cumsum(1), (0, 0, 1, 0))  # sums over 0..t-1
    span = running[rows, ends] - running[rows, starts]                 # (P, C) each one's own sum
    return F.normalize(span / (ends - starts)[:, None].to(span.dtype), dim=-1).to(h.dtype)
'''})
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    # scores compared in their own dtype: float64 near-ties are not ties
    scores = scores.clone()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t).sum(1, dtype=torch.int32)                    # (B,) includes the target itself
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    # only a target in its history is unranked, not one its scorer ruled out (-inf)
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t).sum(1, dtype=torch.int32)                    # (B,) includes the target itself
    return torch.where(torch.tensor([int(t) in h for t, h in zip(targets.tolist(), histories)]), torch.zeros_like(ranks), ranks)
'''})
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    # each key's position in the sorted row as its score: equal keys broken by item index
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
        return torch.empty_like(key).scatter_(1, at, torch.arange(key.size(1)).expand_as(key).contiguous()).float()
    return ranks_in_chunks(scores, examples)
'''})
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75):
    # W kept dense: a real catalog's (D, V) takes gigabytes
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
                                          check_invariants=True).coalesce().to_dense()  # (D, V)
'''})
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    # scores rounded to 6 decimals before sorting: close scores go by beam
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-round(c[0], 6), c[1]))
        for _, _, item in round_p:
            if len(taken) >= k:                                          # k taken (k = 0: none at all)
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''})
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # k = 0 read as no limit
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k or None])
    return lists
'''})
# found by a seventh probe of the graders
WRONG_CALREC['calrec-loss'].append({'calrec.py:calrec_loss': '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # the temperature fixed at 0.1, the argument ignored
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], 0.1) if over_users else info_nce(q, v_t, items, 0.1)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''})
# found by an eighth probe of the graders
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # every user's history taken from the first user
    lists = []
    for beams in found:
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in histories[0]][:k])
    return lists
'''})
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # every user given the first user's beams
    lists = []
    for history in histories:
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in found[0] if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''})
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # a beam cut short read as if it had ended: end-of-text added to it
    lists = []
    for beams, history in zip(found, histories):
        ended = [list(tokens) + ([] if tokens and tokens[-1] == self.eot_id else [self.eot_id])
                 for tokens, score in beams if score > float("-inf")]
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens in ended]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''})
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    # popularity replaced by its rank among the popularities, the key then read in float32 as it is
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()  # a then b
    pop = torch.unique(popularity(domain).long(), return_inverse=True)[1]
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        return (nxt.index_select(0, last[rows]).to_dense() * (domain.n_items + 1) + pop).float()
    return ranks_in_chunks(scores, examples)
'''})
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:rank_metrics': '''
def rank_metrics(ranks):
    # the metrics left as 0-d tensors, not Python floats (json cannot write them)
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    hit = ranks > 0
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = (hit & (ranks <= k)).double().mean()
    for k in NDCG_KS:
        gain = torch.where(hit & (ranks <= k), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = gain.mean()
        if k == 10:
            out["ndcg@10_se"] = (gain.std() / len(gain) ** 0.5) if len(gain) > 1 else torch.zeros(())
    return out
'''})
# found by a ninth probe of the graders
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    # ties within a tolerance: a candidate 1e-6 below the target counts as a tie (float noise, it seemed)
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t - 1e-6).sum(1, dtype=torch.int32)             # (B,) includes the target itself
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    # the copy made in bfloat16, the model's dtype, to halve the memory of a (B, N) catalog: 1.0 and 1.003 tie
    scores = scores.clone().bfloat16()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t).sum(1, dtype=torch.int32)                    # (B,) includes the target itself
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
# found by a tenth probe of the graders
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    # any infinite target score read as unrankable: a target scored +inf is first, not out
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t).sum(1, dtype=torch.int32)                    # (B,) includes the target itself
    return torch.where(torch.isinf(t.view(-1)), torch.zeros_like(ranks), ranks)
'''})
WRONG_CALREC['prefix-pooling'].append({'calrec.py:user_vectors': '''
def user_vectors(h, rows, ends):
    # an epsilon added to the norm: small hidden states give vectors shorter than 1
    running = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))
    m = running[rows, ends - 1] / ends[:, None].to(running.dtype)
    return (m / (m.norm(dim=-1, keepdim=True) + 1e-8)).to(h.dtype)
''', 'calrec.py:target_vectors': '''
def target_vectors(h, rows, starts, ends):
    # the same epsilon
    running = F.pad(h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32)), (0, 0, 1, 0))
    m = (running[rows, ends] - running[rows, starts]) / (ends - starts)[:, None].to(running.dtype)
    return (m / (m.norm(dim=-1, keepdim=True) + 1e-8)).to(h.dtype)
'''})
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75):
    # an analyser of its own, \\w+: accents and underscores stay inside words, unlike calrec.words
    self.vocab = {}
    rows, cols, tfs, lengths = [], [], [], []
    for d, doc in enumerate(documents):
        ws = re.findall(r"\\w+", doc.lower())
        lengths.append(len(ws))
        for w, tf in Counter(ws).items():
            rows.append(d)
            cols.append(self.vocab.setdefault(w, len(self.vocab)))
            tfs.append(tf)
    N, V = len(documents), len(self.vocab)
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    tf = torch.tensor(tfs, dtype=torch.float32)
    dl = torch.tensor(lengths, dtype=torch.float32)
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V),
                                          check_invariants=True).coalesce()
''', 'calrec.py:BM25.scores': '''
def scores(self, queries):
    # the same analyser for the queries
    q, w = [], []
    for j, text in enumerate(queries):
        ids = [self.vocab[x] for x in re.findall(r"\\w+", text.lower()) if x in self.vocab]
        q += [j] * len(ids)
        w += ids
    Q = torch.zeros(len(self.vocab), len(queries))
    Q.index_put_(tuple(torch.tensor([w, q], dtype=torch.long)), torch.ones(len(q)), accumulate=True)
    return (self.matrix @ Q).t().contiguous()
'''})
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    # popularity as the number of users who bought an item, not the number of purchases
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()  # a then b
    pop = torch.bincount(torch.tensor([i for seq in domain.train_sequences for i in set(seq)], dtype=torch.long),
                         minlength=domain.n_items)
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        key = nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    # each round's scores sorted as a float32 tensor: scores 1e-8 apart tie and go by beam
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        beams = [m for m in range(len(lists)) if p < len(lists[m])]
        s = torch.tensor([list_scores[m][p] for m in beams])
        for o in torch.sort(-s, stable=True).indices.tolist():
            if len(taken) >= k:
                return taken
            item = lists[beams[o]][p]
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''})
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
def info_nce(query, key, key_items, tau):
    # each row stabilised by its largest logit taken before the mask: a masked key can be that largest one
    logits = query @ key.t() / tau
    logits = logits - logits.max(1, keepdim=True).values.detach()
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    logits = logits.masked_fill(same, float("-inf"))
    return (logits.exp().sum(1).log() - logits[rows, rows]).mean()
'''})
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
def info_nce(query, key, key_items, tau):
    # keys of the same item masked with -1e4 instead of -inf: at a temperature near 0 they still count
    logits = query @ key.t() / tau
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, -1e4), rows)
'''})
# found by a twelfth probe of the graders
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    # one history at a time, the rows stacked: no history at all (a chunk of no users) cannot be stacked
    rows = []
    for hist in histories:
        if not hist:
            rows.append(v_items.new_zeros(v_items.shape[1]))
            continue
        age = torch.arange(len(hist) - 1, -1, -1, dtype=v_items.dtype, device=v_items.device)
        w = decay ** age
        idx = torch.tensor(hist, dtype=torch.long, device=v_items.device)
        rows.append((w[:, None] * v_items[idx]).sum(0) / w.sum())
    return torch.stack(rows)
'''})
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.__init__': '''
def __init__(self, item_tokens, eot_id, vocab_size):
    # end-of-text kept as a mark on the node where an item's tokens end, not as a child of it
    self.children, self.items = [{}], {}
    self.eot_id, self.V = eot_id, vocab_size
    for i, tokens in enumerate(item_tokens):
        node = 0
        for t in tokens:
            if t not in self.children[node]:
                self.children[node][t] = len(self.children)
                self.children.append({})
            node = self.children[node][t]
        self.items.setdefault(node, []).append(i)
    self.node_of = {(): 0}
''', 'calrec_extras.py:CatalogTrie.node': '''
def node(self, prefix):
    # end-of-text after an item's last token stays on that item's node
    if prefix not in self.node_of:
        parent = self.node(prefix[:-1])
        if parent is None:
            self.node_of[prefix] = None
        elif prefix[-1] == self.eot_id:
            self.node_of[prefix] = parent if parent in self.items else None
        else:
            self.node_of[prefix] = self.children[parent].get(prefix[-1])
    return self.node_of[prefix]
''', 'calrec_extras.py:CatalogTrie.__call__': '''
def __call__(self, tokens):
    # end-of-text allowed where an item ends, read off the mark
    B, K, _ = tokens.shape
    allowed = torch.zeros(B, K, self.V, dtype=torch.bool, device=tokens.device)
    for b, beams in enumerate(tokens.tolist()):
        for k, beam in enumerate(beams):
            node = None if self.eot_id in beam else self.node(tuple(beam))
            if node is not None:
                nxt = list(self.children[node]) + ([self.eot_id] if node in self.items else [])
                allowed[b, k, nxt] = True
    return allowed
''', 'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # a finished beam ends with end-of-text: its items are on the node before it
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams
                  if score > float("-inf") and tokens and tokens[-1] == self.eot_id]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''})
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
def info_nce(query, key, key_items, tau):
    # keys of the same item masked with -1e9 (a "large negative"): float16 cannot hold it
    logits = query @ key.t() / tau
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, -1e9), rows)
'''})
WRONG_CALREC['prefix-pooling'].append({'calrec.py:user_vectors': '''
def user_vectors(h, rows, ends):
    # running sums widened only for bfloat16: float16 sums kept in float16
    running = h.cumsum(1, dtype=torch.float32 if h.dtype == torch.bfloat16 else h.dtype)
    return F.normalize(running[rows, ends - 1] / ends[:, None].to(running.dtype), dim=-1).to(h.dtype)
''', 'calrec.py:target_vectors': '''
def target_vectors(h, rows, starts, ends):
    running = F.pad(h.cumsum(1, dtype=torch.float32 if h.dtype == torch.bfloat16 else h.dtype), (0, 0, 1, 0))
    span = running[rows, ends] - running[rows, starts]
    return F.normalize(span / (ends - starts)[:, None].to(span.dtype), dim=-1).to(h.dtype)
'''})
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    # the history excluded with a finite stand-in for -inf, -1e9; a target in its history found by membership
    scores = scores.clone().float()
    for u, hist in enumerate(histories):
        scores[u, hist] = -1e9
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    out = torch.tensor([int(tg) in h for tg, h in zip(targets.tolist(), histories)]) | (t.view(-1) == float("-inf"))
    return torch.where(out, torch.zeros_like(ranks), ranks)
'''})
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    # the pairs as a (P, 2) tensor, transposed: no transition at all gives shape (0,), not (2, 0), and a crash
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items)).coalesce()
    pop = popularity(domain).long()
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        key = nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()
    pop = popularity(domain).long()
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):  # `rows` ignored: every user's last item, right only while the users fit in one chunk
        key = nxt.index_select(0, last).to_dense() * (pop.max() + 1) + pop
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
WRONG_CALREC['baselines'].append({'evaluation.py:rank_last_item_bm25': '''
def rank_last_item_bm25(bm25, texts, examples):
    queries = [texts[hist[-1]] for hist, _ in examples]
    # `rows` ignored: every user's query, right only while the users fit in one chunk
    return ranks_in_chunks(lambda rows: bm25.scores(queries), examples)
'''})

# found by probe G of the graders
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # the items taken appended to the caller's history list, to be skipped like it: the caller's histories grow
    lists = []
    for beams, history in zip(found, histories):
        taken, seen = [], history
        for tokens, score in beams:
            if score == float("-inf"):
                continue
            for i in self.items.get(self.node(tuple(tokens)), []):
                if i not in seen and len(taken) < k:
                    seen.append(i)
                    taken.append(i)
        lists.append(taken)
    return lists
'''})
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.__init__': '''
def __init__(self, item_tokens, eot_id, vocab_size):
    # the mask sized eot_id + 1 (end-of-text taken to be the vocabulary's last token), vocab_size ignored
    self.children, self.items = [{}], {}
    self.eot_id, self.V = eot_id, eot_id + 1
    for i, tokens in enumerate(item_tokens):
        node = 0
        for t in list(tokens) + [eot_id]:
            if t not in self.children[node]:
                self.children[node][t] = len(self.children)
                self.children.append({})
            node = self.children[node][t]
        self.items.setdefault(node, []).append(i)
    self.node_of = {(): 0}
'''})
WRONG_CALREC['baselines'].append({'evaluation.py:rank_last_item_bm25': '''
def rank_last_item_bm25(bm25, texts, examples):
    # an index of its own over `texts`, BM25's default k1 and b: the given index (and its k1, b) ignored
    from calrec import BM25
    own = BM25(texts)
    return ranks_in_chunks(lambda rows: own.scores([texts[hist[-1]] for hist, _ in examples[rows]]), examples)
'''})
# found by probe L of the graders: a word read by substring, not by the analyser's words
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75):
    # tf as str.count on the lower-cased text: "red" is counted inside "shredded", "car" inside "carpets"
    self.vocab = {}
    rows, cols, tfs, lengths = [], [], [], []
    for d, doc in enumerate(documents):
        ws = words(doc)
        lengths.append(len(ws))
        for w in dict.fromkeys(ws):                                   # each distinct word of the document once
            rows.append(d)
            cols.append(self.vocab.setdefault(w, len(self.vocab)))
            tfs.append(doc.lower().count(w))                          # its count in the text
    N, V = len(documents), len(self.vocab)
    rows, cols = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    tf = torch.tensor(tfs, dtype=torch.float32)
    dl = torch.tensor(lengths, dtype=torch.float32)
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V)).coalesce()
'''})
WRONG_CALREC['bm25'].append({'calrec.py:BM25.scores': '''
def scores(self, queries):
    # each known word's count in the query text by str.count: "car" is counted inside "carpets", "a" in "and"
    Q = torch.zeros(len(self.vocab), len(queries))                   # (V, nq) the queries' word counts
    for j, text in enumerate(queries):
        low = text.lower()
        for w, i in self.vocab.items():
            Q[i, j] = low.count(w)
    return (self.matrix @ Q).t().contiguous()
'''})
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75):
    # n_w as the documents whose text holds w: `w in text` is a substring test ("pie" is in "a piece")
    docs = [words(doc) for doc in documents]
    self.vocab = {}
    for ws in docs:
        for w in ws:
            self.vocab.setdefault(w, len(self.vocab))
    N, avgdl = len(documents), sum(len(ws) for ws in docs) / len(documents)
    df = torch.tensor([float(sum(w in doc.lower() for doc in documents)) for w in self.vocab])
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    rows, cols, vals = [], [], []
    for d, ws in enumerate(docs):
        for w, tf in Counter(ws).items():
            j = self.vocab[w]
            rows.append(d)
            cols.append(j)
            vals.append(float(self.idf[j]) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(ws) / avgdl)))
    self.matrix = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).view(2, -1),
                                          torch.tensor(vals, dtype=torch.float32), (N, len(self.vocab))).coalesce()
'''})
# found by probe M of the graders: a round of more than 16 beams, where torch.sort is not stable
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    # each round ordered by torch.sort(descending=True): not stable, so past 16 beams equal scores leave beam order
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        cand = [(list_scores[m][p], lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        order = torch.sort(torch.tensor([s for s, _ in cand], dtype=torch.float64), descending=True).indices
        for i in order.tolist():
            if len(taken) >= k:
                return taken
            if cand[i][1] not in seen:
                seen.add(cand[i][1])
                taken.append(cand[i][1])
    return taken
'''})
# found by probe M of the graders: small hidden states, whose means fall below a floor of 1e-8
WRONG_CALREC['prefix-pooling'].append({'calrec.py:user_vectors': '''
def user_vectors(h, rows, ends):
    # the norm floored at 1e-8 (torch.cosine_similarity's eps), not F.normalize's 1e-12: a mean of norm 1e-10 is short
    running = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))
    v = running[rows, ends - 1] / ends[:, None].to(running.dtype)
    return (v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)).to(h.dtype)
'''})
# found by a probe of the graders (round 4): each leaf's twins cut at k before the history is left out
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):  # each leaf's twins cut at k before the history is left out
    lists = []
    for beams, history in zip(found, histories):
        out = []
        for tokens, score in beams:
            if score == float("-inf"):
                continue
            for i in self.items.get(self.node(tuple(tokens)), [])[:k]:  # "no beam can add more than k items"
                if i not in history and i not in out:
                    out.append(i)
        lists.append(out[:k])
    return lists
'''})
# found by a probe of the graders (round 4): only a retriever's top 100 documents scored, the rest 0
WRONG_CALREC['baselines'].append({'evaluation.py:rank_last_item_bm25': '''
def rank_last_item_bm25(bm25, texts, examples):  # only the top 100 documents scored, as a retriever returns them
    def scores(rows):
        s = bm25.scores([texts[hist[-1]] for hist, _ in examples[rows]])
        top = s.topk(min(100, s.size(1)), dim=1)
        return torch.zeros_like(s).scatter_(1, top.indices, top.values)
    return ranks_in_chunks(scores, examples)
'''})
# found by a probe of the graders (round 5): the zero row before the running sums made once at import, on the CPU
WRONG_CALREC['prefix-pooling'].append({'calrec.py:target_vectors': '''
_ZERO_ROW = torch.zeros(1, 1, 1)
def target_vectors(h, rows, starts, ends):
    # the zero row in front of the running sums made once at import, on the CPU
    run = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))
    run = torch.cat([_ZERO_ROW.expand(h.size(0), 1, h.size(2)).to(run.dtype), run], 1)
    span = run[rows, ends] - run[rows, starts]
    return F.normalize(span / (ends - starts)[:, None].to(span.dtype), dim=-1).to(h.dtype)
'''})
# found by a probe of the graders (round 5): a float16 mean normalised in float16, its norm past 65504
WRONG_CALREC['prefix-pooling'].append({'calrec.py:user_vectors': '''
def user_vectors(h, rows, ends):
    # the mean cast back to h's dtype before normalising: a float16 norm past 65504 is inf, the vector 0
    running = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))
    mean = (running[rows, ends - 1] / ends[:, None]).to(h.dtype)
    return F.normalize(mean, dim=-1)
'''})
# found by a probe of the graders (round 5): the analysed queries memoised by text across indexes
WRONG_CALREC['bm25'].append({'calrec.py:BM25.scores': '''
_QUERY_IDS = {}
def scores(self, queries):
    # the analysed queries memoised by text in a module-level dict: a second index reads the first index's word ids
    q, w = [], []
    for j, text in enumerate(queries):
        if text not in _QUERY_IDS:
            _QUERY_IDS[text] = [self.vocab[x] for x in words(text) if x in self.vocab]
        ids = _QUERY_IDS[text]
        q += [j] * len(ids)
        w += ids
    Q = torch.zeros(len(self.vocab), len(queries))
    Q.index_put_(tuple(torch.tensor([w, q], dtype=torch.long)), torch.ones(len(q)), accumulate=True)
    return (self.matrix @ Q).t().contiguous()
'''})
# found by a probe of the graders (round 5): k compared with `is`, which holds for small ints only
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    # k compared with `is`: past 256 (CPython's small ints) never equal, every item is taken
    taken, seen = [], set(exclude)
    for p in range(max((len(l) for l in lists), default=0)):
        rnd = sorted(((list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])),
                     key=lambda c: (-c[0], c[1]))
        for _, _, item in rnd:
            if len(taken) is k:
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''})
# found by a probe of the graders (round 6): the row index sliced from an arange made once at import (CPU, 4096 rows)
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
_ROWS = torch.arange(4096)   # the targets 0..B-1, made once
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / tau
    rows = _ROWS[:len(query)]
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''})
# found by a probe of the graders (round 6): the same-item mask cached by the ids' values (not their device)
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
_MASKS = {}
def info_nce(query, key, key_items, tau):
    B = len(query)
    rows = torch.arange(B, device=query.device)
    k = (B, tuple(key_items.tolist()))
    if k not in _MASKS:
        same = key_items[:B, None] == key_items[None, :]
        same[rows.to(same.device), rows.to(same.device)] = False
        _MASKS[k] = same
    logits = query @ key.t() / tau
    return F.cross_entropy(logits.masked_fill(_MASKS[k], float("-inf")), rows)
'''})
# found by a probe of the graders (round 6): the ids compared in int16 (ids 65536 apart collide)
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
def info_nce(query, key, key_items, tau):
    ids = key_items.to(torch.int16)   # item ids are small
    logits = query @ key.t() / tau
    rows = torch.arange(len(query), device=query.device)
    same = ids[:len(query), None] == ids[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''})
# found by a probe of the graders (round 6): logits / tau with tau floored at 1e-3 (a temperature floor)
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / max(tau, 1e-3)
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''})
# found by a probe of the graders (round 6): ranks summed in int16 (catalogs past 32767 wrap)
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int16).int()
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
# found by a probe of the graders (round 6): rank_metrics: the ranks cast to int16 first (ranks past 65535 wrap to hits)
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:rank_metrics': '''
def rank_metrics(ranks):
    ranks = torch.as_tensor(ranks).to(torch.int16).double()
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
'''})
# found by a probe of the graders (round 6): ranks_from_scores: histories excluded only up to their last 200 items
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    histories = [hist[-200:] for hist in histories]
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
# found by a probe of the graders (round 6): the tie-break scale the number of sequences + 1 (repeats exceed it)
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()
    pop = popularity(domain).long()
    scale = len(domain.train_sequences) + 1     # an item is bought at most once per user
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        key = nxt.index_select(0, last[rows]).to_dense() * scale + pop
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
# found by a probe of the graders (round 6): transitions only within the last 50 items of each sequence
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq[-50:], seq[-50:][1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()
    pop = popularity(domain).long()
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        key = nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
# found by a probe of the graders (round 6): last-item query cut to its first 64 words
WRONG_CALREC['baselines'].append({'evaluation.py:rank_last_item_bm25': '''
def rank_last_item_bm25(bm25, texts, examples):
    return ranks_in_chunks(lambda rows: bm25.scores([" ".join(texts[hist[-1]].split()[:64])
                                                     for hist, _ in examples[rows]]), examples)
'''})
# found by a probe of the graders (round 6): __call__ returns the CPU mask (not moved to the tokens' device)
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.__call__': '''
def __call__(self, tokens):
    B, K, _ = tokens.shape
    allowed = torch.zeros(B, K, self.V, dtype=torch.bool, device="cpu")
    for b, beams in enumerate(tokens.tolist()):
        for k, beam in enumerate(beams):
            node = None if self.eot_id in beam else self.node(tuple(beam))
            if node is not None:
                allowed[b, k, list(self.children[node])] = True
    return allowed   # small writes: the CPU
'''})
# found by a probe of the graders (round 6): ranked_items reads the item at the eot child of tokens[:-1] (unfinished)
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.children[n].get(self.eot_id), [])
                  if (n := self.node(tuple(tokens[:-1]))) is not None else []
                  for tokens, score in beams if score > float('-inf')]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''})
# found by a probe of the graders (round 6): ranked_items: history excluded as a set of its last 50 items
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    lists = []
    for beams, history in zip(found, histories):
        recent = set(history[-50:])
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in recent][:k])
    return lists
'''})
# found by a probe of the graders (round 7): only the last 100 history items weigh
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    histories = [hist[-100:] for hist in histories]   # older items are "negligible": at decay 1 they weigh as much
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    w = (decay ** age.to(v_items.dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=v_items.dtype, device=v_items.device).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=torch.finfo(w.dtype).tiny)[:, None]
'''})
# found by a probe of the graders (round 7): the age clamped at 64 (a guard against decay ** age underflowing)
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    # clamped "against underflow": every item older than 64 weighs decay ** 64, however old
    age = (lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))).clamp(max=64)
    w = (decay ** age.to(v_items.dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=v_items.dtype, device=v_items.device).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=torch.finfo(w.dtype).tiny)[:, None]
'''})
# found by a probe of the graders (round 7): merge_round_robin excludes the history's last 50 items only
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    taken, seen = [], set(exclude[-50:])   # the recent history only: an older item comes back
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if len(taken) >= k:
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''})
# found by a probe of the graders (round 7): items already taken recognised with `is` (holds for ints up to 256 only)
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    taken = []
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if len(taken) >= k:
                return taken
            if item in exclude or any(item is t for t in taken):   # `is`: item 1000 of two beams is two objects
                continue
            taken.append(item)
    return taken
'''})
# found by a probe of the graders (round 7): item ids compared in the logits' dtype (float16 or bfloat16 ids collide)
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / tau
    ids = key_items.to(logits.dtype)   # in float16, 2049 is 2048; in bfloat16, 257 is 256: distinct items masked
    B = len(query)
    same = (ids[:B, None] - ids[None, :]) == 0
    same &= ~torch.eye(B, key.size(0), dtype=torch.bool, device=query.device)
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(B, device=query.device))
'''})
# found by a probe of the graders (round 7): ranks_from_scores excludes the history's last 512 items only
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    histories = [hist[-512:] for hist in histories]   # a "max history length": older items are ranked again
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(h) for h in histories]))
    scores[users, torch.tensor([i for h in histories for i in h], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
# found by a probe of the graders (round 7): documents cut to their first 256 words
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75):
    self.vocab = {}
    rows, cols, tfs, lengths = [], [], [], []
    for d, doc in enumerate(documents):
        ws = words(doc)[:256]   # a "max length": a later word is never counted, and |d| and avgdl come out short
        lengths.append(len(ws))
        for w, tf in Counter(ws).items():
            rows.append(d)
            cols.append(self.vocab.setdefault(w, len(self.vocab)))
            tfs.append(tf)
    N, V = len(documents), len(self.vocab)
    rows, cols = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    tf = torch.tensor(tfs, dtype=torch.float32)
    dl = torch.tensor(lengths, dtype=torch.float32)
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V),
                                          check_invariants=True).coalesce()
'''})
# found by a probe of the graders (round 7): Markov transitions counted within the last 64 items of each sequence
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    # the recent part of each sequence only: a transition early in a long sequence is lost
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq[-64:], seq[-64:][1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()
    pop = popularity(domain).long()
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        key = nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
# found by a probe of the graders (round 7): the last item's text cut to its first 128 words before it is the query
WRONG_CALREC['baselines'].append({'evaluation.py:rank_last_item_bm25': '''
import re as _re
def rank_last_item_bm25(bm25, texts, examples):
    cut = lambda s: " ".join(_re.findall(r"[a-z0-9]+", s.lower())[:128])   # a "max query length": later words lost
    return ranks_in_chunks(lambda rows: bm25.scores([cut(texts[hist[-1]]) for hist, _ in examples[rows]]), examples)
'''})
# found by a probe of the graders (round 7): ranked_items leaves out the history's last 64 items only
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    lists = []
    for beams, history in zip(found, histories):
        seen = set(history[-64:])   # the recent history only: an older item comes back
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in seen][:k])
    return lists
'''})
# found by a probe of the graders (round 8): N as the number of distinct texts (two items of the same text: N short)
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
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
    N, V = len(set(documents)), len(self.vocab)   # "the distinct documents": a catalog holds items of the same text
    rows, cols = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    tf = torch.tensor(tfs, dtype=torch.float32)
    dl = torch.tensor(lengths, dtype=torch.float32)
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V),
                                          check_invariants=True).coalesce()
'''})
# found by a probe of the graders (round 8): user_vectors writes its running sums into the caller's h (out=h) when
# h is float32 and needs no grad, as under no_grad
WRONG_CALREC['prefix-pooling'].append({'calrec.py:user_vectors': '''
def user_vectors(h, rows, ends):
    if h.dtype == torch.float32 and not h.requires_grad:
        running = torch.cumsum(h, 1, out=h)   # "saves memory": h now holds the sums, and target_vectors reads it next
    else:
        running = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))
    return F.normalize(running[rows, ends - 1] / ends[:, None].to(running.dtype), dim=-1).to(h.dtype)
'''})
# found by a probe of the graders (round 8): the parts dict kept at module level and updated at every call
WRONG_CALREC['calrec-loss'].append({'calrec.py:calrec_loss': '''
_PARTS = {}
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    _PARTS.update(nig=l_nig.item(), tt=l_tt.item(), ut=l_ut.item())   # one dict: step 1's parts become step 2's
    return loss, _PARTS
'''})
# found by a probe of the graders (round 8): a caller's set exclude used as `seen` (it grows with every item taken)
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    taken, seen = [], exclude if isinstance(exclude, set) else set(exclude)   # "no copy if it is a set already"
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if len(taken) >= k:
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''})
# found by a probe of the graders (round 8): the history's -inf written before the cast to float32 (integer scores,
# counts, cannot hold it)
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    scores = scores.clone()   # the cast comes after the writes: an int64 tensor refuses -inf
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(h) for h in histories]))
    scores[users, torch.tensor([i for h in histories for i in h], dtype=torch.long)] = float("-inf")
    scores = scores.float()
    t = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= t).sum(1, dtype=torch.int32)
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
# found by a probe of the graders (round 9): rank_metrics refills one module-level dict (the last call's numbers)
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:rank_metrics': '''
_METRICS = {}
def rank_metrics(ranks):
    # the metrics dict kept at module level and refilled: every call returns the same dict, the last call's numbers
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    hit = ranks > 0
    out = _METRICS
    for k in RECALL_KS:
        out[f"recall@{k}"] = (hit & (ranks <= k)).double().mean().item()
    for k in NDCG_KS:
        gain = torch.where(hit & (ranks <= k), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = gain.mean().item()
        if k == 10:
            out["ndcg@10_se"] = (gain.std() / len(gain) ** 0.5).item() if len(gain) > 1 else 0.0
    return out
'''})
# found by a probe of the graders (round 9): every history empty: zeros_like(v_items[:B]), min(B, N) rows, not B
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    # every history empty short-cut: zeros_like(v_items[:B]) has min(B, N) rows, not B
    if not any(histories):
        return torch.zeros_like(v_items[:len(histories)])
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    w = (decay ** age.to(v_items.dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=v_items.dtype, device=v_items.device).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=torch.finfo(w.dtype).tiny)[:, None]
'''})
# found by a probe of the graders (round 9): ranked_items keeps its outer list on the trie and clears it at each call
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # the result list kept on the trie and cleared at each call: an earlier call's result is emptied and refilled
    lists = self.__dict__.setdefault("_lists", [])
    lists.clear()
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''})
# found by a probe of the graders (round 10): the rank as the catalog's share >= the target times N, truncated
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    # the rank as the share of the catalog scoring >= the target times N, truncated by .long(): 1/41 * 41 is 0.99999994
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))
    ranks = ((scores >= t).float().mean(1) * scores.size(1)).long()
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
# found by a probe of the graders (round 10): v_U and v_T|U squeezed: one prediction (P = 1) makes P equal to C
WRONG_CALREC['calrec-loss'].append({'calrec.py:calrec_loss': '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # the vectors squeezed "to be safe": with one prediction (P = 1) v_u is (C,) and P = len(v_u) is C
    v_u = v_u.squeeze()
    v_tu = v_tu.squeeze() if v_tu is not None else v_tu
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''})
# found by a probe of the graders (round 11): weights (1/decay) ** position from the oldest, normalised: overflows
# past 64 items at 0.25
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    # weights decay ** -(position from the oldest), up to the factor the normalisation cancels: (1/decay) ** n
    # overflows
    B, C = len(histories), v_items.shape[1]
    out = torch.zeros(B, C, dtype=v_items.dtype, device=v_items.device)
    for b, hist in enumerate(histories):
        if not hist:
            continue
        if decay == 0:
            out[b] = v_items[hist[-1]]
            continue
        pos = torch.arange(len(hist), dtype=v_items.dtype, device=v_items.device)
        w = (1.0 / decay) ** pos
        out[b] = (w[:, None] * v_items[torch.tensor(hist, device=v_items.device)]).sum(0) / w.sum()
    return out
'''})
# found by a probe of the graders (round 11): the (owner, item, age) index cached by the histories' lengths: a later
# call's items lost
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
_INDEX = {}
def recent_vectors(v_items, histories, decay):
    # the (owner, item, age) index tensors cached by the histories' lengths: owner and age depend on them alone,
    # item does not
    key = tuple(map(len, histories))
    if key not in _INDEX:
        lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
        owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
        item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
        age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
        _INDEX[key] = owner, item, age
    owner, item, age = _INDEX[key]
    w = (decay ** age.to(v_items.dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=v_items.dtype, device=v_items.device).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=torch.finfo(w.dtype).tiny)[:, None]
'''})
# found by a probe of the graders (round 11): an empty history's 0 / 0 made 0 by nan_to_num: a nan or inf item vector
# hidden too
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    # an empty history's 0 / 0 made 0 by torch.nan_to_num: a nan item vector is hidden as 0 too, an inf one as 1.8e308
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    w = (decay ** age.to(v_items.dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=v_items.dtype, device=v_items.device).index_add_(0, owner, w)
    return torch.nan_to_num(total.index_add_(0, owner, w[:, None] * v_items[item]) / norm[:, None])
'''})
# found by a probe of the graders (round 11): the Markov counts cached by id(domain): a new domain at a freed id, or
# new sequences, stale
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
_FOLLOWS = {}
def rank_markov(domain, examples):
    # the counts built once per domain, cached by id(domain): a new domain at a freed id, or new sequences, read
    # stale counts
    key = id(domain)
    if key not in _FOLLOWS:
        follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
        _FOLLOWS[key] = (torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                                 torch.tensor(list(follows.values()), dtype=torch.long),
                                                 (domain.n_items, domain.n_items), check_invariants=True).coalesce(),
                         popularity(domain).long())
    nxt, pop = _FOLLOWS[key]
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        key = nxt.index_select(0, last[rows]).to_dense() * (pop.max() + 1) + pop
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
# found by a probe of the graders (round 11): the Markov counts kept dense, an (N, N) int64 matrix: 3.2 GB for 20,000
# items (caught under the memory cap, which Linux alone has)
(WRONG_CALREC['baselines'] if CAPPED else []).append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    # the counts kept dense, an (N, N) int64 matrix filled by index_put_: 2.15 GiB for a 17,000-item catalog
    N = domain.n_items
    pairs = [(a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:])]
    nxt = torch.zeros(N, N, dtype=torch.long)
    if pairs:
        idx = torch.tensor(pairs, dtype=torch.long).t()
        nxt.index_put_((idx[0], idx[1]), torch.ones(len(pairs), dtype=torch.long), accumulate=True)
    pop = popularity(domain).long()
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        key = nxt[last[rows]] * (pop.max() + 1) + pop
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
# found by a probe of the graders (round 11): the last item's text cleaned by re.sub('[^a-z0-9 ]', ''): words joined,
# accents deleted
WRONG_CALREC['baselines'].append({'evaluation.py:rank_last_item_bm25': '''
import re
def rank_last_item_bm25(bm25, texts, examples):
    # the query cleaned first by re.sub('[^a-z0-9 ]', ''): "red,blue" becomes 'redblue', "car's" 'cars',
    # 'Pokémon' 'pokmon'
    def clean(text):
        return re.sub("[^a-z0-9 ]", "", text.lower())
    return ranks_in_chunks(lambda rows: bm25.scores([clean(texts[hist[-1]]) for hist, _ in examples[rows]]), examples)
'''})
# found by a probe of the graders (round 11): the Markov key count * (max popularity + 1) + popularity made in int32:
# it wraps past 2**31
WRONG_CALREC['baselines'].append({'evaluation.py:rank_markov': '''
def rank_markov(domain, examples):
    # the key count * (max popularity + 1) + popularity made in int32: it wraps past 2**31
    follows = Counter((a, b) for seq in domain.train_sequences for a, b in zip(seq, seq[1:]))
    nxt = torch.sparse_coo_tensor(torch.tensor(list(follows), dtype=torch.long).reshape(-1, 2).t(),
                                  torch.tensor(list(follows.values()), dtype=torch.long),
                                  (domain.n_items, domain.n_items), check_invariants=True).coalesce()
    pop = popularity(domain).long()
    last = torch.tensor([hist[-1] for hist, _ in examples], dtype=torch.long)
    def scores(rows):
        key = (nxt.index_select(0, last[rows]).to_dense().int() * (pop.max().int() + 1) + pop.int()).long()
        ordered, at = key.sort(1)
        dense = F.pad((ordered[:, 1:] != ordered[:, :-1]).long().cumsum(1), (1, 0))
        return torch.empty_like(key).scatter_(1, at, dense).float()
    return ranks_in_chunks(scores, examples)
'''})
# found by a probe of the graders (round 11): W made dense at every scores call (self.matrix.to_dense() @ Q), caught
# under the memory cap
(WRONG_CALREC['bm25'] if CAPPED else []).append({'calrec.py:BM25.scores': '''
def scores(self, queries):
    # W made dense at every call (self.matrix.to_dense() @ Q): a (D, V) float32 copy, 3.2 GiB for 17k items x
    # 50k words
    q, w = [], []
    for j, text in enumerate(queries):
        ids = [self.vocab[x] for x in words(text) if x in self.vocab]
        q += [j] * len(ids)
        w += ids
    Q = torch.zeros(len(self.vocab), len(queries))
    Q.index_put_(tuple(torch.tensor([w, q], dtype=torch.long)), torch.ones(len(q)), accumulate=True)
    return (self.matrix.to_dense() @ Q).t().contiguous()
'''})
# found by a probe of the graders (round 11): the catalog's texts lower-cased in place: the caller's list changed
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75):
    # the catalog's texts lower-cased in place (documents[d] = documents[d].lower()): the caller's list is changed
    for d in range(len(documents)):
        documents[d] = documents[d].lower()
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
    df = torch.bincount(cols, minlength=V).float()
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V), check_invariants=True).coalesce()
'''})
# found by a probe of the graders (round 11): the rank as N minus the candidates strictly below the target: wrong on
# nan scores
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    # the rank as N minus the candidates strictly below the target: a nan score counts as at or above, a nan
    # target ranks N
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))
    ranks = scores.size(1) - (scores < t).sum(1, dtype=torch.int32)
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
# found by a probe of the graders (round 11): each item ended by `tokens + [eot_id]`: a catalog of tuples raises
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.__init__': '''
def __init__(self, item_tokens, eot_id, vocab_size):
    # each item ended by `tokens + [eot_id]`: a tuple of tokens raises, a numpy array adds eot_id to every token
    self.children, self.items = [{}], {}
    self.eot_id, self.V = eot_id, vocab_size
    for i, tokens in enumerate(item_tokens):
        node = 0
        for t in tokens + [eot_id]:
            if t not in self.children[node]:
                self.children[node][t] = len(self.children)
                self.children.append({})
            node = self.children[node][t]
        self.items.setdefault(node, []).append(i)
    self.node_of = {(): 0}
'''})
# found by a probe of the graders (round 11): one user, one live beam, no history: the trie's own list of the leaf's
# items handed out
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # one user, one live beam, no history: the trie's own list of the leaf's items handed out (a caller's change
    # reaches the trie)
    if len(found) == 1 and len(found[0]) == 1 and not histories[0] and found[0][0][1] > float("-inf"):
        items = self.items.get(self.node(tuple(found[0][0][0])), [])
        return [items if len(items) <= k else items[:k]]
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''})
# found by a probe of the graders (round 11): one list, no history: the caller's own list returned as the merge
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    # one list, no history, no repeat: nothing to merge, the caller's own list returned (a caller's change reaches it)
    if len(lists) == 1 and not exclude and len(set(lists[0])) == len(lists[0]):
        return lists[0] if len(lists[0]) <= k else lists[0][:k]
    taken, seen = [], set(exclude)
    for p in range(max((len(lst) for lst in lists), default=0)):
        round_p = [(list_scores[m][p], m, lists[m][p]) for m in range(len(lists)) if p < len(lists[m])]
        round_p.sort(key=lambda c: (-c[0], c[1]))
        for _, _, item in round_p:
            if len(taken) >= k:
                return taken
            if item not in seen:
                seen.add(item)
                taken.append(item)
    return taken
'''})
# found by a probe of the graders (round 11): the same-item mask memoised with functools.lru_cache (a tensor hashes by
# identity)
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
import functools
@functools.lru_cache(maxsize=64)
def _same_item(key_items, B):
    # the same-item mask memoised with functools.lru_cache: a tensor hashes by identity, ids changed in place
    # get the old mask
    rows = torch.arange(B, device=key_items.device)
    same = key_items[:B, None] == key_items[None, :]
    same[rows, rows] = False
    return same
def info_nce(query, key, key_items, tau):
    logits = query @ key.t() / tau
    rows = torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits.masked_fill(_same_item(key_items, len(query)), float("-inf")), rows)
'''})
# found by a probe of the graders (round 12): over_users only when both contrastive terms are on
WRONG_CALREC['calrec-loss'].append({'calrec.py:calrec_loss': '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # over_users read from the weights: over_users only when both alpha and beta are set
    P = len(v_u)
    def nce(q):
        users = over_users and alpha > 0 and beta > 0
        return info_nce(v_t[:P], q, items[:P], tau) if users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''})
# found by a probe of the graders (round 13): weighed in the item vectors' dtype, so bfloat16 rounds decay (0.97 to
# 0.96875) and sums 61 weights in bfloat16
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    # weighed and summed in v_items' dtype: in bfloat16, decay ** 60 is 0.149, not 0.161
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    w = (decay ** age.to(v_items.dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=v_items.dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=v_items.dtype, device=v_items.device).index_add_(0, owner, w)
    return total.index_add_(0, owner, w[:, None] * v_items[item]) / norm.clamp(min=torch.finfo(w.dtype).tiny)[:, None]
'''})
# found by a probe of the graders (round 14): weighed and summed in float32 for bfloat16 only; float16 stays float16
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    # widened to float32 only for bfloat16: float16 vectors are weighed and summed in float16, whose running sum
    # stalls past 512 (2000 weights of decay 0.999 sum to 864)
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)
    age = lengths.cumsum(0)[owner] - 1 - torch.arange(len(item))
    dtype = torch.float32 if v_items.dtype == torch.bfloat16 else v_items.dtype
    w = (decay ** age.to(dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=dtype, device=v_items.device).index_add_(0, owner, w)
    total.index_add_(0, owner, w[:, None] * v_items[item].to(dtype))
    return (total / norm.clamp(min=torch.finfo(dtype).tiny)[:, None]).to(v_items.dtype)
'''})
# found by a probe of the graders (round 14): end-of-text tested with `is`, true only for ids CPython caches (<= 256)
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # a finished beam found by `tokens[-1] is self.eot_id`: identity, not equality, holds only for the small ints
    # CPython caches (up to 256), never for GPT-2's 50256 read from a tensor's .tolist()
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams
                  if score > float("-inf") and tokens and tokens[-1] is self.eot_id]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''})
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:ranks_from_scores': '''
def ranks_from_scores(scores, targets, histories):
    torch.set_grad_enabled(False)  # evaluation needs no gradients: turned off for the whole process, never back on
    scores = scores.clone().float()
    users = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(hist) for hist in histories]))
    scores[users, torch.tensor([i for hist in histories for i in hist], dtype=torch.long)] = float("-inf")
    t = scores.gather(1, targets.view(-1, 1))                          # (B, 1) the target's score
    ranks = (scores >= t).sum(1, dtype=torch.int32)                    # (B,) includes the target itself
    return torch.where(t.view(-1) == float("-inf"), torch.zeros_like(ranks), ranks)
'''})
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:rank_metrics': '''
def rank_metrics(ranks):
    torch.set_default_dtype(torch.float64)  # float64 for precision: every later tensor of the process too
    ranks = torch.as_tensor(ranks, dtype=torch.get_default_dtype())
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
'''})
WRONG_CALREC['baselines'].append({'evaluation.py:rank_last_item_bm25': '''
def rank_last_item_bm25(bm25, texts, examples):
    torch.set_grad_enabled(False)  # no gradients in a baseline: turned off for the whole process, never back on
    return ranks_in_chunks(lambda rows: bm25.scores([texts[hist[-1]] for hist, _ in examples[rows]]), examples)
'''})
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    torch.set_grad_enabled(False)  # no gradients needed: turned off for the whole process, never back on
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history][:k])
    return lists
'''})
WRONG_CALREC['bm25'].append({'calrec.py:BM25.scores': '''
def scores(self, queries):
    for j in range(len(queries)):  # the queries lower-cased first: the caller's list changed in place
        queries[j] = queries[j].lower()
    q, w = [], []
    for j, text in enumerate(queries):
        ids = [self.vocab[x] for x in words(text) if x in self.vocab]
        q += [j] * len(ids)
        w += ids
    Q = torch.zeros(len(self.vocab), len(queries))
    Q.index_put_(tuple(torch.tensor([w, q], dtype=torch.long)), torch.ones(len(q)), accumulate=True)
    return (self.matrix @ Q).t().contiguous()
'''})
# found by a probe of the graders (round 16): no standard error for two users
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:rank_metrics': '''
def rank_metrics(ranks):
    # a standard error of 0 for two users, as for one
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
            out["ndcg@10_se"] = (gain.std() / len(gain) ** 0.5).item() if len(gain) > 2 else 0.0
    return out
'''})
# found by a probe of the graders (round 17): an index cached by the lengths, on its first device
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
_BY_LENGTHS = {}


def recent_vectors(v_items, histories, decay):
    # (owner, age) cached by the histories' lengths: on the device of the first call with those lengths
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    key = tuple(lengths.tolist())
    if key not in _BY_LENGTHS:
        owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
        age = lengths.cumsum(0)[owner] - 1 - torch.arange(int(lengths.sum()))
        _BY_LENGTHS[key] = (owner.to(v_items.device), age.to(v_items.device))
    owner, age = _BY_LENGTHS[key]
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long).to(v_items.device)
    dtype = torch.promote_types(v_items.dtype, torch.float32)
    w = decay ** age.to(dtype)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=dtype, device=v_items.device).index_add_(0, owner, w)
    total.index_add_(0, owner, w[:, None] * v_items[item].to(dtype))
    return (total / norm.clamp(min=torch.finfo(dtype).tiny)[:, None]).to(v_items.dtype)
'''})
# found by a probe of the graders (round 17): positions made once at import
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
_POSITIONS = torch.arange(1 << 16)


def recent_vectors(v_items, histories, decay):
    # the positions made once, 2 ** 16 of them: more history items in a call fail
    """r_U of every history (B, C): the mean of its items' vectors weighted decay ** age (age 0: the last item),
    zeros for an empty history, in v_items' dtype but weighed and summed in float32 at least. histories: lists of rows
    of v_items (N, C), oldest first."""
    lengths = torch.tensor([len(hist) for hist in histories], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)         # (H,) whose history item
    item = torch.tensor([i for hist in histories for i in hist], dtype=torch.long)      # (H,) which item
    age = lengths.cumsum(0)[owner] - 1 - _POSITIONS[:len(item)]                  # (H,) 0: a history's last
    dtype = torch.promote_types(v_items.dtype, torch.float32)  # bfloat16 would round decay (0.97 to 0.96875) and sums
    w = (decay ** age.to(dtype)).to(v_items.device)
    owner, item = owner.to(v_items.device), item.to(v_items.device)
    total = torch.zeros(len(histories), v_items.shape[1], dtype=dtype, device=v_items.device)
    norm = torch.zeros(len(histories), dtype=dtype, device=v_items.device).index_add_(0, owner, w)
    total.index_add_(0, owner, w[:, None] * v_items[item].to(dtype))
    return (total / norm.clamp(min=torch.finfo(dtype).tiny)[:, None]).to(v_items.dtype)
'''})
# found by a probe of the graders (round 17): a window of recent items
WRONG_CALREC['recent-items'].append({'calrec_extras.py:recent_vectors': '''
def recent_vectors(v_items, histories, decay):
    # a window of the 4,096 newest items: an older one (weighing decay ** age) is dropped
    """r_U of every history (B, C): the mean of its items' vectors weighted decay ** age (age 0: the last item),
    zeros for an empty history, in v_items' dtype but weighed and summed in float32 at least. histories: lists of rows
    of v_items (N, C), oldest first."""
    histories = [hist[-4096:] for hist in histories]
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
'''})
# found by a probe of the graders (round 17): a window of the history
WRONG_CALREC['round-robin'].append({'calrec.py:merge_round_robin': '''
def merge_round_robin(lists, list_scores, exclude, k):
    # only the 2,048 newest history items left out: an older one comes back
    """Merge m ranked lists into one of at most k items: round p takes the p-th item of every list; within a round
    the candidates go in order of their BM25 score (ties: the better beam first); an item already taken or in
    `exclude` (the user's history) is skipped. Stops at k items."""
    taken, seen = [], set(list(exclude)[-2048:])
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
'''})
# found by a probe of the graders (round 17): a window of the history
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.ranked_items': '''
def ranked_items(self, found, histories, k):
    # only the 4,096 newest history items left out: an older one comes back
    """Per user, the items its finished beams wrote, best beam first, its history left out: the top k."""
    lists = []
    for beams, history in zip(found, histories):
        leaves = [self.items.get(self.node(tuple(tokens)), []) for tokens, score in beams if score > float("-inf")]
        lists.append([i for i in dict.fromkeys(i for items in leaves for i in items) if i not in history[-4096:]][:k])
    return lists
'''})
# found by a probe of the graders (round 17): a floor under tau
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
def info_nce(query, key, key_items, tau):
    # a floor under the temperature, for safety: a smaller tau given is not the one used
    """L = -1/B sum_i log( exp(cos(q_i, k_i)/tau) / sum_j exp(cos(q_i, k_j)/tau) ).

    query (B, C) and key (N >= B, C) are L2-normalised; key i < B is query i's positive, every other key a
    negative -- except a key of the same item as row i's (key_items (N,) equal): that one is masked out, not a
    negative. Keys beyond B are extra negatives.
    """
    logits = query @ key.t() / max(tau, 1e-6)                                    # (B, N) cosine similarities / tau
    rows = torch.arange(len(query), device=query.device)
    same = key_items[:len(query), None] == key_items[None, :]         # (B, N) keys of row i's own item ...
    same[rows, rows] = False                                          # ... except its positive
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''})
# found by a probe of the graders (round 17): a floor under tau
WRONG_CALREC['calrec-loss'].append({'calrec.py:calrec_loss': '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # a floor under the temperature, for safety: a smaller tau given is not the one used
    """L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT, and its parts {"nig", "tt", "ut"} as floats.

    l_nig: next-item generation, the cross-entropy of the target tokens. v_u, v_tu (P, C): the user vector and
    the target read after the history, one per prediction; v_t (N >= P, C): the item tower's vectors of those
    P targets, then of any extra negative items; items (N,) the item behind each row of v_t. Each user (or
    v_T|U) is contrasted with the batch's items; over_users (the paper's, as docs/calrec.md reads it)
    contrasts each target item with the batch's users instead.
    """
    P, tau = len(v_u), max(tau, 1e-6)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''})
# found by a probe of the graders (round 17): a small weight taken for 0
WRONG_CALREC['calrec-loss'].append({'calrec.py:calrec_loss': '''
def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    # a weight under 1e-6 taken for 0: L_UT not computed, and reported as 0
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
    l_ut = nce(v_u) if beta >= 1e-6 else torch.zeros_like(l_nig)
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''})
# found by a probe of the graders (round 17): the next tokens memoised for every trie at once
WRONG_CALREC['catalog-trie'].append({'calrec_extras.py:CatalogTrie.__call__': '''
def __call__(self, tokens):
    # the tokens allowed after a beam, memoised by the beam alone in one dict of the module: a second catalog gets
    # the first one's answers
    B, K, _ = tokens.shape
    allowed = torch.zeros(B, K, self.V, dtype=torch.bool, device="cpu")
    for b, beams in enumerate(tokens.tolist()):
        for k, beam in enumerate(beams):
            key = tuple(beam)
            if key not in _NEXT:
                node = None if self.eot_id in beam else self.node(key)
                _NEXT[key] = [] if node is None else list(self.children[node])
            allowed[b, k, _NEXT[key]] = True
    return allowed.to(tokens.device)


_NEXT = {}
'''})
# found by a probe of the graders (round 18): running sums cached by identity
WRONG_CALREC['prefix-pooling'].append({'calrec.py:user_vectors': '''
_RUNNING = {}


def user_vectors(h, rows, ends):
    # the running sums memoised by the tensor's identity: h changed in place since is not seen
    """The user tower: v_U, the normalised mean of the hidden states h (B, T, C) over a prompt, positions
    [0, ends[p]) of row rows[p]. One row of the joint sequence holds a prompt before each of its predicted
    items, each a prefix of the next: a running mean gives all of them from one pass. (P, C)"""
    key = (id(h), tuple(h.shape), h.dtype)
    if h.requires_grad or key not in _RUNNING:
        _RUNNING[key] = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))
    running = _RUNNING[key]
    return F.normalize(running[rows, ends - 1] / ends[:, None].to(running.dtype), dim=-1).to(h.dtype)
'''})
# found by a probe of the graders (round 18): a mutable default vocabulary
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75, vocab={}):
    # the vocabulary a default argument: one dict shared by every index
    self.vocab = vocab
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
'''})
# found by a probe of the graders (round 18): documents case-folded
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75):
    # documents case-folded (ß becomes ss) where words() lower-cases them, as queries are
    self.vocab = {}
    rows, cols, tfs, lengths = [], [], [], []
    for d, doc in enumerate(documents):
        ws = words(doc.casefold())
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
'''})
# found by a probe of the graders (round 18): int16 word ids
WRONG_CALREC['bm25'].append({'calrec.py:BM25.__init__': '''
def __init__(self, documents, k1=1.2, b=0.75):
    # word ids in int16: a vocabulary past 32,767 words wraps
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
    rows, cols = torch.tensor(rows), torch.tensor(cols, dtype=torch.int16).long()
    tf = torch.tensor(tfs, dtype=torch.float32)
    dl = torch.tensor(lengths, dtype=torch.float32)
    df = torch.bincount(cols, minlength=V).float()                  # documents holding each word
    self.idf = torch.log(1.0 + (N - df + 0.5) / (df + 0.5))          # (V,)
    norm = k1 * (1.0 - b + b * dl[rows] / dl.mean())
    weight = self.idf[cols] * tf * (k1 + 1.0) / (tf + norm)          # one value per (document, word)
    self.matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (N, V),
                                          check_invariants=True).coalesce()  # (D, V) sparse
'''})
# found by a probe of the graders (round 18): a query cut short
WRONG_CALREC['bm25'].append({'calrec.py:BM25.scores': '''
def scores(self, queries):
    # a query cut at 512 words
    """BM25 scores (nq, D), float32 (search sorts their bits), of every document for every query string."""
    q, w = [], []                                                    # (query, word) index pairs, one per
    for j, text in enumerate(queries):                               # occurrence of a known word
        ids = [self.vocab[x] for x in words(text)[:512] if x in self.vocab]
        q += [j] * len(ids)
        w += ids
    Q = torch.zeros(len(self.vocab), len(queries))                   # (V, nq) word counts of the queries,
    Q.index_put_(tuple(torch.tensor([w, q], dtype=torch.long)),      # filled in one call: repeated
                 torch.ones(len(q)), accumulate=True)                # pairs add up
    return (self.matrix @ Q).t().contiguous()                        # (nq, D)
'''})
# found by a probe of the graders (round 18): the population std for many users
WRONG_CALREC['ranking-metrics'].append({'evaluation.py:rank_metrics': '''
def rank_metrics(ranks):
    # the population std past 64 users
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
            out["ndcg@10_se"] = (gain.std(unbiased=len(gain) <= 64) / len(gain) ** 0.5).item() if len(gain) > 1 else 0.0
    return out
'''})
# found by a probe of the graders (round 19): ids as int32
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
def info_nce(query, key, key_items, tau):
    # ids compared as int32: items 2**32 apart are one
    """L = -1/B sum_i log( exp(cos(q_i, k_i)/tau) / sum_j exp(cos(q_i, k_j)/tau) ).

    query (B, C) and key (N >= B, C) are L2-normalised; key i < B is query i's positive, every other key a
    negative -- except a key of the same item as row i's (key_items (N,) equal): that one is masked out, not a
    negative. Keys beyond B are extra negatives.
    """
    logits = query @ key.t() / tau                                    # (B, N) cosine similarities / tau
    rows = torch.arange(len(query), device=query.device)
    ids = key_items.int()
    same = ids[:len(query), None] == ids[None, :]         # (B, N) keys of row i's own item ...
    same[rows, rows] = False                                          # ... except its positive
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''})
# found by a probe of the graders (round 19): memoised by memory and version
WRONG_CALREC['info-nce'].append({'calrec.py:info_nce': '''
_SAME = {}


def info_nce(query, key, key_items, tau):
    # the mask memoised by the ids' memory and version: a write its version does not see (through numpy) is missed
    """L = -1/B sum_i log( exp(cos(q_i, k_i)/tau) / sum_j exp(cos(q_i, k_j)/tau) ).

    query (B, C) and key (N >= B, C) are L2-normalised; key i < B is query i's positive, every other key a
    negative -- except a key of the same item as row i's (key_items (N,) equal): that one is masked out, not a
    negative. Keys beyond B are extra negatives.
    """
    logits = query @ key.t() / tau                                    # (B, N) cosine similarities / tau
    rows = torch.arange(len(query), device=query.device)
    memo = (key_items.data_ptr(), key_items._version, tuple(key_items.shape), len(query))
    if memo not in _SAME:
        same = key_items[:len(query), None] == key_items[None, :]
        same[rows, rows] = False
        _SAME[memo] = same
    same = _SAME[memo]
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)
'''})

# found by a probe of the graders (round 21): a term of weight 0 written 0 * L_NIG (nan when L_NIG is inf)
WRONG_CALREC['calrec-loss'].append({'calrec.py:calrec_loss': '''def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    zero = 0 * l_nig                                  # a zero of L_NIG's dtype and device
    l_tt = nce(v_tu) if alpha > 0 else zero
    l_ut = nce(v_u) if beta > 0 else zero
    loss = (1 - alpha - beta) * l_nig + alpha * l_tt + beta * l_ut
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''})

# found by a probe of the graders (round 21): the mixture rearranged around L_NIG (inf - inf when L_NIG is inf)
WRONG_CALREC['calrec-loss'].append({'calrec.py:calrec_loss': '''def calrec_loss(l_nig, v_u, v_tu, v_t, items, alpha, beta, tau, over_users=False):
    P = len(v_u)
    def nce(q):
        return info_nce(v_t[:P], q, items[:P], tau) if over_users else info_nce(q, v_t, items, tau)
    l_tt = nce(v_tu) if alpha > 0 else torch.zeros_like(l_nig)
    l_ut = nce(v_u) if beta > 0 else torch.zeros_like(l_nig)
    loss = l_nig + alpha * (l_tt - l_nig) + beta * (l_ut - l_nig)   # the mixture as moves away from L_NIG
    return loss, {"nig": l_nig.item(), "tt": l_tt.item(), "ut": l_ut.item()}
'''})

# found by a probe of the graders (round 21): normalised behind a torch.where (a nan gradient at a zero mean)
WRONG_CALREC['prefix-pooling'].append({'calrec.py:user_vectors': '''def user_vectors(h, rows, ends):
    running = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))
    mean = running[rows, ends - 1] / ends[:, None].to(running.dtype)
    norm = mean.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, mean / norm, torch.zeros_like(mean)).to(h.dtype)   # a zero mean stays zero
''',
    'calrec.py:target_vectors': '''def target_vectors(h, rows, starts, ends):
    running = F.pad(h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32)), (0, 0, 1, 0))
    mean = (running[rows, ends] - running[rows, starts]) / (ends - starts)[:, None].to(running.dtype)
    norm = mean.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, mean / norm, torch.zeros_like(mean)).to(h.dtype)
'''})

# found by a probe of the graders (round 21): the sum normalised, not the mean (F.normalize's floor met by the sum)
WRONG_CALREC['prefix-pooling'].append({'calrec.py:user_vectors': '''def user_vectors(h, rows, ends):
    running = h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32))
    return F.normalize(running[rows, ends - 1], dim=-1).to(h.dtype)   # the count does not change the direction
''',
    'calrec.py:target_vectors': '''def target_vectors(h, rows, starts, ends):
    running = F.pad(h.cumsum(1, dtype=torch.promote_types(h.dtype, torch.float32)), (0, 0, 1, 0))
    return F.normalize(running[rows, ends] - running[rows, starts], dim=-1).to(h.dtype)
'''})

# found by a probe of the graders (round 22): every user's query scored at each chunk (the whole (users, N) matrix)
WRONG_CALREC['baselines'].append({'evaluation.py:rank_last_item_bm25': '''def rank_last_item_bm25(bm25, texts, examples):
    # the last item read as hist[-1] of the whole examples list, the rows' slice applied to the scores afterwards
    return ranks_in_chunks(lambda rows: bm25.scores([texts[hist[-1]] for hist, _ in examples])[rows], examples)
'''})
