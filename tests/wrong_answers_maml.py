"""Wrong answers to the exercises on maml.py and GLUE's metrics (see tests/wrong_answers.py): the mistakes students
make with task sampling, the inner loop, Reptile, the meta-gradient and the metrics. Each is written as a student
would write it, with one mistake; the comment on its first line names the mistake."""

# ---------------------------------------------------------------------------- task-sampling

TASK_SAMPLING = [
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # PPS not normalised: the sizes themselves
    n = len(sizes)
    weights = np.asarray(sizes, dtype=np.float64)
    if sampling == "uniform":
        return np.ones(n) / n
    if sampling == "pps":
        return weights
    if sampling == "mixed":
        return 0.5 * np.ones(n) / n + 0.5 * weights
    raise ValueError(f"task sampling {sampling!r}: expected uniform, pps or mixed")
'''},
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # mixed as a product of the two distributions
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform = np.ones(len(sizes)) / len(sizes)
    pps = sizes / np.sum(sizes)
    if sampling == "uniform":
        return uniform
    if sampling == "pps":
        return pps
    if sampling == "mixed":
        return uniform * pps
    raise ValueError(f"task sampling {sampling!r}: expected uniform, pps or mixed")
'''},
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # an unknown name silently falls back to uniform
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform = np.ones(len(sizes)) / len(sizes)
    pps = sizes / np.sum(sizes)
    return {"pps": pps, "mixed": (uniform + pps) / 2}.get(sampling, uniform)
'''},
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # mixed adds the two without halving
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform = np.ones(len(sizes)) / len(sizes)
    pps = sizes / np.sum(sizes)
    table = {"uniform": uniform, "pps": pps, "mixed": uniform + pps}
    if sampling not in table:
        raise ValueError(f"task sampling {sampling!r}: expected one of {list(table)}")
    return table[sampling]
'''},
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # PPS divided by the largest task, not by the total
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform = np.ones(len(sizes)) / len(sizes)
    pps = sizes / sizes.max()
    table = {"uniform": uniform, "pps": pps, "mixed": 0.5 * (uniform + pps)}
    if sampling not in table:
        raise ValueError(f"task sampling {sampling!r}: expected one of {list(table)}")
    return table[sampling]
'''},
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # mixed as temperature sampling, |D_i|^(1/2) normalised
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform = np.ones(len(sizes)) / len(sizes)
    table = {"uniform": uniform, "pps": sizes / sizes.sum(), "mixed": np.sqrt(sizes) / np.sqrt(sizes).sum()}
    if sampling not in table:
        raise ValueError(f"task sampling {sampling!r}: expected one of {list(table)}")
    return table[sampling]
'''},
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # normalised in place: a caller's float array of sizes is overwritten
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform = np.full(len(sizes), 1.0 / len(sizes))
    sizes /= sizes.sum()
    pps = sizes
    table = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in table:
        raise ValueError(f"task sampling {sampling!r}: expected one of {list(table)}")
    return table[sampling]
'''},
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # uniform returned as the scalar 1/n, not an array of n probabilities
    sizes = np.asarray(sizes, dtype=np.float64)
    pps = sizes / sizes.sum()
    if sampling == "uniform":
        return 1.0 / len(sizes)
    if sampling == "pps":
        return pps
    if sampling == "mixed":
        return 0.5 / len(sizes) + 0.5 * pps
    raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
'''},
    {"maml.py:task_probabilities": '''
def task_probabilities(sizes, sampling):  # a float32 torch tensor: its sum misses 1 by more than rng.choice allows
    sizes = torch.tensor(sizes, dtype=torch.float)
    uniform, pps = torch.full_like(sizes, 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''},
]

# ---------------------------------------------------------------------------- glue-metrics

GLUE_METRICS = [
    {"evaluation.py:mcc": '''
def mcc(pred, gold):  # a factor missing from the denominator
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp, tn = np.sum((pred == 1) & (gold == 1)), np.sum((pred == 0) & (gold == 0))
    fp, fn = np.sum((pred == 1) & (gold == 0)), np.sum((pred == 0) & (gold == 1))
    d = math.sqrt((tp + fp) * (tp + fn) * (tn + fp))
    return float((tp * tn - fp * fn) / d) if d else 0.0
'''},
    {"evaluation.py:mcc": '''
def mcc(pred, gold):  # no square root over the denominator
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp, tn = np.sum((pred == 1) & (gold == 1)), np.sum((pred == 0) & (gold == 0))
    fp, fn = np.sum((pred == 1) & (gold == 0)), np.sum((pred == 0) & (gold == 1))
    d = float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / d) if d else 0.0
'''},
    {"evaluation.py:mcc": '''
def mcc(pred, gold):  # no guard: an empty row or column of the table divides by zero
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp, tn = np.sum((pred == 1) & (gold == 1)), np.sum((pred == 0) & (gold == 0))
    fp, fn = np.sum((pred == 1) & (gold == 0)), np.sum((pred == 0) & (gold == 1))
    return float((tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))))
'''},
    {"evaluation.py:f1": '''
def f1(pred, gold):  # F1 of the wrong class (0)
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.sum((pred == 0) & (gold == 0))
    precision = tp / max(np.sum(pred == 0), 1)
    recall = tp / max(np.sum(gold == 0), 1)
    return float(2 * precision * recall / (precision + recall)) if tp else 0.0
'''},
    {"evaluation.py:f1": '''
def f1(pred, gold):  # the factor 2 dropped: tp / (tp + fp + fn)
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.sum((pred == 1) & (gold == 1))
    fp = np.sum((pred == 1) & (gold == 0))
    fn = np.sum((pred == 0) & (gold == 1))
    return float(tp / (tp + fp + fn)) if tp else 0.0
'''},
    {"evaluation.py:pearson": '''
def pearson(x, y):  # not centred: the cosine of x and y
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    d = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / d) if d > 0 else 0.0
'''},
    {"evaluation.py:pearson": '''
