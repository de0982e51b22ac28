"""Wrong answers to the exercises on model.py (see tests/wrong_answers.py): the mistakes students make with
LayerNorm, pooling, the KV cache, attention and its mask, and beam search. Each answer's first comment names the
mistake; tests/test_model.py has the graders that catch it."""

WRONG_MODEL = {
    "layer-norm": [
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # unbiased variance (divides by C - 1), as torch.var does by default
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # eps added to the standard deviation, outside the square root
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    std = (x - mu).pow(2).mean(-1, keepdim=True).sqrt()
    y = (x - mu) / (std + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # statistics over the whole tensor instead of over each position's C features
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean()
    var = (x - mu).pow(2).mean()
    y = (x - mu) / torch.sqrt(var + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # shift before scale: (x_hat + beta) * gamma
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    x_hat = (x - mu) / torch.sqrt(var + self.eps)
    return x_hat * self.weight if self.bias is None else (x_hat + self.bias) * self.weight
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # eps written as the literal 1e-5, not the module's own self.eps
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, 1e-5)
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + 1e-5) * self.weight
    return y if self.bias is None else y + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # a LayerNorm built with bias=False (self.bias is None) forgotten
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # the fused kernel everywhere: right values, wrong second derivative under vmap
    return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # the mean detached, taken as a constant statistic: right values, but no gradient through it
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True).detach()
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    y = (x - mu) * torch.rsqrt(var + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # the variance detached, taken as a constant statistic: right values, but no gradient through it
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    y = (x - mu) * torch.rsqrt(var.detach() + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # centres the input in place (x.sub_): the caller's tensor is changed, and a leaf that requires grad fails
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    x = x.sub_(mu)
    mu = 0
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    y = (x - mu) * torch.rsqrt(var + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # one-pass variance E[x^2] - mu^2: cancels to nothing when the mean is large next to the spread
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    var = (x * x).mean(-1, keepdim=True) - mu * mu               # one pass: E[x²] − μ²
    y = (x - mu) * torch.rsqrt(var + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''},
        {"model.py:LayerNorm.forward": '''
def forward(self, x):
    # positions flattened with x.view(-1, C): a non-contiguous x raises
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    rows = x.view(-1, x.size(-1))                                 # (positions, C)
    mu = rows.mean(1, keepdim=True)
    var = (rows - mu).pow(2).mean(1, keepdim=True)
    y = ((rows - mu) * torch.rsqrt(var + self.eps)).view(x.shape) * self.weight
    return y if self.bias is None else y + self.bias
'''},
    ],
    "pooling": [
        {"model.py:mean_pool": '''
def mean_pool(h, span_mask):
    # divides by the row's length T, padding and positions outside the span included
    w = span_mask.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / h.size(1)
'''},
        {"model.py:mean_pool": '''
def mean_pool(h, span_mask):
    # no guard for an empty span: 0 / 0
    w = span_mask.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1)
'''},
        {"model.py:mean_pool": '''
def mean_pool(h, span_mask):
    # divides by the span sizes of the whole batch, not of the row
    w = span_mask.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum().clamp(min=1.0)
'''},
        {"model.py:mean_pool": '''
def mean_pool(h, span_mask):
    # takes the span as contiguous: every position from its first 1 to its last 1
    out = []
    for row, m in zip(h, span_mask):
        where = m.nonzero()[:, 0]
        out.append(row[where[0]:where[-1] + 1].mean(0) if len(where) else row.new_zeros(row.size(-1)))
    return torch.stack(out)
'''},
        {"model.py:last_token_pool": '''
def last_token_pool(h, attention_mask):
    # off by one: the number of real tokens is the index of the first padding, not of the last real token
    last = attention_mask.long().sum(1)
    return h[torch.arange(h.size(0), device=h.device), last.clamp(max=h.size(1) - 1)]
'''},
        {"model.py:last_token_pool": '''
def last_token_pool(h, attention_mask):
    # the last column, padding or not
    return h[:, -1]
'''},
        {"model.py:last_token_pool": '''
def last_token_pool(h, attention_mask):
    # argmax of the mask: the first real token, not the last
    last = attention_mask.long().argmax(1)
    return h[torch.arange(h.size(0), device=h.device), last]
'''},
        {"model.py:mean_pool": '''
def mean_pool(h, span_mask):
    # an empty span kept out of the values by torch.where: its 0 / 0 still makes the gradient NaN
    w = span_mask.to(h.dtype).unsqueeze(-1)
    s, n = (h * w).sum(1), w.sum(1)
    return torch.where(n > 0, s / n, torch.zeros_like(s))
'''},
        {"model.py:last_token_pool": '''
def last_token_pool(h, attention_mask):
    # gather then squeeze(): a batch of one (or C = 1) loses its dimension, (C,) instead of (1, C)
    last = attention_mask.long().sum(1) - 1
    return h.gather(1, last[:, None, None].expand(-1, 1, h.size(-1))).squeeze()
'''},
        {"model.py:mean_pool": '''
def mean_pool(h, span_mask):
    # the weights hard-wired to float32: a bfloat16 h pools to float32
    w = span_mask.float().unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1).clamp(min=1.0)
'''},
        {"model.py:mean_pool": '''
def mean_pool(h, span_mask):
    # row by row with a boolean index and a Python `if`: breaks under vmap (MAML's classifier)
    rows = []
    for b in range(h.size(0)):
        picked = h[b][span_mask[b].bool()]                        # (n_b, C) the span's positions
        rows.append(picked.mean(0) if len(picked) else h.new_zeros(h.size(-1)))
    return torch.stack(rows)
'''},
        {"model.py:last_token_pool": '''
def last_token_pool(h, attention_mask):
    # through h.view(B * T, C): a non-contiguous h raises
    B, T, C = h.shape
    last = attention_mask.long().sum(1) - 1
    return h.view(B * T, C)[torch.arange(B, device=h.device) * T + last]
'''},
    ],
    "kv-cache": [
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # ignores self.length: every step writes at position 0 and returns only its own T positions
    T = k.size(2)
    self.k[layer, :, :, :T] = k
    self.v[layer, :, :, :T] = v
    return self.k[layer, :, :, :T], self.v[layer, :, :, :T]
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # stores the new keys and values, but returns only them: attention never sees the past
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    return k, v
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # advances self.length itself, once per layer (GPT._run advances it too)
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    self.length = end
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # returns the whole buffer, the unwritten zero slots after the new positions included
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    return self.k[layer], self.v[layer]
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # right values, but concatenated: a new copy of the whole past at every step, not the buffer itself
    past_k, past_v = self.k[layer, :, :, :self.length], self.v[layer, :, :, :self.length]
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    return torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # off-by-one guard: refuses to fill the very last slot
    end = self.length + k.size(2)
    if end >= self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # the layer index forgotten: every layer's buffer gets this layer's keys and values
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[:, :, :, self.length:end] = k
    self.v[:, :, :, self.length:end] = v
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # returns .contiguous() copies of the buffer's slices: a copy as soon as B > 1 or n_head > 1
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    return self.k[layer, :, :, :end].contiguous(), self.v[layer, :, :, :end].contiguous()
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # refuses only a write that starts past the end: one that starts inside and runs past it is no ValueError
    if self.length >= self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; it is full")
    end = self.length + k.size(2)
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''},
        {"model.py:KVCache.extend": '''
def extend(self, layer, k, v):
    # its own per-layer count of positions written (state between calls), not self.length
    written = self.__dict__.setdefault("written", {})               # positions written so far, per layer
    start = written.get(layer, 0)
    end = start + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, start:end] = k
    self.v[layer, :, :, start:end] = v
    written[layer] = end
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''},
    ],
    "attention": [
        {"model.py:manual_attention": '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # scaled by d_head instead of its square root
    att = (q @ k.transpose(-2, -1)) / k.size(-1)
    att = att.masked_fill(~mask, float("-inf"))
    att = F.dropout(F.softmax(att, dim=-1), p=dropout_p)
    return att @ v
'''},
        {"model.py:manual_attention": '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # softmax over the queries (dim -2), not over the keys
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.dropout(F.softmax(att, dim=-2), p=dropout_p)
    return att @ v
'''},
        {"model.py:manual_attention": '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # masked scores set to 0 instead of -inf: a hidden key still gets weight exp(0)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, 0.0)
    att = F.dropout(F.softmax(att, dim=-1), p=dropout_p)
    return att @ v
'''},
        {"model.py:manual_attention": '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # the mask applied after the softmax: the weights no longer sum to 1
    att = F.softmax((q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1)), dim=-1)
    att = att.masked_fill(~mask, 0.0)
    return F.dropout(att, p=dropout_p) @ v
'''},
        {"model.py:attention_mask_4d": '''
def attention_mask_4d(key_mask, T_past, T):
    # no "a query always sees itself": a padding query has an empty softmax
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]
    return (causal & key_mask[:, None, :])[:, None]
'''},
        {"model.py:attention_mask_4d": '''
def attention_mask_4d(key_mask, T_past, T):
    # causal as strict j < i: a query never sees its own key
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] < q_pos[:, None]
    return (causal & key_mask[:, None, :])[:, None]
'''},
        {"model.py:attention_mask_4d": '''
def attention_mask_4d(key_mask, T_past, T):
    # ignores T_past: the new queries are taken to sit at positions 0 .. T - 1
    q_pos = torch.arange(T, device=key_mask.device)
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]
    itself = k_pos[None, :] == q_pos[:, None]
    return ((causal & key_mask[:, None, :]) | itself)[:, None]
