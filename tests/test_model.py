"""model.py against independent references: written-out attention, a numpy GPT-2 forward pass over the
Hugging Face key names, brute-force beam search, one-prompt-at-a-time and uncached generation."""

import itertools
import json
import os
import pickletools
import struct
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from model import GPT, GPTConfig


def tiny(vocab_size=11, block_size=32, seed=0, **kw):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16, **kw))
    return m.eval()


# -----------------------------------------------------------------------------
# attention, padding, loss, pooling

def test_sdpa_equals_manual_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4)
    key_mask = torch.rand(3, 7) > 0.3
    mask = model.attention_mask_4d(key_mask, 2, 5)
    ref = model.manual_attention(q, k, v, mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref)


def test_attention_mask_by_hand():
    # two past positions, the second of them padding; three new queries
    mask = model.attention_mask_4d(torch.tensor([[True, False, True, True, True]]), 2, 3)[0, 0]
    expected = torch.tensor([[1, 0, 1, 0, 0],
                             [1, 0, 1, 1, 0],
                             [1, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_padded_rows_equal_unpadded():
    m = tiny()
    a, b = [3, 1, 4, 1, 5], [9, 2, 6]
    ref_a, ref_b = m.hidden_states(torch.tensor([a]))[0], m.hidden_states(torch.tensor([b]))[0]
    # right padding
    idx = torch.tensor([a, b + [0, 0]])
    mask = torch.tensor([[1] * 5, [1] * 3 + [0, 0]])
    h = m.hidden_states(idx, mask)
    torch.testing.assert_close(h[0], ref_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h[1, :3], ref_b, atol=1e-5, rtol=1e-5)
    # left padding: positions count real tokens, so the result is the same
    h = m.hidden_states(torch.tensor([a, [0, 0] + b]), torch.tensor([[1] * 5, [0, 0] + [1] * 3]))
    torch.testing.assert_close(h[1, 2:], ref_b, atol=1e-5, rtol=1e-5)


def test_loss_ignores_marked_positions():
    m = tiny()
    idx = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    targets = torch.tensor([[-100, 3, 4, 7], [6, -100, -100, -100]])
    logits, loss = m(idx, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), targets)
    logp = torch.log_softmax(logits, -1)
    picked = [-logp[0, 1, 3], -logp[0, 2, 4], -logp[0, 3, 7], -logp[1, 0, 6]]
    torch.testing.assert_close(loss, sum(picked) / 4)


def test_pooling_by_hand():
    h = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    span = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(model.mean_pool(h, span), torch.stack([(h[0, 1] + h[0, 2]) / 2, h[1, 0]]))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(model.last_token_pool(h, mask), torch.stack([h[0, 2], h[1, 0]]))


def test_init_and_tying():
    m = tiny()
    assert m.lm_head.weight is m.transformer.wte.weight
    assert all(float(b.detach().abs().max()) == 0 for n, b in m.named_parameters() if n.endswith("attn.c_attn.bias"))
    n = sum(p.numel() for p in m.parameters())
    assert m.num_params(non_embedding=False) == n


def test_too_long_sequence_is_a_clear_error():
    m = tiny(block_size=8)
    with pytest.raises(ValueError, match="block_size=8"):
        m.hidden_states(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size=8"):
        m.generate([[1] * 6], 5)


# -----------------------------------------------------------------------------
# generation

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]


def test_greedy_batched_equals_one_at_a_time_and_cache_equals_no_cache():
    m = tiny()
    batched = m.generate(PROMPTS, 12, greedy=True)
    single = [m.generate([p], 12, greedy=True)[0] for p in PROMPTS]
    uncached = m.generate(PROMPTS, 12, greedy=True, use_cache=False)
    assert batched == single == uncached
    # and greedy is what a plain loop over full forward passes picks
    for p, out in zip(PROMPTS, batched):
        seq = list(p)
        for _ in range(12):
            seq.append(int(m(torch.tensor([seq]))[0][0, -1].argmax()))
        assert seq[len(p):] == out


def test_cached_logits_equal_full_forward():
    m = tiny()
    idx, key_mask = m._left_pad(PROMPTS)
    logits, cache = m._next_logits(idx, key_mask, None, None, use_cache=True)
    tok = torch.tensor([3, 1, 4])
    idx, key_mask = torch.cat([idx, tok[:, None]], 1), torch.cat([key_mask, torch.ones(3, 1, dtype=bool)], 1)
    cached, _ = m._next_logits(idx, key_mask, cache, tok, use_cache=True)
    for i, p in enumerate(PROMPTS):
        full = m(torch.tensor([p + [int(tok[i])]]))[0][0, -1]
        torch.testing.assert_close(cached[i], full, atol=1e-5, rtol=1e-5)


def test_eos_stops_a_row():
    m = tiny()
    free = m.generate(PROMPTS, 6, greedy=True)
    eos = free[0][2]  # the third token prompt 0 produces: make it the stop token
    out = m.generate(PROMPTS, 6, greedy=True, eos_id=eos)
    assert out[0] == free[0][:free[0].index(eos) + 1]
    for o, f in zip(out, free):
        assert o == (f[:f.index(eos) + 1] if eos in f else f)


def test_sampling_is_seeded_and_top_k_restricts():
    m = tiny()
    torch.manual_seed(1)
    a = m.generate(PROMPTS, 8, temperature=1.5)
    torch.manual_seed(1)
    assert a == m.generate(PROMPTS, 8, temperature=1.5)
    torch.manual_seed(2)
    top1 = m.generate(PROMPTS, 8, top_k=1)
    assert top1 == m.generate(PROMPTS, 8, greedy=True)


@torch.no_grad()
def brute_force_beams(m, prompt, length, eos):
    """Every continuation of up to `length` tokens (stopping at eos), scored by full forward passes."""
    V, seqs = m.config.vocab_size, []
    for n in range(1, length + 1):
        for tail in itertools.product(range(V), repeat=n):
            if eos in tail[:-1] or (n < length and tail[-1] != eos):
                continue  # eos only at the end; shorter sequences must have ended
            logp = torch.log_softmax(m(torch.tensor([prompt + list(tail)]))[0][0], -1)
            score = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(tail))
            seqs.append((list(tail), score))
    return sorted(seqs, key=lambda s: -s[1])


def test_beam_search_is_exact_when_the_beam_holds_every_prefix():
    m = tiny(vocab_size=4)
    eos, L, K = 3, 3, 16  # K >= V^(L-1): no prefix is ever pruned, so the beams are the exact top K
    for prompt in ([1, 2], [0]):
        got = m.beam_search([prompt], K, L, eos)[0]
        want = brute_force_beams(m, prompt, L, eos)[:K]
        assert [t for t, _ in got] == [t for t, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-4, atol=1e-4)


def test_beam_search_batched_equals_single_and_cached_equals_uncached():
    m = tiny()
    batched = m.beam_search(PROMPTS, 4, 6, eos_id=5)
    single = [m.beam_search([p], 4, 6, eos_id=5)[0] for p in PROMPTS]
    uncached = m.beam_search(PROMPTS, 4, 6, eos_id=5, use_cache=False)
    for a, b, c in zip(batched, single, uncached):
        assert [t for t, _ in a] == [t for t, _ in b] == [t for t, _ in c]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-4)
        np.testing.assert_allclose([s for _, s in a], [s for _, s in c], atol=1e-4)
        assert [s for _, s in a] == sorted([s for _, s in a], reverse=True)


