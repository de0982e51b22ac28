"""
Measurements of the project's speed and memory, printed as Markdown tables for docs/results.md.

    python bench.py                      # everything that runs on this machine (CPU here), one thread
    python bench.py --only beam          # one part (may be repeated): train, generate, cache, beam, bm25, maml,
                                         #   steps, threads, ranking, grid, baselines, mfu
    python bench.py --only ranking --data data/amazon/Industrial_and_Scientific   # real data, when present

What it measures:
  train     tokens/s of forward + backward + AdamW step, for three model sizes
  generate  greedy generation: KV cache vs none, and today's code vs the code before the preallocated cache
  cache     the KV cache's speed-up for 16, 64 and 192 new tokens
  beam      beam search (10 beams x 32 tokens after a 200-token prompt): today's code vs before
  bm25      BM25 top-100 for 8,442 queries: today's code vs before, and the bm25s package when installed
  maml      the vmap path against the per-task loop, second- vs first-order step time and memory
  steps     training steps: CALRec's with LayerNorm written out (as before) vs fused; SASRec's with the
            masked forward over every position (as before) vs its loss over real positions only (--data or
            the built-in world)
  threads   one default CALRec training step with 1 thread, 2 threads, 2 spinning threads, each on a quiet
            machine and beside a busy process (subprocesses)
  ranking   the test-time ranking of a real catalog (--data): beam search + BM25, catalog beams, dense
  grid      the dense path's choice of its weights on every validation user (--data, or synthetic users):
            today's code vs the code at GRID_BEFORE
  baselines the baselines' ranking of a real test split (--data; Video_Games shows it best), seconds and peak
            memory: today's code vs the code at BASELINES_BEFORE
  mfu       (GPU) tokens/s and model FLOPs utilisation of the default size and GPT-2 124M in bf16
"The code before" is model.py and calrec.py at git revision --before (default: the last commit before the
preallocated cache and the chunked BM25), loaded with `git show`; that part is skipped without git.
Timings are medians of interleaved repeats. Peak memory is the process's peak resident set on CPU (it
includes Python and torch themselves) and torch's peak allocation on CUDA.
"""

import argparse
import importlib.util
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
import weakref

import numpy as np
import torch
from torch.profiler import profile

import calrec
import data
import maml
from model import GPT, GPTConfig, LayerNorm, autocast, grad_scaler, second_order_ops

SIZES = {  # name -> (n_layer, n_head, n_embd)
    "tiny": (2, 2, 64),
    "default": (GPTConfig.n_layer, GPTConfig.n_head, GPTConfig.n_embd),
    "medium": (6, 6, 384),
}
BEFORE = "4921438"  # the last commit before the preallocated KV cache and the chunked BM25
GRID_BEFORE = "de5205f"  # the last commit before the dense path's grid scored each query once for every lambda
BASELINES_BEFORE = "914d753"  # the last commit before the baselines ranked a chunk of users at a time


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn, device, repeats, warmup=1):
    """Median wall time of fn() over `repeats` runs, after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def interleaved(fns, device, rounds=3, repeats=3):
    """Median time of each of several functions, measured in turns so that a busy spell hits all of them."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, device, repeats))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def make_model(size, device, block_size=256, vocab_size=4096, module=None):
    n_layer, n_head, n_embd = SIZES[size] if isinstance(size, str) else size
    mod = module or sys.modules[GPT.__module__]
    torch.manual_seed(0)
    cfg = mod.GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    return mod.GPT(cfg).to(device)