'''},
        {"model.py:attention_mask_4d": '''
def attention_mask_4d(key_mask, T_past, T):
    # the padding mask put on the queries (rows) instead of on the keys (columns)
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]
    itself = k_pos[None, :] == q_pos[:, None]
    return ((causal & key_mask[:, T_past:, None]) | itself)[:, None]
'''},
        {"model.py:manual_attention": '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # dropout_p ignored: no dropout on the attention weights
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    return att @ v
'''},
        {"model.py:manual_attention": '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # softmax written out as exp / sum without subtracting the max: overflows for large scores
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = att.exp() / att.exp().sum(-1, keepdim=True)
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''},
        {"model.py:attention_mask_4d": '''
def attention_mask_4d(key_mask, T_past, T):
    # positions made on the default device (torch.arange without device=): a mismatch on a GPU
    q_pos = torch.arange(T_past, T_past + T)
    k_pos = torch.arange(T_past + T)
    causal = k_pos[None, :] <= q_pos[:, None]
    itself = k_pos[None, :] == q_pos[:, None]
    return ((causal & key_mask[:, None, :]) | itself)[:, None]
'''},
        {"model.py:manual_attention": '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # dropout on the output att @ v, not on the attention weights
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    return F.dropout(att @ v, p=dropout_p)
'''},
        {"model.py:manual_attention": '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # softmax in float32 (dtype=torch.float32) not cast back: float64 or bfloat16 inputs raise
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1, dtype=torch.float32)                 # the softmax in float32, for stability
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''},
    ],
    "beam-search": [
        {"model.py:_beam_choose": '''
def _beam_choose(scores, logp, finished, eos_id):
    # a finished beam keeps expanding like an open one
    B, K, V = logp.shape
    cand = (scores[..., None] + logp).view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores, flat // V, flat % V
'''},
        {"model.py:_beam_choose": '''
def _beam_choose(scores, logp, finished, eos_id):
    # a finished beam may write any token at log-probability 0: V copies of it compete
    B, K, V = logp.shape
    logp = logp.masked_fill(finished[..., None], 0.0)
    cand = (scores[..., None] + logp).view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores, flat // V, flat % V
'''},
        {"model.py:_beam_choose": '''
def _beam_choose(scores, logp, finished, eos_id):
    # a finished beam writes eos_id again, but pays eos_id's log-probability at every step
    B, K, V = logp.shape
    not_eos = torch.arange(V, device=logp.device) != eos_id
    logp = logp.masked_fill(finished[..., None] & not_eos, float("-inf"))
    cand = (scores[..., None] + logp).view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores, flat // V, flat % V
'''},
        {"model.py:_beam_choose": '''
def _beam_choose(scores, logp, finished, eos_id):
    # the flat index unravelled with K instead of V
    B, K, V = logp.shape
    eos_only = torch.full((V,), float("-inf"), device=logp.device)
    eos_only[eos_id] = 0.0
    logp = torch.where(finished[..., None], eos_only, logp)
    cand = (scores[..., None] + logp).view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores, flat // K, flat % K
'''},
        {"model.py:_beam_choose": '''
def _beam_choose(scores, logp, finished, eos_id):
    # each beam keeps its own best token: K greedy searches, never two children of one beam
    B, K, V = logp.shape
    eos_only = torch.full((V,), float("-inf"), device=logp.device)
    eos_only[eos_id] = 0.0
    logp = torch.where(finished[..., None], eos_only, logp)
    best, tok = (scores[..., None] + logp).max(-1)
    order = best.argsort(-1, descending=True)
    return best.gather(1, order), order, tok.gather(1, order)
'''},
        {"model.py:GPT.beam_search": '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # every beam may expand at step 0: the K beams start as K copies of the same best token
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.zeros(B, K, device=prompt.device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''},
        {"model.py:GPT.beam_search": '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # the new tokens appended in place, the beams' earlier tokens not reordered with their source beam
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens, tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''},
        {"model.py:GPT.beam_search": '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # `finished` not reordered with the beams: a beam inherits another beam's flag
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''},
        {"model.py:GPT.beam_search": '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # `visible` not reordered: a beam keeps attending to the cache slots of the beam that used to sit there
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''},
        {"model.py:GPT.beam_search": '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # allowed_next applied only from the second token on: the first token is unconstrained
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''},
        {"model.py:GPT._beam_next": '''
def _beam_next(self, tok, step, prompt, prompt_mask, tokens, cache, visible):
    # positions counted from the padded prompt's length: a left-padded prompt's new tokens sit too far right
    (B, K), T = tok.shape, prompt.size(1)
    if cache is None:
        seq = torch.cat([prompt.repeat_interleave(K, 0), tokens.view(B * K, -1)], dim=1)
        seq_mask = torch.cat([prompt_mask.repeat_interleave(K, 0), torch.ones_like(seq[:, T:])], dim=1)
        h = self.hidden_states(seq, seq_mask)[:, -1].view(B, K, -1)
    else:
        slot, beams = T + K * step, torch.arange(K, device=tok.device)
        visible[:, beams, slot + beams] = True
        pos = torch.full((B, K), T + step, device=tok.device)
        h = self._run(tok, pos, visible[:, None, :, :slot + K], cache)
    return F.log_softmax(self.lm_head(h).float(), dim=-1)
'''},
        {"model.py:GPT._beam_next": '''
def _beam_next(self, tok, step, prompt, prompt_mask, tokens, cache, visible):
    # a beam's new token is written to the cache, but the beam is not allowed to see it
    (B, K), T = tok.shape, prompt.size(1)
    if cache is None:
        seq = torch.cat([prompt.repeat_interleave(K, 0), tokens.view(B * K, -1)], dim=1)
        seq_mask = torch.cat([prompt_mask.repeat_interleave(K, 0), torch.ones_like(seq[:, T:])], dim=1)
        h = self.hidden_states(seq, seq_mask)[:, -1].view(B, K, -1)
    else:
        slot = T + K * step
        pos = (prompt_mask.sum(1) + step)[:, None].expand(B, K)
        h = self._run(tok, pos, visible[:, None, :, :slot + K], cache)
    return F.log_softmax(self.lm_head(h).float(), dim=-1)
'''},
        {"model.py:GPT._beam_next": '''
def _beam_next(self, tok, step, prompt, prompt_mask, tokens, cache, visible):
    # off by one: the first new token given the position of the prompt's last token
    (B, K), T = tok.shape, prompt.size(1)
    if cache is None:
        seq = torch.cat([prompt.repeat_interleave(K, 0), tokens.view(B * K, -1)], dim=1)
        seq_mask = torch.cat([prompt_mask.repeat_interleave(K, 0), torch.ones_like(seq[:, T:])], dim=1)
        h = self.hidden_states(seq, seq_mask)[:, -1].view(B, K, -1)
    else:
        slot, beams = T + K * step, torch.arange(K, device=tok.device)
        visible[:, beams, slot + beams] = True
        pos = (prompt_mask.sum(1) - 1 + step)[:, None].expand(B, K)
        h = self._run(tok, pos, visible[:, None, :, :slot + K], cache)
    return F.log_softmax(self.lm_head(h).float(), dim=-1)
'''},
        {"model.py:GPT.beam_search": '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # the K - 1 copies of the first beam start at -1e9, not -inf: dead beams come back with a finite score
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), -1e9, device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''},
        {"model.py:GPT._beam_next": '''
def _beam_next(self, tok, step, prompt, prompt_mask, tokens, cache, visible):
    # the log-softmax in the model's dtype (no .float()): a bfloat16 model's beams scored in bfloat16
    (B, K), T = tok.shape, prompt.size(1)
    if cache is None:
        seq = torch.cat([prompt.repeat_interleave(K, 0), tokens.view(B * K, -1)], dim=1)
        seq_mask = torch.cat([prompt_mask.repeat_interleave(K, 0), torch.ones_like(seq[:, T:])], dim=1)
        h = self.hidden_states(seq, seq_mask)[:, -1].view(B, K, -1)
    else:
        slot, beams = T + K * step, torch.arange(K, device=tok.device)
        visible[:, beams, slot + beams] = True
        pos = (prompt_mask.sum(1) + step)[:, None].expand(B, K)
        h = self._run(tok, pos, visible[:, None, :, :slot + K], cache)
    return F.log_softmax(self.lm_head(h), dim=-1)
'''},
        {"model.py:GPT.beam_search": '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # no room check (_check_room): a prompt + max_new_tokens past block_size is not refused
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''},
    ],
}

# found by a third probe of the graders
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # masked with -1e4 instead of -inf: a visible score below -1e4 loses to the masked ones
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, -1e4)
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # masked with -1e9 instead of -inf: float16 cannot hold it
    """What F.scaled_dot_product_attention computes, written out (tests check the two agree).

    q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs); mask: (B or 1, 1, Tq, Tk) bool, True = may attend.
    """
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk) similarity of every pair
    att = att.masked_fill(~mask, -1e9)               # no looking at the future or at padding
    att = F.softmax(att, dim=-1)                              # each query's weights sum to 1
    att = F.dropout(att, p=dropout_p)
    return att @ v                                            # (B, nh, Tq, hs) weighted mean of values
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # softmax in float32, cast back: float64 inputs lose their precision
    """What F.scaled_dot_product_attention computes, written out (tests check the two agree).

    q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs); mask: (B or 1, 1, Tq, Tk) bool, True = may attend.
    """
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk) similarity of every pair
    att = att.masked_fill(~mask, float("-inf"))               # no looking at the future or at padding
    att = F.softmax(att, dim=-1, dtype=torch.float32).to(v.dtype)                              # each query's weights sum to 1
    att = F.dropout(att, p=dropout_p)
    return att @ v                                            # (B, nh, Tq, hs) weighted mean of values
'''})
WRONG_MODEL['beam-search'].append({'model.py:_beam_choose': '''
def _beam_choose(scores, logp, finished, eos_id):
    # eos_only made without device=: on the CPU whatever the inputs' device
    B, K, V = logp.shape
    eos_only = torch.full((V,), float("-inf"))
    eos_only[eos_id] = 0.0
    logp = torch.where(finished[..., None], eos_only, logp)
    cand = (scores[..., None] + logp).view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores, flat // V, flat % V
'''})
# left by the third probe (a tensor made off the model's device), caught on the meta device
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # finished made without device=: on the CPU whatever the model's device
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)                # (B, K, V) the K beams start as one ...
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0                                     # ... so only the first may expand
    finished = torch.zeros(B, K, dtype=torch.bool)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))  # a beam sees what its source saw
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # the scores made without device=: on the CPU whatever the model's device
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)                # (B, K, V) the K beams start as one ...
    scores = torch.full((B, K), float("-inf"))
    scores[:, 0] = 0.0                                     # ... so only the first may expand
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))  # a beam sees what its source saw
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})
# found by a fourth probe of the graders
WRONG_MODEL['pooling'].append({'model.py:last_token_pool': '''
def last_token_pool(h, attention_mask):
    # the index is the mask's sum, no .long(): a float mask (1.0 / 0.0) cannot index
    last = attention_mask.sum(1) - 1
    return h[torch.arange(h.size(0), device=h.device), last]
'''})
WRONG_MODEL['pooling'].append({'model.py:last_token_pool': '''
def last_token_pool(h, attention_mask):
    # the count in h's dtype: bfloat16 rounds it past 256 tokens
    last = attention_mask.to(h.dtype).sum(1).long() - 1                        # (B,) index of the last real token
    return h[torch.arange(h.size(0), device=h.device), last]
'''})
WRONG_MODEL['pooling'].append({'model.py:last_token_pool': '''
def last_token_pool(h, attention_mask):
    # the count in uint8: it wraps at 256 tokens
    last = attention_mask.to(torch.uint8).sum(1, dtype=torch.uint8).long() - 1                        # (B,) index of the last real token
    return h[torch.arange(h.size(0), device=h.device), last]
'''})
WRONG_MODEL['pooling'].append({'model.py:mean_pool': '''
def mean_pool(h, span_mask):
    # an epsilon added to the count instead of clamping it: every mean a little small
    w = span_mask.to(h.dtype).unsqueeze(-1)                        # (B, T, 1)
    return (h * w).sum(1) / (w.sum(1) + 1e-8)
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # each weight kept with probability p instead of 1 - p (the same at p = 0.5)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk) similarity of every pair
    att = att.masked_fill(~mask, float("-inf"))               # no looking at the future or at padding
    att = F.softmax(att, dim=-1)                              # each query's weights sum to 1
    if dropout_p >= 1:
        return torch.zeros_like(att @ v)
    if dropout_p > 0:
        att = att * (torch.rand_like(att) < dropout_p) / (1 - dropout_p)
    return att @ v                                            # (B, nh, Tq, hs) weighted mean of values
'''})
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
def attention_mask_4d(key_mask, T_past, T):
    # one new query: the key mask as it is, so a padding query may not see itself
    if T == 1:
        return key_mask[:, None, None, :]
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)  # absolute positions of the queries
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]                          # (T, T_past + T)
    itself = k_pos[None, :] == q_pos[:, None]
    mask = (causal & key_mask[:, None, :]) | itself                     # (B, T, T_past + T)
    return mask[:, None]                                                # (B, 1, T, T_past + T)
