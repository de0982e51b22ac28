"""model.py against independent references: written-out attention, a numpy GPT-2 forward pass over the
Hugging Face key names, brute-force beam search, one-prompt-at-a-time and uncached generation."""

import contextlib
import itertools
import json
import math
import os
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from model import GPT, GPTConfig
from oracles import gradients_match_finite_differences, leaves_inputs_alone


def tiny(vocab_size=11, block_size=32, seed=0, **kw):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16, **kw))
    return m.eval()


def assert_gradients_match_finite_differences(what, fn, *inputs, second_order=False):
    """oracles.gradients_match_finite_differences, its failure (gradcheck's, which numbers the inputs from 0) said
    in terms of what was differentiated."""
    try:
        gradients_match_finite_differences(fn, *inputs, second_order=second_order)
    except NotImplementedError:
        raise
    except Exception as e:  # gradcheck's GradcheckError, or autograd's own error
        which = "gradients or second derivatives" if second_order else "gradients"
        raise AssertionError(f"{what}: the {which} differ from finite differences (float64)\n"
                             f"{type(e).__name__}: {e}") from None


# -----------------------------------------------------------------------------
# attention, padding, loss, pooling

def test_sdpa_equals_manual_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4)
    key_mask = torch.rand(3, 7) > 0.3
    mask = model.attention_mask_4d(key_mask, 2, 5)
    ref = model.manual_attention(q, k, v, mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, msg=lambda m: (
        "manual_attention(q, k, v, mask) differs from torch's F.scaled_dot_product_attention on q (3, 2, 5, 4), "
        f"k and v (3, 2, 7, 4) and the mask of attention_mask_4d(key_mask, 2, 5); got shape {tuple(ref.shape)}, "
        f"want {tuple(out.shape)}\n{m}"))


def test_manual_attention_on_large_scores_equals_sdpa():
    # q and k scaled by 30: scores in the thousands, whose exp overflows float32 unless the softmax subtracts each
    # query's largest score first (as F.softmax does). The mask, causal with two past keys, is built here
    torch.manual_seed(0)
    q, k, v = 30 * torch.randn(3, 2, 5, 4), 30 * torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4)
    mask = torch.ones(5, 7, dtype=torch.bool).tril(2)[None, None]
    got = model.manual_attention(q, k, v, mask)
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask).float()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m: (
        f"manual_attention(30 q, 30 k, v, causal mask) on q (3, 2, 5, 4), k and v (3, 2, 7, 4), scores up to "
        f"{float((q @ k.transpose(-2, -1)).abs().max() / 2):.0f}: differs from F.scaled_dot_product_attention in "
        f"float64; non-finite outputs: {int((~torch.isfinite(got)).sum())} of {got.numel()}\n{m}"))


def test_manual_attention_dropout():
    # dropout on the attention weights: p = 1 drops every weight; with p = 0.5 the kept weights are doubled, so the
    # mean over many draws (the batch: 4000 copies of one example, each its own draw) is the output without dropout
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool).tril(2)[None, None]
    dropped = model.manual_attention(q, k, v, mask, dropout_p=1.0)
    assert dropped.shape == q.shape and not dropped.any(), (
        f"manual_attention(q, k, v, mask, dropout_p=1.0): every attention weight dropped, want an all-zero output "
        f"of shape {tuple(q.shape)}; got shape {tuple(dropped.shape)}, {dropped.flatten()[:6].tolist()}...")
    # dropout_p is the caller's to set, whatever the grad mode: p = 1 drops every weight under no_grad and
    # inference_mode too (SDPA's dropout does not look at the grad mode; a model in eval mode passes p = 0 itself)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            dropped = model.manual_attention(q, k, v, mask, dropout_p=1.0)
        assert not dropped.any(), (
            f"manual_attention(q, k, v, mask, dropout_p=1.0) under torch.{mode.__name__}(): every attention weight "
            f"dropped, want an all-zero output, got {dropped.flatten()[:6].tolist()}... (dropout tied to the grad "
            "mode?)")
    # p = 0 (evaluation) drops nothing and draws nothing: the caller's random stream (the next dropout mask, the next
    # batch drawn) is as it would be without this call
    state = torch.get_rng_state()
    model.manual_attention(q, k, v, mask, dropout_p=0.0)
    assert torch.equal(torch.get_rng_state(), state), (
        "manual_attention(q, k, v, mask, dropout_p=0.0) drew random numbers: at p = 0 nothing is dropped, so nothing "
        "is to be drawn (evaluation would move the training's random stream)")
    n = 4000
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for p in (0.5, 0.2):  # at p = 0.5, keeping a weight with probability p or 1 - p is the same: 0.2 tells them apart
        draws = model.manual_attention(q.expand(n, -1, -1, -1), k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1), mask,
                                       dropout_p=p)
        mean = draws.mean(0, keepdim=True)
        torch.testing.assert_close(mean, want, atol=0.1, rtol=0, msg=lambda m: (
            f"manual_attention(q, k, v, mask, dropout_p={p}): the mean of {n} draws should approach the output "
            f"without dropout (each weight dropped with probability p, the kept ones scaled by 1 / (1 - p)); want "
            f"{[round(x, 3) for x in want[0, 0, 0].tolist()]} at [0, 0, 0], got "
            f"{[round(x, 3) for x in mean[0, 0, 0].tolist()]}\n{m}"))
    # each call draws new masks from the caller's random stream (no seed or generator of its own): two calls differ
    a, b = (model.manual_attention(q, k, v, mask, dropout_p=0.5) for _ in range(2))
    assert not torch.equal(a, b), ("manual_attention(q, k, v, mask, dropout_p=0.5) twice in a row: the same output, "
                                   "the same dropout masks at every call (seeded inside?)")
    # and from torch's own stream: the same torch.manual_seed gives the same masks (a run is reproducible from its
    # seed), another seed other masks (a generator of the body's own ignores the seed, and cannot draw on a GPU)
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(model.manual_attention(q, k, v, mask, dropout_p=0.5))
    assert torch.equal(outs[0], outs[1]), (
        "manual_attention(q, k, v, mask, dropout_p=0.5) after torch.manual_seed(0), twice: want the same output (the "
        "masks drawn from torch's random stream, as F.dropout draws them), got two different ones")
    assert not torch.equal(outs[0], outs[2]), (
        "manual_attention(q, k, v, mask, dropout_p=0.5) after torch.manual_seed(0) and after torch.manual_seed(1): "
        "want different masks, got the same output (a generator of its own ignores the caller's seed)")


def mask_table(want, got, first_query):
    """Two (T, T_keys) bool masks side by side, one line per query, '<--' where they differ."""
    return "\n".join(f"  query {first_query + i}: want {' '.join(str(int(x)) for x in w)}   "
                     f"got {' '.join(str(int(x)) for x in g)}" + ("  <--" if w != g else "")
                     for i, (w, g) in enumerate(zip(want.tolist(), got.tolist())))


def test_attention_mask_by_hand():
    # two past positions, the second of them padding; three new queries
    mask = model.attention_mask_4d(torch.tensor([[True, False, True, True, True]]), 2, 3)[0, 0]
    expected = torch.tensor([[1, 0, 1, 0, 0],
                             [1, 0, 1, 1, 0],
                             [1, 0, 1, 1, 1]], dtype=torch.bool)
    assert mask.shape == expected.shape, "attention_mask_4d([[1, 0, 1, 1, 1]], T_past=2, T=3)[0, 0]: want shape " \
        f"{tuple(expected.shape)} (T, T_past + T), got {tuple(mask.shape)}"
    same = torch.equal(mask, expected)
    assert same, ("attention_mask_4d([[1, 0, 1, 1, 1]], T_past=2, T=3)[0, 0], one column per key (1 = visible):\n"
                  + mask_table(expected, mask, 2))
    # the same key_mask tensor changed in place between two calls (a token turned to padding): the second mask
    # follows key_mask as it is now (nothing memoised by the tensor, which hashes by its identity)
    key_mask = torch.tensor([[True, True, True]])
    model.attention_mask_4d(key_mask, 0, 3)
    key_mask.numpy()[0, 1] = False  # through numpy: the tensor's version counter does not see it either
    mask = model.attention_mask_4d(key_mask, 0, 3)[0, 0]
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)  # key 1 padding: only itself sees it
    assert torch.equal(mask, expected), (
        "attention_mask_4d(key_mask, T_past=0, T=3)[0, 0], key_mask [[1, 1, 1]] set to [[1, 0, 1]] in place after a "
        "first call (the mask of the old key_mask?), one column per key (1 = visible):\n"
        + mask_table(expected, mask, 0))
    # under torch.func.vmap over a leading task dimension of key_mask, as MAML's classifier runs it (meta_loss_vmap
    # and reptile_direction vmap GPT.hidden_states over tasks): 3 tasks x 2 rows, T_past=1, T=3, against the mask by
    # its definition, a loop over tasks, rows, queries and keys. Ops in place on a tensor made inside (mask &= ...,
    # masked_fill_, an index assignment per row) cannot take vmap's batched key_mask
    from torch.func import vmap
    key_masks = torch.tensor([[[1, 1, 1, 0], [0, 0, 1, 1]],
                              [[1, 0, 1, 1], [1, 1, 1, 1]],
                              [[0, 1, 1, 0], [1, 1, 0, 1]]], dtype=torch.bool)
    T_past, T = 1, 3
    call = f"vmap(lambda key_mask: attention_mask_4d(key_mask, T_past={T_past}, T={T}))(key_mask (3 tasks, 2, 4))"
    try:
        got = vmap(lambda key_mask: model.attention_mask_4d(key_mask, T_past, T))(key_masks)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        raise AssertionError(f"{call}: {str(e)[:300]} (an op in place, or a loop over rows, that vmap cannot "
                             "batch?)") from None
    want = torch.tensor([[[[[(j <= T_past + i and key_masks[task, b, j].item()) or j == T_past + i
                             for j in range(T_past + T)] for i in range(T)]] for b in range(2)] for task in range(3)])
    assert got.shape == want.shape, f"{call}: want shape {tuple(want.shape)} (tasks, B, 1, T, T_past + T), " \
        f"got {tuple(got.shape)}"
    for task, b in itertools.product(range(3), range(2)):
        assert torch.equal(got[task, b, 0], want[task, b, 0]), (
            f"{call}[{task}, {b}, 0], key_mask {key_masks[task, b].int().tolist()}, one column per key (1 = "
            "visible):\n" + mask_table(want[task, b, 0], got[task, b, 0], T_past))