# -----------------------------------------------------------------------------
# GPT-2 weights in the Hugging Face layout, and an independent numpy forward pass over them

HF = dict(n_layer=2, n_head=2, n_embd=8, n_positions=16, vocab_size=13)


def hf_state(seed=0):
    """A random GPT-2 state dict under Hugging Face's names (Conv1D weights stored as (in, out))."""
    rng = np.random.default_rng(seed)
    C, V, P = HF["n_embd"], HF["vocab_size"], HF["n_positions"]
    r = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)  # noqa: E731
    sd = {"wte.weight": r(V, C), "wpe.weight": r(P, C), "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for i in range(HF["n_layer"]):
        p = f"h.{i}."
        sd.update({p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C),
                   p + "attn.c_attn.weight": r(C, 3 * C), p + "attn.c_attn.bias": r(3 * C),
                   p + "attn.c_proj.weight": r(C, C), p + "attn.c_proj.bias": r(C),
                   p + "ln_2.weight": 1 + r(C), p + "ln_2.bias": r(C),
                   p + "mlp.c_fc.weight": r(C, 4 * C), p + "mlp.c_fc.bias": r(4 * C),
                   p + "mlp.c_proj.weight": r(4 * C, C), p + "mlp.c_proj.bias": r(C),
                   p + "attn.bias": np.tril(np.ones((P, P), np.float32))[None, None]})  # old mask buffer
    return sd