def pearson(x, y):  # the sample covariance (n - 1) over population standard deviations (n)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    s = x.std() * y.std()
    return float(np.cov(x, y)[0, 1] / s) if s > 0 else 0.0
'''},
    {"evaluation.py:pearson": '''
def pearson(x, y):  # numpy's corrcoef: nan, not 0, for a constant input
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.corrcoef(x, y)[0, 1])
'''},
    {"evaluation.py:pearson": '''
def pearson(x, y):  # no check for a diverged model: a nan prediction scores 0
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx, dy = x - x.mean(), y - y.mean()
    d = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return float(np.sum(dx * dy) / d) if d > 0 else 0.0
'''},
    {"evaluation.py:average_ranks": '''
def average_ranks(x):  # ties not averaged: each value gets its place in the sorted order
    x = np.asarray(x, dtype=np.float64)
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(1, len(x) + 1)
    return ranks
'''},
    {"evaluation.py:average_ranks": '''
def average_ranks(x):  # 0-based ranks
    x = np.asarray(x, dtype=np.float64)
    idx = np.argsort(x, kind="stable")
    out = np.zeros(len(x))
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and x[idx[end + 1]] == x[idx[start]]:
            end += 1
        out[idx[start:end + 1]] = (start + end) / 2
        start = end + 1
    return out
'''},
    {"evaluation.py:average_ranks": '''
def average_ranks(x):  # ranks written in sorted order, not at each value's own position
    x = np.asarray(x, dtype=np.float64)
    idx = np.argsort(x, kind="stable")
    out = np.zeros(len(x))
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and x[idx[end + 1]] == x[idx[start]]:
            end += 1
        out[start:end + 1] = (start + end) / 2 + 1
        start = end + 1
    return out
'''},
    {"evaluation.py:average_ranks": '''
def average_ranks(x):  # tied values share the lowest of their ranks (competition ranking), not the mean
    x = np.asarray(x, dtype=np.float64)
    return np.array([1.0 + np.sum(x < v) for v in x])
'''},
    {"evaluation.py:mcc": '''
def mcc(pred, gold):  # integer counts: the denominator's product overflows int64 past ~110,000 labels
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp, tn = np.sum((pred == 1) & (gold == 1)), np.sum((pred == 0) & (gold == 0))
    fp, fn = np.sum((pred == 1) & (gold == 0)), np.sum((pred == 0) & (gold == 1))
    d = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / d) if d > 0 else 0.0
'''},
    {"evaluation.py:average_ranks": '''
def average_ranks(x):  # in float32: values distinct in float64 that round alike become a tie
    x = np.asarray(x, dtype=np.float32)
    idx = np.argsort(x, kind="stable")
    out = np.zeros(len(x))
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and x[idx[end + 1]] == x[idx[start]]:
            end += 1
        out[idx[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return out
'''},
    {"evaluation.py:f1": '''
def f1(pred, gold):  # no guard: with no positive predicted nor gold, 0/0 gives nan
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.sum((pred == 1) & (gold == 1))
    fp = np.sum((pred == 1) & (gold == 0))
    fn = np.sum((pred == 0) & (gold == 1))
    d = 2 * tp + fp + fn
    return float(2 * tp / d) if d > 0 else float("nan")
'''},
    {"evaluation.py:pearson": '''
def pearson(x, y):  # the one-pass formula E[xy] - E[x]E[y]: cancellation under a large common offset
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    cov = (x * y).mean() - x.mean() * y.mean()
    vx, vy = (x * x).mean() - x.mean() ** 2, (y * y).mean() - y.mean() ** 2
    return float(cov / math.sqrt(vx * vy)) if vx > 0 and vy > 0 else 0.0
'''},
    {"evaluation.py:pearson": '''
def pearson(x, y):  # isnan, not isfinite: an infinite prediction scores 0, not nan
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0
'''},
    {"evaluation.py:f1": '''
def f1(pred, gold):  # np.where: a 0-d ndarray, not a Python float
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.sum((pred == 1) & (gold == 1))
    fp = np.sum((pred == 1) & (gold != 1))
    fn = np.sum((pred != 1) & (gold == 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
'''},
]

# ---------------------------------------------------------------------------- inner-loop (adapt)

ADAPT_FIRST_BATCH = {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # the first batch at every step
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    for _ in range(steps):
        grads = grad(loss_fn)(params, batches[0])
        if first_order:
            grads = {k: v.detach() for k, v in grads.items()}
        params = {k: params[k] - inner_lr * grads[k] for k in params}
    return params
'''}

ADAPT_IGNORES_FIRST_ORDER = {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # first_order ignored: always second order
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    for step in range(steps):
        grads = grad(loss_fn)(params, batches[step % len(batches)])
        params = {k: params[k] - inner_lr * grads[k] for k in params}
    return params
'''}

ADAPT_IN_PLACE = {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # steps written into the caller's θ dict
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    for step in range(steps):
        grads = grad(loss_fn)(params, batches[step % len(batches)])
        if first_order:
            grads = {k: v.detach() for k, v in grads.items()}
        for k in list(params):
            params[k] = params[k] - inner_lr * grads[k]
    return params
'''}

INNER_LOOP = [
    ADAPT_FIRST_BATCH,
    ADAPT_IGNORES_FIRST_ORDER,
    ADAPT_IN_PLACE,
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # "+": a step up the gradient
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    for step in range(steps):
        grads = grad(loss_fn)(params, batches[step % len(batches)])
        if first_order:
            grads = {k: v.detach() for k, v in grads.items()}
        params = {k: params[k] + inner_lr * grads[k] for k in params}
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # past the list's end, the last batch again
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    for step in range(steps):
        grads = grad(loss_fn)(params, batches[min(step, len(batches) - 1)])
        if first_order:
            grads = {k: v.detach() for k, v in grads.items()}
        params = {k: params[k] - inner_lr * grads[k] for k in params}
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # off by one: starts at the second batch
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    for step in range(1, steps + 1):
        grads = grad(loss_fn)(params, batches[step % len(batches)])
        if first_order:
            grads = {k: v.detach() for k, v in grads.items()}
        params = {k: params[k] - inner_lr * grads[k] for k in params}
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # the gradient taken once, at θ^(0)
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    grads = grad(loss_fn)(params, batches[0])
    if first_order:
        grads = {k: v.detach() for k, v in grads.items()}
    for _ in range(steps):
        params = {k: params[k] - inner_lr * grads[k] for k in params}
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # first order: θ detached, not the gradients
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    if first_order:
        params = {k: v.detach() for k, v in params.items()}
    for step in range(steps):
        grads = grad(loss_fn)(params, batches[step % len(batches)])
        params = {k: params[k] - inner_lr * grads[k] for k in params}
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # autograd.grad without create_graph
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    for step in range(steps):
        loss = loss_fn(params, batches[step % len(batches)])
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: p - inner_lr * g for (k, p), g in zip(params.items(), grads)}
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # every step starts again from θ
    if not isinstance(batches, (list, tuple)):
        batches = [batches]
    fast = params
    for step in range(steps):
        grads = grad(loss_fn)(params, batches[step % len(batches)])
        if first_order:
            grads = {k: v.detach() for k, v in grads.items()}
        fast = {k: params[k] - inner_lr * grads[k] for k in params}
    return fast
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # a single batch taken for a list
    for step in range(steps):
        grads = grad(loss_fn)(params, batches[step % len(batches)])
        if first_order:
            grads = {k: v.detach() for k, v in grads.items()}
        params = {k: params[k] - inner_lr * grads[k] for k in params}
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # a clone updated in place: fails under vmap
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)
    for j in range(steps):
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        new = {}
        for name, p in params.items():
            q = p.clone()
            q -= inner_lr * g[name]
            new[name] = q
        params = new
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # a Python `if` on the gradient under vmap
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)
    for j in range(steps):
        g = grad_fn(params, batches[j % len(batches)])
        if not all(torch.isfinite(t).all() for t in g.values()):
            break
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # a tuple of batches taken for one batch
    batches = batches if isinstance(batches, list) else [batches]
    grad_fn = grad(loss_fn)
    for j in range(steps):
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''},
]