def before(path, rev):
    """A project file as it was at git revision `rev`, loaded as a module; None (with a note) if git cannot."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, check=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"\n(skipped: git cannot show {path} at revision {rev}; the before/after comparison needs the "
              "repository's history)")
        return None
    spec = importlib.util.spec_from_loader(f"before_{path[:-3]}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


# -----------------------------------------------------------------------------

def bench_train(device, batch=8, seq=256, **_):
    print(f"\n### Training: forward + backward + AdamW, batch {batch} x {seq} tokens\n")
    print("| size | layers / heads / width | params | tokens/s | ms/step |")
    print("|---|---|---|---|---|")
    for size in SIZES:
        m = make_model(size, device)
        opt = m.configure_optimizers(lr=3e-4)
        idx = torch.randint(0, m.config.vocab_size, (batch, seq + 1), device=device)

        def step():
            _, loss = m(idx[:, :-1], targets=idx[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t = timed(step, device, repeats=5, warmup=2)
        n_layer, n_head, n_embd = SIZES[size]
        print(f"| {size} | {n_layer} / {n_head} / {n_embd} | {m.num_params() / 1e6:.2f}M | "
              f"{batch * seq / t:,.0f} | {1000 * t:.0f} |")


PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}  # dense, from the data sheets


def bench_mfu(device, dtype="bfloat16", compile_model=False, batch=16, seq=1024, peak=None, **_):
    """Training tokens/s and model FLOPs utilisation (MFU) for the default size and GPT-2 124M, in mixed
    precision. FLOPs per token as in the PaLM paper (appendix B): 6 N for the matrix products of forward and
    backward, plus 12 n_layer n_embd T for attention; MFU = achieved FLOPs / the card's peak."""
    if peak is None and device == "cuda":
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
    print(f"\n### Training throughput and MFU, {dtype}, batch {batch} x {seq} tokens"
          f"{', torch.compile' if compile_model else ''}; peak {peak or '?'} TFLOPS\n")
    print("| model | params | tokens/s | TFLOPS achieved | MFU |")
    print("|---|---|---|---|---|")
    shapes = {"default": (GPTConfig.n_layer, GPTConfig.n_head, GPTConfig.n_embd, 4096),
              "gpt2-124M": (12, 12, 768, 50304)}  # GPT-2's 50257 tokens padded to a multiple of 64
    for name, (n_layer, n_head, n_embd, vocab) in shapes.items():
        m = make_model((n_layer, n_head, n_embd), device, block_size=seq, vocab_size=vocab)
        opt = m.configure_optimizers(lr=3e-4)
        scaler = grad_scaler(device, dtype)
        forward = torch.compile(m) if compile_model else m
        idx = torch.randint(0, vocab, (batch, seq + 1), device=device)

        def step():
            with autocast(device, dtype):
                _, loss = forward(idx[:, :-1], targets=idx[:, 1:])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        t = timed(step, device, repeats=5, warmup=3 if compile_model else 2)
        n = m.num_params(non_embedding=False)
        achieved = (6 * n + 12 * n_layer * n_embd * seq) * batch * seq / t / 1e12
        mfu = f"{100 * achieved / peak:.1f}%" if peak else "? (give --peak-tflops)"
        print(f"| {name} | {n / 1e6:.1f}M | {batch * seq / t:,.0f} | {achieved:.1f} | {mfu} |")


SPEED_MODEL = dict(size=(4, 4, 256), vocab_size=8192)  # the size the speed issue measured: L4 C256 V8192


def bench_generate(device, rev=BEFORE, **_):
    print("\n### Greedy generation: 64 new tokens after a 32-token prompt, L4 C256 V8192\n")
    new = make_model(SPEED_MODEL["size"], device, vocab_size=SPEED_MODEL["vocab_size"]).eval()
    g = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(0, new.config.vocab_size, (b, 32), generator=g).tolist() for b in (1, 8)}
    t = interleaved({c: (lambda c=c: new.generate(prompts[8], 64, greedy=True, use_cache=c)) for c in (True, False)},
                    device)
    print(f"KV cache speed-up, batch 8: {t[False] / t[True]:.1f}x ({8 * 64 / t[True]:,.0f} new tokens/s with it, "
          f"{8 * 64 / t[False]:,.0f} without)\n")
    old_model = before("model.py", rev)
    if old_model is None:
        return
    old = make_model(SPEED_MODEL["size"], device, vocab_size=SPEED_MODEL["vocab_size"], module=old_model).eval()
    old.load_state_dict(new.state_dict())
    print(f"| batch | before ({rev}) s | now s | speed-up |")
    print("|---|---|---|---|")
    for b, p in prompts.items():
        assert old.generate(p, 64, greedy=True) == new.generate(p, 64, greedy=True), "not the same tokens"
        t = interleaved({"before": lambda: old.generate(p, 64, greedy=True),
                         "now": lambda: new.generate(p, 64, greedy=True)}, device)
        print(f"| {b} | {t['before']:.3f} | {t['now']:.3f} | {t['before'] / t['now']:.2f}x |")
    # where one batch-1 decoding goes: the weights' matrix-vector products bound what any cache change can buy
    with profile() as prof:
        new.generate(prompts[1], 64, greedy=True)
    ops = {e.key: e.self_device_time_total if device == "cuda" else e.self_cpu_time_total for e in prof.key_averages()}
    linear = sum(v for k, v in ops.items() if k in ("aten::addmm", "aten::mm"))
    print(f"\nBatch 1, profiled: {linear / sum(ops.values()):.0%} of the time in the linear layers' products "
          f"(aten::addmm, aten::mm); the rest is at most a {sum(ops.values()) / linear:.2f}x speed-up")