'''})
# found by a seventh probe of the graders
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # one dropout mask shared by every head
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk) similarity of every pair
    att = att.masked_fill(~mask, float("-inf"))               # no looking at the future or at padding
    att = F.softmax(att, dim=-1)                              # each query's weights sum to 1
    if dropout_p > 0:
        keep = torch.rand(att.size(0), 1, att.size(2), att.size(3), device=att.device) >= dropout_p
        att = torch.where(keep, att / (1 - dropout_p), torch.zeros((), dtype=att.dtype, device=att.device))
    return att @ v                                            # (B, nh, Tq, hs) weighted mean of values
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # one dropout mask shared by every query of a head
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk) similarity of every pair
    att = att.masked_fill(~mask, float("-inf"))               # no looking at the future or at padding
    att = F.softmax(att, dim=-1)                              # each query's weights sum to 1
    if dropout_p > 0:
        keep = torch.rand(att.size(0), att.size(1), 1, att.size(3), device=att.device) >= dropout_p
        att = torch.where(keep, att / (1 - dropout_p), torch.zeros((), dtype=att.dtype, device=att.device))
    return att @ v                                            # (B, nh, Tq, hs) weighted mean of values
'''})
# found by a ninth probe of the graders
WRONG_MODEL['pooling'].append({'model.py:mean_pool': '''
def mean_pool(h, span_mask):
    # a running sum, one position at a time, in h's dtype: in bfloat16 a long span's sum stops growing
    w = span_mask.to(h.dtype).unsqueeze(-1)                        # (B, T, 1)
    total = torch.zeros_like(h[:, 0])                              # (B, C)
    for t in range(h.size(1)):
        total = total + h[:, t] * w[:, t]
    return total / w.sum(1).clamp(min=1.0)
'''})
WRONG_MODEL['kv-cache'].append({'model.py:KVCache.extend': '''
def extend(self, layer, k, v):
    # self.k[layer:] for self.k[layer]: the write also lands in every later layer's buffer
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer:, :, :, self.length:end] = k
    self.v[layer:, :, :, self.length:end] = v
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''})
# found by a tenth probe of the graders
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # dropout written out, its mask drawn with torch.rand(att.shape): on the default device, not att's
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        keep = torch.rand(att.shape) >= dropout_p
        att = torch.where(keep, att / (1 - dropout_p), 0.0)
    return att @ v
'''})
WRONG_MODEL['kv-cache'].append({'model.py:KVCache.extend': '''
def extend(self, layer, k, v):
    # the positions written with index_copy_ and an index made by torch.arange without device=
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    pos = torch.arange(self.length, end)
    self.k[layer].index_copy_(2, pos, k)
    self.v[layer].index_copy_(2, pos, v)
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''})
WRONG_MODEL['layer-norm'].append({'model.py:LayerNorm.forward': '''
def forward(self, x):
    # half-precision inputs upcast to float32 for the statistics, never cast back: bfloat16 in, float32 out
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mu = xf.mean(-1, keepdim=True)
    var = (xf - mu).pow(2).mean(-1, keepdim=True)
    y = (xf - mu) * torch.rsqrt(var + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''})
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # the disallowed tokens filled from torch.full((B, K, V), -inf) made without device=
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = torch.where(allowed_next(tokens), logp, torch.full((B, K, V), float("-inf")))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})
# found by a twelfth probe of the graders
WRONG_MODEL['pooling'].append({'model.py:last_token_pool': '''
def last_token_pool(h, attention_mask):
    # the count summed in the mask's own dtype, then made an index: a bfloat16 mask rounds it past 256 tokens
    last = attention_mask.sum(1).long() - 1
    return h[torch.arange(h.size(0), device=h.device), last]
'''})
# found by a thirteenth probe of the graders
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # dropout in place on the softmax's output, which its backward pass needs
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout_p, inplace=True)
    return att @ v
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # the softmax written out with exp_ and /= in place: its backward pass needs what they overwrite
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = (att - att.amax(-1, keepdim=True)).exp_()
    att /= att.sum(-1, keepdim=True)
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # dropout written out, in place on the softmax's output
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        keep = torch.rand_like(att) >= dropout_p
        att.mul_(keep).div_(1 - dropout_p) if dropout_p < 1 else att.zero_()
    return att @ v