# ---------------------------------------------------------------------------- reptile

REPTILE = [
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # summed over the tasks, not averaged
    theta = {k: v.detach() for k, v in params.items()}
    moved = vmap(lambda s: adapt(theta, loss_fn, s, inner_lr, steps, first_order=True),
                 randomness="different")(support)
    return {k: (moved[k] - theta[k]).sum(0) for k in theta}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # `steps` ignored: one inner step
    theta = {k: v.detach() for k, v in params.items()}
    moved = vmap(lambda s: adapt(theta, loss_fn, s, inner_lr, 1, first_order=True),
                 randomness="different")(support)
    return {k: (moved[k] - theta[k]).mean(0) for k in theta}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # the sign flipped: θ - θ'
    theta = {k: v.detach() for k, v in params.items()}
    moved = vmap(lambda s: adapt(theta, loss_fn, s, inner_lr, steps, first_order=True),
                 randomness="different")(support)
    return {k: (theta[k] - moved[k]).mean(0) for k in theta}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # not detached: a second-order graph kept
    moved = vmap(lambda s: adapt(params, loss_fn, s, inner_lr, steps), randomness="different")(support)
    return {k: (moved[k] - params[k]).mean(0) for k in params}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # only the first support batch, at every step
    theta = {k: v.detach() for k, v in params.items()}
    moved = vmap(lambda s: adapt(theta, loss_fn, s, inner_lr, steps, first_order=True),
                 randomness="different")(support[0])
    return {k: (moved[k] - theta[k]).mean(0) for k in theta}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # one inner loop on the tasks' mean loss
    theta = {k: v.detach() for k, v in params.items()}

    def mean_loss(p, batch):  # every task of the meta-batch at once
        return vmap(loss_fn, in_dims=(None, 0), randomness="different")(p, batch).mean()
    moved = adapt(theta, mean_loss, support, inner_lr, steps, first_order=True)
    return {k: moved[k] - theta[k] for k in theta}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # divided by inner_lr, as if a gradient
    theta = {k: v.detach() for k, v in params.items()}
    moved = vmap(lambda s: adapt(theta, loss_fn, s, inner_lr, steps, first_order=True),
                 randomness="different")(support)
    return {k: (moved[k] - theta[k]).mean(0) / inner_lr for k in theta}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # randomness="same": one dropout mask for all tasks
    theta = {k: v.detach() for k, v in params.items()}
    moved = vmap(lambda s: adapt(theta, loss_fn, s, inner_lr, steps, first_order=True), randomness="same")(support)
    return {k: (moved[k] - theta[k]).mean(0) for k in theta}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # vmap's default randomness: refuses dropout
    theta = {k: v.detach() for k, v in params.items()}
    moved = vmap(lambda s: adapt(theta, loss_fn, s, inner_lr, steps, first_order=True))(support)
    return {k: (moved[k] - theta[k]).mean(0) for k in theta}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # requires_grad_(False) on the caller's θ
    start = {name: p.requires_grad_(False) for name, p in params.items()}

    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    adapted = vmap(one_task, randomness="different")(support)
    return {name: (adapted[name] - start[name]).mean(0) for name in start}
'''},
    {"maml.py:reptile_direction": '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):  # torch.manual_seed(0): the same masks every call
    start = {name: p.detach() for name, p in params.items()}

    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    torch.manual_seed(0)
    adapted = vmap(one_task, randomness="different")(support)
    return {name: (adapted[name] - start[name]).mean(0) for name in start}
'''},
]

# ---------------------------------------------------------------------------- meta-gradient