def bench_cache(device, **_):
    """The KV cache's speed-up as the generated sequence grows: without it every step recomputes every
    position, so its cost grows with the length; with it a step costs about the same throughout."""
    print("\n### Greedy generation, KV cache on and off: 8 prompts of 16 tokens, L4 C256 V8192\n")
    m = make_model(SPEED_MODEL["size"], device, vocab_size=SPEED_MODEL["vocab_size"]).eval()
    prompts = torch.randint(0, m.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0)).tolist()
    print("| new tokens | cache s | no cache s | speed-up |")
    print("|---|---|---|---|")
    for new in (16, 64, 192):
        t = interleaved({c: (lambda c=c: m.generate(prompts, new, greedy=True, use_cache=c)) for c in (True, False)},
                        device, rounds=1, repeats=3)
        print(f"| {new} | {t[True]:.2f} | {t[False]:.2f} | {t[False] / t[True]:.1f}x |")


def bench_beam(device, rev=BEFORE, **_):
    print("\n### Beam search: 10 beams x 32 new tokens after a 200-token prompt, L4 C256 V8192, KV cache\n")
    new = make_model(SPEED_MODEL["size"], device, vocab_size=SPEED_MODEL["vocab_size"]).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, new.config.vocab_size, (8, 200), generator=g).tolist()
    old_model = before("model.py", rev)
    if old_model is None:
        t = timed(lambda: new.beam_search(prompts, 10, 32, eos_id=-1), device, repeats=3)
        print(f"batch 8: {t:.2f} s")
        return
    old = make_model(SPEED_MODEL["size"], device, vocab_size=SPEED_MODEL["vocab_size"], module=old_model).eval()
    old.load_state_dict(new.state_dict())
    print(f"| prompts | before ({rev}) s | now s | speed-up | same beams |")
    print("|---|---|---|---|---|")
    for b in (1, 8):
        # eos_id -1 is never written: every beam runs the full length, so the work is fixed
        a, c = old.beam_search(prompts[:b], 10, 32, -1), new.beam_search(prompts[:b], 10, 32, -1)
        same = [[t for t, _ in r] for r in a] == [[t for t, _ in r] for r in c] and \
            np.allclose([[s for _, s in r] for r in a], [[s for _, s in r] for r in c], atol=1e-4)
        t = interleaved({"before": lambda: old.beam_search(prompts[:b], 10, 32, -1),
                         "now": lambda: new.beam_search(prompts[:b], 10, 32, -1)}, device, rounds=3, repeats=1)
        ratio = t["before"] / t["now"]
        print(f"| {b} | {t['before']:.2f} | {t['now']:.2f} | {ratio:.2f}x | {'yes' if same else 'NO'} |")


def scientific_queries(folder):
    """The Scientific catalog's item texts and, as queries, each test user's last history item (8,442), or a
    synthetic catalog of the same size when no folder is given."""
    if folder:
        d = data.read_atomic(folder)
        texts = [data.item_text(it, d.attributes, calrec.REAL_DATA.max_words) for it in d.items]
        return texts, [texts[h[-1]] for h, _ in d.test], os.path.basename(folder.rstrip("/"))
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(20000)]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(8, 30), p=None)) for _ in range(4385)]
    return texts, [texts[i] for i in rng.integers(len(texts), size=8442)], "synthetic"