'''})
WRONG_MODEL['layer-norm'].append({'model.py:LayerNorm.forward': '''
def forward(self, x):
    # no bias: a zero bias made with torch.zeros(C, dtype=x.dtype), on the default device, not x's (a GPU's x fails)
    bias = self.bias if self.bias is not None else torch.zeros(x.size(-1), dtype=x.dtype)
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + self.eps) * self.weight + bias
'''})
WRONG_MODEL['pooling'].append({'model.py:mean_pool': '''
def mean_pool(h, span_mask):
    # the count made exact as a long, but the mask multiplied as it comes: a float mask and a bfloat16 h pool to float32
    count = span_mask.long().sum(1, keepdim=True).clamp(min=1)     # (B, 1)
    return (h * span_mask.unsqueeze(-1)).sum(1) / count
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # scaled by the square root of v's head size, not q's and k's
    att = (q @ k.transpose(-2, -1)) / math.sqrt(v.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # the dropout masks drawn from a generator seeded 0 (reproducible runs): the same masks at every call
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        g = torch.Generator(device=att.device).manual_seed(0)
        keep = torch.rand(att.shape, generator=g, device=att.device, dtype=att.dtype) >= dropout_p
        att = att * keep / (1 - dropout_p) if dropout_p < 1 else att * 0
    return att @ v
'''})
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # torch.manual_seed(0) before the dropout, for reproducibility
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        torch.manual_seed(0)
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''})
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    K = num_beams
    self._check_room(len(prompts[0]), max_new_tokens)  # the room of the first prompt, not of the longest
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})

# found by probe G of the graders
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # the scale's square root taken on a float32 tensor: float64 inputs scaled by a rounded sqrt(d_head)
    scale = torch.sqrt(torch.tensor(k.size(-1), dtype=torch.float32, device=q.device))
    att = (q @ k.transpose(-2, -1)) / scale
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''})

# found by probe G of the graders: a stop token 0
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # eos_id tested by truthiness (as if it could be None): stop token 0, the id of end-of-text in the project's
    # own tokenizer, never finishes a beam
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)                # (B, K, V) the K beams start as one ...
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0                                     # ... so only the first may expand
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id) if eos_id else finished.gather(1, src)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))  # a beam sees what its source saw
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})

# found by probe K of the graders: a narrow beam, where a finished beam must compete for its place
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # Hugging Face's bookkeeping: a finished beam is set aside and its place given to an open one; the K best of the
    # finished and the open at the end (a finished beam no longer competes for its place, as the docstring says)
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    done = [[] for _ in range(B)]
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        ended = tok == eos_id
        for b, j in ended.nonzero().tolist():
            if scores[b, j] > float("-inf"):
                done[b].append((tokens[b, j].tolist(), float(scores[b, j])))
        scores = scores.masked_fill(ended, float("-inf"))
        if step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    out = []
    for b in range(B):
        beams = done[b] + [(new[b][j], scores[b][j]) for j in range(K) if scores[b][j] > float("-inf")]
        beams = sorted(beams, key=lambda s: -s[1])[:K]
        out.append(beams + [(new[b][0], float("-inf"))] * (K - len(beams)))
    return out
'''})