META_GRADIENT = [
    {"maml.py:meta_loss_loop": '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # create_graph always True
    total = []
    for t in range(query[next(iter(query))].shape[0]):
        fast = dict(params)
        for s in range(steps):
            inner = loss_fn(fast, task_slice(support[s % len(support)], t))
            gs = torch.autograd.grad(inner, list(fast.values()), create_graph=True)
            fast = {k: v - inner_lr * g for (k, v), g in zip(fast.items(), gs)}
        total.append(loss_fn(fast, task_slice(query, t)))
    return torch.stack(total).mean()
'''},
    {"maml.py:meta_loss_loop": '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # create_graph never set
    total = []
    for t in range(query[next(iter(query))].shape[0]):
        fast = dict(params)
        for s in range(steps):
            inner = loss_fn(fast, task_slice(support[s % len(support)], t))
            gs = torch.autograd.grad(inner, list(fast.values()))
            fast = {k: v - inner_lr * g for (k, v), g in zip(fast.items(), gs)}
        total.append(loss_fn(fast, task_slice(query, t)))
    return torch.stack(total).mean()
'''},
    {"maml.py:meta_loss_loop": '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # query loss at θ, not θ^(k)
    total = []
    for t in range(query[next(iter(query))].shape[0]):
        fast = dict(params)
        for s in range(steps):
            inner = loss_fn(fast, task_slice(support[s % len(support)], t))
            gs = torch.autograd.grad(inner, list(fast.values()), create_graph=not first_order)
            fast = {k: v - inner_lr * g for (k, v), g in zip(fast.items(), gs)}
        total.append(loss_fn(params, task_slice(query, t)))
    return torch.stack(total).mean()
'''},
    {"maml.py:meta_loss_loop": '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # the support scored as query
    total = []
    for t in range(query[next(iter(query))].shape[0]):
        fast = dict(params)
        for s in range(steps):
            inner = loss_fn(fast, task_slice(support[s % len(support)], t))
            gs = torch.autograd.grad(inner, list(fast.values()), create_graph=not first_order)
            fast = {k: v - inner_lr * g for (k, v), g in zip(fast.items(), gs)}
        total.append(loss_fn(fast, task_slice(support[0], t)))
    return torch.stack(total).mean()
'''},
    {"maml.py:meta_loss_loop": '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # θ not reset between tasks
    total = []
    fast = dict(params)
    for t in range(query[next(iter(query))].shape[0]):
        for s in range(steps):
            inner = loss_fn(fast, task_slice(support[s % len(support)], t))
            gs = torch.autograd.grad(inner, list(fast.values()), create_graph=not first_order)
            fast = {k: v - inner_lr * g for (k, v), g in zip(fast.items(), gs)}
        total.append(loss_fn(fast, task_slice(query, t)))
    return torch.stack(total).mean()
'''},
    {"maml.py:meta_loss_loop": '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # the first support batch only
    total = []
    for t in range(query[next(iter(query))].shape[0]):
        fast = dict(params)
        for _ in range(steps):
            inner = loss_fn(fast, task_slice(support[0], t))
            gs = torch.autograd.grad(inner, list(fast.values()), create_graph=not first_order)
            fast = {k: v - inner_lr * g for (k, v), g in zip(fast.items(), gs)}
        total.append(loss_fn(fast, task_slice(query, t)))
    return torch.stack(total).mean()
'''},
    {"maml.py:meta_loss_loop": '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # tasks = len(support)
    total = []
    for t in range(len(support)):
        fast = dict(params)
        for s in range(steps):
            inner = loss_fn(fast, task_slice(support[s % len(support)], t))
            gs = torch.autograd.grad(inner, list(fast.values()), create_graph=not first_order)
            fast = {k: v - inner_lr * g for (k, v), g in zip(fast.items(), gs)}
        total.append(loss_fn(fast, task_slice(query, t)))
    return torch.stack(total).mean()
'''},
    {"maml.py:meta_loss_vmap": '''
def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # summed over the tasks
    def per_task(s, q):
        return loss_fn(adapt(params, loss_fn, s, inner_lr, steps, first_order), q)
    return vmap(per_task, randomness="different")(support, query).sum()
'''},
    {"maml.py:meta_loss_vmap": '''
def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # one adaptation for all tasks
    def mean_loss(p, batch):  # every task of the meta-batch at once
        return vmap(loss_fn, in_dims=(None, 0), randomness="different")(p, batch).mean()
    return mean_loss(adapt(params, mean_loss, support, inner_lr, steps, first_order), query)
'''},
    {"maml.py:meta_loss_vmap": '''
def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # first_order not passed on
    def per_task(s, q):
        return loss_fn(adapt(params, loss_fn, s, inner_lr, steps), q)
    return vmap(per_task, randomness="different")(support, query).mean()
'''},
    {"maml.py:meta_loss_vmap": '''
def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # vmap's default randomness
    def per_task(s, q):
        return loss_fn(adapt(params, loss_fn, s, inner_lr, steps, first_order), q)
    return vmap(per_task)(support, query).mean()
'''},
    {"maml.py:meta_loss_vmap": '''
def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # one mask for every task
    def per_task(s, q):
        return loss_fn(adapt(params, loss_fn, s, inner_lr, steps, first_order), q)
    return vmap(per_task, randomness="same")(support, query).mean()
'''},
    {"maml.py:meta_loss_loop": '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):  # tasks counted in support[0]
    losses = []
    for i in range(next(iter(support[0].values())).shape[0]):
        fast = dict(params)
        for j in range(steps):
            loss = loss_fn(fast, task_slice(support[j % len(support)], i))
            gs = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), gs)}
        losses.append(loss_fn(fast, task_slice(query, i)))
    return torch.stack(losses).mean()
'''},
    {"maml.py:adapt": '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):  # the list repeated: [] divides by zero
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    batches = list(batches) * (steps // len(batches) + 1)
    grad_fn = grad(loss_fn)
    for j in range(steps):
        g = grad_fn(params, batches[j])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''},
    ADAPT_FIRST_BATCH,
    ADAPT_IGNORES_FIRST_ORDER,
    ADAPT_IN_PLACE,
]

WRONG_MAML = {
    "task-sampling": TASK_SAMPLING,
    "glue-metrics": GLUE_METRICS,
    "inner-loop": INNER_LOOP,
    "reptile": REPTILE,
    "meta-gradient": META_GRADIENT,
}
# found by a fourth probe of the graders
WRONG_MAML['glue-metrics'].append({'evaluation.py:average_ranks': '''
def average_ranks(x):
    # ties found with np.isclose (rtol 1e-12): distinct values closer than that share a rank
    x = np.asarray(x, dtype=np.float64)
    idx = np.argsort(x, kind="stable")
    out = np.zeros(len(x))
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and np.isclose(x[idx[end + 1]], x[idx[start]], rtol=1e-12, atol=0.0):
            end += 1
        out[idx[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return out
'''})
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # sizes kept in their own dtype: a float32 array of sizes gives float32 probabilities
    sizes = np.asarray(sizes)
    n = len(sizes)
    uniform = np.full(n, 1.0 / n)
    pps = sizes / sizes.sum()
    if sampling == "uniform":
        return uniform
    if sampling == "pps":
        return pps
    if sampling == "mixed":
        return 0.5 * uniform + 0.5 * pps
    raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
'''})
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # centred in place (x -= x.mean()): a caller's float64 array of predictions comes back centred
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    x -= x.mean()
    y -= y.mean()
    d = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else 0.0
'''})
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # the int 0 for a constant input, not a float
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else 0
'''})
WRONG_MAML['reptile'].append({'maml.py:reptile_direction': '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):
    # a Python loop over the tasks instead of vmap: the same values, one task at a time
    start = {name: p.detach() for name, p in params.items()}
    n = support[0][next(iter(support[0]))].shape[0]
    moved = [adapt(start, loss_fn, [task_slice(b, i) for b in support], inner_lr, steps, first_order=True)
             for i in range(n)]
    return {name: torch.stack([m[name] - start[name] for m in moved]).mean(0) for name in start}
'''})
WRONG_MAML['meta-gradient'].append({'maml.py:meta_loss_vmap': '''
def meta_loss_vmap(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    # a Python loop over the tasks instead of vmap: the same values, one task at a time
    n = query[next(iter(query))].shape[0]
    return torch.stack([loss_fn(adapt(params, loss_fn, [task_slice(b, i) for b in support], inner_lr, steps,
                                      first_order), task_slice(query, i)) for i in range(n)]).mean()
'''})
# found by a seventh probe of the graders
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # the sizes through float32: a size above 2**24 is rounded
    sizes = np.asarray(sizes, dtype=np.float32).astype(np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # a constant input checked before a non-finite one: all-inf predictions score 0, not nan
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum())))
'''})
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # only the prediction checked for being constant: a constant gold divides by zero
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    if (xc ** 2).sum() == 0:
        return 0.0
    return float((xc * yc).sum() / math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum())))
'''})
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # "constant" read as a standard deviation below 1e-12: values of 1e-13 count as constant
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if x.std() < 1e-12 or y.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])
'''})
# found by a ninth probe of the graders
WRONG_MAML['inner-loop'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    # no step: a detached copy of θ, so no one can write into the caller's θ through it (and no gradient reaches θ)
    if steps == 0:
        return {name: p.detach().clone() for name, p in params.items()}
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)
    for j in range(steps):
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # the arrays kept in their own dtype: float32 predictions near 1e5 are centred and summed in float32
    x, y = np.asarray(x), np.asarray(y)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0
'''})
# found by a twelfth probe of the graders
WRONG_MAML['glue-metrics'].append({'evaluation.py:mcc': '''
def mcc(pred, gold):
    # guards a constant prediction and a gold with no positive, but not a gold with no negative: 0/0
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    if tp + fp == 0 or tn + fn == 0 or tp + fn == 0:
        return 0.0
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
'''})
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # through sample standard deviations (ddof=1): a single pair gives nan, not 0
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    sx, sy = x.std(ddof=1), y.std(ddof=1)
    if sx == 0 or sy == 0:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((len(x) - 1) * sx * sy))