def test_attention_mask_of_padding_queries_by_hand():
    # one past position and three new queries (positions 1, 2, 3), in a right-padded row and a left-padded one.
    # A padding query still sees the real keys before it, and always itself (the left-padded row's query 1 sees
    # nothing else, so without that rule its softmax would be empty)
    key_mask = torch.tensor([[True, True, True, False],
                             [False, False, True, True]])
    got = model.attention_mask_4d(key_mask, 1, 3)
    expected = torch.tensor([[[1, 1, 0, 0],     # row 0: query 1 (real)
                              [1, 1, 1, 0],     #        query 2 (real)
                              [1, 1, 1, 1]],    #        query 3 (padding): the real keys 0-2, and itself
                             [[0, 1, 0, 0],     # row 1: query 1 (padding): itself only
                              [0, 0, 1, 0],     #        query 2 (real): itself, the first real token
                              [0, 0, 1, 1]]],   #        query 3 (real)
                            dtype=torch.bool)[:, None]
    assert got.shape == expected.shape, f"attention_mask_4d of a (2, 4) key_mask, T_past=1, T=3: want shape " \
        f"{tuple(expected.shape)} (B, 1, T, T_past + T), got {tuple(got.shape)}"
    for b in range(2):
        same = torch.equal(got[b, 0], expected[b, 0])
        assert same, (f"attention_mask_4d({key_mask.int().tolist()}, T_past=1, T=3)[{b}, 0], one column per key "
                      "(1 = visible):\n" + mask_table(expected[b, 0], got[b, 0], 1))
    # positions past 2048 (float16's last exact integer) and 32767 (int16's largest): the three queries after T_past
    # keys, all real, see every key up to their own, no further
    for T_past in (2051, 40_000):
        got = model.attention_mask_4d(torch.ones(1, T_past + 3, dtype=torch.bool), T_past, 3)[0, 0]
        seen = got.sum(1).tolist()
        assert seen == [T_past + 1, T_past + 2, T_past + 3] and not got[0, T_past + 1], (
            f"attention_mask_4d(all real keys, T_past={T_past}, T=3): query i sees keys 0..T_past + i, want "
            f"{[T_past + 1, T_past + 2, T_past + 3]} keys each, got {seen} (positions made in float16 or int16?)")
    # one new query (T = 1, as each step of generation): a padding query sees itself too, never an empty row
    for key_mask, T_past, want in (([[True, False]], 1, [[True, True]]), ([[False]], 0, [[True]]),
                                   ([[False, True, False]], 2, [[False, True, True]])):
        got = model.attention_mask_4d(torch.tensor(key_mask), T_past, 1)
        assert got.tolist() == [[want]], (f"attention_mask_4d({key_mask}, T_past={T_past}, T=1): the one query is "
                                          f"padding, and always sees itself: want {[[want]]}, got {got.tolist()}")


def test_attention_mask_is_made_on_the_device_of_key_mask():
    # key_mask on the CPU while new tensors go by default to the "meta" device (shapes, no data): the mask must be
    # made where key_mask lives (positions made on the default device, torch.arange without device=, cannot meet
    # key_mask: on a GPU that is a device mismatch). The mask is that of test_attention_mask_by_hand
    key_mask = torch.tensor([[True, False, True, True, True]])
    try:
        with torch.device("meta"):
            got = model.attention_mask_4d(key_mask, 2, 3)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        raise AssertionError(f"attention_mask_4d(key_mask on the CPU, T_past=2, T=3) with the default device set to "
                             f"'meta': {e}") from None
    expected = torch.tensor([[1, 0, 1, 0, 0],
                             [1, 0, 1, 1, 0],
                             [1, 0, 1, 1, 1]], dtype=torch.bool)[None, None]
    assert (got.device, tuple(got.shape), got.dtype) == (key_mask.device, (1, 1, 3, 5), torch.bool), (
        "attention_mask_4d(key_mask (1, 5) on the CPU, T_past=2, T=3) with the default device set to 'meta': want a "
        f"bool mask (1, 1, 3, 5) on the CPU, key_mask's device; got {got.dtype} {tuple(got.shape)} on {got.device}")
    assert torch.equal(got, expected), ("attention_mask_4d([[1, 0, 1, 1, 1]], T_past=2, T=3)[0, 0] with the default "
                                        "device set to 'meta', one column per key (1 = visible):\n"
                                        + mask_table(expected[0, 0], got[0, 0], 2))
    # key_mask itself on "meta", as a GPU's key_mask is on the GPU: a tensor made once at import (nanoGPT's causal
    # buffer, on the CPU) cannot meet it, though the default device above could not see it
    try:
        got = model.attention_mask_4d(key_mask.to("meta"), 2, 3)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        raise AssertionError(f"attention_mask_4d(key_mask on the 'meta' device, T_past=2, T=3): {e} (a tensor made "
                             "elsewhere than key_mask's device: a buffer made once at import?)") from None
    assert (got.device.type, tuple(got.shape)) == ("meta", (1, 1, 3, 5)), (
        f"attention_mask_4d of a key_mask (1, 5) on the 'meta' device, T_past=2, T=3: want (1, 1, 3, 5) on meta, got "
        f"{tuple(got.shape)} on {got.device}")
    # past 1024 positions (a block_size of 2048 is allowed), against the definition: key j visible to query i when
    # (j <= i and j is real) or j == i
    T_past, T = 1100, 3
    key_mask = torch.rand(2, T_past + T, generator=torch.Generator().manual_seed(0)) > 0.2
    got = model.attention_mask_4d(key_mask, T_past, T)
    real = key_mask.tolist()
    want = torch.tensor([[[(j <= i and real[b][j]) or j == i for j in range(T_past + T)]
                          for i in range(T_past, T_past + T)] for b in range(2)])[:, None]
    same = tuple(got.shape) == tuple(want.shape) and torch.equal(got, want)
    assert same, (f"attention_mask_4d(key_mask (2, {T_past + T}), T_past={T_past}, T={T}) (past 1024 positions): "
                  f"want {tuple(want.shape)} equal to the definition, got {tuple(got.shape)}"
                  + ("" if got.shape != want.shape else f", {int((got != want).sum())} entries differ"))


def test_padded_rows_equal_unpadded():
    m = tiny()
    a, b = [3, 1, 4, 1, 5], [9, 2, 6]
    ref_a, ref_b = m.hidden_states(torch.tensor([a]))[0], m.hidden_states(torch.tensor([b]))[0]

    def says(what):
        return lambda detail: (f"hidden states of {what} differ from those of the row alone, unpadded (the padded "
                               f"batch runs on attention_mask_4d's mask; the row alone on plain causal attention)"
                               f"\n{detail}")

    # right padding
    idx = torch.tensor([a, b + [0, 0]])
    mask = torch.tensor([[1] * 5, [1] * 3 + [0, 0]])
    h = m.hidden_states(idx, mask)
    torch.testing.assert_close(h[0], ref_a, atol=1e-5, rtol=1e-5, msg=says(f"{a} in a batch with {b} + 2 pads"))
    torch.testing.assert_close(h[1, :3], ref_b, atol=1e-5, rtol=1e-5, msg=says(f"{b} + 2 pads (right-padded)"))
    # left padding: positions count real tokens, so the result is the same
    h = m.hidden_states(torch.tensor([a, [0, 0] + b]), torch.tensor([[1] * 5, [0, 0] + [1] * 3]))
    torch.testing.assert_close(h[1, 2:], ref_b, atol=1e-5, rtol=1e-5, msg=says(f"2 pads + {b} (left-padded)"))


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
    torch.testing.assert_close(model.mean_pool(h, span), torch.stack([(h[0, 1] + h[0, 2]) / 2, h[1, 0]]),
                               msg=lambda m: f"mean_pool(h, {span.tolist()}), h = arange(24).view(2, 4, 3): "
                                             f"want [[4.5, 5.5, 6.5], [12, 13, 14]]\n{m}")
    # a float mask of h's own dtype, which .to(h.dtype) hands back as the caller's tensor: it stays as it was
    got = leaves_inputs_alone(model.mean_pool, h, span.float())
    torch.testing.assert_close(got, torch.stack([(h[0, 1] + h[0, 2]) / 2, h[1, 0]]))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    leaves_inputs_alone(model.last_token_pool, h, mask.float())
    torch.testing.assert_close(model.last_token_pool(h, mask), torch.stack([h[0, 2], h[1, 0]]),
                               msg=lambda m: f"last_token_pool(h, {mask.tolist()}), h = arange(24).view(2, 4, 3): "
                                             f"want h[0, 2] = [6, 7, 8] and h[1, 0] = [12, 13, 14]\n{m}")
    # calls in a row of the same shapes and counts, the last after the caller changed its mask in place: each reads
    # the mask as it is now (nothing cached by shape, count, or the tensor's identity). h[b, t] = [6b + 2t, 6b + 2t + 1]
    h = torch.arange(12.0).view(2, 3, 2)
    for pool, calls in ((model.mean_pool, [([[1, 1, 0], [1, 0, 0]], [[1, 2], [6, 7]]),
                                           ([[1, 0, 0], [1, 1, 0]], [[0, 1], [7, 8]]),
                                           ((0, 2), [[2, 3], [7, 8]])]),      # the last mask with [0, 2] set to 1
                        (model.last_token_pool, [([[1, 1, 0], [1, 0, 0]], [[2, 3], [6, 7]]),
                                                 ([[1, 0, 0], [1, 1, 0]], [[0, 1], [8, 9]]),
                                                 ((0, 1), [[2, 3], [8, 9]])])):  # the last mask with [0, 1] set to 1
        said = []
        for given, want in calls:
            if isinstance(given, tuple):
                mask[given] = 1
            else:
                mask = torch.tensor(given)
            said.append(f"{mask.tolist()}{' (changed in place)' if isinstance(given, tuple) else ''}")
            got = pool(h, mask)
            assert got.tolist() == want, (f"{pool.__name__}(h, mask), h = arange(12.0).view(2, 3, 2), the masks "
                                          f"{', then '.join(said)}: want {want} from the last, got {got.tolist()}")
    # rows of 2049 and 40,000 tokens: a count in float16 (2049 is not one) or int16 (40,000 wraps) is no count
    for T in (2049, 40_000):
        h, ones = torch.arange(float(T)).view(1, T, 1), torch.ones(1, T, dtype=torch.long)
        got = (model.last_token_pool(h, ones).item(), model.mean_pool(torch.ones(1, T, 1), ones).item())
        assert got == (T - 1, 1.0), (f"a row of {T} real tokens, h[0, t] = t: want last_token_pool {T - 1} and "
                                     f"mean_pool of ones 1.0, got {got}")