def bench_bm25(device, rev=BEFORE, data_folder=None, **_):
    texts, queries, name = scientific_queries(data_folder)
    print(f"\n### BM25 top-100: {len(queries):,} queries x {len(texts):,} documents ({name})\n")
    contenders = {"now": calrec.BM25}
    old_calrec = before("calrec.py", rev)
    if old_calrec is not None:
        contenders[f"before ({rev})"] = old_calrec.BM25
    indexes = {k: cls(texts) for k, cls in contenders.items()}
    fns = {k: (lambda index=index: index.search(queries, 100)) for k, index in indexes.items()}
    try:
        import bm25s  # not a dependency of the project: compared with when installed
        corpus = [calrec.words(t) for t in texts]
        retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
        retriever.index(corpus, show_progress=False)
        tokens = [calrec.words(q) for q in queries]
        fns["bm25s (same tokens)"] = lambda: retriever.retrieve(tokens, k=100, show_progress=False, n_threads=1)
    except ImportError:
        print("(bm25s is not installed: pip install bm25s to compare with it)\n")
    t = interleaved(fns, device, rounds=3, repeats=1)
    print("| implementation | search s | vs now |")
    print("|---|---|---|")
    for k, v in t.items():
        print(f"| {k} | {v:.2f} | {v / t['now']:.2f}x |")
    if len(indexes) == 2:
        a, b = (index.search(queries, 100) for index in indexes.values())
        same = all(sorted(zip(x[1], x[0])) == sorted(zip(y[1], y[0])) or x[1] == y[1] for x, y in zip(a, b))
        print(f"\nsame top-100 scores at every rank as before: {'yes' if same else 'NO'}")


def bench_ranking(device, data_folder=None, **_):
    """The test phase of a real-data run, as train.py runs it: generative + BM25, catalog beams, dense."""
    if not data_folder:
        print("\n(ranking: give --data <a benchmark folder>, e.g. data/amazon/Industrial_and_Scientific)")
        return
    domain = data.read_atomic(data_folder)
    cfg = calrec.REAL_DATA
    texts = [data.item_text(it, domain.attributes, cfg.max_words) for it in domain.items]
    tok = data.train_tokenizer([data.history_prompt(texts[i:i + 4]) for i in range(0, len(texts), 4)], cfg.vocab_size)
    torch.manual_seed(0)
    lm = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                       n_embd=cfg.n_embd)).to(device)  # random weights: every beam runs to the longest item
    builder = data.PromptBuilder(tok, texts, cfg.block_size, cfg.max_history, cfg.max_item_tokens)
    catalog, test = range(domain.n_items), domain.test
    trie = calrec.CatalogTrie(builder.item_ids, tok.eot_id, tok.vocab_size)
    print(f"\n### Test-time ranking of {domain.name}: {len(test):,} users x {domain.n_items:,} items, "
          f"{cfg.beams} beams / {cfg.constrained_beams} catalog beams\n")
    print("| path | seconds |")
    print("|---|---|")
    for name, fn in (("generative + BM25", lambda: calrec.rank_generative(lm, builder, tok, test, catalog, cfg,
                                                                          bm25=calrec.BM25(texts))),
                     ("catalog beams", lambda: calrec.rank_generative(lm, builder, tok, test, catalog, cfg, trie=trie)),
                     ("dense", lambda: calrec.rank_dense(lm, builder, test, catalog, device))):
        t0 = time.perf_counter()
        fn()
        print(f"| {name} | {time.perf_counter() - t0:.0f} |")