'''})
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # the sizes made float64 for the division, but their total summed in the input's own dtype (float32 rounds it)
    sizes = np.asarray(sizes)
    n = len(sizes)
    uniform = np.full(n, 1.0 / n)
    pps = sizes.astype(np.float64) / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
WRONG_MAML['inner-loop'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    # one batch recognised as a dict only: a batch that is a tensor is taken for a list of batches (its rows)
    batches = [batches] if isinstance(batches, dict) else batches
    grad_fn = grad(loss_fn)
    for j in range(steps):
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # the name lower-cased and stripped first: 'PPS' or ' mixed' accepted, not refused as unknown
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    sampling = str(sampling).strip().lower()
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (F): a prediction with no positive never scored
WRONG_MAML['glue-metrics'].append({'evaluation.py:mcc': '''
def mcc(pred, gold):
    # guards a prediction with no negative and a gold with one class, not a prediction with no positive: 0/0 is nan
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.float64(np.sum((pred == 1) & (gold == 1)))
    tn = np.float64(np.sum((pred == 0) & (gold == 0)))
    fp = np.float64(np.sum((pred == 1) & (gold == 0)))
    fn = np.float64(np.sum((pred == 0) & (gold == 1)))
    if tn + fn == 0 or tp + fn == 0 or tn + fp == 0:
        return 0.0
    return float((tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
'''})
# found by a probe of the graders (round 5): the names compared with `is`, which holds for interned literals only
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # the names compared with `is`: only interned literals match, a name read from JSON or argv is refused
    sizes = np.asarray(sizes, dtype=np.float64)
    n = len(sizes)
    if sampling is "uniform":
        return np.full(n, 1.0 / n)
    if sampling is "pps":
        return sizes / sizes.sum()
    if sampling is "mixed":
        return 0.5 * np.full(n, 1.0 / n) + 0.5 * sizes / sizes.sum()
    raise ValueError(f"unknown task sampling {sampling!r}")
'''})
# found by a probe of the graders (round 5): results memoised, every caller handed the same array
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
_PROBS = {}
def task_probabilities(sizes, sampling):
    # memoised in a module-level dict: every call hands out the same array, which the caller may change
    if sampling not in ("uniform", "pps", "mixed"):
        raise ValueError(f"unknown task sampling {sampling!r}")
    key = (tuple(float(s) for s in np.asarray(sizes).tolist()), sampling)
    if key not in _PROBS:
        s = np.asarray(sizes, dtype=np.float64)
        u, p = np.full(len(s), 1.0 / len(s)), s / s.sum()
        _PROBS[key] = {"uniform": u, "pps": p, "mixed": 0.5 * u + 0.5 * p}[sampling]
    return _PROBS[key]