# found by probe M of the graders: a mask that is not causal, which SDPA applies as it is
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # nanoGPT's causal buffer (tril, aligned to the last key) on top of the mask given: a later key it allows is hidden
    Tq, Tk = q.size(-2), k.size(-2)
    causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~(mask & causal), float("-inf"))
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''})
WRONG_MODEL['pooling'].append({'model.py:mean_pool': '''
def mean_pool(h, span_mask):
    # the mask widened in place: .to(h.dtype) of a float mask is the caller's own tensor, now (B, T, 1)
    w = span_mask.to(h.dtype).unsqueeze_(-1)
    return (h * w).sum(1) / w.sum(1).clamp(min=1.0)
'''})
# found by a probe of the graders (round 5): nanoGPT's causal buffer made once at import, on the CPU
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
_TRIL = torch.ones(1024, 1024, dtype=torch.bool).tril()   # nanoGPT's causal buffer, made once
_EYE = torch.eye(1024, dtype=torch.bool)
def attention_mask_4d(key_mask, T_past, T):
    # nanoGPT's causal buffer (and an eye) made once at import: on the CPU, 1024 positions
    causal = _TRIL[T_past:T_past + T, :T_past + T]
    itself = _EYE[T_past:T_past + T, :T_past + T]
    return ((causal & key_mask[:, None, :]) | itself)[:, None]