def test_pooling_of_holes_empty_spans_and_full_rows_by_hand():
    h = torch.arange(3 * 5 * 2, dtype=torch.float).view(3, 5, 2)  # h[b, t] = [10 b + 2 t, 10 b + 2 t + 1]
    span = torch.tensor([[1, 1, 0, 0, 1],    # a span with a hole: positions 0, 1 and 4
                         [0, 0, 0, 0, 0],    # an empty span: the count is clamped at 1, so the mean is 0
                         [1, 1, 1, 1, 1]])   # every position
    want = torch.tensor([[(0 + 2 + 8) / 3, (1 + 3 + 9) / 3],
                         [0.0, 0.0],
                         [24.0, 25.0]])
    got = model.mean_pool(h, span)
    torch.testing.assert_close(got, want, msg=lambda m: (
        f"mean_pool(h, span), h[b, t] = [10b + 2t, 10b + 2t + 1], span = {span.tolist()}: "
        f"want {[[round(x, 4) for x in r] for r in want.tolist()]}, got {got.tolist()}\n{m}"))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # mixed precision's types: the empty span's mean 0 too
        got = model.mean_pool(h.to(dtype), span)[1]
        assert torch.equal(got, torch.zeros(2, dtype=dtype)), (
            f"mean_pool(h in {dtype}, span = {span.tolist()}): the empty span's mean, want [0.0, 0.0], got "
            f"{got.tolist()} (a guard that the dtype rounds to 0, such as 1e-9 in float16, guards nothing)")
    mask = torch.tensor([[1, 1, 1, 1, 1],    # no padding: the last column
                         [1, 1, 0, 0, 0],
                         [1, 0, 0, 0, 0]])
    want = torch.tensor([[8.0, 9.0], [12.0, 13.0], [20.0, 21.0]])  # h[0, 4], h[1, 1], h[2, 0]
    got = model.last_token_pool(h, mask)
    torch.testing.assert_close(got, want, msg=lambda m: (
        f"last_token_pool(h, mask), h[b, t] = [10b + 2t, 10b + 2t + 1], right-padded mask = {mask.tolist()}: "
        f"want h[0, 4], h[1, 1], h[2, 0] = {want.tolist()}, got {got.tolist()}\n{m}"))
    # a diverged model's hidden states: the mean of a span holding nan is nan, of one holding inf is inf (a sum over
    # the span's positions over its length), not a mean over the finite ones nor the largest float
    h = torch.tensor([[[1.0], [float("nan")], [3.0]], [[1.0], [float("inf")], [3.0]], [[1.0], [2.0], [3.0]]])
    span = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 1]])
    got = model.mean_pool(h, span)
    want = [[sum(float(h[b, t, 0]) for t in range(3) if span[b, t]) / int(span[b].sum())] for b in range(3)]
    ok = (tuple(got.shape) == (3, 1) and math.isnan(got[0, 0]) and float(got[1, 0]) == math.inf
          and float(got[2, 0]) == want[2][0])
    assert ok, (f"mean_pool(h = [[1, nan, 3], [1, inf, 3], [1, 2, 3]], spans {span.tolist()}): want {want} (a sum over "
                f"each span / its length: nan and inf stay), got {got.tolist()}")


def test_pooling_is_one_row_per_batch_row_in_the_dtype_of_h():
    # (B, C) for every B and C, 1 included (nothing squeezed), in h's own dtype: a bfloat16 model pools to bfloat16,
    # whatever the masks' dtype (a float32 mask times a bfloat16 h would promote to float32)
    for (B, T, C), dtype, mdtype in itertools.product(((1, 3, 2), (2, 3, 1), (1, 1, 1)),
                                                      (torch.float32, torch.bfloat16, torch.float64),
                                                      (torch.long, torch.float32)):
        h = torch.arange(B * T * C, dtype=dtype).view(B, T, C)  # h[b, t, c] = (b T + t) C + c: small whole numbers
        span = torch.tensor([[1] * T, [0] + [1] * (T - 1)][:B], dtype=mdtype)  # row 1: every position but the first
        mask = torch.tensor([[1] * T, [1] + [0] * (T - 1)][:B], dtype=mdtype)  # row 1: one real token, then padding
        want_mean = [[sum((b * T + t) * C + c for t in range(T) if span[b, t]) / int(span[b].sum()) for c in range(C)]
                     for b in range(B)]
        last = [int(r.sum()) - 1 for r in mask]
        want_last = [[(b * T + last[b]) * C + c for c in range(C)] for b in range(B)]
        for name, fn, m, want in (("mean_pool", model.mean_pool, span, want_mean),
                                  ("last_token_pool", model.last_token_pool, mask, want_last)):
            got = fn(h, m)
            what = f"{name}(h {tuple(h.shape)} {dtype}, {m.tolist()} {mdtype})"
            assert (tuple(got.shape), got.dtype) == ((B, C), dtype), \
                f"{what}: want shape {(B, C)} (B, C) and h's dtype {dtype}, got {tuple(got.shape)} {got.dtype}"
            torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.double), atol=1e-2, rtol=1e-2,
                                       msg=lambda d: f"{what}: want {want}, got {got.tolist()}\n{d}")
    # 5000 rows (a large evaluation chunk): row b's last real token, nothing limited to a fixed number of rows
    B = 5000
    h = torch.arange(B * 2, dtype=torch.float32).view(B, 2, 1)   # h[b, t, 0] = 2b + t
    mask = torch.tensor([[1, 1] if b % 2 else [1, 0] for b in range(B)])
    try:
        got = model.last_token_pool(h, mask)
    except NotImplementedError:
        raise
    except (RuntimeError, IndexError) as e:
        raise AssertionError(f"last_token_pool(h ({B}, 2, 1), mask): {type(e).__name__}: {e}") from None
    want = torch.tensor([[float(2 * b + b % 2)] for b in range(B)])
    assert tuple(got.shape) == (B, 1) and torch.equal(got, want), (
        f"last_token_pool(h ({B}, 2, 1), h[b, t] = 2b + t, mask: row b's last real token at t = b % 2): want "
        f"{want[:4].flatten().tolist()}..., got shape {tuple(got.shape)}"
        + (f", {got[:4].flatten().tolist()}..." if tuple(got.shape) == (B, 1) else ""))


def test_pooling_gradients_match_finite_differences_with_an_empty_span():
    # an empty span pools to 0 whatever h holds: its gradient is 0, not NaN (a 0 / 0 kept out of the values only,
    # by torch.where, still reaches the gradient)
    torch.manual_seed(0)
    h = torch.randn(3, 4, 2)
    span = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 1]])
    assert_gradients_match_finite_differences(f"mean_pool(h (3, 4, 2), {span.tolist()}) with respect to h",
                                              lambda h: model.mean_pool(h, span), h)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert_gradients_match_finite_differences(f"last_token_pool(h (3, 4, 2), {mask.tolist()}) with respect to h",
                                              lambda h: model.last_token_pool(h, mask), h)


def test_init_and_tying():
    m = tiny()
    assert m.lm_head.weight is m.transformer.wte.weight
    assert all(float(b.detach().abs().max()) == 0 for n, b in m.named_parameters() if n.endswith("attn.c_attn.bias"))
    c = m.config  # by hand: wte, wpe (left out), per block 2 LayerNorms, c_attn, c_proj, c_fc, c_proj; ln_f; lm_head tied
    per_block = 2 * 2 * c.n_embd + (c.n_embd * 3 * c.n_embd + 3 * c.n_embd) + (c.n_embd * c.n_embd + c.n_embd) \
        + (c.n_embd * 4 * c.n_embd + 4 * c.n_embd) + (4 * c.n_embd * c.n_embd + c.n_embd)
    assert m.num_params() == c.vocab_size * c.n_embd + c.n_layer * per_block + 2 * c.n_embd


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
        torch.testing.assert_close(cached[i], full, atol=1e-5, rtol=1e-5, msg=lambda m: (
            f"logits after prompt {PROMPTS[i]} + [{int(tok[i])}]: the cached step (the prompt's keys and values "
            f"from the cache, one new token) differs from a full forward pass over the {len(PROMPTS[i]) + 1} "
            f"tokens\n{m}"))


def test_kv_cache_extend_by_hand():
    # 2 layers, 1 batch row, 1 head of size 2, room for 4 positions: a prompt step of 3 positions, then 1 more
    cache = model.KVCache(GPTConfig(n_layer=2, n_head=1, n_embd=2), batch=1, capacity=4, device="cpu")
    k = {0: torch.tensor([[[[1., 2.], [3., 4.], [5., 6.]]]]),        # (B, n_head, positions, head size) per layer
         1: torch.tensor([[[[10., 20.], [30., 40.], [50., 60.]]]])}

    def check(layer, got, want, what):
        for name, g, w in zip(("keys", "values"), got, want):
            assert g.shape == w.shape, f"{what}, layer {layer}: want {name} of shape {tuple(w.shape)} " \
                                       f"(B, n_head, positions so far, head size), got {tuple(g.shape)}"
            torch.testing.assert_close(g, w, msg=lambda m: f"{what}, layer {layer}: want {name}\n{w[0, 0].tolist()}, "
                                                           f"got\n{g[0, 0].tolist()}\n{m}")
        for name, g, buffer in zip(("keys", "values"), got, (cache.k, cache.v)):
            a_view = g.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
            assert a_view, (
                f"{what}, layer {layer}: the {name} returned are a new tensor; want a view of the cache's own buffer "
                f"(self.{name[0]}[layer, :, :, :end]): nothing is concatenated or copied as the sequence grows")

    for layer in (0, 1):  # the prompt step: layer by layer, as GPT._run calls it
        check(layer, cache.extend(layer, k[layer], -k[layer]), (k[layer], -k[layer]), "step 1 (3 positions)")
    assert cache.length == 0, f"extend changed cache.length to {cache.length}; GPT._run advances it once per " \
                              "step, after the last layer"
    torch.testing.assert_close(cache.k[0, :, :, :3], k[0], msg=lambda m: (
        f"layer 0's keys in the cache after layer 1 was written: want them untouched, {k[0][0, 0].tolist()}; "
        f"got {cache.k[0, 0, 0, :3].tolist()}\n{m}"))
    cache.length += 3  # what GPT._run does
    new = {0: torch.tensor([[[[7., 8.]]]]), 1: torch.tensor([[[[70., 80.]]]])}
    for layer in (0, 1):  # the second step fills the last slot: every position so far comes back
        want = torch.cat([k[layer], new[layer]], dim=2)
        check(layer, cache.extend(layer, new[layer], -new[layer]), (want, -want), "step 2 (1 more position, the cache "
              "now full)")
    cache.length += 1
    try:  # no room for a fifth position
        cache.extend(0, new[0], -new[0])
        raised = None
    except Exception as e:  # the type is checked below
        raised = e
    assert isinstance(raised, ValueError), "extend past the capacity (a 5th position in a cache of 4): want a " \
                                           f"ValueError that says so, got {raised!r}"
    # the cache writes with tensors on its own device: with new tensors going by default to "meta" (shapes, no data),
    # one made without device= (an index for index_copy_, say) cannot meet the CPU buffer, as it could not on a GPU
    cache = model.KVCache(GPTConfig(n_layer=2, n_head=1, n_embd=2), batch=1, capacity=4, device="cpu")
    try:
        with torch.device("meta"):
            got = cache.extend(0, k[0], -k[0])
    except RuntimeError as e:
        raise AssertionError(f"extend of a CPU cache with the default device set to 'meta': a tensor made without "
                             f"device=? {e}") from None
    assert torch.equal(got[0], k[0]) and torch.equal(got[1], -k[0]), (
        f"extend of a CPU cache, the default device 'meta': want the keys {k[0][0, 0].tolist()} and their negatives, "
        f"got {got[0][0, 0].tolist()} and {got[1][0, 0].tolist()}")
    # a cache whose buffers live on "meta" (as a GPU's live on the GPU), and keys and values there too: every tensor
    # extend uses is on the cache's device, an index made once at import (on the CPU, out of the default's reach) too
    cache = model.KVCache(GPTConfig(n_layer=2, n_head=2, n_embd=6), batch=2, capacity=5, device="meta")
    new_k = torch.empty(2, 2, 3, 3, device="meta")
    try:
        got = cache.extend(1, new_k, new_k)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        raise AssertionError(f"extend of a cache on the 'meta' device, 3 positions: {e} (a tensor not made on the "
                             "cache's device: an index made once at import?)") from None
    assert all(t.device.type == "meta" and tuple(t.shape) == (2, 2, 3, 3) for t in got), (
        f"extend of a cache on the 'meta' device, 3 positions: want keys and values (2, 2, 3, 3) on meta, got "
        f"{[(tuple(t.shape), str(t.device)) for t in got]}")