'''})
# found by a probe of the graders (round 5): 'constant' read as equal to the first value within a relative 1e-12
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # 'constant' as np.allclose(x, x[0], rtol=1e-12): distinct values a few float64 steps apart score 0
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if np.allclose(x, x[0], rtol=1e-12, atol=0) or np.allclose(y, y[0], rtol=1e-12, atol=0):
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    return float(xc @ yc / (np.linalg.norm(xc) * np.linalg.norm(yc)))
'''})
# found by a probe of the graders (round 6): meta_loss_loop cycles the support by extending the caller's list
WRONG_MAML['meta-gradient'].append({'maml.py:meta_loss_loop': '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    losses = []
    while 0 < len(support) < steps:
        support += support[:steps - len(support)]
    for i in range(next(iter(query.values())).shape[0]):
        fast = dict(params)
        for j in range(steps):
            loss = loss_fn(fast, task_slice(support[j], i))
            gs = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), gs)}
        losses.append(loss_fn(fast, task_slice(query, i)))
    return torch.stack(losses).mean()
'''})
# found by a probe of the graders (round 7): the detached start cloned once per params dict (by id) and reused
WRONG_MAML['reptile'].append({'maml.py:reptile_direction': '''
_START = {}
def reptile_direction(params, loss_fn, support, inner_lr, steps):
    # cloned once per dict: meta_train's optimizer changes the same tensors in place, so later calls start from the
    # θ of the first call
    key = id(params)
    if key not in _START:
        _START[key] = {name: p.detach().clone() for name, p in params.items()}
    start = _START[key]
    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    adapted = vmap(one_task, randomness="different")(support)
    return {name: (adapted[name] - start[name]).mean(0) for name in start}
'''})
# found by a probe of the graders (round 7): meta_loss_loop slices task i with slice(i, i + 1) (a leading dim of 1)
WRONG_MAML['meta-gradient'].append({'maml.py:meta_loss_loop': '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    losses = []
    for i in range(next(iter(query.values())).shape[0]):
        fast = dict(params)
        for j in range(steps):
            # slice(i, i + 1): loss_fn gets a batch of 1 task, not the task's own batch (a cross-entropy refuses it)
            loss = loss_fn(fast, task_slice(support[j % len(support)], slice(i, i + 1)))
            gs = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), gs)}
        losses.append(loss_fn(fast, task_slice(query, slice(i, i + 1))))
    return torch.stack(losses).mean()
'''})
# found by a probe of the graders (round 8): each inner step seeded, torch.manual_seed(1234 + j), "for reproducibility"
WRONG_MAML['inner-loop'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)
    for j in range(steps):
        torch.manual_seed(1234 + j)   # every call draws the same dropout masks, and the caller's stream is reset
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})
# found by a probe of the graders (round 8): the batches cycled once only: from step 2·len(batches) on, the first
WRONG_MAML['inner-loop'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)
    for j in range(steps):
        # cycled once: past twice the list, the first batch again and again
        g = grad_fn(params, batches[j % len(batches) if j < 2 * len(batches) else 0])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})
# found by a probe of the graders (round 8): adapt (inside meta-gradient) cycles the batches once only, as above
WRONG_MAML['meta-gradient'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)
    for j in range(steps):
        # cycled once: past twice the list, the first batch again and again
        g = grad_fn(params, batches[j % len(batches) if j < 2 * len(batches) else 0])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})
# found by a probe of the graders (round 8): adapt (inside meta-gradient) seeds each inner step, as above (the tasks'
# masks under vmap still differ from one another; every call repeats them)
WRONG_MAML['meta-gradient'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)
    for j in range(steps):
        torch.manual_seed(1234 + j)   # every call draws the same dropout masks, and the caller's stream is reset
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})
# found by a probe of the graders (round 8): meta_loss_loop cycles the support once only: from step 2·len(support)
# on, the last batch
WRONG_MAML['meta-gradient'].append({'maml.py:meta_loss_loop': '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    losses = []
    for i in range(next(iter(query.values())).shape[0]):
        fast = dict(params)
        for j in range(steps):
            # cycled once: past twice the list, the last batch again and again
            loss = loss_fn(fast, task_slice(support[j % len(support) if j < 2 * len(support) else -1], i))
            gs = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), gs)}
        losses.append(loss_fn(fast, task_slice(query, i)))
    return torch.stack(losses).mean()