def bench_grid(device, data_folder=None, **_):
    """The dense path's choice of (mu, gamma, lambda) on every validation user, as a run makes it after training and
    at every model selection: today's choose_dense_weights vs the code before GRID_BEFORE. Vectors are random, each
    user's placed near its target's, so the NDCG of the grid is far from zero and its argmax means something."""
    if data_folder:
        domain = data.read_atomic(data_folder)
        examples, n_items, name = domain.valid, domain.n_items, domain.name
        log_counts = torch.log1p(calrec.popularity(domain))
    else:
        rng = np.random.default_rng(0)
        n_items, name = 4385, "synthetic"
        examples = [(rng.integers(n_items, size=rng.integers(1, 12)).tolist(), int(rng.integers(n_items)))
                    for _ in range(8442)]
        log_counts = torch.log1p(torch.as_tensor(rng.poisson(8, n_items), dtype=torch.float32))
    torch.manual_seed(0)
    v_t = torch.nn.functional.normalize(torch.randn(n_items, 128), dim=-1)
    near = v_t[[t for _, t in examples]] + 1.5 * torch.randn(len(examples), 128)  # each user near its target
    v_u = torch.nn.functional.normalize(near, dim=-1)
    print(f"\n### The dense path's grid of weights: {len(examples):,} validation users x {n_items:,} items ({name}), "
          f"{1 + len(calrec.RECENT_WEIGHTS) * len(calrec.RECENT_DECAYS)} (mu, gamma) x {len(calrec.PRIOR_WEIGHTS)} "
          "lambda\n")
    contenders = {"now": calrec.choose_dense_weights}
    old_calrec = before("calrec.py", GRID_BEFORE)
    if old_calrec is not None:
        contenders[f"before ({GRID_BEFORE})"] = old_calrec.choose_dense_weights
    t, out = {}, {}
    for k, choose in contenders.items():  # a minute each, on the CPU: once is enough
        t0 = time.perf_counter()
        out[k] = choose(v_u, v_t, examples, 0.05, log_counts)
        t[k] = time.perf_counter() - t0
    print("| implementation | seconds | vs now |")
    print("|---|---|---|")
    for k, v in t.items():
        print(f"| {k} | {v:.1f} | {v / t['now']:.2f}x |")
    if len(out) == 2:
        (best, ndcg), (old_best, old_ndcg) = out.values()
        gap = max(abs(ndcg[c] - old_ndcg[c]) for c in ndcg)
        print(f"\nsame choice as before: {'yes' if best == old_best else 'NO'} "
              f"({calrec.describe_dense_weights(*best)}, NDCG@10 {ndcg[best]:.4f}); "
              f"largest difference of a grid point's NDCG@10: {gap:.1e}")


def forked(fn):
    """fn() in a forked copy of this process: (seconds, what fn returned, that process's peak memory in MB). Each
    measurement starts from the same loaded data, and none sees the peak of another."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, send, leave without running the parent's cleanup
        t0 = time.perf_counter()
        out = fn()
        with os.fdopen(write, "wb") as f:
            pickle.dump((time.perf_counter() - t0, out, peak_memory_mb("cpu")), f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        result = pickle.load(f)
    os.waitpid(pid, 0)
    return result


def bench_baselines(device, data_folder=None, **_):
    """The baselines' test-split ranking of a real catalog (--data): today's code, a chunk of users at a time, vs
    the code at BASELINES_BEFORE, which held every user's scores at once (and the Markov chain as a dense (N, N)
    matrix, SASRec's logits at every position). SASRec has random weights: only the ranking is timed."""
    if not data_folder:
        print("\n(baselines: give --data <a benchmark folder>, e.g. data/amazon/Video_Games)")
        return
    domain, cfg = data.read_atomic(data_folder), calrec.REAL_DATA
    texts = [data.item_text(it, domain.attributes, cfg.max_words) for it in domain.items]
    bm25, test = calrec.BM25(texts), domain.test
    torch.manual_seed(0)
    sasrec = GPT(GPTConfig(block_size=cfg.sasrec_len, vocab_size=domain.n_items + 1, n_layer=cfg.sasrec_layers,
                           n_head=cfg.sasrec_heads, n_embd=cfg.sasrec_embd)).to(device)
    contenders = {"now": calrec}
    old_calrec = before("calrec.py", BASELINES_BEFORE)
    if old_calrec is not None:
        contenders[f"before ({BASELINES_BEFORE})"] = old_calrec
    print(f"\n### The baselines' ranking of {domain.name}'s test split: {len(test):,} users x {domain.n_items:,} items"
          "\n\nEach row in a forked process; peak memory is that process's, the loaded data (about "
          f"{peak_memory_mb(device):,.0f} MB here) included.\n")
    print("| baseline | code | seconds | peak MB | same ranks as now |")
    print("|---|---|---|---|---|")
    for name, rank in (("most popular", lambda c: c.rank_popular(domain, test)),
                       ("first-order Markov", lambda c: c.rank_markov(domain, test)),
                       ("last item's text, BM25", lambda c: c.rank_last_item_bm25(bm25, texts, test)),
                       ("SASRec's ranking", lambda c: c.rank_sasrec(sasrec, domain, test, cfg, device))):
        now = None
        for code, module in contenders.items():
            seconds, ranks, peak = forked(lambda: rank(module))
            now = ranks if now is None else now
            print(f"| {name} | {code} | {seconds:.1f} | {peak:,.0f} | {'yes' if torch.equal(ranks, now) else 'NO'} |")