def test_kv_cache_extend_returns_views_with_several_rows_and_heads():
    # 2 batch rows and 2 heads: a slice [layer, :, :, :end] of the buffer is then not contiguous, so a copy of it
    # (.contiguous(), .clone(), torch.cat) is a new tensor, not the buffer itself
    cache = model.KVCache(GPTConfig(n_layer=2, n_head=2, n_embd=6), batch=2, capacity=5, device="cpu")
    torch.manual_seed(0)
    so_far = []
    for step, new in enumerate([torch.randn(2, 2, 3, 3), torch.randn(2, 2, 1, 3)], 1):
        so_far.append(new)
        want = torch.cat(so_far, dim=2)
        for layer in (0, 1):
            got = cache.extend(layer, new + 10 * layer, -new - 10 * layer)
            what = f"step {step} ({new.size(2)} new positions), layer {layer}, B = 2, n_head = 2"
            for name, g, w, buffer in zip(("keys", "values"), got, (want + 10 * layer, -want - 10 * layer),
                                          (cache.k, cache.v)):
                assert g.shape == w.shape, f"{what}: want {name} of shape {tuple(w.shape)}, got {tuple(g.shape)}"
                torch.testing.assert_close(g, w, msg=lambda m: f"{what}: the {name} so far differ\n{m}")
                assert g.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr(), (
                    f"{what}: the {name} returned are a new tensor; want a view of the cache's own buffer "
                    f"(self.{name[0]}[layer, :, :, :end], not contiguous when B > 1 or n_head > 1): nothing is "
                    "copied as the sequence grows")
        cache.length += new.size(2)  # what GPT._run does


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
def brute_force_beams(m, prompt, length, eos, may_follow=None):
    """Every continuation of up to `length` tokens (stopping at eos), scored by full forward passes; with
    may_follow (the tokens so far -> the tokens allowed next), only the continuations it allows."""
    V, seqs = m.config.vocab_size, []
    for n in range(1, length + 1):
        for tail in itertools.product(range(V), repeat=n):
            if eos in tail[:-1] or (n < length and tail[-1] != eos):
                continue  # eos only at the end; shorter sequences must have ended
            if may_follow and any(t not in may_follow(list(tail[:i])) for i, t in enumerate(tail)):
                continue
            logp = torch.log_softmax(m(torch.tensor([prompt + list(tail)]))[0][0], -1)
            score = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(tail))
            seqs.append((list(tail), score))
    return sorted(seqs, key=lambda s: -s[1])


@torch.no_grad()
def naive_beam_search(m, prompt, K, length, eos):
    """Beam search as its definition reads, one beam at a time, scored by full forward passes: at each step the K best
    of every open beam's extensions (its score + the token's log-probability) and of every finished beam as it is
    (its score kept: it competes with the open beams until the end)."""
    beams = [([], 0.0)]  # the K beams start as one
    for _ in range(length):
        candidates = []
        for tokens, score in beams:
            if tokens and tokens[-1] == eos:
                candidates.append((tokens, score))
                continue
            logp = torch.log_softmax(m(torch.tensor([prompt + tokens]))[0][0, -1].float(), -1)
            candidates += [(tokens + [t], score + float(lp)) for t, lp in enumerate(logp)]
        beams = sorted(candidates, key=lambda c: -c[1])[:K]
    return beams


def assert_same_beams(got, want, what, atol=1e-4, rtol=1e-4):
    """got, want: [(new tokens, score)], best first. The message lists both side by side, '<--' where they differ."""
    rows = []
    for i, (g, w) in enumerate(itertools.zip_longest(got, want, fillvalue=("-", float("nan")))):
        differ = g[0] != w[0] or not math.isclose(g[1], w[1], rel_tol=rtol, abs_tol=atol)
        rows.append(f"  {i:2d}  want {str(w[0]):<14} {w[1]:9.5f}   got {str(g[0]):<14} {g[1]:9.5f}"
                    + ("  <--" if differ else ""))
    table = f"{what}: beams best first (tokens after the prompt, score = sum of log-probabilities)\n" + "\n".join(rows)
    assert len(got) == len(want), f"want {len(want)} beams, got {len(got)}\n{table}"
    assert [t for t, _ in got] == [t for t, _ in want], table
    odd = [type(score).__name__ for _, score in got if type(score) is not float]
    assert not odd, f"{what}: want each score a Python float, got a {odd[0]}"
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=rtol, atol=atol, err_msg=table)


def test_beam_search_is_exact_when_the_beam_holds_every_prefix():
    m = tiny(vocab_size=4)
    L, K = 3, 16  # K >= V^(L-1): no prefix is ever pruned, so the beams are the exact top K
    # the stop token 0 too: the id of end-of-text in the project's own tokenizer (its special tokens come first)
    for prompt, eos in (([1, 2], 3), ([0], 3), ([1, 2], 0)):
        got = m.beam_search([prompt], K, L, eos)[0]
        want = brute_force_beams(m, prompt, L, eos)[:K]
        assert_same_beams(got, want, f"beam_search([{prompt}], num_beams={K}, max_new_tokens={L}, eos_id={eos}) "
                                     f"against every continuation scored by full forward passes")
    # the model's mode is its caller's (a model evaluated by beam search in the middle of training trains on, its
    # dropout on): a model that was training comes back training, every module of it, and one in eval mode in eval
    for training in (True, False):
        m.train(training)
        for use_cache in (True, False):
            m.beam_search([[1, 2]], 2, 2, 3, use_cache=use_cache)
            modes = {mod.training for mod in m.modules()}
            assert modes == {training}, (
                f"beam_search(use_cache={use_cache}) of a model in {'training' if training else 'eval'} mode: "
                f"expected every module left training={training}, got modes {modes} (the model's mode changed)")


def test_beam_search_batched_and_constrained_is_exact():
    """Two prompts of different lengths in one batch (the shorter one left-padded), and allowed_next: the first
    token is never 0 and no token repeats the one before it. K = 8 holds every allowed prefix of up to 2 tokens
    (7 of them), so the beams are the exact top 8 of the allowed continuations, with the cache and without."""
    m = tiny(vocab_size=4)
    eos, L, K, prompts = 3, 3, 8, [[1, 2], [0]]

    def may_follow(prefix):
        return [t for t in range(4) if (t != prefix[-1] if prefix else t != 0)]

    def allowed_next(tokens):  # (B, K, t) -> (B, K, V) bool
        allowed = torch.zeros(*tokens.shape[:2], 4, dtype=torch.bool)
        for b, j in itertools.product(range(tokens.size(0)), range(tokens.size(1))):
            allowed[b, j, may_follow(tokens[b, j].tolist())] = True
        return allowed

    want = [brute_force_beams(m, p, L, eos, may_follow)[:K] for p in prompts]
    for use_cache in (True, False):
        got = m.beam_search(prompts, K, L, eos, use_cache=use_cache, allowed_next=allowed_next)
        for p, g, w in zip(prompts, got, want):
            assert_same_beams(g, w, f"prompt {p} of beam_search({prompts}, num_beams={K}, max_new_tokens={L}, "
                                    f"eos_id={eos}, use_cache={use_cache}, allowed_next=no 0 first, no repeated token)")


def test_beam_search_batched_equals_single_and_cached_equals_uncached():
    m = tiny()
    batched = m.beam_search(PROMPTS, 4, 6, eos_id=5)
    single = [m.beam_search([p], 4, 6, eos_id=5)[0] for p in PROMPTS]
    uncached = m.beam_search(PROMPTS, 4, 6, eos_id=5, use_cache=False)
    # with the cache, the model reads each prompt once, then one new token per beam and step: at most B·T + B·K·L
    # token positions through the embedding (B prompts left-padded to T tokens, K beams, L new tokens; L − 1 steps
    # need the model, one more is let pass), not each beam's whole sequence again at every step (what use_cache=False
    # runs, the slow reference)
    embedded = []
    hook = m.transformer.wte.register_forward_hook(lambda module, args, out: embedded.append(args[0].numel()))
    try:
        m.beam_search(PROMPTS, 4, 6, eos_id=5)
    finally:
        hook.remove()
    B, T = len(PROMPTS), max(map(len, PROMPTS))
    assert sum(embedded) <= B * T + B * 4 * 6, (
        f"beam_search({PROMPTS}, num_beams=4, max_new_tokens=6, eos_id=5) with the cache: {sum(embedded)} token "
        f"positions went through the model (calls of {embedded}), expected at most {B * T + B * 4 * 6}: the prompts "
        f"once ({B} x {T}), then the 4 beams' new tokens ({B} x 4 per step, at most 6 steps): is the cache used after "
        f"the prompt, or does each step run the beams' whole sequences?")
    for p, a, b, c in zip(PROMPTS, batched, single, uncached):
        what = f"beam_search(num_beams=4, max_new_tokens=6, eos_id=5) of prompt {p}"
        assert [t for t, _ in a] == [t for t, _ in b] == [t for t, _ in c], (
            f"{what}: the beams differ, best first\n  in the batch of {len(PROMPTS)} (cached): {a}\n"
            f"  alone (cached):             {b}\n  in the batch, uncached:     {c}")
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-4,
                                   err_msg=f"{what}: scores in the batch (cached) against alone (cached)")
        np.testing.assert_allclose([s for _, s in a], [s for _, s in c], atol=1e-4,
                                   err_msg=f"{what}: scores in the batch, cached against uncached")
        assert [s for _, s in a] == sorted([s for _, s in a], reverse=True), \
            f"{what}: the beams are not best first: scores {[s for _, s in a]}"
    # a beam too narrow to hold every prefix (3 beams, a vocabulary of 5), on a model whose next tokens are far from
    # uniform (its embeddings scaled by 30): the beams of a naive beam search, in which a finished beam keeps its score
    # and competes with the open beams' extensions at every step (neither set aside, its place given to an open beam,
    # nor kept whatever the open beams score)
    m = tiny(vocab_size=5)
    with torch.no_grad():
        m.transformer.wte.weight.mul_(30)
    prompts, K, L, eos = [[1, 2], [3, 1, 0]], 3, 4, 1
    want = [naive_beam_search(m, p, K, L, eos) for p in prompts]
    for use_cache in (True, False):
        got = m.beam_search(prompts, K, L, eos, use_cache=use_cache)
        for p, g, w in zip(prompts, got, want):
            assert_same_beams(g, w, f"prompt {p} of beam_search({prompts}, num_beams={K}, max_new_tokens={L}, "
                                    f"eos_id={eos}, use_cache={use_cache}) against a naive beam search (each step: "
                                    f"the {K} best of the open beams' extensions and the finished beams as they are)")
    # one beam (num_beams=1, a legitimate setting: beam search of width 1 is greedy search): a naive beam search of
    # width 1, two prompts of different lengths in one batch, with the cache and without
    want = [naive_beam_search(m, p, 1, L, eos) for p in prompts]
    for use_cache in (True, False):
        what = f"beam_search({prompts}, num_beams=1, max_new_tokens={L}, eos_id={eos}, use_cache={use_cache})"
        try:
            got = m.beam_search(prompts, 1, L, eos, use_cache=use_cache)
        except (RuntimeError, IndexError) as e:
            raise AssertionError(f"{what}: expected one beam per prompt, got {type(e).__name__}: "
                                 f"{str(e)[:160]}") from None
        for p, g, w in zip(prompts, got, want):
            assert_same_beams(g, w, f"prompt {p} of {what} against a naive beam search of width 1 (greedy)")
    # one prompt's beams all finished while another's are open: the search goes on for the open ones (eos: the first
    # token written after prompt a; prompt b, searched alone, writes L tokens without it)
    m, L = tiny(), 4
    a, b, eos = next((a, b, eos) for a, b in itertools.permutations(range(11), 2)
                     for eos in [naive_beam_search(m, [a], 1, 1, -1)[0][0][0]]
                     if len(naive_beam_search(m, [b], 1, L, eos)[0][0]) == L)
    for K in (1, 2):
        got = m.beam_search([[a], [b]], K, L, eos)
        for p, g in zip(([a], [b]), got):
            assert_same_beams(g, naive_beam_search(m, p, K, L, eos), f"prompt {p} of beam_search({[[a], [b]]}, "
                              f"num_beams={K}, max_new_tokens={L}, eos_id={eos}) against a naive beam search: the "
                              f"beams of prompt [{a}] all end at once, those of [{b}] go on")
    # more than 64 beams (nothing sized by a constant): 70 beams, a vocabulary of 9, 3 new tokens (81 prefixes of 2)
    m, prompt, K, L, eos = tiny(vocab_size=9), [1, 2], 70, 3, 3
    want = naive_beam_search(m, prompt, K, L, eos)
    for use_cache in (True, False):
        what = f"beam_search([{prompt}], num_beams={K}, max_new_tokens={L}, eos_id={eos}, use_cache={use_cache})"
        try:
            got = m.beam_search([prompt], K, L, eos, use_cache=use_cache)[0]
        except (RuntimeError, IndexError) as e:
            raise AssertionError(f"{what}: expected {K} beams, got {type(e).__name__}: {str(e)[:160]}") from None
        assert_same_beams(got, want, f"{what} against a naive beam search")


