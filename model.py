"""
A small decoder-only transformer with GPT-2's architecture and GPT-2's parameter names.

Read it top to bottom: LayerNorm -> attention -> MLP -> Block -> GPTConfig -> GPT (init, forward, generation, beam
search, loading GPT-2 weights) -> pooling helpers -> checkpoints. Both papers of the project run on it:
CALRec pools its hidden states into user and item vectors and generates item text; MAML puts a small
classifier head on its pooled hidden states.

References: Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2, 2019);
Vaswani et al., "Attention Is All You Need" (2017). The module names equal those of the Hugging Face
GPT-2 checkpoints (transformer.wte, transformer.h.0.attn.c_attn, ...), so that `GPT.from_pretrained`
is one short loop.

Try it (CPU):  python -c "import model; m = model.GPT(model.GPTConfig()); print(m.generate([[1, 2]], 5))"
"""

import contextlib
import json
import math
import os
import struct
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# layer normalisation


class LayerNorm(nn.Module):
    """GPT-2's LayerNorm, written out: normalise each position's vector to mean 0 and variance 1, then
    scale and shift it. Same parameters (weight, bias) and eps as nn.LayerNorm.

    Why not F.layer_norm: under torch.func.vmap, the backward pass through the gradient of F.layer_norm
    (what second-order MAML takes, task by task) comes out wrong in current PyTorch; these plain ops give
    the right one (tests/test_model.py checks it against a loop over tasks).
    """

    def __init__(self, ndim, bias=True, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)                             # (..., 1)
        var = (x - mu).pow(2).mean(-1, keepdim=True)              # (..., 1) biased variance, as GPT-2
        y = (x - mu) * torch.rsqrt(var + self.eps) * self.weight  # (..., C)
        return y if self.bias is None else y + self.bias


# -----------------------------------------------------------------------------
# attention