def bench_maml(device, repeats=5, **_):
    """vmap over the tasks of a meta-batch vs the per-task loop; second- vs first-order step time and the
    memory autograd keeps for the backward pass, for 1-5 inner steps. Prints Markdown tables.

    Two models: the sinusoid MLP (1-40-40-1) and the built-in family's classifier, built as `train.py --task
    maml` builds it. Memory: on CUDA torch's peak allocation during the step; on CPU the bytes of the tensors
    autograd saves for backward during the forward (process RSS only ever grows, so it cannot tell two
    configurations apart)."""
    sine_repeats = 4 * repeats

    def timed_ms(fn, n=repeats):
        return 1000 * timed(fn, device, repeats=n)

    def graph_mb(forward):
        """MB held for the backward pass once forward() has returned its loss (CUDA: peak allocation)."""
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            forward().backward()
            return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        refs = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: refs.append(weakref.ref(t)) or t, lambda t: t):
            loss = forward()
        alive = {}
        for r in refs:  # tensors the graph still holds (inner graphs of first-order steps are gone)
            t = r()
            if t is not None:
                alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        del loss
        return sum(alive.values()) / 2 ** 20

    # --- the sine MLP: meta-batch sizes, vmap vs loop, both orders
    g = torch.Generator().manual_seed(0)
    sine = {k: v.to(device).requires_grad_() for k, v in maml.sine_mlp_init(g).items()}
    print("\n### MAML: vmap over tasks vs a per-task loop (sine MLP 1-40-40-1, K = 10, 1 inner step)\n")
    print("| meta-batch | order | loop ms | vmap ms | speed-up |")
    print("|---|---|---|---|---|")
    for n_tasks in (4, 16, 64):
        amp, phase = maml.sine_tasks(n_tasks, g)
        support = {k: v.to(device) for k, v in maml.sine_points(amp, phase, maml.SINE.k, g).items()}
        query = {k: v.to(device) for k, v in maml.sine_points(amp, phase, maml.SINE.k, g).items()}
        for first_order in (False, True):
            ms = {}
            for name, fn in (("loop", maml.meta_loss_loop), ("vmap", maml.meta_loss_vmap)):
                ms[name] = timed_ms(lambda: fn(sine, maml.sine_loss, [support], query, maml.SINE.inner.lr, 1,
                                               first_order).backward(), sine_repeats)
            print(f"| {n_tasks} | {'first' if first_order else 'second'} | {ms['loop']:.1f} | {ms['vmap']:.1f} "
                  f"| {ms['loop'] / ms['vmap']:.1f}x |")

    # --- the family's GPT classifier, built by the run's own constructors
    cfg = maml.FAMILY
    aux, targets = data.task_family()
    tasks = {**aux, **targets}
    tok = data.train_tokenizer([t for task in tasks.values() for t in task["train"]["text_a"]
                                + (task["train"]["text_b"] or [])], vocab_size=cfg.vocab_size)
    torch.manual_seed(0)
    model = maml.classifier_for(maml.new_encoder(tok, cfg), tasks).to(device)
    encs = [maml.encode_split(tok, aux[n], aux[n]["train"], i, cfg.max_len, maml.regression_scale(aux[n]))
            for i, n in enumerate(aux)]
    fast, loss_fn = maml.make_task_loss(model, maml.adapted_names(model, "all"))
    rng = np.random.default_rng(0)

    def batches_for(n_tasks, steps):
        return maml.stack_tasks([encs[i % len(encs)] for i in range(n_tasks)], steps + 1, cfg.shot, rng,
                                tok.pad_id, device)

    print(f"\n### MAML on the GPT classifier ({cfg.n_layer} layers x {cfg.n_embd}, {cfg.shot} examples per "
          f"batch, 1 inner step): vmap vs loop\n")
    print("| meta-batch | order | loop ms | vmap ms | speed-up |")
    print("|---|---|---|---|---|")
    with second_order_ops():
        for n_tasks in (4, 8, 16):
            bs = batches_for(n_tasks, 1)
            for first_order in (False, True):
                ms = {name: timed_ms(lambda: fn(fast, loss_fn, bs[:-1], bs[-1], cfg.inner.lr, 1,
                                                first_order).backward())
                      for name, fn in (("loop", maml.meta_loss_loop), ("vmap", maml.meta_loss_vmap))}
                print(f"| {n_tasks} | {'first' if first_order else 'second'} | {ms['loop']:.0f} | "
                      f"{ms['vmap']:.0f} | {ms['loop'] / ms['vmap']:.1f}x |")

        # the per-task loop: saved-tensor hooks (how the CPU memory is counted) do not work inside vmap
        print("\n### Second- vs first-order MAML on the GPT classifier, meta-batch 4, per-task loop\n")
        print("| inner steps | 2nd-order ms | 1st-order ms | 2nd-order graph MB | 1st-order graph MB |")
        print("|---|---|---|---|---|")
        for steps in range(1, 6):
            bs = batches_for(4, steps)
            row = {}
            for first_order in (False, True):
                def forward():
                    return maml.meta_loss_loop(fast, loss_fn, bs[:-1], bs[-1], cfg.inner.lr, steps, first_order)
                row[first_order] = (timed_ms(lambda: forward().backward()), graph_mb(forward))
            (ms2, mb2), (ms1, mb1) = row[False], row[True]
            print(f"| {steps} | {ms2:.0f} | {ms1:.0f} | {mb2:.1f} | {mb1:.1f} |")