def test_beam_search_makes_its_tensors_on_the_models_device():
    # with new tensors going by default to "meta" (shapes, no data), one made without device= cannot meet the CPU
    # model's, as a CPU tensor could not meet a model on a GPU: the beams must be those made without the default
    m = tiny()

    def allowed_next(tokens):  # only 0 and eos, as a catalog would allow: made on the tokens' device
        allowed = torch.zeros(*tokens.shape[:2], m.config.vocab_size, dtype=torch.bool, device=tokens.device)
        allowed[..., 0] = allowed[..., 5] = True
        return allowed
    for use_cache, allowed in ((True, None), (False, None), (True, allowed_next), (False, allowed_next)):
        want = m.beam_search(PROMPTS, 4, 6, eos_id=5, use_cache=use_cache, allowed_next=allowed)
        what = (f"beam_search(num_beams=4, max_new_tokens=6, eos_id=5, use_cache={use_cache}"
                f"{', allowed_next=only 0 and eos' if allowed else ''}) of a CPU model")
        try:
            with torch.device("meta"):
                got = m.beam_search(PROMPTS, 4, 6, eos_id=5, use_cache=use_cache, allowed_next=allowed)
        except (RuntimeError, NotImplementedError) as e:
            if str(e).startswith("exercise"):
                raise
            raise AssertionError(f"{what}, the default device set to 'meta': a tensor made without device=? {e}") \
                from None
        assert got == want, f"{what}: with the default device set to 'meta' {got}, without it {want}"


def test_beam_search_dead_beams_score_minus_infinity():
    """More beams than continuations: the beams past the last real one are dead, scored -inf (what
    CatalogTrie.ranked_items skips), and the others are the exact continuations, best first. K = 6 beams, vocabulary
    4: one step has 4 continuations; two steps writing only 0 or eos (allowed_next) have 3: [3], [0, 3], [0, 0]."""
    m = tiny(vocab_size=4)
    eos, K, prompts = 3, 6, [[1, 2], [0]]

    def only_0_and_eos(prefix):
        return [0, eos]

    def allowed_next(tokens):  # (B, K, t) -> (B, K, V) bool
        allowed = torch.zeros(*tokens.shape[:2], 4, dtype=torch.bool)
        allowed[..., [0, eos]] = True
        return allowed

    cases = [(1, None, None, ""), (2, only_0_and_eos, allowed_next, ", allowed_next=only 0 and eos")]
    for L, may_follow, allowed, how in cases:
        want = [brute_force_beams(m, p, L, eos, may_follow) for p in prompts]  # every continuation: fewer than K
        for use_cache in (True, False):
            got = m.beam_search(prompts, K, L, eos, use_cache=use_cache, allowed_next=allowed)
            for p, g, w in zip(prompts, got, want):
                what = (f"prompt {p} of beam_search({prompts}, num_beams={K}, max_new_tokens={L}, eos_id={eos}, "
                        f"use_cache={use_cache}{how})")
                scores = [s for _, s in g]
                assert len(g) == K and all(s == -math.inf for s in scores[len(w):]), (
                    f"{what}: {len(w)} continuations exist, so want {K} beams of which the last {K - len(w)} are dead, "
                    f"scored -inf; got the scores {scores}")
                assert_same_beams(g[:len(w)], w, f"{what}: the live beams against every continuation scored by full "
                                                 "forward passes")
    # _beam_choose makes its tensors on the inputs' device: with new tensors going by default to "meta" (shapes, no
    # data), one made without device= cannot meet the CPU inputs, as a CPU tensor could not meet them on a GPU
    scores, logp = torch.zeros(2, 3), torch.randn(2, 3, 7).log_softmax(-1)
    finished = torch.tensor([[False, True, False], [False, False, False]])
    try:
        with torch.device("meta"):
            got = model._beam_choose(scores, logp, finished, 0)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        raise AssertionError(f"_beam_choose of CPU inputs with the default device set to 'meta': {e}") from None
    assert [t.device for t in got] == [scores.device] * 3, (
        f"_beam_choose of CPU inputs, the default device 'meta': want its results on the CPU, got {[t.device for t in got]}")
    # nothing kept from an earlier call: a finished beam's extension is this call's eos, made on this call's device
    logp = torch.randn(1, 2, 5, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    finished = torch.tensor([[True, False]])
    model._beam_choose(torch.zeros(1, 2), logp, finished, 2)                  # a first call: eos 2, on the CPU
    s, src, tok = model._beam_choose(torch.tensor([[0.0, -100.0]]), logp, finished, 4)
    assert (src[0, 0].item(), tok[0, 0].item(), s[0, 0].item()) == (0, 4, 0.0), (
        f"_beam_choose, beam 0 finished at score 0, beam 1 at -100, eos_id=4 (after a call with eos_id=2): expected "
        f"beam 0's extension eos 4 at score 0 first, got token {tok[0, 0].item()} of beam {src[0, 0].item()} at "
        f"{s[0, 0].item()}")
    try:
        got = model._beam_choose(torch.zeros(1, 2, device="meta"), logp.to("meta"), finished.to("meta"), 4)
    except (RuntimeError, NotImplementedError) as e:
        if str(e).startswith("exercise"):
            raise
        raise AssertionError(f"_beam_choose of inputs on the 'meta' device (as on a GPU), after calls on the CPU: "
                             f"{type(e).__name__}: {str(e)[:160]}") from None
    assert [t.device.type for t in got] == ["meta"] * 3, (
        f"_beam_choose of inputs on 'meta': want its results on meta, got {[t.device for t in got]}")
    # no new tokens: K empty beams, the first scored 0 (the prompt itself), nothing written
    got = tiny(vocab_size=4).beam_search([[1, 2]], 3, 0, eos)
    assert [t for t, _ in got[0]] == [[], [], []] and got[0][0][1] == 0.0, (
        f"beam_search([[1, 2]], num_beams=3, max_new_tokens=0): expected 3 empty beams, the first scored 0, got "
        f"{got[0]}")
    # and a live beam is never scored -inf, however unlikely: GPT-2's vocabulary (50257 tokens, eos 50256) and 12 new
    # tokens, about -10.8 each, take every beam to about -125, where a probability (exp of the score) underflows
    # float32 (below about -104) though its log does not. Each beam's score is the sum of its tokens'
    # log-probabilities by a plain forward pass (float64 log-softmax), finite
    m, prompts, K, L, eos = tiny(vocab_size=50257), [[464, 3290], [50256]], 3, 12, 50256
    what = f"beam_search({prompts}, num_beams={K}, max_new_tokens={L}, eos_id={eos}) of a model with GPT-2's " \
           f"vocabulary ({m.config.vocab_size} tokens)"
    for prompt, beams in zip(prompts, m.beam_search(prompts, K, L, eos)):  # the scores are _beam_choose's either way
        for tokens, score in beams:
            with torch.no_grad():
                logp = torch.log_softmax(m(torch.tensor([prompt + tokens]))[0][0].double(), -1)
            exact = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))
            assert math.isfinite(score) and math.isclose(score, exact, abs_tol=1e-3), (
                f"{what}, prompt {prompt}: the beam {tokens} scores {score}; the sum of its tokens' "
                f"log-probabilities (a forward pass, log_softmax in float64) is {exact:.5f} (a product of "
                f"probabilities underflows to 0 below about -104 in float32: its log is -inf)")


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
        got = ln(x)
    want = F.layer_norm(x, (6,), ln.weight, ln.bias, 1e-5)
    torch.testing.assert_close(got, want, msg=lambda m: (
        f"LayerNorm(6) inside second_order_ops on x of shape (3, 4, 6), random weight and bias: got shape "
        f"{tuple(got.shape)}, want {tuple(want.shape)}; at x[0, 0] = {[round(v, 3) for v in x[0, 0].tolist()]} "
        f"want {[round(v, 4) for v in want[0, 0].tolist()]}, got {[round(v, 4) for v in got[0, 0].tolist()]}\n{m}"))


def naive_layer_norm(row, weight, bias, eps):
    """One position's LayerNorm in plain Python floats: biased variance, eps inside the square root."""
    mu = sum(row) / len(row)
    var = sum((x - mu) ** 2 for x in row) / len(row)
    return [(x - mu) / math.sqrt(var + eps) * w + b for x, w, b in zip(row, weight, bias)]