def manual_attention(q, k, v, mask, dropout_p=0.0):
    """What F.scaled_dot_product_attention computes, written out (tests check the two agree).

    q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs); mask: (B or 1, 1, Tq, Tk) bool, True = may attend.
    """
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk) similarity of every pair
    att = att.masked_fill(~mask, float("-inf"))               # no looking at the future or at padding
    att = F.softmax(att, dim=-1)                              # each query's weights sum to 1
    att = F.dropout(att, p=dropout_p)
    return att @ v                                            # (B, nh, Tq, hs) weighted mean of values


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)      # heads -> residual
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, mask=None, past_kv=None):
        """x: (B, T, C). mask: (B, 1, T, T_past + T) bool, or None for plain causal attention.
        past_kv: the (k, v) of earlier positions when generating with a KV cache.
        Returns the output (B, T, C) and this layer's (k, v) over all positions so far."""
        B, T, C = x.size()  # batch, sequence length, embedding dim
        q, k, v = self.c_attn(x).split(C, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)  # (B, nh, T_past + T, hs)
            v = torch.cat([past_kv[1], v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        # the fused kernel; manual_attention above is the same computation spelled out. Its fast CPU
        # kernel has no double backward: second-order MAML runs it under
        # torch.nn.attention.sdpa_kernel(SDPBackend.MATH), which is built from differentiable ops.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                           is_causal=mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C) heads side by side again
        return self.resid_dropout(self.c_proj(y)), (k, v)


# -----------------------------------------------------------------------------
# the rest of a block


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask=None, past_kv=None):
        a, kv = self.attn(self.ln_1(x), mask, past_kv)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv


@dataclass
class GPTConfig:
    block_size: int = 256     # longest sequence the model reads (number of learned positions)
    vocab_size: int = 4096    # rows of the token embedding table (GPT-2: 50257)
    n_layer: int = 4          # transformer blocks (GPT-2 124M: 12)
    n_head: int = 4           # attention heads per block (GPT-2 124M: 12)
    n_embd: int = 128         # width of the residual stream (GPT-2 124M: 768)
    dropout: float = 0.0      # dropout on attention weights and residual branches (0 for small data)
    bias: bool = True         # biases in Linear and LayerNorm, as GPT-2 has them


# -----------------------------------------------------------------------------
# the model


def attention_mask_4d(key_mask, T_past, T):
    """Which keys each new query may attend to, as SDPA wants it.

    key_mask: (B, T_past + T) bool, True for real tokens (False for padding) at every position so far.
    Returns (B, 1, T, T_past + T) bool: key j is visible to query i when j <= i (causal) and j is a real
    token. A query always sees itself, so that a padding row never has an empty softmax (its output is
    ignored by the caller anyway).
    """
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)  # absolute positions of the queries
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]                          # (T, T_past + T)
    itself = k_pos[None, :] == q_pos[:, None]
    mask = (causal & key_mask[:, None, :]) | itself                     # (B, T, T_past + T)
    return mask[:, None]                                                # (B, 1, T, T_past + T)


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix reads and writes tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual branches: keep the stream's variance ~constant
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, LayerNorm):
            torch.nn.init.ones_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        """Parameter count; the position table is left out by default, as nanoGPT reports it."""
        n = sum(p.numel() for p in self.parameters())  # the tied matrix is counted once
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    # --- the forward pass -------------------------------------------------------

    def _run(self, idx, key_mask=None, past=None):
        """The transformer proper, shared by training and generation.

        idx: (B, T) new tokens. key_mask: (B, T_past + T) bool for every position so far, or None when
        nothing is padded. past: per-layer (k, v) of earlier positions, or None.
        Returns hidden states (B, T, C) after the final LayerNorm, and the per-layer (k, v) cache.
        """
        B, T = idx.size()
        T_past = 0 if past is None else past[0][0].size(2)
        if T_past + T > self.config.block_size:
            raise ValueError(f"sequence of {T_past + T} tokens is longer than block_size="
                             f"{self.config.block_size}")
        if key_mask is None and T_past > 0:
            key_mask = torch.ones(B, T_past + T, dtype=torch.bool, device=idx.device)
        if key_mask is None:  # nothing padded, no cache: plain causal attention, the fastest kernel
            pos = torch.arange(T, device=idx.device)[None]  # (1, T)
            mask = None
        else:
            # a token's position counts the real tokens before it, so a left-padded prompt starts at 0
            pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)[:, T_past:]    # (B, T)
            mask = attention_mask_4d(key_mask, T_past, T)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        cache = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, mask, None if past is None else past[i])
            cache.append(kv)
        return self.transformer.ln_f(x), cache

    def encode(self, idx, attention_mask=None):
        """Final hidden states (B, T, C) of a right- or left-padded batch; attention_mask (B, T) is 1 for
        real tokens. Pool them with mean_pool / last_token_pool below."""
        key_mask = None if attention_mask is None else attention_mask.bool()
        return self._run(idx, key_mask)[0]

    def forward(self, idx, attention_mask=None, targets=None, ignore_index=-100):
        """Logits (B, T, V) and, when targets (B, T) are given, the mean cross-entropy over the positions
        whose target is not ignore_index (mark prompt and padding positions with it).
        targets[b, t] is the token that should follow idx[b, t]: the caller shifts."""
        h = self.encode(idx, attention_mask)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=ignore_index)
        return logits, loss

    def configure_optimizers(self, lr, weight_decay=0.1, betas=(0.9, 0.95)):
        """AdamW; weight decay on matrices only (not on biases, LayerNorm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    # --- generation ----------------------------------------------------------------

    def _left_pad(self, prompts):
        """Prompts of different lengths -> (B, T) left-padded tokens and (B, T) bool mask of real ones.
        Left padding puts every prompt's last token in the last column, where generation continues."""
        if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        T = max(len(p) for p in prompts)
        device = self.transformer.wte.weight.device
        idx = torch.zeros(len(prompts), T, dtype=torch.long, device=device)
        key_mask = torch.zeros(len(prompts), T, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            idx[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
            key_mask[i, T - len(p):] = True
        return idx, key_mask

    def _next_logits(self, idx, key_mask, cache, new_tokens, use_cache):
        """Logits (B, V) for the position after the last one, with or without the KV cache.
        cache: the KV cache of everything but new_tokens (None before the first call)."""
        if not use_cache:  # recompute the whole sequence: the slow reference path
            h, _ = self._run(idx, key_mask)
            return self.lm_head(h[:, -1]), None
        if cache is None:  # the prompt pass fills the cache
            h, cache = self._run(idx, key_mask)
        else:              # then one new token per step reads it
            h, cache = self._run(new_tokens[:, None], key_mask, cache)
        return self.lm_head(h[:, -1]), cache

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, eos_id=None, temperature=1.0, top_k=None, greedy=False,
                 use_cache=True):
        """Continue each prompt (a list of token ids; lengths may differ), all in one batch.
        Greedy picks the most likely token; otherwise sample from softmax(logits / temperature), cut to
        the top_k tokens if given. A row stops at eos_id (kept in its output). Returns the new tokens."""
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax")
        idx, key_mask = self._left_pad(prompts)
        B = idx.size(0)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        out, cache, tok = [], None, None
        for _ in range(max_new_tokens):
            logits, cache = self._next_logits(idx, key_mask, cache, tok, use_cache)  # (B, V)
            if greedy:
                tok = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                tok = torch.multinomial(F.softmax(logits, dim=-1), 1)[:, 0]
            out.append(tok)
            idx = torch.cat([idx, tok[:, None]], dim=1)
            key_mask = torch.cat([key_mask, torch.ones_like(done)[:, None]], dim=1)
            if eos_id is not None:
                done |= tok == eos_id
                if done.all():
                    break
        out = torch.stack(out, dim=1).tolist() if out else [[] for _ in range(B)]
        return [_cut_at(row, eos_id) for row in out]

    @torch.no_grad()
    def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True):
        """Beam search for every prompt at once (B prompts x K beams = B*K rows of one batch).

        A beam's score is the sum of its tokens' log-probabilities. A beam that has emitted eos_id is
        finished: from then on its only continuation is eos_id at log-probability 0, so it keeps its score
        and competes with the open beams until the end. Returns, per prompt, K (new_tokens, score) pairs,
        best first; a finished beam's tokens end with eos_id.
        """
        K = num_beams
        idx, key_mask = self._left_pad(prompts)
        B, V = idx.size(0), self.config.vocab_size
        # run each prompt once, then copy its row (and its cache) for the K beams
        logits, cache = self._next_logits(idx, key_mask, None, None, use_cache)  # (B, V)
        rows = torch.arange(B, device=idx.device).repeat_interleave(K)           # (B*K,) prompt of each row
        idx, key_mask, logits = idx[rows], key_mask[rows], logits[rows]
        if cache is not None:
            cache = [(k[rows], v[rows]) for k, v in cache]
        scores = torch.full((B, K), float("-inf"), device=idx.device)
        scores[:, 0] = 0.0  # at the start the K copies are one beam: let only the first expand
        finished = torch.zeros(B * K, dtype=torch.bool, device=idx.device)
        new = torch.empty(B * K, 0, dtype=torch.long, device=idx.device)
        for step in range(max_new_tokens):
            logp = F.log_softmax(logits.float(), dim=-1)                        # (B*K, V)
            eos_only = torch.full_like(logp[0], float("-inf"))
            eos_only[eos_id] = 0.0
            logp = torch.where(finished[:, None], eos_only, logp)
            cand = (scores.view(-1, 1) + logp).view(B, K * V)                   # (B, K*V) every extension
            scores, flat = torch.topk(cand, K, dim=-1)                          # (B, K) best K per prompt
            beam, tok = flat // V, flat % V                                     # which beam, which token
            src = (torch.arange(B, device=idx.device)[:, None] * K + beam).view(-1)  # (B*K,) source rows
            tok = tok.view(-1)
            idx = torch.cat([idx[src], tok[:, None]], dim=1)
            key_mask = torch.cat([key_mask[src], torch.ones_like(finished)[:, None]], dim=1)
            new = torch.cat([new[src], tok[:, None]], dim=1)
            finished = finished[src] | (tok == eos_id)
            if finished.all() or step == max_new_tokens - 1:
                break
            if cache is not None:
                cache = [(k[src], v[src]) for k, v in cache]
            logits, cache = self._next_logits(idx, key_mask, cache, tok, use_cache)
        new, scores = new.view(B, K, -1).tolist(), scores.tolist()
        return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]

    # --- pretrained GPT-2 weights ----------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory, dropout=0.0):
        """Load a Hugging Face GPT-2 checkpoint (any size) from a local folder holding config.json and
        model.safetensors or pytorch_model.bin, without the transformers package."""
        cfg_path = os.path.join(directory, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{cfg_path}: missing; a GPT-2 folder needs config.json and the weights")
        try:
            with open(cfg_path) as f:
                hf = json.load(f)
            config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                               n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                               dropout=dropout, bias=True)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{cfg_path}: not a GPT-2 config.json ({type(e).__name__}: {e})") from None
        weights_path, sd = read_hf_weights(directory)
        # HF names: "transformer." prefix or not (GPT2LMHeadModel vs GPT2Model); the causal-mask buffers
        # "attn.bias" / "attn.masked_bias" of old checkpoints are not weights; lm_head is tied to wte
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items()
              if not k.endswith((".attn.bias", ".attn.masked_bias")) and k != "lm_head.weight"}
        model = cls(config)
        ours = {k.removeprefix("transformer."): k for k in model.state_dict() if k != "lm_head.weight"}
        missing, unexpected = sorted(set(ours) - set(sd)), sorted(set(sd) - set(ours))
        if missing or unexpected:
            raise ValueError(f"{weights_path}: keys do not match GPT-2 with the sizes of {cfg_path}; "
                             f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        # GPT-2 stores these Linear layers as "Conv1D": weight (in, out) instead of (out, in)
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        target = model.state_dict()
        with torch.no_grad():
            for k, name in ours.items():
                w = sd[k].t() if k.endswith(conv1d) else sd[k]
                if w.shape != target[name].shape:
                    raise ValueError(f"{weights_path}: {k} has shape {tuple(sd[k].shape)}, but "
                                     f"{cfg_path} implies {tuple(target[name].shape)}")
                target[name].copy_(w)
        return model


def _cut_at(tokens, eos_id):
    """Tokens up to and including the first eos_id."""
    if eos_id is not None and eos_id in tokens:
        return tokens[:tokens.index(eos_id) + 1]
    return tokens


# -----------------------------------------------------------------------------
# reading Hugging Face weight files

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8,
                       "BOOL": torch.bool}