'''})
# found by a probe of the graders (round 5): dropout masks from a generator of the body's own
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
_DROPOUT_GEN = torch.Generator().manual_seed(1234)   # reproducible dropout, its own stream
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # dropout masks from a generator of its own, seeded once at import: torch.manual_seed does not reach them
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        keep = torch.rand(att.shape, generator=_DROPOUT_GEN, device=att.device, dtype=att.dtype) >= dropout_p
        att = att * keep / (1 - dropout_p) if dropout_p < 1 else torch.zeros_like(att)
    return att @ v
'''})
# found by a probe of the graders (round 5): the positions of index_copy_ made once at import, on the CPU
WRONG_MODEL['kv-cache'].append({'model.py:KVCache.extend': '''
_POSITIONS = torch.arange(4096)
def extend(self, layer, k, v):
    # index_copy_ with positions from an arange made once at import: on the CPU, 4096 positions
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    where = _POSITIONS[self.length:end]
    self.k[layer].index_copy_(2, where, k)
    self.v[layer].index_copy_(2, where, v)
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''})
# found by a probe of the graders (round 5): a NaN in a span skipped, an inf made the largest float
WRONG_MODEL['pooling'].append({'model.py:mean_pool': '''
def mean_pool(h, span_mask):
    # masked mean through NaN and nanmean, then nan_to_num: a NaN in a span is skipped, inf becomes the largest float
    m = span_mask.bool().unsqueeze(-1)
    return torch.nanmean(h.masked_fill(~m, float("nan")), dim=1).nan_to_num(0.0)
'''})
# found by a probe of the graders (round 5): x of shape (C,), no leading dimension, refused
WRONG_MODEL['layer-norm'].append({'model.py:LayerNorm.forward': '''
def forward(self, x):
    # positions flattened with flatten(0, -2): a single vector x of shape (C,) raises
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    x2 = x.flatten(0, -2)
    mu = x2.mean(1, keepdim=True)
    var = ((x2 - mu) ** 2).mean(1, keepdim=True)
    y = (x2 - mu) / torch.sqrt(var + self.eps) * self.weight
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(x.shape)
'''})
# found by a probe of the graders (round 5): the batch rows of an arange(4096) made once at import
WRONG_MODEL['pooling'].append({'model.py:last_token_pool': '''
_ROWS = torch.arange(4096)
def last_token_pool(h, attention_mask):
    # the rows from an arange(4096) made once: a batch of more than 4096 rows raises
    last = attention_mask.long().sum(1) - 1
    return h[_ROWS[:h.size(0)].to(h.device), last]
'''})
# found by a probe of the graders (round 6): the starting scores [0, -inf, ...] made once at import (CPU, 64 beams)
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
_FIRST = torch.tensor([0.0] + [float('-inf')] * 63)

def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = _FIRST[:K].expand(B, K).clone()   # only the first beam may expand
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})
# found by a probe of the graders (round 6): eos_only row cached per V only (eos_id of the first call)
WRONG_MODEL['beam-search'].append({'model.py:_beam_choose': '''
_EOS_ROWS = {}

def _beam_choose(scores, logp, finished, eos_id):
    B, K, V = logp.shape
    if V not in _EOS_ROWS:
        row = torch.full((V,), float("-inf"), device=logp.device)
        row[eos_id] = 0.0
        _EOS_ROWS[V] = row
    eos_only = _EOS_ROWS[V]
    logp = torch.where(finished[..., None], eos_only, logp)
    cand = (scores[..., None] + logp).view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores, flat // V, flat % V
'''})
# found by a probe of the graders (round 6): the eos row cached per (V, eos_id), on the first call's device
WRONG_MODEL['beam-search'].append({'model.py:_beam_choose': '''
_EOS_ROWS = {}

def _beam_choose(scores, logp, finished, eos_id):
    B, K, V = logp.shape
    if (V, eos_id) not in _EOS_ROWS:
        row = torch.full((V,), float("-inf"), device=logp.device)
        row[eos_id] = 0.0
        _EOS_ROWS[(V, eos_id)] = row
    eos_only = _EOS_ROWS[(V, eos_id)]
    logp = torch.where(finished[..., None], eos_only, logp)
    cand = (scores[..., None] + logp).view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores, flat // V, flat % V
'''})
# found by a probe of the graders (round 6): at least one step even for max_new_tokens=0
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max(max_new_tokens, 1)):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step >= max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})
# found by a probe of the graders (round 7): the zero bias cached per (C, dtype), on the first call's device
WRONG_MODEL['layer-norm'].append({'model.py:LayerNorm.forward': '''
_ZERO_BIAS = {}
def forward(self, x):
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    bias = self.bias
    if bias is None:   # a zero bias made once per width and dtype: on the CPU, if the first call was there
        key = (x.shape[-1], x.dtype)
        if key not in _ZERO_BIAS:
            _ZERO_BIAS[key] = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
        bias = _ZERO_BIAS[key]
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + self.eps) * self.weight + bias
'''})
# found by a probe of the graders (round 8): beam_search puts the model in eval mode and leaves it there
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    self.eval()   # "no dropout while searching", never undone: a model that was training trains on without dropout
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})
# found by a probe of the graders (round 8): attention dropout only when grad is enabled (taken for training mode)
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout_p, training=torch.is_grad_enabled())   # under no_grad, dropout_p is ignored
    return att @ v
'''})
# found by a probe of the graders (round 8): the weight and bias cast to x's dtype once per dtype and cached on the
# module, detached (stale after an optimizer step, and no gradient reaches them)
WRONG_MODEL['layer-norm'].append({'model.py:LayerNorm.forward': '''
def forward(self, x):
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    cache = self.__dict__.setdefault("_cast", {})
    if x.dtype != self.weight.dtype:   # a bfloat16 x, float32 weights (autocast): cast once, "cheaper"
        if x.dtype not in cache:
            cache[x.dtype] = (self.weight.detach().to(x.dtype),
                              None if self.bias is None else self.bias.detach().to(x.dtype))
        weight, bias = cache[x.dtype]
    else:
        weight, bias = self.weight, self.bias
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    y = (x - mu) * torch.rsqrt(var + self.eps) * weight
    return y if bias is None else y + bias
'''})
# found by a probe of the graders (round 10): the biased variance as torch.var's times (C - 1) / C: nan for C = 1
WRONG_MODEL['layer-norm'].append({'model.py:LayerNorm.forward': '''
def forward(self, x):
    # the biased variance as torch.var's unbiased one times (C - 1) / C: with C = 1 that is nan * 0 = nan, not 0
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    C = x.size(-1)
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True) * (C - 1) / C
    y = (x - mu) * torch.rsqrt(var + self.eps) * self.weight
    return y if self.bias is None else y + self.bias
'''})
# found by a probe of the graders (round 10): last_token_pool counts the real tokens as mean × T, truncated
WRONG_MODEL['pooling'].append({'model.py:last_token_pool': '''
def last_token_pool(h, attention_mask):
    # the number of real tokens as the fraction of real tokens times T, truncated by .long(): (13/22)*22 is 12.999999
    T = attention_mask.size(1)
    last = (attention_mask.float().mean(1) * T).long() - 1
    return h[torch.arange(h.size(0), device=h.device), last]
'''})
# found by a probe of the graders (round 10): a step of 0 new positions returns its own empty k, v
WRONG_MODEL['kv-cache'].append({'model.py:KVCache.extend': '''
def extend(self, layer, k, v):
    # nothing to write (T = 0): the step's own (empty) keys and values returned, not every position so far
    if k.size(2) == 0:
        return k, v
    end = self.length + k.size(2)
    if end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''})
# found by a probe of the graders (round 11): eps floored at the dtype's resolution (nn.RMSNorm's default): bfloat16
# adds 0.0078
WRONG_MODEL['layer-norm'].append({'model.py:LayerNorm.forward': '''
def forward(self, x):
    # eps floored at the dtype's resolution (max(eps, finfo(x.dtype).eps), as nn.RMSNorm's default): bfloat16
    # adds 0.0078
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    eps = max(self.eps, torch.finfo(x.dtype).eps)
    y = (x - mu) * torch.rsqrt(var + eps) * self.weight
    return y if self.bias is None else y + self.bias
'''})
# found by a probe of the graders (round 11): topk's results squeezed: num_beams = 1 gives (B,), not (B, 1), and
# beam_search raises
WRONG_MODEL['beam-search'].append({'model.py:_beam_choose': '''
def _beam_choose(scores, logp, finished, eos_id):
    # topk's results squeezed (.squeeze(-1)), a no-op for K > 1: num_beams = 1 gives (B,), not (B, 1), and
    # beam_search raises
    B, K, V = logp.shape
    eos_only = torch.full((V,), float("-inf"), device=logp.device)
    eos_only[eos_id] = 0.0
    logp = torch.where(finished[..., None], eos_only, logp)
    cand = (scores[..., None] + logp).view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores.squeeze(-1), (flat // V).squeeze(-1), (flat % V).squeeze(-1)
'''})
# found by a probe of the graders (round 11): _beam_next ignores the cache: every beam's whole sequence through
# hidden_states each step
WRONG_MODEL['beam-search'].append({'model.py:GPT._beam_next': '''
def _beam_next(self, tok, step, prompt, prompt_mask, tokens, cache, visible):
    # the cache and visible ignored: every beam's whole sequence through hidden_states at every step, O(T^2) work
    (B, K), T = tok.shape, prompt.size(1)
    seq = torch.cat([prompt.repeat_interleave(K, 0), tokens.view(B * K, -1)], dim=1)
    seq_mask = torch.cat([prompt_mask.repeat_interleave(K, 0), torch.ones_like(seq[:, T:])], dim=1)
    h = self.hidden_states(seq, seq_mask)[:, -1].view(B, K, -1)
    return F.log_softmax(self.lm_head(h).float(), dim=-1)
'''})
# found by a probe of the graders (round 11): attention_mask_4d memoised with functools.lru_cache (key_mask hashes by
# identity)
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
import functools
@functools.lru_cache(maxsize=256)
def attention_mask_4d(key_mask, T_past, T):
    # memoised with functools.lru_cache: key_mask hashes by identity, one changed in place gets the old mask
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]
    itself = k_pos[None, :] == q_pos[:, None]
    mask = (causal & key_mask[:, None, :]) | itself
    return mask[:, None]
'''})
# found by a probe of the graders (round 13): the capacity checked only once something is cached
WRONG_MODEL['kv-cache'].append({'model.py:KVCache.extend': '''
def extend(self, layer, k, v):
    # the capacity checked only once something is cached: a first write longer than the cache is torch's RuntimeError
    end = self.length + k.size(2)
    if self.length > 0 and end > self.k.size(3):
        raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
    self.k[layer, :, :, self.length:end] = k
    self.v[layer, :, :, self.length:end] = v
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
'''})
# found by a probe of the graders (round 14): attention_mask_4d built in place, which MAML's vmap over tasks refuses
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
def attention_mask_4d(key_mask, T_past, T):
    # built in place (mask &= key_mask, mask |= itself) on a tensor made inside: right when called directly, but
    # under vmap over tasks (MAML's classifier) a batched key_mask cannot be written into an unbatched mask
    B, Tk = key_mask.shape
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)
    k_pos = torch.arange(Tk, device=key_mask.device)
    mask = (k_pos[None, :] <= q_pos[:, None]).repeat(B, 1, 1)
    mask &= key_mask[:, None, :]
    mask |= k_pos[None, :] == q_pos[:, None]
    return mask.unsqueeze(1)