@pytest.mark.parametrize("written_out", [True, False], ids=["written-out", "fused"])
def test_layer_norm_by_hand(written_out):
    # LayerNorm(4, bias=False, eps=0.1): [1, 2, 3, 4] has mean 2.5 and variance 1.25, so x_hat = (x - 2.5) / √1.35
    # = [-1.2910, -0.4303, 0.4303, 1.2910]; a constant row normalises to 0. LayerNorm(4) (eps 1e-5, with a bias): a
    # row of variance 1e-6, ten times smaller than eps (so eps must sit inside the square root), and one of variance 50
    cases = [(dict(bias=False, eps=0.1), [[1., 2., 3., 4.], [5., 5., 5., 5.]], [1., 2., -1., .5], [0.] * 4),
             (dict(), [[1e-3, -1e-3, 1e-3, -1e-3], [0., 10., 0., -10.]], [2., 1., 1., 1.], [.5, 0., -.5, 1.])]
    for kw, rows, weight, bias in cases:
        ln = model.LayerNorm(4, **kw)
        with torch.no_grad():
            ln.weight.copy_(torch.tensor(weight))
            if ln.bias is not None:
                ln.bias.copy_(torch.tensor(bias))
        x = torch.tensor(rows)
        with model.second_order_ops(ln) if written_out else contextlib.nullcontext():
            got = ln(x)
        want = torch.tensor([naive_layer_norm(r, weight, bias, kw.get("eps", 1e-5)) for r in rows])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m: (
            f"LayerNorm(4, {', '.join(f'{k}={v}' for k, v in kw.items())}) "
            f"{'inside' if written_out else 'outside'} second_order_ops, weight {weight}"
            f"{'' if 'bias' in kw else f', bias {bias}'}, on the rows {rows}:\n"
            f"want {[[round(v, 4) for v in r] for r in want.tolist()]}\ngot  "
            f"{[[round(v, 4) for v in r] for r in got.tolist()]}\n{m}"))
    # x of shape (C,), no leading dimension at all ("...": any number of them, none too, as F.layer_norm takes)
    ln = model.LayerNorm(4, eps=0.1)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    want = torch.tensor(naive_layer_norm(x.tolist(), [1.0] * 4, [0.0] * 4, 0.1))
    try:
        with model.second_order_ops(ln) if written_out else contextlib.nullcontext():
            got = ln(x)
    except NotImplementedError:
        raise
    except (RuntimeError, IndexError) as e:
        raise AssertionError(f"LayerNorm(4, eps=0.1) {'inside' if written_out else 'outside'} second_order_ops on "
                             f"x = [1, 2, 3, 4] of shape (4,): {type(e).__name__}: {e}") from None
    assert tuple(got.shape) == (4,) and torch.allclose(got, want, atol=1e-5, rtol=1e-4), (
        f"LayerNorm(4, eps=0.1) {'inside' if written_out else 'outside'} second_order_ops on x = [1, 2, 3, 4] of shape "
        f"(4,): want {[round(v, 4) for v in want.tolist()]}, got {got.tolist()}")
    # a width of C = 1: each position is its own mean, its biased variance (x - μ)² / 1 = 0, so y = β exactly;
    # torch.var's unbiased variance of one value is nan, and nan · (C - 1) / C stays nan
    ln = model.LayerNorm(1)
    with torch.no_grad():
        ln.weight.fill_(2.0)
        ln.bias.fill_(0.5)
    x = torch.tensor([[3.0], [7.0]])
    with model.second_order_ops(ln) if written_out else contextlib.nullcontext():
        got = ln(x)
    assert tuple(got.shape) == (2, 1) and got.tolist() == [[0.5], [0.5]], (
        f"LayerNorm(1) {'inside' if written_out else 'outside'} second_order_ops, weight 2, bias 0.5, on x = [[3], "
        f"[7]]: want [[0.5], [0.5]] (x - μ = 0, σ² = 0: the bias), got {got.tolist()}")


@pytest.mark.parametrize("written_out", [True, False], ids=["written-out", "fused"])
def test_layer_norm_gradients_match_finite_differences_and_leave_the_input_alone(written_out):
    # the gradients with respect to x, weight and bias: the mean and the variance depend on x too (neither is a
    # constant to detach); and x is the caller's, to be left as it was
    from torch.func import functional_call

    torch.manual_seed(0)
    for kw in (dict(), dict(bias=False, eps=0.1)):
        ln = model.LayerNorm(5, **kw)
        where = ("inside" if written_out else "outside") + " second_order_ops"
        what = f"LayerNorm(5{''.join(f', {k}={v}' for k, v in kw.items())}) {where}"
        x = torch.randn(2, 3, 5)
        with model.second_order_ops(ln) if written_out else contextlib.nullcontext():
            try:
                leaves_inputs_alone(ln, x)
            except AssertionError:
                raise AssertionError(f"{what} changed x, the caller's tensor: want x as it was (the centred x is a "
                                     "new tensor, not x changed in place)") from None

        def fn(x, weight, *bias):
            with model.second_order_ops(ln) if written_out else contextlib.nullcontext():
                return functional_call(ln, {"weight": weight, **({"bias": bias[0]} if bias else {})}, (x,))

        inputs = (x, 1 + 0.5 * torch.randn(5)) + ((torch.randn(5),) if ln.bias is not None else ())
        assert_gradients_match_finite_differences(
            f"{what} with respect to x (2, 3, 5), weight{', bias' if ln.bias is not None else ''} (inputs 0, 1"
            f"{', 2' if ln.bias is not None else ''})", fn, *inputs)
    # second derivatives with respect to x, which second-order MAML takes through the model: the first derivatives
    # alone cannot see a mean detached inside the variance (d var / d mu = -2 mean(x - mu) is 0), these can
    ln = model.LayerNorm(5).double()
    with model.second_order_ops(ln) if written_out else contextlib.nullcontext():
        assert_gradients_match_finite_differences(f"LayerNorm(5) {where}, second derivatives with respect to x "
                                                  "(2, 5)", ln, torch.randn(2, 5), second_order=True)


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
    for name, a, b in zip(params, by_vmap, by_loop):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=lambda m: (
            f"second-order MAML's gradient of {name}: vmap over 3 tasks differs from a loop over them (float64, "
            f"inside second_order_ops: LayerNorm's written-out ops are what vmap differentiates twice)\n{m}"))


# -----------------------------------------------------------------------------
# each exercise's contract over a small family of valid inputs (batch sizes, strides, dtypes, devices, vmap,
# boundaries), against an independent reference

def test_manual_attention_equals_sdpa_in_float64_on_dtypes_strides_and_masks():
    # a family of valid inputs against F.scaled_dot_product_attention in float64: one row and several, a mask per row
    # and one shared (1, 1, Tq, Tk), q, k, v as CausalSelfAttention makes them (a transpose: not contiguous), float64
    # and bfloat16 inputs (the output in the inputs' dtype), and new tensors going by default to the "meta" device
    torch.manual_seed(0)

    def qkv(B, Tq, Tk, dtype=torch.float32, transposed=False):
        if transposed:  # (B, T, nh, hs) -> (B, nh, T, hs), as CausalSelfAttention splits the heads
            return tuple(torch.randn(B, T, 2, 4).transpose(1, 2).to(dtype) for T in (Tq, Tk, Tk))
        return tuple(torch.randn(B, 2, T, 4).to(dtype) for T in (Tq, Tk, Tk))

    causal = torch.ones(3, 5, dtype=torch.bool).tril(2)[None, None]  # (1, 1, 3, 5): two past keys
    not_causal = torch.tensor([[[1, 0, 0, 1, 1], [0, 1, 0, 0, 1], [0, 0, 1, 1, 1]],     # (2, 1, 3, 5), a mask per row;
                               [[0, 0, 0, 0, 1], [1, 1, 1, 1, 1], [1, 0, 1, 0, 0]]]).bool()[:, None]  # no empty row
    cases = [("one row, a shared causal mask", qkv(1, 3, 5), causal, torch.float32, False),
             ("3 rows, attention_mask_4d's mask per row", qkv(3, 3, 5),
              model.attention_mask_4d(torch.tensor([[1, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]]).bool(), 2, 3),
              torch.float32, False),
             ("2 rows, q, k, v transposed (not contiguous)", qkv(2, 3, 5, transposed=True), causal, torch.float32,
              False),
             ("float64", qkv(2, 3, 5, torch.float64), causal, torch.float64, False),
             ("bfloat16", qkv(2, 3, 5, torch.bfloat16), causal, torch.bfloat16, False),
             ("float16 (mixed precision's other type)", qkv(2, 3, 5, torch.float16), causal, torch.float16, False),
             ("float64, every visible score near -80000 (below any finite stand-in for -inf)",
              (200 * torch.ones(1, 2, 3, 4, dtype=torch.float64), -200 * torch.ones(1, 2, 5, 4, dtype=torch.float64),
               torch.randn(1, 2, 5, 4, dtype=torch.float64)), causal, torch.float64, False),
             ("float64, scores in the thousands a few apart",
              tuple(40 * torch.randn(2, 2, T, 4, dtype=torch.float64) for T in (3, 5)) + (torch.randn(2, 2, 5, 4, dtype=torch.float64),),
              causal, torch.float64, False),
             ("float64, head size 6 (its square root in float64: float32's sqrt(6) is off by 4e-8)",
              tuple(torch.randn(2, 2, T, 6, dtype=torch.float64) for T in (3, 5, 5)), causal, torch.float64, False),
             ("float64, v's head size 6 (q's and k's 4: the scale is 1 / sqrt(4))",
              qkv(2, 3, 5, torch.float64)[:2] + (torch.randn(2, 2, 5, 6, dtype=torch.float64),), causal, torch.float64,
              False),
             ("float64, a mask that is not causal (later keys visible, earlier ones hidden: SDPA's mask is any "
              "pattern, and the only one applied)", qkv(2, 3, 5, torch.float64), not_causal, torch.float64, False),
             ("float64, a square mask of padding alone (as many queries as keys, later keys visible: no causal mask "
              "of its own)", qkv(2, 4, 4, torch.float64),
              torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]).bool()[:, None, None].expand(2, 1, 4, 4), torch.float64, False),
             ("the default device set to 'meta'", qkv(2, 3, 5), causal, torch.float32, True)]
    for what, (q, k, v), mask, dtype, meta in cases:
        what = f"manual_attention, {what}: q {tuple(q.shape)}, k, v {tuple(k.shape)} {dtype}, mask {tuple(mask.shape)}"
        try:
            with torch.device("meta") if meta else contextlib.nullcontext():
                got = model.manual_attention(q, k, v, mask)
        except NotImplementedError:
            raise
        except RuntimeError as e:
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from None
        want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
        shape = tuple(q.shape[:-1] + v.shape[-1:])
        assert (tuple(got.shape), got.dtype, got.device) == (shape, dtype, q.device), (
            f"{what}: want {shape} {dtype} on {q.device} (q's shape with v's head size, q's dtype and device), got "
            f"{tuple(got.shape)} {got.dtype} on {got.device}")
        tol = {torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=3e-3, rtol=3e-3),
               torch.float64: dict(atol=1e-9, rtol=1e-9)}.get(dtype, dict(atol=1e-5, rtol=1e-5))
        torch.testing.assert_close(got.double(), want, **tol, msg=lambda m: (
            f"{what}: differs from F.scaled_dot_product_attention in float64\n{m}"))
    # and their gradients: SDPA's, in float64 (an op done in place on what the backward pass needs breaks it)
    q, k, v = (t.double().requires_grad_() for t in qkv(2, 3, 5))
    grads = []
    for attend in (model.manual_attention, F.scaled_dot_product_attention):
        q.grad = k.grad = v.grad = None
        try:
            (attend(q, k, v, causal) * torch.arange(4.0, dtype=torch.float64)).sum().backward()
        except RuntimeError as e:
            raise AssertionError(f"manual_attention of float64 q, k, v: the backward pass fails: {e}") from None
        grads.append([t.grad.clone() for t in (q, k, v)])
    for name, got, want in zip("qkv", *grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10, msg=lambda m: (
            f"manual_attention of float64 q, k, v: the gradient of {name} differs from SDPA's\n{m}"))