def read_safetensors(path):
    """The safetensors format is small enough to read by hand: an 8-byte little-endian header length N,
    N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}}, then the raw bytes."""
    with open(path, "rb") as f:
        blob = f.read()
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (bad header: {e})") from None
    data = memoryview(blob)[8 + n:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        if end > len(data) or end - begin != math.prod(info["shape"]) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name} runs past the end of the file or has the wrong size "
                             "(truncated download?)")
        raw = data[begin:end]
        t = torch.frombuffer(bytearray(raw), dtype=dtype) if len(raw) else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
    return tensors


def read_hf_weights(directory):
    """(path, state dict) from model.safetensors, or else pytorch_model.bin, in directory."""
    st, pt = os.path.join(directory, "model.safetensors"), os.path.join(directory, "pytorch_model.bin")
    if os.path.isfile(st):
        return st, read_safetensors(st)
    if os.path.isfile(pt):
        try:
            return pt, torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a corrupt or truncated pickle
            raise ValueError(f"{pt}: cannot be read as a PyTorch weights file ({type(e).__name__}: {e})") \
                from None
    raise FileNotFoundError(f"{directory}: holds neither model.safetensors nor pytorch_model.bin")


# -----------------------------------------------------------------------------
# pooling hidden states into one vector per row


def mean_pool(h, span_mask):
    """Mean of h (B, T, C) over the positions where span_mask (B, T) is 1 -> (B, C)."""
    w = span_mask.to(h.dtype).unsqueeze(-1)                        # (B, T, 1)
    return (h * w).sum(1) / w.sum(1).clamp(min=1.0)