STEP_SCRIPT = """
import os, sys, time, torch
sys.path.insert(0, {root!r})
import bench, calrec
torch.set_num_threads({threads})
cfg, towers, opt, scaler, builder, rows = bench.builtin_calrec_step_setup("cpu")
times = []
for step in range(12):
    t0 = time.perf_counter()
    calrec.train_step(towers, opt, scaler, builder, rows[step * 32:(step + 1) * 32], [], cfg, "cpu", "float32")
    times.append(time.perf_counter() - t0)
print(sorted(times[2:])[len(times[2:]) // 2])
"""


def builtin_calrec_step_setup(device):
    """What one training step of the default CALRec run needs, on the built-in world (random weights):
    (cfg, towers, optimizer, scaler, prompt builder, every training row)."""
    cfg = calrec.BUILT_IN
    world = data.make_world()
    texts = [data.item_text(it, world[0].attributes, cfg.max_words) for d in world for it in d.items]
    tok = data.train_tokenizer([data.history_prompt(texts[i:i + 4]) for i in range(0, len(texts), 4)],
                               cfg.vocab_size)
    torch.manual_seed(0)
    lm = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                       n_embd=cfg.n_embd)).to(device)
    builder = data.PromptBuilder(tok, texts, cfg.block_size, cfg.max_history, cfg.max_item_tokens)
    offsets = np.cumsum([0] + [len(d.items) for d in world]).tolist()
    rows = [[o + i for i in s] for d, o in zip(world, offsets) for s in d.train_sequences if len(s) >= 2]
    return cfg, calrec.Towers(lm), lm.configure_optimizers(cfg.lr), calrec.grad_scaler(device, "float32"), builder, rows


def bench_steps(device, data_folder=None, **_):
    """The two training steps this version made faster, each against its earlier form kept here:
    CALRec (the default built-in run's step) with LayerNorm written out, as training ran it before, vs the
    fused kernel; SASRec with GPT.forward's masked pass over every position vs calrec.sasrec_loss."""
    cfg, towers, opt, scaler, builder, rows = builtin_calrec_step_setup(device)

    def calrec_step(written_out):
        before, LayerNorm.written_out = LayerNorm.written_out, written_out
        try:
            calrec.train_step(towers, opt, scaler, builder, rows[:cfg.batch_size], [], cfg, device, "float32")
        finally:
            LayerNorm.written_out = before

    domain = data.read_atomic(data_folder) if data_folder else data.make_world()[2]
    seqs = [s for s in domain.train_sequences if len(s) >= 2]
    rc = calrec.REAL_DATA
    net = GPT(GPTConfig(block_size=rc.sasrec_len, vocab_size=domain.n_items + 1, n_layer=rc.sasrec_layers,
                        n_head=rc.sasrec_heads, n_embd=rc.sasrec_embd, dropout=rc.sasrec_dropout)).to(device)
    sas_opt = net.configure_optimizers(rc.sasrec_lr, weight_decay=0.0)
    rng = np.random.default_rng(0)
    batch = [seqs[r] for r in rng.integers(len(seqs), size=rc.sasrec_batch_size)]
    idx, targets = (t.to(device) for t in calrec.sasrec_inputs(batch, rc.sasrec_len, domain.n_items))
    mask = (targets != -100).long()  # the attention mask the earlier step passed (its padding: no target)

    def sasrec_step(masked_forward):
        loss = net(idx, mask, targets)[1] if masked_forward else calrec.sasrec_loss(net, idx, targets)
        sas_opt.zero_grad(set_to_none=True)
        loss.backward()
        sas_opt.step()

    print(f"\n### Training steps, before and now ({cfg.batch_size} CALRec rows of the built-in world; "
          f"{rc.sasrec_batch_size} SASRec sequences of {domain.name}, {mask.float().mean():.0%} of positions real)\n")
    print("| step | before ms | now ms | speed-up |")
    print("|---|---|---|---|")
    for name, fn in (("CALRec, LayerNorm written out -> fused", calrec_step),
                     ("SASRec, masked forward over every position -> real positions only", sasrec_step)):
        t = interleaved({True: lambda: fn(True), False: lambda: fn(False)}, device, rounds=3, repeats=3)
        print(f"| {name} | {1000 * t[True]:.0f} | {1000 * t[False]:.0f} | {t[True] / t[False]:.2f}x |")