def test_manual_attention_dropout_drops_attention_weights_not_outputs():
    # v = [identity | ones]: the output's first Tk coordinates are the attention weights after dropout, its last their
    # sum. Dropout on the weights zeroes some of them and scales the rest by 1 / (1 - p); the last coordinate is still
    # their sum (dropout of the output itself would zero coordinates independently of each other)
    torch.manual_seed(0)
    Tq, Tk, p = 4, 6, 0.5
    q, k = torch.randn(50, 2, Tq, 7), torch.randn(50, 2, Tk, 7)
    v = torch.cat([torch.eye(Tk), torch.ones(Tk, 1)], dim=1).expand(50, 2, Tk, Tk + 1)
    mask = torch.ones(Tq, Tk, dtype=torch.bool).tril(2)[None, None]
    got = model.manual_attention(q, k, v, mask, dropout_p=p)
    att = F.scaled_dot_product_attention(q, k, torch.eye(Tk).expand(50, 2, Tk, Tk), attn_mask=mask)  # the weights
    what = f"manual_attention(q, k, v = [eye({Tk}) | ones], causal mask, dropout_p={p}) on 50 x 2 x {Tq} queries"
    assert got.shape == (50, 2, Tq, Tk + 1), f"{what}: want shape {(50, 2, Tq, Tk + 1)}, got {tuple(got.shape)}"
    w = got[..., :Tk]
    kept_or_dropped = torch.isclose(w, att / (1 - p), atol=1e-6) | (w == 0)
    assert bool(kept_or_dropped.all()), (
        f"{what}: each attention weight after dropout must be 0 or the weight / (1 - p); "
        f"{int((~kept_or_dropped).sum())} of {w.numel()} are neither")
    torch.testing.assert_close(got[..., Tk], w.sum(-1), atol=1e-5, rtol=1e-5, msg=lambda m: (
        f"{what}: the last coordinate (v's column of ones) must be the sum of the weights after dropout (dropout on "
        f"the attention weights, not on the output att @ v)\n{m}"))
    frac = float((w[att > 0] == 0).float().mean())
    assert 0.4 < frac < 0.6, f"{what}: {frac:.2f} of the positive weights dropped, want about {p}"
    # each weight is dropped on its own draw: two batch rows, two heads or two queries share no mask (at p = 0.5 they
    # drop the same weights about half the time; with one mask for all, every time)
    dropped = w == 0
    for name, a, b in (("batch rows", (slice(0, 25),), (slice(25, 50),)), ("heads", (slice(None), 0), (slice(None), 1)),
                       ("queries", (..., 2, slice(0, 5)), (..., 3, slice(0, 5)))):  # keys 0..4: visible to both
        same = float((dropped[a] == dropped[b]).float().mean())
        assert same < 0.75, (f"{what}: two {name} drop the same weights {same:.0%} of the time, want about 50%: "
                             "each attention weight is dropped on a draw of its own (one mask per row, head and query)")
    # gradients flow back through the dropout (nothing the backward pass needs is overwritten in place)
    qg, kg, vg = (t[:2].clone().double().requires_grad_() for t in (q, k, v))
    try:
        model.manual_attention(qg, kg, vg, mask, dropout_p=p).sum().backward()
    except RuntimeError as e:
        raise AssertionError(f"{what}: the backward pass fails: {e}") from None
    assert all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in (qg, kg, vg)), \
        f"{what}: want finite gradients for q, k and v"
    # the dropout mask made on the inputs' device: with new tensors going by default to "meta", one made without
    # device= cannot meet the CPU's weights, as a CPU mask could not meet them on a GPU
    try:
        with torch.device("meta"):
            got = model.manual_attention(q[:2], k[:2], v[:2], mask, dropout_p=p)
    except RuntimeError as e:
        raise AssertionError(f"{what}, the default device set to 'meta': a tensor made without device=? {e}") from None
    assert got.device == q.device, f"{what}, the default device 'meta': want the output on {q.device}, got {got.device}"


def naive_mean_pool(h, span):
    """Mean over the span's positions, row by row, in float64; an empty span pools to 0."""
    rows = []
    for b in range(h.size(0)):
        picked = [h[b, t].double() for t in range(h.size(1)) if span[b, t]]
        rows.append(sum(picked) / len(picked) if picked else torch.zeros(h.size(2), dtype=torch.double))
    return torch.stack(rows)


def test_pooling_equals_a_naive_loop_on_strides_dtypes_devices_and_under_vmap():
    # a family of valid inputs against a loop over rows: one row and several (an empty span among them), h transposed
    # (not contiguous), float64, new tensors going by default to the "meta" device, masks of 0/1 floats or of bools;
    # and mean_pool under torch.func.vmap over tasks, as MAML's classifier runs it (maml.meta_loss_vmap)
    from torch.func import vmap

    torch.manual_seed(0)
    span = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])   # right-padded
    cases = [("one row", torch.randn(1, 5, 3), span[:1], mask[:1], False),
             ("3 rows", torch.randn(3, 5, 3), span, mask, False),
             ("3 rows, h transposed (not contiguous)", torch.randn(3, 3, 5).transpose(1, 2), span, mask, False),
             ("float64", torch.randn(3, 5, 3, dtype=torch.float64), span, mask, False),
             ("the default device set to 'meta'", torch.randn(3, 5, 3), span, mask, True),
             ("masks of floats", torch.randn(3, 5, 3), span.float(), mask.float(), False),
             ("masks of bools", torch.randn(3, 5, 3), span.bool(), mask.bool(), False)]
    long = (torch.arange(600) < torch.tensor([[300], [555]])).long()  # counts past 256, bfloat16's last whole number
    cases.append(("bfloat16, rows of 300 and 555 real tokens", torch.randn(2, 600, 3).bfloat16(), long, long, False))
    cases.append(("masks of bfloat16 0/1 (mixed precision's), rows of 257 and 555 real tokens", torch.randn(2, 600, 3),
                  *[(torch.arange(600) < torch.tensor([[257], [555]])).bfloat16()] * 2, False))  # counts past 256
    # values around 3, not around 0: a long span's sum grows past 1000, where a bfloat16 running sum stops adding
    for dtype in (torch.float32, torch.bfloat16):
        cases.append((f"{dtype}, rows of 300 and 555 real tokens, values around 3",
                      (3 + 0.5 * torch.randn(2, 600, 3)).to(dtype), long, long, False))
    for what, h, s, m, meta in cases:
        last = [int(r.double().sum()) - 1 for r in m]  # counted in float64: a bfloat16 sum rounds past 256
        tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[h.dtype]  # to the dtype's precision
        for name, fn, arg, want in (("mean_pool", model.mean_pool, s, naive_mean_pool(h, s)),
                                    ("last_token_pool", model.last_token_pool, m,
                                     torch.stack([h[b, last[b]].double() for b in range(h.size(0))]))):
            call = f"{name}(h {tuple(h.shape)} {h.dtype}, {arg.tolist()}), {what}"
            try:
                with torch.device("meta") if meta else contextlib.nullcontext():
                    got = fn(h, arg)
            except NotImplementedError:
                raise
            except (RuntimeError, IndexError) as e:
                raise AssertionError(f"{call}: {type(e).__name__}: {e}") from None
            assert (tuple(got.shape), got.dtype, got.device) == ((h.size(0), h.size(2)), h.dtype, h.device), (
                f"{call}: want {(h.size(0), h.size(2))} {h.dtype} on {h.device}, got {tuple(got.shape)} {got.dtype} "
                f"on {got.device}")
            exact = 0 if name == "last_token_pool" else tol  # picking a row's token is exact
            torch.testing.assert_close(got.double(), want, atol=exact, rtol=exact,
                                       msg=lambda d: f"{call}: differs from a loop over the rows\n{d}")
    h = torch.randn(3, 2, 5, 4)                                    # 3 tasks, each a batch (2, 5, 4)
    spans = torch.stack([span[:2], span[1:], span[[2, 0]]])        # (3, 2, 5)
    call = "vmap(mean_pool)(h (3 tasks, 2, 5, 4), span (3, 2, 5))"
    try:
        got = vmap(model.mean_pool)(h, spans)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        raise AssertionError(f"{call}, as MAML's classifier runs it: {type(e).__name__}: {e}") from None
    want = torch.stack([naive_mean_pool(h[i], spans[i]) for i in range(3)])
    assert got.shape == (3, 2, 4), f"{call}: want shape (3, 2, 4), got {tuple(got.shape)}"
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6,
                               msg=lambda d: f"{call}: differs from a loop over tasks and rows\n{d}")
    # every right-padded row of every width T up to 400: n real tokens, n = 1..T, pool position n - 1 (an index
    # counted, not a fraction of T times T: in float32 (13 / 22) * 22 is 12.999999, and 1/41 * 41 truncates to 0)
    missed = []
    for T in range(1, 401):
        n = torch.arange(1, T + 1)                                     # row n - 1 holds n real tokens
        mask = torch.arange(T) < n[:, None]                            # (T, T), right-padded
        h = torch.arange(T, dtype=torch.float32).view(1, T, 1).expand(T, T, 1)   # h[b, t] = t
        for m in (mask, mask.float()):
            got = model.last_token_pool(h, m).view(-1)
            wrong = (got != n - 1).nonzero().view(-1)
            if len(wrong):
                missed.append(f"T = {T}, {m.dtype} mask, n = {(n[wrong][:3]).tolist()}: got position(s) "
                              f"{got[wrong][:3].long().tolist()}")
    assert not missed, ("last_token_pool(h[b, t] = t, a right-padded mask of n real tokens of T): want position "
                        f"n - 1 for every n <= T <= 400; {len(missed)} (T, mask) missed, e.g.\n  "
                        + "\n  ".join(missed[:5]))