def last_token_pool(h, attention_mask):
    """h (B, T, C) at each row's last real token of a right-padded batch -> (B, C)."""
    last = attention_mask.long().sum(1) - 1                        # (B,) index of the last real token
    return h[torch.arange(h.size(0), device=h.device), last]


# -----------------------------------------------------------------------------
# files a user gives us, and files we write


class UserError(Exception):
    """A mistake in what the user gave (a flag, a file, a folder), found where the problem is: the message reads
    'file[:line]: problem' with at most one hint. train.py prints it as one line `error: ...` and exits with
    status 2; anything else is a bug and keeps its traceback."""


def atomic_write(path, write, mode="w"):
    """Write a file through write(f) into a temporary file next to it, then rename it over `path`: a crash
    mid-write leaves the previous file (or none) intact, never half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)  # atomic on POSIX and Windows
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -----------------------------------------------------------------------------
# the project's own checkpoints


def save_checkpoint(path, model, optimizer, config, step, metrics, **extra):
    """Write {model, optimizer, config, step, metrics, ...} atomically: to a temporary file first, then
    renamed over `path`, so that a crash mid-write leaves the previous checkpoint intact."""
    ckpt = dict(model=model.state_dict(), optimizer=None if optimizer is None else optimizer.state_dict(),
                config=asdict(config) if hasattr(config, "__dataclass_fields__") else dict(config),
                step=step, metrics=dict(metrics), **extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # atomic on POSIX and Windows


def load_checkpoint(path):
    """Read a checkpoint written by save_checkpoint; a clear error for a missing or damaged file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a corrupt or truncated pickle
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    missing = {"model", "config", "step", "metrics"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise ValueError(f"{path}: not a checkpoint of this project (missing {sorted(missing)})")
    return ckpt


def load_model_state(model, state_dict, path):
    """model.load_state_dict with a clear message naming the file and the first mismatch."""
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(state_dict)), sorted(set(state_dict) - set(ours))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in state_dict.items():
        if v.shape != ours[k].shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)} but the model's config needs "
                             f"{tuple(ours[k].shape)}")
    model.load_state_dict(state_dict)