def numpy_gpt2_logits(sd, tokens):
    """GPT-2 forward pass from the HF key names, in numpy, written independently of model.py."""
    def ln(x, w, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    T, C, nh = len(tokens), HF["n_embd"], HF["n_head"]
    x = sd["wte.weight"][tokens] + sd["wpe.weight"][:T]
    for i in range(HF["n_layer"]):
        p = lambda n: sd[f"h.{i}.{n}"]  # noqa: E731
        a = ln(x, p("ln_1.weight"), p("ln_1.bias")) @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = np.split(a, 3, axis=-1)
        heads = []
        for hd in range(nh):
            s = slice(hd * C // nh, (hd + 1) * C // nh)
            att = q[:, s] @ k[:, s].T / np.sqrt(C // nh)
            att = np.where(np.tril(np.ones((T, T))) > 0, att, -np.inf)
            att = np.exp(att - att.max(-1, keepdims=True))
            heads.append(att / att.sum(-1, keepdims=True) @ v[:, s])
        x = x + np.concatenate(heads, -1) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        m = gelu(ln(x, p("ln_2.weight"), p("ln_2.bias")) @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
        x = x + m @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    return ln(x, sd["ln_f.weight"], sd["ln_f.bias"]) @ sd["wte.weight"].T


def write_safetensors(path, sd):
    """The safetensors layout, written by hand: 8-byte header length, JSON header, raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, arr in sd.items():
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_hf_dir(path, fmt, sd=None, config=None):
    os.makedirs(path, exist_ok=True)
    sd = hf_state() if sd is None else sd
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                   **(config or HF)}, f)
    if fmt == "safetensors":
        write_safetensors(os.path.join(path, "model.safetensors"), sd)
    else:  # GPT2LMHeadModel's pickle: "transformer." prefix and an lm_head tied to wte
        pt = {"transformer." + k: torch.from_numpy(v) for k, v in sd.items()}
        pt["lm_head.weight"] = pt["transformer.wte.weight"]
        torch.save(pt, os.path.join(path, "pytorch_model.bin"))
    return sd


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_from_pretrained_matches_numpy_reference(tmp_path, fmt):
    sd = write_hf_dir(tmp_path, fmt)
    m = GPT.from_pretrained(str(tmp_path)).eval()
    assert m.config.n_layer == 2 and m.config.vocab_size == 13 and m.config.block_size == 16
    tokens = [3, 7, 1, 12, 0, 5]
    ours = m(torch.tensor([tokens]))[0][0].detach().numpy()
    np.testing.assert_allclose(ours, numpy_gpt2_logits(sd, tokens), atol=1e-4, rtol=1e-4)


def test_from_pretrained_clear_errors(tmp_path):
    with pytest.raises(model.UserError, match="config.json"):
        GPT.from_pretrained(str(tmp_path))
    # a config that does not match the weights: the file and the key are named
    write_hf_dir(tmp_path / "wide", "safetensors", config={**HF, "n_embd": 16})
    with pytest.raises(model.UserError, match=r"model.safetensors: wte.weight has shape \(13, 8\)"):
        GPT.from_pretrained(str(tmp_path / "wide"))
    write_hf_dir(tmp_path / "deep", "bin", config={**HF, "n_layer": 3})
    with pytest.raises(model.UserError, match=r"pytorch_model.bin: keys do not match.*missing \['h.2"):
        GPT.from_pretrained(str(tmp_path / "deep"))
    # a truncated download
    write_hf_dir(tmp_path / "cut", "safetensors")
    f = tmp_path / "cut" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(model.UserError, match="truncated"):
        GPT.from_pretrained(str(tmp_path / "cut"))
    (tmp_path / "junk").mkdir()
    write_hf_dir(tmp_path / "junk", "bin")
    (tmp_path / "junk" / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(model.UserError, match="pytorch_model.bin: cannot be read"):
        GPT.from_pretrained(str(tmp_path / "junk"))
    os.remove(tmp_path / "junk" / "pytorch_model.bin")
    with pytest.raises(model.UserError, match="neither model.safetensors nor pytorch_model.bin"):
        GPT.from_pretrained(str(tmp_path / "junk"))


# -----------------------------------------------------------------------------
# LayerNorm: equal to PyTorch's, and right under vmap's second-order backward (what MAML takes)

def test_layer_norm_equals_torch():
    torch.manual_seed(0)
    ln = model.LayerNorm(6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 4, 6)
    with model.second_order_ops(ln):  # the written-out ops
        torch.testing.assert_close(ln(x), F.layer_norm(x, (6,), ln.weight, ln.bias, 1e-5))


def test_second_order_through_vmap_equals_a_loop_over_tasks():
    """d/dθ Σ_i L(θ - α ∇L(θ; x_i); x_i): vmap over tasks vs a plain loop, float64, on the whole GPT."""
    from torch.func import functional_call, grad, vmap

    m = tiny().double()
    params = {k: v.detach().requires_grad_() for k, v in m.named_parameters()}
    xs = torch.randint(0, 11, (3, 2, 6))  # 3 tasks, each a batch of 2 sequences of 6 tokens

    def loss(p, x):
        h = functional_call(m, p, (x,), {"attention_mask": torch.ones_like(x)}, strict=False)[0]
        return h.tanh().pow(2).mean()

    def adapted_loss(p, x):
        g = grad(loss)(p, x)
        return loss({k: v - 0.3 * g[k] for k, v in p.items()}, x)

    with model.second_order_ops(m):
        by_vmap = torch.autograd.grad(vmap(adapted_loss, in_dims=(None, 0))(params, xs).sum(),
                                      list(params.values()))
        by_loop = torch.autograd.grad(sum(adapted_loss(params, x) for x in xs), list(params.values()))
    for a, b in zip(by_vmap, by_loop):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