'''})
# found by a probe of the graders (round 9): one task short-cut to [1.0] before the name is checked
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # one task short-cut: [1.0] returned before the name is checked, so a wrong name ('PPS', 'unifrom') passes
    sizes = np.asarray(sizes, dtype=np.float64)
    if len(sizes) == 1:
        return np.ones(1)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 9): equal sizes short-cut to uniform before the name is checked
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # equal sizes short-cut to uniform ("every method agrees") before the name is checked: a wrong name passes
    sizes = np.asarray(sizes, dtype=np.float64)
    if np.all(sizes == sizes[0]):
        return np.full(len(sizes), 1.0 / len(sizes))
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 9): the uniform array made once per n and shared by every call
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
_UNIFORM = {}
def task_probabilities(sizes, sampling):
    # the uniform array made once per n and handed out to every call: a caller that changes one changes the next
    sizes = np.asarray(sizes, dtype=np.float64)
    n = len(sizes)
    if n not in _UNIFORM:
        _UNIFORM[n] = np.full(n, 1.0 / n)
    uniform, pps = _UNIFORM[n], sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 9): pearson of fewer than 2 values is 0 before the finite check
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # fewer than 2 values short-cut to 0 before the finite check: a single nan or inf prediction scores 0, not nan
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if x.min() == x.max() or y.min() == y.max():
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum())))
'''})
# found by a probe of the graders (round 9): pearson of identical arrays is 1 before the constant and finite checks
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # identical arrays short-cut to r = 1: a constant prediction equal to the gold scores 1 (not 0), inf 1 (not nan)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.array_equal(x, y):
        return 1.0
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if x.min() == x.max() or y.min() == y.max():
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum())))
'''})
# found by a probe of the graders (round 10): float64 sizes that already sum to 1 returned as pps itself
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # sizes that already sum to 1 are taken as probabilities as they are: pps hands back the caller's own float64 array
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform = np.full(len(sizes), 1.0 / len(sizes))
    pps = sizes if sizes.sum() == 1.0 else sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 10): sampling None read as the default, uniform, instead of a ValueError
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # no sampling given (None) read as the default, uniform: an unset setting is not refused
    if sampling is None:
        sampling = "uniform"
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 10): a sampling that is not a str (None) answered with uniform in an except
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # the name looked up in a try: a KeyError is an unknown name, but a sampling that is no str (None) gets uniform
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    try:
        return {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}[sampling]
    except (KeyError, TypeError):
        if not isinstance(sampling, str):
            return uniform
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
'''})
# found by a probe of the graders (round 11): meta_loss_loop seeds each task (torch.manual_seed(i)): the same masks,
# the stream reset
WRONG_MAML['meta-gradient'].append({'maml.py:meta_loss_loop': '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    # each task seeded (torch.manual_seed(i)), "reproducible task by task": every call draws the same masks, the
    # stream is reset
    losses = []
    for i in range(next(iter(query.values())).shape[0]):
        torch.manual_seed(i)
        fast = dict(params)
        for j in range(steps):
            loss = loss_fn(fast, task_slice(support[j % len(support)], i))
            gs = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), gs)}
        losses.append(loss_fn(fast, task_slice(query, i)))
    return torch.stack(losses).mean()
'''})
# found by a probe of the graders (round 11): the mean over the tasks taken in float64: float32 θ gets a float64
# direction
WRONG_MAML['reptile'].append({'maml.py:reptile_direction': '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):
    # the mean over the tasks taken in float64 "for precision": float32 θ gets a float64 direction, meta_step
    # cannot assign it
    start = {name: p.detach() for name, p in params.items()}

    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    adapted = vmap(one_task, randomness="different")(support)
    return {name: (adapted[name] - start[name]).mean(0, dtype=torch.float64) for name in start}
'''})
# found by a probe of the graders (round 12): uniform spread over the non-empty tasks only
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # uniform over the non-empty tasks only (a task of size 0 gets 0)
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform, pps = (sizes > 0) / np.count_nonzero(sizes), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 16): a loss run on the side at each inner step
WRONG_MAML['inner-loop'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    # the loss run once more per step to monitor it: another dropout mask each step, another forward pass
    """k steps of gradient descent from `params` (each gradient by torch.func.grad: adapt runs under vmap, on params
    that need not require grad); returns θ^(k). batches: one batch (every step) or one per step (a new support batch
    per step, as the authors' code draws them; cycled if shorter than `steps`). first_order: each inner gradient a
    constant (FOMAML / Reptile): the result depends on `params` through θ^(0), not through the gradients."""
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)  # d loss_fn / d params, as a dict like params
    for j in range(steps):
        inner_loss = loss_fn(params, batches[j % len(batches)])  # for monitoring
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})
# found by a probe of the graders (round 16): a query loss logged before adapting
WRONG_MAML['meta-gradient'].append({'maml.py:meta_loss_loop': '''
def meta_loss_loop(params, loss_fn, support, query, inner_lr, steps, first_order=False):
    # the query loss taken before adapting too, to log: a dropout mask more per task
    """The reference path: the same mean query loss, one task at a time, the inner gradient from autograd.grad
    (create_graph=True for second order). Slow but obviously right; the tests compare the two."""
    losses = []
    for i in range(next(iter(query.values())).shape[0]):  # the tasks
        fast = dict(params)
        before = loss_fn(fast, task_slice(query, i))  # the query loss before adapting, to log
        for j in range(steps):
            loss = loss_fn(fast, task_slice(support[j % len(support)], i))
            gs = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), gs)}
        losses.append(loss_fn(fast, task_slice(query, i)))
    return torch.stack(losses).mean()
'''})
# found by a probe of the graders (round 16): the loss before adapting logged
WRONG_MAML['reptile'].append({'maml.py:reptile_direction': '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):
    # the tasks' losses before adapting, to log: a dropout mask more per task
    """mean_i(θ_i^(k) - θ): where the tasks' own inner loops moved, averaged over the meta-batch (vmap).
    No query batch and no second derivative: the inner loop runs on detached parameters."""
    start = {name: p.detach() for name, p in params.items()}

    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    logged = vmap(lambda b: loss_fn(start, b), randomness="different")(support[0])  # the loss before
    adapted = vmap(one_task, randomness="different")(support)  # each value (N, *shape)
    return {name: (adapted[name] - start[name]).mean(0) for name in start}
'''})
# found by a probe of the graders (round 17): vmap in chunks
WRONG_MAML['reptile'].append({'maml.py:reptile_direction': '''
def reptile_direction(params, loss_fn, support, inner_lr, steps):
    # the tasks in chunks of 8: loss_fn runs per chunk, and a meta-batch of 9 draws its masks in two goes
    """mean_i(θ_i^(k) - θ): where the tasks' own inner loops moved, averaged over the meta-batch (vmap).
    No query batch and no second derivative: the inner loop runs on detached parameters."""
    start = {name: p.detach() for name, p in params.items()}

    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    adapted = vmap(one_task, randomness="different", chunk_size=8)(support)  # each value (N, *shape)
    return {name: (adapted[name] - start[name]).mean(0) for name in start}
'''})
# found by a probe of the graders (round 17): another name accepted
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # a name of its own accepted: an unknown sampling must raise
    """How often each auxiliary task fills a slot of a meta-batch, p_i. uniform: 1/n. pps: |D_i| / sum_j |D_j|
    (Dou et al.'s best). mixed [ours]: uniform with probability 1/2, else PPS (the average). Else: ValueError."""
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    by_name["proportional"] = pps  # another name for it
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 17): the total as an int
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # the total rounded down to an int: float sizes no longer sum to 1
    """How often each auxiliary task fills a slot of a meta-batch, p_i. uniform: 1/n. pps: |D_i| / sum_j |D_j|
    (Dou et al.'s best). mixed [ours]: uniform with probability 1/2, else PPS (the average). Else: ValueError."""
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / int(sizes.sum())
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 18): float32 past 64 values
WRONG_MAML['glue-metrics'].append({'evaluation.py:average_ranks': '''
def average_ranks(x):
    # float32 for long inputs: values one float64 step apart tie
    """Ranks 1..n, ties sharing the mean of their ranks (what Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64 if len(x) <= 64 else np.float32)
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
'''})
# found by a probe of the graders (round 18): float32 past 512 values
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''
def pearson(x, y):
    # float32 for long inputs: a large offset's cancellation loses the values
    """Pearson's r, a Python float; 0 for a constant input, nan when a prediction is not finite (a diverged model)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if x.min() == x.max() or y.min() == y.max():  # (not by the centred values: a mean can be inexact)
        return 0.0
    if len(x) > 512:
        x, y = x.astype(np.float32), y.astype(np.float32)
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum())))
'''})
# found by a probe of the graders (round 19): a name matched as a substring
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # the name looked up as a substring: 'pp' or 'mix' is taken for a name
    """How often each auxiliary task fills a slot of a meta-batch, p_i. uniform: 1/n. pps: |D_i| / sum_j |D_j|
    (Dou et al.'s best). mixed [ours]: uniform with probability 1/2, else PPS (the average). Else: ValueError."""
    sizes = np.asarray(sizes, dtype=np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if not isinstance(sampling, str) or sampling not in "uniform|pps|mixed":
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 19): sizes through int32
WRONG_MAML['task-sampling'].append({'maml.py:task_probabilities': '''
def task_probabilities(sizes, sampling):
    # the sizes through int32: a task of 2**31 examples wraps negative
    """How often each auxiliary task fills a slot of a meta-batch, p_i. uniform: 1/n. pps: |D_i| / sum_j |D_j|
    (Dou et al.'s best). mixed [ours]: uniform with probability 1/2, else PPS (the average). Else: ValueError."""
    sizes = np.asarray(sizes, dtype=np.int32).astype(np.float64)
    uniform, pps = np.full(len(sizes), 1.0 / len(sizes)), sizes / sizes.sum()
    by_name = {"uniform": uniform, "pps": pps, "mixed": 0.5 * uniform + 0.5 * pps}
    if sampling not in by_name:
        raise ValueError(f"unknown task sampling {sampling!r}; expected uniform, pps or mixed")
    return by_name[sampling]