def gpt_from_checkpoint(path):
    """A GPT with the config and weights of a project checkpoint; returns (model, checkpoint dict)."""
    ckpt = load_checkpoint(path)
    try:
        config = GPTConfig(**ckpt["config"])
    except TypeError as e:
        raise ValueError(f"{path}: config does not describe a GPT ({e})") from None
    model = GPT(config)
    load_model_state(model, ckpt["model"], path)
    return model, ckpt


def load_init(path, dropout=0.0):
    """What train.py's --init names: a project checkpoint file (.pt) or a Hugging Face GPT-2 folder.
    Returns the GPT; the caller loads the matching tokenizer (data.load_tokenizer) from the same place."""
    if os.path.isdir(path):
        return GPT.from_pretrained(path, dropout=dropout)
    model, _ = gpt_from_checkpoint(path)
    return model


# -----------------------------------------------------------------------------
# more hardware: mixed precision and several processes (train.py's --dtype and torchrun)


def autocast(device, dtype):
    """Mixed precision on a GPU: matrix products in bfloat16 or float16, reductions kept in float32.
    On the CPU, and for float32, it does nothing (CPU autocast is slower than float32 on most CPUs)."""
    kind = torch.device(device).type
    if dtype == "float32" or kind == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, dtype=getattr(torch, dtype))


def grad_scaler(device, dtype):
    """float16 has a narrow range: scale the loss up before backward so small gradients do not round to 0.
    bfloat16 and float32 need none (the scaler is then a no-op)."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=dtype == "float16" and kind != "cpu")


def rank_and_world():
    """(this process's rank, number of processes): (0, 1) unless started by torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class GatherRows(torch.autograd.Function):
    """All-gather with a backward: each process gets the gradient of its own rows, summed over the losses
    of every process (each process's loss reads every row)."""

    @staticmethod
    def forward(ctx, x):
        rank, world = rank_and_world()
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.size(0)
        return torch.cat(parts, dim=0)                                   # (W*B, ...)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)                               # sum over every process's loss
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]       # (B, ...) this process's rows


def gather_rows(x):
    """Every process's rows of x, concatenated in rank order (W*B, ...), with gradients flowing back to
    the process that owns each row. What contrastive losses need so that negatives span the global batch."""
    _, world = rank_and_world()
    return x if world == 1 else GatherRows.apply(x)  # for tensors without gradients (item ids) just the gather


def all_reduce_sum(x):
    """Sum of a tensor over processes (no gradient): e.g. the global number of target tokens."""
    _, world = rank_and_world()
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
    return x


def average_gradients(params):
    """Average .grad over processes in place: what DistributedDataParallel does, for code (MAML) that runs
    the model through torch.func and so never calls a wrapped module's forward."""
    _, world = rank_and_world()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world