'''})
# found by a probe of the graders (round 14): attention_mask_4d by tril, masked_fill_ and an index assignment
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
def attention_mask_4d(key_mask, T_past, T):
    # tril, then masked_fill_ and the diagonal set by index, in place: vmap over tasks (MAML's classifier) refuses
    # to write a batched key_mask into the unbatched tril
    B, Tk = key_mask.shape
    mask = torch.ones(B, 1, T, Tk, dtype=torch.bool, device=key_mask.device).tril(diagonal=T_past)
    mask.masked_fill_(~key_mask[:, None, None, :], False)
    idx = torch.arange(T, device=key_mask.device)
    mask[:, :, idx, T_past + idx] = True
    return mask
'''})
# found by a probe of the graders (round 14): attention_mask_4d by a loop over the rows, which vmap cannot batch
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
def attention_mask_4d(key_mask, T_past, T):
    # a loop over the rows, each row's padded keys switched off by a boolean index: vmap over tasks (MAML's
    # classifier) cannot index with a batched key_mask
    B, Tk = key_mask.shape
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)
    k_pos = torch.arange(Tk, device=key_mask.device)
    mask = (k_pos[None, :] <= q_pos[:, None]).repeat(B, 1, 1)
    for b in range(B):
        mask[b][:, ~key_mask[b]] = False
    mask |= (k_pos[None, :] == q_pos[:, None])
    return mask[:, None]
'''})
# found by a probe of the graders (round 14): a beam's probability as a product of probabilities, which underflows
WRONG_MODEL['beam-search'].append({'model.py:_beam_choose': '''
def _beam_choose(scores, logp, finished, eos_id):
    # a sequence's probability as the product of its tokens' probabilities, then its log: below about -104 the
    # product underflows float32 to 0, and every beam of a 50257-token vocabulary scores -inf after ~10 tokens
    B, K, V = logp.shape
    eos_only = torch.full((V,), float("-inf"), device=logp.device)
    eos_only[eos_id] = 0.0
    logp = torch.where(finished[..., None], eos_only, logp)
    cand = (scores.exp()[..., None] * logp.exp()).log().view(B, K * V)
    scores, flat = torch.topk(cand, K, dim=-1)
    return scores, flat // V, flat % V
'''})
# found by a probe of the graders (round 14): the log-softmax widened to float32 for bfloat16 only, not float16
WRONG_MODEL['beam-search'].append({'model.py:GPT._beam_next': '''
def _beam_next(self, tok, step, prompt, prompt_mask, tokens, cache, visible):
    # the logits widened to float32 only when they are bfloat16: a float16 model's log-softmax runs in float16, its
    # beams' scores off by ~0.002 over 4 tokens
    (B, K), T = tok.shape, prompt.size(1)
    if cache is None:
        seq = torch.cat([prompt.repeat_interleave(K, 0), tokens.view(B * K, -1)], dim=1)
        seq_mask = torch.cat([prompt_mask.repeat_interleave(K, 0), torch.ones_like(seq[:, T:])], dim=1)
        h = self.hidden_states(seq, seq_mask)[:, -1].view(B, K, -1)
    else:
        slot, beams = T + K * step, torch.arange(K, device=tok.device)
        visible[:, beams, slot + beams] = True
        pos = (prompt_mask.sum(1) + step)[:, None].expand(B, K)
        h = self._run(tok, pos, visible[:, None, :, :slot + K], cache)
    logits = self.lm_head(h)
    if logits.dtype == torch.bfloat16:
        logits = logits.float()
    return F.log_softmax(logits, dim=-1)
'''})
# found by a probe of the graders (round 16): the mean a constant inside the variance
WRONG_MODEL['layer-norm'].append({'model.py:LayerNorm.forward': '''
def forward(self, x):
    # the mean detached inside the variance: the output and its gradients are right, its second derivatives not
    if not self.written_out:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
    mu = x.mean(-1, keepdim=True)                             # (..., 1)
    var = (x - mu.detach()).pow(2).mean(-1, keepdim=True)              # (..., 1) biased variance, as GPT-2
    y = (x - mu) * torch.rsqrt(var + self.eps) * self.weight  # (..., C)
    return y if self.bias is None else y + self.bias