'''})
# found by a probe of the graders (round 19): the first 4 batches only
WRONG_MAML['inner-loop'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    # at most 4 support batches cycled: a fifth is never used
    """k steps of gradient descent from `params` (each gradient by torch.func.grad: adapt runs under vmap, on params
    that need not require grad); returns θ^(k). batches: one batch (every step) or one per step (a new support batch
    per step, as the authors' code draws them; cycled if shorter than `steps`). first_order: each inner gradient a
    constant (FOMAML / Reptile): the result depends on `params` through θ^(0), not through the gradients."""
    batches = list(batches)[:4] if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)  # d loss_fn / d params, as a dict like params
    for j in range(steps):
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})
# found by a probe of the graders (round 19): steps capped
WRONG_MAML['inner-loop'].append({'maml.py:adapt': '''
def adapt(params, loss_fn, batches, inner_lr, steps, first_order=False):
    # at most 100 steps
    """k steps of gradient descent from `params` (each gradient by torch.func.grad: adapt runs under vmap, on params
    that need not require grad); returns θ^(k). batches: one batch (every step) or one per step (a new support batch
    per step, as the authors' code draws them; cycled if shorter than `steps`). first_order: each inner gradient a
    constant (FOMAML / Reptile): the result depends on `params` through θ^(0), not through the gradients."""
    batches = batches if isinstance(batches, (list, tuple)) else [batches]
    grad_fn = grad(loss_fn)  # d loss_fn / d params, as a dict like params
    for j in range(min(steps, 100)):
        g = grad_fn(params, batches[j % len(batches)])
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        params = {name: p - inner_lr * g[name] for name, p in params.items()}
    return params
'''})

# found by a probe of the graders (round 21): torch.seed() inside: the same seed no longer gives the same run
WRONG_MAML['reptile'].append({'maml.py:reptile_direction': '''def reptile_direction(params, loss_fn, support, inner_lr, steps):
    torch.seed()   # fresh dropout masks at every meta-step, whatever seed was set before
    start = {name: p.detach() for name, p in params.items()}

    def one_task(task_support):
        return adapt(start, loss_fn, task_support, inner_lr, steps, first_order=True)
    adapted = vmap(one_task, randomness="different")(support)
    return {name: (adapted[name] - start[name]).mean(0) for name in start}
'''})

# found by a probe of the graders (round 23, mutants): a prediction's finiteness checked with any(): a partly diverged prediction against a constant gold scores 0
WRONG_MAML['glue-metrics'].append({'evaluation.py:pearson': '''def pearson(x, y):
    """Pearson's r, a Python float; 0 for a constant input, nan when a prediction is not finite (a diverged model)."""
    x, y = (np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    if not (np.isfinite(x).any() and np.isfinite(y).all()):
        return float('nan')
    if x.min() == x.max() or y.min() == y.max():
        return 0.0
    xc, yc = (x - x.mean(), y - y.mean())
    return float((xc * yc).sum() / math.sqrt(float((xc ** 2).sum() * (yc ** 2).sum())))
'''})