def test_kv_cache_extend_writes_at_length_and_refuses_what_runs_past_its_capacity():
    # a schedule of steps against a plain model of the buffers: every write goes to [length, length + T), whatever
    # wrote there before (length set back by 1 rewrites the last position: extend keeps no count of its own), and a
    # write whose end passes the capacity is a ValueError (a first one too, and one that starts inside the cache and
    # runs past it); a step of 0 new positions writes nothing and returns the `length` positions so far (not its own
    # empty k, v)
    B, nh, hs, cap = 2, 2, 3, 6
    for dtype in (torch.float32, torch.float64):
        cache = model.KVCache(GPTConfig(n_layer=2, n_head=nh, n_embd=nh * hs), batch=B, capacity=cap, device="cpu",
                              dtype=dtype)
        mine = {(name, layer): torch.zeros(B, nh, cap, hs, dtype=dtype) for name in "kv" for layer in (0, 1)}
        torch.manual_seed(0)
        history = []
        for length, T in ((0, cap + 1), (0, 3), (3, 1), (3, 2), (5, 0), (5, 2), (5, 1), (6, 1)):  # (length, new ones)
            cache.length = length
            history.append(f"length {length}, {T} new")
            what = f"KVCache(capacity {cap}, B {B}, n_head {nh}, {dtype}), steps: {'; '.join(history)}"
            for layer in (0, 1):
                k, v = torch.randn(B, nh, T, hs, dtype=dtype), torch.randn(B, nh, T, hs, dtype=dtype)
                if length + T > cap:
                    try:
                        cache.extend(layer, k, v)
                        raised = None
                    except Exception as e:  # the type is checked below
                        raised = e
                    assert isinstance(raised, ValueError), (
                        f"{what}, layer {layer}: positions [{length}, {length + T}) run past the capacity {cap}; want "
                        f"a ValueError that says so, got {raised!r}")
                    continue
                mine["k", layer][:, :, length:length + T] = k
                mine["v", layer][:, :, length:length + T] = v
                for name, got in zip("kv", cache.extend(layer, k, v)):
                    want = mine[name, layer][:, :, :length + T]
                    assert got.shape == want.shape, f"{what}, layer {layer}: want {name} so far of shape " \
                                                    f"{tuple(want.shape)}, got {tuple(got.shape)}"
                    torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m: (
                        f"{what}, layer {layer}: the {'keys' if name == 'k' else 'values'} so far differ (this step's "
                        f"go to [length, length + T))\n{m}"))
                # the whole buffers, every layer: this layer's write lands in this layer only (layer 1 is still
                # zeros after layer 0's first write), and nowhere outside [length, length + T)
                for name, buffer in (("k", cache.k), ("v", cache.v)):
                    want = torch.stack([mine[name, layer_] for layer_ in (0, 1)])
                    assert torch.equal(buffer, want), (
                        f"{what}, after extend of layer {layer}: the buffer self.{name} (every layer, every position) "
                        f"differs from the writes so far at [length, length + T) of each layer; layers where it "
                        f"differs: {[i for i in (0, 1) if not torch.equal(buffer[i], want[i])]}")

def test_beam_search_refuses_a_prompt_and_new_tokens_past_block_size():
    # block_size 8: the longest prompt (6 tokens, first or second) + 2 new ones fits exactly; + 3 is a ValueError, with
    # the cache and without (positions past block_size have no position embedding)
    m = tiny(vocab_size=4, block_size=8)
    for prompts, use_cache in itertools.product(([[1, 2, 0, 1, 2, 0], [2]], [[2], [1, 2, 0, 1, 2, 0]]), (True, False)):
        what = f"beam_search({prompts}, num_beams=2, eos_id=3, use_cache={use_cache}), block_size 8"
        got = m.beam_search(prompts, 2, 2, eos_id=3, use_cache=use_cache)
        assert len(got) == 2 and all(len(beams) == 2 for beams in got), \
            f"{what}, max_new_tokens=2 (8 positions, exactly block_size): want 2 prompts x 2 beams, got {got}"
        try:
            m.beam_search(prompts, 2, 3, eos_id=3, use_cache=use_cache)
            raised = None
        except Exception as e:  # the type is checked below
            raised = e
        assert isinstance(raised, ValueError) and "block_size" in str(raised), (
            f"{what}, max_new_tokens=3: 6 + 3 positions, more than block_size; want a ValueError that names "
            f"block_size, got {raised!r}")


def test_beam_search_of_a_bfloat16_model_scores_in_float32():
    # a bfloat16 model (the KV cache is made in the model's dtype): a beam's score is still the sum of its tokens'
    # log-probabilities, the log-softmax taken in float32 (in bfloat16 it is off by ~0.01 per token); a float16 model
    # too, the other half-precision dtype (a log-softmax in float16 is off by up to ~0.002 over 4 tokens here, where
    # the float32 one is within ~1e-4 with the cache and without)
    for dtype in (torch.bfloat16, torch.float16):
        m = tiny(vocab_size=11, seed=0).to(dtype)
        for prompts in ([[7]], [[1, 2, 3], [4]]):
            for use_cache in (True, False):
                found = m.beam_search(prompts, 4, 4, eos_id=5, use_cache=use_cache)
                for prompt, beams in zip(prompts, found):
                    for tokens, score in beams:
                        with torch.no_grad():
                            logp = torch.log_softmax(m(torch.tensor([prompt + tokens]))[0][0].float(), -1)
                        exact = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))
                        assert math.isclose(score, exact, abs_tol=1e-3), (
                            f"beam_search({prompts}, num_beams=4, max_new_tokens=4, eos_id=5, use_cache={use_cache}) "
                            f"of a {str(dtype).removeprefix('torch.')} model, prompt {prompt}: the beam {tokens} "
                            f"scores {score:.5f}; the sum of its tokens' log-probabilities (log_softmax of the logits "
                            f"in float32) is {exact:.5f}")

@pytest.mark.parametrize("written_out", [True, False], ids=["written-out", "fused"])
def test_layer_norm_equals_float64_on_any_batch_shape_stride_dtype_and_offset(written_out):
    # a family of valid inputs against F.layer_norm in float64: one position and a (B, T, C) batch, x transposed (not
    # contiguous), float64, and positions whose mean is large next to their spread (the variance as E[x²] - μ² then
    # cancels to nothing; as the mean of (x - μ)² it does not)
    torch.manual_seed(0)
    ln = model.LayerNorm(6)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.5 * torch.randn(6))
        ln.bias.copy_(torch.randn(6))
    cases = [("one position", torch.randn(1, 6), 1e-5),
             ("(B, T, C)", torch.randn(3, 4, 6), 1e-5),
             ("(B, T, C) transposed from (B, C, T), not contiguous", torch.randn(2, 6, 4).transpose(1, 2), 1e-5),
             ("float64", torch.randn(2, 3, 6, dtype=torch.float64), 1e-10),
             ("mean 1000, spread 0.1", 1000 + 0.1 * torch.randn(2, 3, 6), 1e-2),
             ("float64, mean 1e6, spread 1e-3", 1e6 + 1e-3 * torch.randn(2, 3, 6, dtype=torch.float64), 1e-6),
             ("bfloat16 (mixed precision: the output stays bfloat16)", torch.randn(2, 3, 6).bfloat16(), 5e-2),
             # the layer's own ε (1e-5) whatever the dtype: bfloat16 rows of spread 0.1 and 0.01, whose variance a
             # floor at bfloat16's resolution (finfo.eps, 0.0078) would swamp
             ("bfloat16, spread 0.1", (0.1 * torch.randn(2, 3, 6)).bfloat16(), 5e-2),
             ("bfloat16, spread 0.01", (0.01 * torch.randn(2, 3, 6)).bfloat16(), 5e-2)]
    where = "inside" if written_out else "outside"
    for what, x, tol in cases:
        call = f"LayerNorm(6) {where} second_order_ops on x {tuple(x.shape)} {x.dtype}, {what}"
        lnx = ln.to(x.dtype)
        try:
            with model.second_order_ops(lnx) if written_out else contextlib.nullcontext():
                got = lnx(x)
        except NotImplementedError:
            raise
        except RuntimeError as e:
            raise AssertionError(f"{call}: {type(e).__name__}: {e}") from None
        want = F.layer_norm(x.double(), (6,), lnx.weight.double(), lnx.bias.double(), 1e-5)
        assert (got.shape, got.dtype) == (x.shape, x.dtype), \
            f"{call}: want {tuple(x.shape)} {x.dtype}, got {tuple(got.shape)} {got.dtype}"
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol, msg=lambda m: (
            f"{call}: differs from F.layer_norm in float64\n{m}"))
    # no bias (GPTConfig(bias=False)): nothing made on the default device ("meta" here, where a zero bias made without
    # device= lands: it cannot meet the CPU's x, as it could not a GPU's)
    ln, x = model.LayerNorm(6, bias=False), torch.randn(2, 3, 6)
    call = f"LayerNorm(6, bias=False) {where} second_order_ops on x (2, 3, 6), the default device 'meta'"
    try:
        with torch.device("meta"), (model.second_order_ops(ln) if written_out else contextlib.nullcontext()):
            got = ln(x)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        raise AssertionError(f"{call}: a tensor made without device=? {e}") from None
    torch.testing.assert_close(got, F.layer_norm(x, (6,), eps=1e-5), msg=lambda m: f"{call}: differs\n{m}")
    # then a layer without bias of the same width, and x, on "meta" itself (as a GPU's would be), after those calls
    # on the CPU: nothing a first call made (a zero bias cached per width and dtype, say) may meet them
    ln_meta = model.LayerNorm(6, bias=False).to("meta")
    call = f"LayerNorm(6, bias=False) {where} second_order_ops, layer and x (2, 3, 6) on 'meta', after calls on the CPU"
    try:
        with model.second_order_ops(ln_meta) if written_out else contextlib.nullcontext():
            got = ln_meta(torch.empty(2, 3, 6, device="meta"))
    except (RuntimeError, NotImplementedError) as e:
        if str(e).startswith("exercise"):  # a blank body
            raise
        if "device" in str(e):
            raise AssertionError(f"{call}: {type(e).__name__}: {str(e).splitlines()[0][:160]} (something kept from "
                                 "a call on the CPU?)") from None
        got = None  # an op that "meta" cannot run is not the body's fault
    assert got is None or (got.device.type == "meta" and tuple(got.shape) == (2, 3, 6)), (
        f"{call}: expected (2, 3, 6) on meta, got {tuple(got.shape)} on {got.device}")
    # a bfloat16 x with float32 weight and bias (autocast's mixed precision), called, then the weight and bias changed
    # in place (as an optimizer step does) and called again: the second call follows them, and the gradient reaches
    # them; by hand in float64 (x = [1, 2, 4, 8] is exact in bfloat16), d sum(y) / d weight = x_hat
    ln, x = model.LayerNorm(4), torch.tensor([[1.0, 2.0, 4.0, 8.0]], dtype=torch.bfloat16)
    call = f"LayerNorm(4) {where} second_order_ops, float32 weight and bias, a bfloat16 x = [1, 2, 4, 8]"
    weight, bias = [1.0, 2.0, 3.0, 4.0], [0.5, 0.0, 0.0, -0.5]
    with model.second_order_ops(ln) if written_out else contextlib.nullcontext():
        ln(x)
        with torch.no_grad():
            ln.weight.copy_(torch.tensor(weight))
            ln.bias.copy_(torch.tensor(bias))
        got = ln(x)
    want = naive_layer_norm(x[0].tolist(), weight, bias, 1e-5)
    assert torch.allclose(got.double(), torch.tensor([want], dtype=torch.float64), rtol=2e-2, atol=2e-2), (
        f"{call}, after its weight and bias were set to {weight} and {bias} in place: expected "
        f"{[round(v, 3) for v in want]} (by hand), got {[round(v, 3) for v in got[0].tolist()]} (the old weight and "
        "bias, kept from the first call?)")
    got.float().sum().backward()
    x_hat = naive_layer_norm(x[0].tolist(), [1.0] * 4, [0.0] * 4, 1e-5)
    grads = [None if t.grad is None else [round(v, 3) for v in t.grad.tolist()] for t in (ln.weight, ln.bias)]
    assert ln.weight.grad is not None and ln.bias.grad is not None and torch.allclose(
        ln.weight.grad.double(), torch.tensor(x_hat, dtype=torch.float64), rtol=2e-2, atol=2e-2) and torch.allclose(
        ln.bias.grad.double(), torch.ones(4, dtype=torch.float64)), (
        f"{call}: d sum(y) / d weight and d bias: expected x_hat {[round(v, 3) for v in x_hat]} and [1, 1, 1, 1] (by "
        f"hand), got {grads[0]} and {grads[1]} (weight and bias detached?)")