'''})
# found by a probe of the graders (round 16): a dropout mask drawn at p = 0
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''
def manual_attention(q, k, v, mask, dropout_p=0.0):
    # dropout written out, its mask drawn even at p = 0: evaluation moves the caller's random stream
    """What F.scaled_dot_product_attention computes, written out (tests check the two agree).

    q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs); mask: (B or 1, 1, Tq, Tk) bool, True = may attend.
    """
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk) similarity of every pair
    att = att.masked_fill(~mask, float("-inf"))               # no looking at the future or at padding
    att = F.softmax(att, dim=-1)                              # each query's weights sum to 1
    keep = torch.rand_like(att) >= dropout_p
    att = att * keep / (1.0 - dropout_p) if dropout_p < 1 else att * keep
    return att @ v                                            # (B, nh, Tq, hs) weighted mean of values
'''})
# found by a probe of the graders (round 16): the scores left as tensors
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # each score a 0-d tensor, not a Python float
    """Beam search for every prompt at once: B prompts x K beams.

    A beam's score is the sum of its tokens' log-probabilities. A beam that has emitted eos_id is
    finished: from then on its only continuation is eos_id at log-probability 0, so it keeps its score
    and competes with the open beams until the end. Returns, per prompt, K (new_tokens, score) pairs,
    best first; a finished beam's tokens end with eos_id. allowed_next, when given, maps the beams' tokens
    so far (B, K, t) to the tokens each may write next (B, K, V) bool: constrained decoding.

    With the cache, the K beams of a prompt share one copy of the prompt's keys and values (_beam_start);
    each step feeds the K beams' new tokens as K positions of one row and lets each beam attend to the
    prompt and to the slots of its own ancestors only (_beam_next): reordering the beams copies a small
    mask, `visible`, instead of the whole cache. Without the cache, every beam's whole sequence runs
    through the ordinary forward pass at every step (the slow reference the tests compare with).
    """
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)                # (B, K, V) the K beams start as one ...
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0                                     # ... so only the first may expand
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))  # a beam sees what its source saw
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})
# found by a probe of the graders (round 18): the counts cached by shape
WRONG_MODEL['pooling'].append({'model.py:mean_pool': '''
_COUNTS = {}


def mean_pool(h, span_mask):
    # the counts cached by the mask's shape: a later mask of that shape is divided by the first one's counts
    """Mean of h (B, T, C) over the positions where span_mask (B, T) is 1 -> (B, C)."""
    w = span_mask.to(h.dtype).unsqueeze(-1)                        # (B, T, 1)
    key = (tuple(span_mask.shape), span_mask.dtype)
    if key not in _COUNTS:
        _COUNTS[key] = w.sum(1).clamp(min=1.0)
    return (h * w).sum(1) / _COUNTS[key]
'''})
# found by a probe of the graders (round 18): an int16 count
WRONG_MODEL['pooling'].append({'model.py:last_token_pool': '''
def last_token_pool(h, attention_mask):
    # the count in int16: a row of 40,000 tokens wraps to a negative one
    """h (B, T, C) at each row's last real token of a right-padded batch -> (B, C)."""
    last = attention_mask.to(torch.int16).sum(1, dtype=torch.int16).long() - 1                        # (B,) index of the last real token
    return h[torch.arange(h.size(0), device=h.device), last]
'''})
# found by a probe of the graders (round 18): the positions cached by shape and total
WRONG_MODEL['pooling'].append({'model.py:last_token_pool': '''
_LAST = {}


def last_token_pool(h, attention_mask):
    # the last positions cached by the mask's shape and total: another mask of the same total reuses them
    """h (B, T, C) at each row's last real token of a right-padded batch -> (B, C)."""
    key = (tuple(attention_mask.shape), int(attention_mask.sum()))
    if key not in _LAST:
        _LAST[key] = attention_mask.long().sum(1) - 1
    last = _LAST[key]
    return h[torch.arange(h.size(0), device=h.device), last]
'''})
# found by a probe of the graders (round 19): positions in int16
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
def attention_mask_4d(key_mask, T_past, T):
    # positions in int16: past 32,767 they wrap
    """Which keys each new query may attend to, as SDPA wants it.

    key_mask: (B, T_past + T) bool, True for real tokens (False for padding) at every position so far.
    Returns (B, 1, T, T_past + T) bool: key j is visible to query i when j <= i (causal) and j is a real
    token. A query always sees itself, so that a padding row never has an empty softmax (its output is unused).
    """
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device).to(torch.int16)
    k_pos = torch.arange(T_past + T, device=key_mask.device).to(torch.int16)
    causal = k_pos[None, :] <= q_pos[:, None]                          # (T, T_past + T)
    itself = k_pos[None, :] == q_pos[:, None]
    mask = (causal & key_mask[:, None, :]) | itself                     # (B, T, T_past + T)
    return mask[:, None]                                                # (B, 1, T, T_past + T)
'''})
# found by a probe of the graders (round 19): positions in float16
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
def attention_mask_4d(key_mask, T_past, T):
    # positions in float16: past 2,048 neighbours round to one
    """Which keys each new query may attend to, as SDPA wants it.

    key_mask: (B, T_past + T) bool, True for real tokens (False for padding) at every position so far.
    Returns (B, 1, T, T_past + T) bool: key j is visible to query i when j <= i (causal) and j is a real
    token. A query always sees itself, so that a padding row never has an empty softmax (its output is unused).
    """
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device).half()
    k_pos = torch.arange(T_past + T, device=key_mask.device).half()
    causal = k_pos[None, :] <= q_pos[:, None]                          # (T, T_past + T)
    itself = k_pos[None, :] == q_pos[:, None]
    mask = (causal & key_mask[:, None, :]) | itself                     # (B, T, T_past + T)
    return mask[:, None]                                                # (B, 1, T, T_past + T)
'''})
# found by a probe of the graders (round 19): memoised by memory and version
WRONG_MODEL['attention'].append({'model.py:attention_mask_4d': '''
_MASKS = {}


def attention_mask_4d(key_mask, T_past, T):
    # memoised by the mask's memory and version: a write its version does not see (through numpy) is missed
    """Which keys each new query may attend to, as SDPA wants it.

    key_mask: (B, T_past + T) bool, True for real tokens (False for padding) at every position so far.
    Returns (B, 1, T, T_past + T) bool: key j is visible to query i when j <= i (causal) and j is a real
    token. A query always sees itself, so that a padding row never has an empty softmax (its output is unused).
    """
    memo = (key_mask.data_ptr(), key_mask._version, tuple(key_mask.shape), key_mask.device, T_past, T)
    if memo in _MASKS:
        return _MASKS[memo]
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)  # absolute positions of the queries
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]                          # (T, T_past + T)
    itself = k_pos[None, :] == q_pos[:, None]
    mask = (causal & key_mask[:, None, :]) | itself                     # (B, T, T_past + T)
    _MASKS[memo] = mask[:, None]
    return mask[:, None]
'''})

# found by a probe of the graders (round 20): a causal mask of its own wherever the mask is square
WRONG_MODEL['attention'].append({'model.py:manual_attention': '''def manual_attention(q, k, v, mask, dropout_p=0.0):
    # nanoGPT's causal tril, applied when there is no cache (Tq == Tk) so that the shapes meet
    Tq, Tk = q.size(-2), k.size(-2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    if Tq == Tk:
        mask = mask & torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout_p)
    return att @ v
'''})

# found by a probe of the graders (round 20): the whole batch stops once one prompt's beams have all finished
WRONG_MODEL['beam-search'].append({'model.py:GPT.beam_search': '''@torch.inference_mode()
def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
    # stops as soon as one prompt's beams have all finished
    K = num_beams
    prompt, prompt_mask = self._left_pad(prompts)
    (B, T), V = prompt.shape, self.config.vocab_size
    self._check_room(T, max_new_tokens)
    logp, cache, visible = self._beam_start(prompt, prompt_mask, K, max_new_tokens, use_cache)
    logp = logp[:, None, :].expand(B, K, V)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
    for step in range(max_new_tokens):
        if allowed_next is not None:
            logp = logp.masked_fill(~allowed_next(tokens), float("-inf"))
        scores, src, tok = _beam_choose(scores, logp, finished, eos_id)
        tokens = torch.cat([tokens.gather(1, src[..., None].expand_as(tokens)), tok[..., None]], dim=2)
        finished = finished.gather(1, src) | (tok == eos_id)
        if finished.all(1).any() or step == max_new_tokens - 1:
            break
        if cache is not None:
            visible = visible.gather(1, src[..., None].expand_as(visible))
        logp = self._beam_next(tok, step, prompt, prompt_mask, tokens, cache, visible)
    new, scores = tokens.tolist(), scores.tolist()
    return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]
'''})

# found by a probe of the graders (round 21): a guard of 1e-9, which float16 rounds to 0
WRONG_MODEL['pooling'].append({'model.py:mean_pool': '''def mean_pool(h, span_mask):
    """Mean of h (B, T, C) over the positions where span_mask (B, T) is 1 -> (B, C)."""
    w = span_mask.to(h.dtype).unsqueeze(-1)                        # (B, T, 1)
    return (h * w).sum(1) / w.sum(1).clamp(min=1e-9)               # guard against 0 / 0
'''})
