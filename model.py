"""
A small decoder-only transformer with GPT-2's architecture and GPT-2's parameter names: the one model that both
papers of the project run on. CALRec pools its hidden states into user and item vectors and generates item text;
MAML puts a classifier head on its pooled hidden states.

Read it top to bottom: LayerNorm -> attention -> MLP -> Block -> GPTConfig -> the attention mask and the KV cache
-> GPT (init, forward) -> generation and beam search -> loading GPT-2's weights -> pooling.

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
import pickle
import struct
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# layer normalisation


class LayerNorm(nn.Module):
    """GPT-2's LayerNorm: normalise each position's vector to mean 0 and variance 1, then scale and shift it.
    Same parameters (weight, bias) and eps as nn.LayerNorm.

    Written out below, and run that way inside `second_order_ops(model)`: under torch.func.vmap, the backward
    pass through the gradient of F.layer_norm (what second-order MAML takes) comes out wrong in current PyTorch;
    these plain ops give the right one (tests/test_model.py). Elsewhere the fused kernel does the same, faster.
    """

    def __init__(self, ndim, bias=True, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps
        self.written_out = False  # True inside second_order_ops(model)

    def forward(self, x):
        if not self.written_out:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        mu = x.mean(-1, keepdim=True)                             # (..., 1)
        var = (x - mu).pow(2).mean(-1, keepdim=True)              # (..., 1) biased variance, as GPT-2
        y = (x - mu) * torch.rsqrt(var + self.eps) * self.weight  # (..., C)
        return y if self.bias is None else y + self.bias


@contextlib.contextmanager
def second_order_ops(model):
    """Inside: every op of `model` has a right second derivative under vmap, which second-order MAML takes.
    Attention runs on the MATH kernel (the fused CPU and CUDA kernels have no double backward) and each
    LayerNorm on its written-out ops (see LayerNorm)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    norms = [m for m in model.modules() if isinstance(m, LayerNorm)]
    for m in norms:
        m.written_out = True
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for m in norms:
            m.written_out = False


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

    def forward(self, x, mask=None, cache=None, layer=0):
        """x: (B, T, C). mask: (B, 1, T, T_keys) bool, True = may attend; None: plain causal attention (for one
        new token, attention to every key). cache: a KVCache that stores this layer's new keys and values."""
        B, T, C = x.size()  # batch, sequence length, embedding dim
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs) each
                   for t in self.c_attn(x).split(C, dim=2))
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (B, nh, T_keys, hs): every position so far, these included
        dropout_p = self.dropout if self.training else 0.0
        # the fused kernel; manual_attention above is what it computes (second-order MAML: see second_order_ops)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                           is_causal=mask is None and T > 1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C) heads side by side again
        return self.resid_dropout(self.c_proj(y))


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

    def forward(self, x, mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


@dataclass(frozen=True)
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
    token. A query always sees itself, so that a padding row never has an empty softmax (its output is unused).
    """
    q_pos = torch.arange(T_past, T_past + T, device=key_mask.device)  # absolute positions of the queries
    k_pos = torch.arange(T_past + T, device=key_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]                          # (T, T_past + T)
    itself = k_pos[None, :] == q_pos[:, None]
    mask = (causal & key_mask[:, None, :]) | itself                     # (B, T, T_past + T)
    return mask[:, None]                                                # (B, 1, T, T_past + T)


class KVCache:
    """The keys and values of every position so far, for every layer, in buffers allocated once:
    (n_layer, B, n_head, capacity, head_size) each. A forward pass writes its T new keys and values in place
    at [length, length + T) and attends over [0, length + T): nothing is concatenated or copied as the
    sequence grows."""

    def __init__(self, config, batch, capacity, device, dtype=torch.float32):
        shape = (config.n_layer, batch, config.n_head, capacity, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions written so far (GPT._run advances it after the last layer)

    def extend(self, layer, k, v):
        """Store this step's keys and values (B, nh, T, hs) of `layer`; return all of them so far."""
        end = self.length + k.size(2)
        if end > self.k.size(3):
            raise ValueError(f"the KV cache holds {self.k.size(3)} positions; {end} were asked for")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias)))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix reads and writes tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual branches: keep the stream's variance ~constant
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):  # (a LayerNorm starts as weight 1, bias 0 already)
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def num_params(self):
        """Parameter count less the position table, as nanoGPT reports it (the tied matrix counted once)."""
        return sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()

    # --- the forward pass -------------------------------------------------------

    def _run(self, idx, pos, mask=None, cache=None):
        """The transformer proper, shared by training and generation: hidden states (B, T, C) after the final
        LayerNorm. idx, pos: (B, T) tokens and their positions; mask, cache: as in CausalSelfAttention.forward."""
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, mask, cache, layer)
        if cache is not None:
            cache.length += idx.size(1)
        return self.transformer.ln_f(x)

    def hidden_states(self, idx, attention_mask=None):
        """Final hidden states (B, T, C) of a right- or left-padded batch; attention_mask (B, T): 1 = real token."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size={self.config.block_size}")
        if attention_mask is None:  # nothing padded: plain causal attention, the fastest kernel
            return self._run(idx, torch.arange(T, device=idx.device)[None])
        key_mask = attention_mask.bool()
        # a token's position counts the real tokens before it, so a left-padded row starts at 0
        pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)                # (B, T)
        return self._run(idx, pos, attention_mask_4d(key_mask, 0, T))

    def forward(self, idx, attention_mask=None, targets=None, ignore_index=-100):
        """Logits (B, T, V) and, given targets (B, T), the mean cross-entropy over the positions whose target is not
        ignore_index (mark prompt and padding with it); targets[b, t] should follow idx[b, t]: the caller shifts."""
        logits = self.lm_head(self.hidden_states(idx, attention_mask))  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                       ignore_index=ignore_index)

    def configure_optimizers(self, lr, weight_decay=0.1, betas=(0.9, 0.95)):
        """AdamW; weight decay on matrices only (not on biases, LayerNorm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
                  dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    # --- generation ----------------------------------------------------------------

    def _left_pad(self, prompts):
        """Prompts -> (B, T) tokens left-padded (each last token in the last column, where generation goes on) and
        (B, T) bool mask of the real ones."""
        if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        T = max(len(p) for p in prompts)
        device = self.transformer.wte.weight.device
        idx = torch.zeros(len(prompts), T, dtype=torch.long, device=device)
        key_mask = torch.zeros(len(prompts), T, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            idx[i, T - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
            key_mask[i, T - len(p):] = True
        return idx, key_mask

    def _check_room(self, prompt_len, max_new_tokens):
        if prompt_len + max_new_tokens > self.config.block_size:
            raise ValueError(f"a prompt of {prompt_len} tokens plus {max_new_tokens} new ones is longer than "
                             f"block_size={self.config.block_size}")

    def _next_logits(self, idx, key_mask, cache, new_tokens, use_cache, capacity=None):
        """Logits (B, V) for the position after the last one, with or without the KV cache.

        idx, key_mask: (B, T) every token so far (left-padded) and which are real. cache: None before the
        first call, which runs the prompt and returns a KVCache of `capacity` positions (default
        block_size); each later call feeds only new_tokens (B,), whose keys and values join the cache.
        """
        if not use_cache:  # recompute the whole sequence: the slow reference path
            return self.lm_head(self.hidden_states(idx, key_mask)[:, -1]), None
        padded = not bool(key_mask.all())
        if cache is None:  # the prompt pass fills the cache
            B, T = idx.shape
            cache = KVCache(self.config, B, capacity or self.config.block_size, idx.device,
                            self.transformer.wte.weight.dtype)
            pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)
            mask = attention_mask_4d(key_mask, 0, T) if padded else None
            h = self._run(idx, pos, mask, cache)
        else:              # then one new token per row reads it
            pos = key_mask.sum(1, keepdim=True) - 1                    # (B, 1) real tokens before it
            mask = key_mask[:, None, None, :] if padded else None      # (B, 1, 1, T) no padded key
            h = self._run(new_tokens[:, None], pos, mask, cache)
        return self.lm_head(h[:, -1]), cache

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens, eos_id=None, temperature=1.0, top_k=None, greedy=False, use_cache=True):
        """Continue each prompt (a list of token ids; lengths may differ), all in one batch.
        Greedy picks the most likely token; otherwise sample from softmax(logits / temperature), cut to
        the top_k tokens if given. A row stops at eos_id (kept in its output). Returns the new tokens."""
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax")
        prompt, prompt_mask = self._left_pad(prompts)
        B, T = prompt.shape
        self._check_room(T, max_new_tokens)
        # every token so far, in buffers allocated once: the loop writes column T + step (no concatenation)
        idx = torch.zeros(B, T + max_new_tokens, dtype=torch.long, device=prompt.device)
        key_mask = torch.ones(B, T + max_new_tokens, dtype=torch.bool, device=prompt.device)
        idx[:, :T], key_mask[:, :T] = prompt, prompt_mask
        done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
        out, cache, tok = [], None, None
        for step in range(max_new_tokens):
            n = T + step  # tokens so far
            logits, cache = self._next_logits(idx[:, :n], key_mask[:, :n], cache, tok, use_cache,
                                              capacity=T + max_new_tokens)  # (B, V)
            if greedy:
                tok = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                tok = torch.multinomial(F.softmax(logits, dim=-1), 1)[:, 0]
            out.append(tok)
            idx[:, n] = tok
            if eos_id is not None:
                done |= tok == eos_id
                if done.all():
                    break
        out = torch.stack(out, dim=1).tolist() if out else [[] for _ in range(B)]
        return [_cut_at(row, eos_id) for row in out]

    @torch.inference_mode()
    def beam_search(self, prompts, num_beams, max_new_tokens, eos_id, use_cache=True, allowed_next=None):
        """Beam search for every prompt at once: B prompts x K beams.

        A beam's score is the sum of its tokens' log-probabilities. A beam that has emitted eos_id is
        finished: from then on its only continuation is eos_id at log-probability 0, so it keeps its score
        and competes with the open beams until the end. Returns, per prompt, K (new_tokens, score) pairs,
        best first (a list of ints, a float); a finished beam's tokens end with eos_id. allowed_next, when given,
        maps the beams' tokens so far (B, K, t) to the tokens each may write next (B, K, V) bool: constrained decoding.

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
        new, scores = tokens.tolist(), scores.tolist()
        return [[(_cut_at(new[b][j], eos_id), scores[b][j]) for j in range(K)] for b in range(B)]

    def _beam_start(self, prompt, prompt_mask, K, max_new_tokens, use_cache):
        """The prompt pass, generate's (_next_logits): log-probabilities (B, V) of the first new token; with the
        cache, also the KVCache holding each prompt once and `visible` (B, K, slots) bool, the cache slots each
        beam attends to."""
        (B, T), slots = prompt.shape, prompt.size(1) + K * max_new_tokens  # the prompt, then K slots per new token
        logits, cache = self._next_logits(prompt, prompt_mask, None, None, use_cache, capacity=slots)
        logp = F.log_softmax(logits.float(), -1)
        if cache is None:
            return logp, None, None
        visible = torch.zeros(B, K, slots, dtype=torch.bool, device=prompt.device)
        visible[:, :, :T] = prompt_mask[:, None, :]            # every beam sees the prompt's real tokens
        return logp, cache, visible

    def _beam_next(self, tok, step, prompt, prompt_mask, tokens, cache, visible):
        """Log-probabilities (B, K, V) of the token after each beam's newest one, tok (B, K)."""
        (B, K), T = tok.shape, prompt.size(1)
        if cache is None:  # the reference: every beam's whole sequence through the ordinary forward pass
            seq = torch.cat([prompt.repeat_interleave(K, 0), tokens.view(B * K, -1)], dim=1)
            seq_mask = torch.cat([prompt_mask.repeat_interleave(K, 0), torch.ones_like(seq[:, T:])], dim=1)
            h = self.hidden_states(seq, seq_mask)[:, -1].view(B, K, -1)
        else:
            slot, beams = T + K * step, torch.arange(K, device=tok.device)  # this step's K slots: [slot, slot + K)
            visible[:, beams, slot + beams] = True             # each beam also sees its own new token
            pos = (prompt_mask.sum(1) + step)[:, None].expand(B, K)
            h = self._run(tok, pos, visible[:, None, :, :slot + K], cache)  # (B, K, C)
        return F.log_softmax(self.lm_head(h).float(), dim=-1)

    # --- pretrained GPT-2 weights ----------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory, dropout=0.0):
        """Load a Hugging Face GPT-2 checkpoint (any size) from a local folder holding config.json and
        model.safetensors or pytorch_model.bin, without the transformers package."""
        config, cfg_path = read_gpt2_config(directory, dropout)
        weights_path, sd = read_hf_weights(directory)
        # HF names: "transformer." prefix or not (GPT2LMHeadModel vs GPT2Model; of X and transformer.X both, the second
        # stays, which check_weights refuses); old files' causal masks "attn.bias", "attn.masked_bias" are not weights
        sd = {k if k.removeprefix("transformer.") in sd else k.removeprefix("transformer."): v for k, v in sd.items()
              if not k.endswith((".attn.bias", ".attn.masked_bias")) and k != "lm_head.weight"}
        check_weights(sd, config, weights_path, cfg_path, layout=gpt2_layout)
        model = cls(config)
        with torch.no_grad():
            for name, w in model.state_dict().items():
                if name != "lm_head.weight":
                    k = name.removeprefix("transformer.")
                    w.copy_(sd[k].t() if k.endswith(CONV1D) else sd[k])
        return model


def _beam_choose(scores, logp, finished, eos_id):
    """The best K extensions of B x K beams: new scores (B, K), the beam each extends and its token (B, K).
    A finished beam's only extension is eos_id at log-probability 0."""
    B, K, V = logp.shape
    eos_only = torch.full((V,), float("-inf"), device=logp.device)
    eos_only[eos_id] = 0.0
    logp = torch.where(finished[..., None], eos_only, logp)
    cand = (scores[..., None] + logp).view(B, K * V)           # (B, K*V) every extension of every beam
    scores, flat = torch.topk(cand, K, dim=-1)                 # (B, K) the best K per prompt
    return scores, flat // V, flat % V


def _cut_at(tokens, eos_id):
    """Tokens up to and including the first eos_id."""
    return tokens[:tokens.index(eos_id) + 1] if eos_id is not None and eos_id in tokens else tokens


# -----------------------------------------------------------------------------
# reading Hugging Face weight files

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path):
    """The safetensors format is small enough to read by hand: an 8-byte little-endian header length N,
    N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}}, then the raw bytes."""
    with open(path, "rb") as f:
        blob = f.read()
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        if 8 + n > len(blob):
            raise ValueError(f"{n} bytes of header, but the file holds {len(blob)} bytes")
        header = json.loads(blob[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (struct.error, ValueError, RecursionError) as e:  # json's and UTF-8's decode errors are ValueErrors
        raise UserError(f"{path}: not a safetensors file (bad header: {e})") from None
    data = memoryview(blob)[8 + n:]
    entries = {name: _safetensors_entry(path, name, info, len(data)) for name, info in header.items()
               if name != "__metadata__"}
    spans = sorted((begin, end) for _, _, begin, end in entries.values())  # the format's rule: they tile the data
    if [b for b, _ in spans] != [0] + [e for _, e in spans[:-1]] or (spans[-1][1] if spans else 0) != len(data):
        raise UserError(f"{path}: not a safetensors file (its tensors overlap, or leave bytes between or after them)")
    return {name: (torch.frombuffer(bytearray(data[b:e]), dtype=dtype) if e > b else torch.empty(0, dtype=dtype))
            .reshape(shape) for name, (dtype, shape, b, e) in entries.items()}  # bytearray: a writable copy


def _safetensors_entry(path, name, info, size):
    """A header entry -> (dtype, shape, begin, end): a known dtype, whole numbers, the bytes of exactly that shape."""
    info = info if isinstance(info, dict) else {}
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and
            all(type(x) is int and 0 <= x < 2 ** 63 for x in shape + offsets)):  # not bool, not float: int
        raise UserError(f"{path}: tensor {name}: not a safetensors entry (expected a shape [sizes] and data_offsets "
                        f"[begin, end], whole numbers >= 0; got shape {shape!r}, data_offsets {offsets!r})")
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise UserError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
    begin, end = offsets
    if not begin <= end <= size or end - begin != math.prod(shape) * dtype.itemsize:
        raise UserError(f"{path}: tensor {name} runs past the end of the file or has the wrong size "
                        "(truncated download?)")
    return dtype, shape, begin, end


# GPT-2 stores these Linear layers as "Conv1D": weight (in, out) instead of (out, in)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_layout(name, shape):
    """Our weight's name and shape as a GPT-2 file holds it: no "transformer." prefix, Conv1D weights transposed,
    no lm_head (tied to wte)."""
    if name == "lm_head.weight":
        return None
    return name.removeprefix("transformer."), shape[::-1] if name.endswith(CONV1D) else shape


def check_weights(weights, config, path, source, layout=lambda name, shape: (name, shape)):
    """Refuse weights (from `path`) of other names, shapes than a GPT of `config` (from `source`) holds, or not finite,
    before any allocation (shapes from a GPT on the meta device). layout: a weight's (name, shape) in the file."""
    if config.n_layer > len(weights):  # each block has weights of its own (and is built, even on the meta device)
        raise UserError(f"{path}: {len(weights)} tensors cannot fill the n_layer = {config.n_layer} blocks of {source}")
    with torch.device("meta"):
        ours = GPT(config).state_dict()
    shapes = dict(filter(None, (layout(k, tuple(v.shape)) for k, v in ours.items())))
    missing, unexpected = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
    if missing or unexpected:
        raise UserError(f"{path}: keys do not match a GPT with the sizes of {source}; "
                        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                        f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, w in weights.items():
        if tuple(w.shape) != shapes[k]:
            raise UserError(f"{path}: {k} has shape {tuple(w.shape)}, but {source} implies {shapes[k]}")
        if w.layout != torch.strided or w.is_meta:
            raise UserError(f"{path}: {k} is not a dense tensor of values ({w.layout}, on {w.device})")
        if not (w.is_floating_point() and torch.isfinite(w.float()).all()):  # as the model holds it: float32
            raise UserError(f"{path}: {k} holds " + ("NaN, or values float32 cannot hold" if w.is_floating_point() else
                                                     f"{w.dtype} values, not floating-point weights"))


def read_gpt2_config(directory, dropout=0.0):
    """(GPTConfig, path) of the sizes in a Hugging Face GPT-2 folder's config.json."""
    path = os.path.join(directory, "config.json")
    gpt2 = dict(model_type="gpt2", activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                scale_attn_by_inverse_layer_idx=False, tie_word_embeddings=True)  # keys that change what is computed
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing; a GPT-2 folder needs config.json and weights (a run's checkpoint: its .pt)")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a BOM first, as a Windows editor may save it
            hf = json.load(f)
        sizes = {k: hf[k] for k in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")}
        other = {k: hf[k] for k, v in gpt2.items() if hf.get(k, v) != v}
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as e:  # json's errors are ValueErrors
        raise UserError(f"{path}: not a GPT-2 config.json ({type(e).__name__}: {e})") from None
    if other:
        raise UserError(f"{path}: asks for {other}, which this GPT does not compute (GPT-2's: {gpt2})")
    bad = [k for k, v in sizes.items() if not (isinstance(v, int) and not isinstance(v, bool) and v > 0)]
    if bad:
        raise UserError(f"{path}: {bad[0]} = {sizes[bad[0]]!r} is not a positive whole number")
    if sizes["n_embd"] % sizes["n_head"]:
        raise UserError(f"{path}: n_embd = {sizes['n_embd']} is not divisible by n_head = {sizes['n_head']}")
    if hf.get("n_inner") not in (None, 4 * sizes["n_embd"]):  # GPT-2's MLP is 4 * n_embd wide (null in its files)
        raise UserError(f"{path}: n_inner = {hf['n_inner']!r}, but this GPT's MLP is 4 * n_embd wide")
    return GPTConfig(block_size=sizes["n_positions"], vocab_size=sizes["vocab_size"], n_layer=sizes["n_layer"],
                     n_head=sizes["n_head"], n_embd=sizes["n_embd"], dropout=dropout, bias=True), path


def read_hf_weights(directory):
    """(path, state dict) from model.safetensors, or else pytorch_model.bin, in directory."""
    st, pt = os.path.join(directory, "model.safetensors"), os.path.join(directory, "pytorch_model.bin")
    if os.path.isfile(st) or os.path.islink(st) and not os.path.exists(st):  # a broken link: refused, not passed over
        return st, read_safetensors(st)
    if os.path.isfile(pt):
        sd = load_torch(pt, "a PyTorch weights file")
        if not (isinstance(sd, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items())):
            raise UserError(f"{pt}: not a state dict of tensors by name")
        return pt, sd
    raise UserError(f"{directory}: holds neither model.safetensors nor pytorch_model.bin (shards: not read)")


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
    """A mistake in what the user gave (a flag, a file, a folder), found where it is: 'file[:line]: problem', at most
    one hint. train.py prints it as error_line() and exits with status 2; anything else is a bug, with its traceback."""


def error_line(message):  # `error: message` as one line: a control character (a newline in a path) shown as '\n'
    return "error: " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def load_torch(path, what="a checkpoint"):
    """torch.load with weights_only=True: tensors and plain Python values, nothing else. A file that needs
    more -- a class or a function, which is how a malicious pickle runs code -- is refused, whoever wrote it."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: " + ("not a regular file" if os.path.exists(path) else "no such file"))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not its own, or truncated
        if isinstance(e, OSError) and e.filename:  # one the system will not let us read (permission): said as such
            raise
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):  # it asks for a class or function by name
            raise UserError(f"{path}: refused: unpickling it would create Python objects other than tensors and "
                            "plain values, which can run code; this project loads only its own checkpoints "
                            "and plain weight files") from None
        raise UserError(f"{path}: cannot be read as {what} (not a file torch.save wrote, or a damaged one)") from None