def bench_threads(device, **_):
    """One training step of the default CALRec run (built-in world, batch 32), median of 10, in a fresh process
    per setting: torch's threads 1 or 2, OpenMP's idle threads sleeping (PASSIVE, what train.py sets) or
    spinning (ACTIVE); on a quiet machine, then beside a busy process (one core's worth of Python spinning)."""
    print("\n### Threads: one default CALRec training step (ms), quiet and beside a busy process\n")
    print("| threads | OMP_WAIT_POLICY | quiet ms | busy ms |")
    print("|---|---|---|---|")
    root = os.path.dirname(os.path.abspath(__file__))
    settings = ((1, "PASSIVE"), (2, "PASSIVE"), (2, "ACTIVE"))
    result = {}
    for busy in (False, True):
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads, policy in settings:
                with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
                    f.write(STEP_SCRIPT.format(root=root, threads=threads))
                env = dict(os.environ, OMP_WAIT_POLICY=policy)
                out = subprocess.run([sys.executable, f.name], env=env, capture_output=True, text=True, timeout=1800)
                os.remove(f.name)
                result[threads, policy, busy] = 1000 * float(out.stdout.split()[-1])
        finally:
            if burner:
                burner.kill()
    for threads, policy in settings:
        print(f"| {threads} | {policy} | {result[threads, policy, False]:.0f} | {result[threads, policy, True]:.0f} |")


PARTS = {"train": bench_train, "generate": bench_generate, "cache": bench_cache, "beam": bench_beam, "bm25": bench_bm25,
         "maml": bench_maml, "steps": bench_steps, "threads": bench_threads, "ranking": bench_ranking,
         "grid": bench_grid, "baselines": bench_baselines, "mfu": bench_mfu}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], allow_abbrev=False)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--only", choices=tuple(PARTS), action="append",
                   help="run only this part (may be repeated); mfu runs by default on CUDA only, ranking and "
                        "baselines need --data, threads takes minutes")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads for every part but `threads`")
    p.add_argument("--before", default=BEFORE, help="git revision of the code the speed-ups are measured against")
    p.add_argument("--data", default=None, help="a benchmark folder for the bm25, ranking, grid and baselines parts")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="precision of the mfu part (autocast)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in the mfu part")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOPS for MFU (known for H100, H200, A100, L4)")
    p.add_argument("--mfu-batch", type=int, default=16, help="sequences of 1024 tokens per step in the mfu part")
    args = p.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"## bench.py on {device} ({name}), {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    parts = args.only or [p for p in PARTS if (p != "mfu" or device == "cuda") and p not in ("threads", "ranking",
                                                                                            "baselines")]
    for part in parts:
        if part == "mfu":
            bench_mfu(device, args.dtype, args.compile, batch=args.mfu_batch, peak=args.peak_tflops)
        else:
            PARTS[part](device, rev=args.before, data_folder=args.data)
    print(f"\nPeak memory of the whole run: {peak_memory_mb(device):,.0f} MB")


if __name__ == "__main__":
    main()
