"""
The project's speed, printed as Markdown tables for docs/results.md.

    python bench.py                                   # every part, one thread, on the CPU here
    python bench.py --only beam --only bm25           # some parts
    python bench.py --only bm25 --data data/amazon/Industrial_and_Scientific   # BM25 over a real catalog

  train      tokens/s of forward + backward + AdamW for the built-in CALRec LM and a GPT-2-small-shaped one
  cache      greedy generation with the KV cache and without, for 16, 64 and 192 new tokens
  beam       beam search with the shared prompt cache and without (the reference path)
  bm25       BM25's top-100 for one query per test user of a catalog (--data), or a synthetic one
  maml       a meta-batch under vmap against the per-task loop; second- against first-order steps
  layernorm  one CALRec training step as usual, and in second_order_ops (LayerNorm written out, MATH attention)
  threads    one CALRec training step with 1 and 2 threads, on a quiet machine and beside a busy process

Timings are medians of repeats taken in turns, so that a busy spell hits every contender.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

import calrec
import data
import maml
from engine import Parser, grad_scaler, pick_device, thread_count
from evaluation import environment
from model import GPT, GPTConfig, UserError, error_line, second_order_ops


def timed(fn, device, repeats=3, warmup=1):
    """Median seconds of fn() over `repeats` runs, after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def interleaved(fns, device, rounds=3, repeats=1):
    """Median time of each function, measured in turns."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, device, repeats))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def gpt(device, n_layer=4, n_head=4, n_embd=256, vocab_size=8192, block_size=256):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd)).to(device).eval()


def bench_train(device, batch=8, seq=256, **_):
    print(f"\n### Training: forward + backward + AdamW, {batch} x {seq} tokens\n")
    print("| model | params | tokens/s | ms/step |\n|---|---|---|---|")
    c = calrec.BUILT_IN
    for name, shape in (("built-in CALRec LM", (c.n_layer, c.n_head, c.n_embd, c.vocab_size)),
                        ("GPT-2-small-shaped", (12, 12, 768, 50304))):
        m = gpt(device, *shape).train()
        opt = m.configure_optimizers(lr=3e-4)
        idx = torch.randint(0, shape[3], (batch, seq + 1), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            m(idx[:, :-1], targets=idx[:, 1:])[1].backward()
            opt.step()
        t = timed(step, device, repeats=3)
        print(f"| {name} | {m.num_params() / 1e6:.1f}M | {batch * seq / t:,.0f} | {1000 * t:.0f} |")


def bench_cache(device, **_):
    print("\n### Greedy generation, KV cache on and off: 8 prompts of 16 tokens, 4 layers x 256, vocab 8192\n")
    m = gpt(device)
    prompts = torch.randint(0, 8192, (8, 16), generator=torch.Generator().manual_seed(0)).tolist()
    print("| new tokens | cache s | no cache s | speed-up |\n|---|---|---|---|")
    for new in (16, 64, 192):
        t = interleaved({c: (lambda c=c: m.generate(prompts, new, greedy=True, use_cache=c)) for c in (True, False)},
                        device, rounds=1, repeats=3)
        print(f"| {new} | {t[True]:.2f} | {t[False]:.2f} | {t[False] / t[True]:.1f}x |")


def bench_beam(device, **_):
    print("\n### Beam search, 10 beams x 32 new tokens after a 200-token prompt, 4 layers x 256, vocab 8192\n")
    m = gpt(device)
    prompts = torch.randint(0, 8192, (8, 200), generator=torch.Generator().manual_seed(0)).tolist()
    print("| prompts | shared prompt cache s | no cache s | speed-up | same beams |\n|---|---|---|---|---|")
    for b in (1, 8):  # eos_id -1 is never written: every beam runs the full length
        a, c = m.beam_search(prompts[:b], 10, 32, -1), m.beam_search(prompts[:b], 10, 32, -1, use_cache=False)
        same = [[t for t, _ in r] for r in a] == [[t for t, _ in r] for r in c]
        t = interleaved({u: (lambda u=u: m.beam_search(prompts[:b], 10, 32, -1, use_cache=u)) for u in (True, False)},
                        device)
        print(f"| {b} | {t[True]:.2f} | {t[False]:.2f} | {t[False] / t[True]:.1f}x | {'yes' if same else 'NO'} |")


def bench_bm25(device, catalog=None, **_):
    if catalog is not None:  # the --data folder, read before any part ran
        texts = [data.item_text(it, catalog.attributes, calrec.REAL_DATA.max_words) for it in catalog.items]
        queries, name = [texts[hist[-1]] for hist, _ in catalog.test], catalog.name
    else:
        rng = np.random.default_rng(0)
        texts = [" ".join(f"w{i}" for i in rng.integers(20000, size=rng.integers(8, 30))) for _ in range(4385)]
        queries, name = [texts[i] for i in rng.integers(len(texts), size=8442)], "synthetic"
    index = calrec.BM25(texts)
    t = timed(lambda: index.search(queries, 100), device)
    print(f"\n### BM25 top-100 ({name}): {len(queries):,} queries x {len(texts):,} documents: {t:.2f} s\n")


def bench_maml(device, **_):
    """The built-in family's classifier, as the run builds it, one inner step."""
    cfg = maml.FAMILY
    exp = maml.prepare(cfg, None, "out/bench", 0, device)  # reads, writes nothing
    model, encs, tok = exp.model, exp.aux_encs, exp.tokenizer
    params, loss_fn = maml.task_loss(model)
    rng = np.random.default_rng(0)
    print(f"\n### A MAML meta-step on the family's classifier ({cfg.n_layer} layers x {cfg.n_embd}, {cfg.shot} "
          "examples a batch, 1 inner step): vmap against the per-task loop\n")
    print("| meta-batch | order | loop ms | vmap ms | speed-up |\n|---|---|---|---|---|")
    with second_order_ops(model):
        for n_tasks in (4, 16):
            bs = maml.stack_tasks([encs[i % len(encs)] for i in range(n_tasks)], 2, cfg.shot, rng, tok.pad_id, device)
            for first_order in (False, True):
                ms = {name: 1000 * timed(lambda fn=fn: fn(params, loss_fn, bs[:-1], bs[-1], cfg.inner_lr, 1,
                                                          first_order).backward(), device)
                      for name, fn in (("loop", maml.meta_loss_loop), ("vmap", maml.meta_loss_vmap))}
                print(f"| {n_tasks} | {'first' if first_order else 'second'} | {ms['loop']:.0f} | {ms['vmap']:.0f} "
                      f"| {ms['loop'] / ms['vmap']:.1f}x |")


def calrec_step(device):
    """One training step of the built-in CALRec run, random weights: a function taking no arguments."""
    cfg = calrec.BUILT_IN
    torch.manual_seed(0)
    exp = calrec.prepare(cfg, None, "out/bench", 0, device)  # reads, writes nothing
    lm, rows = exp.lm, exp.rows[0][:cfg.batch_size]
    towers, opt, scaler = calrec.Towers(lm), lm.configure_optimizers(cfg.lr), grad_scaler(device, "float32")
    return lm, lambda: calrec.train_step(towers, opt, scaler, exp.builder, rows, [], cfg, device, "float32")


def bench_layernorm(device, **_):
    lm, step = calrec_step(device)

    def second_order():
        with second_order_ops(lm):
            step()
    t = interleaved({"usual": step, "second order": second_order}, device, repeats=3)
    print(f"\n### One built-in CALRec training step: as usual {1000 * t['usual']:.0f} ms, in second_order_ops "
          f"{1000 * t['second order']:.0f} ms ({t['second order'] / t['usual']:.2f}x)\n")


def bench_threads(device, **_):
    """A fresh process per setting; 'busy': beside one process spinning a core."""
    print("\n### Threads: one built-in CALRec training step (ms), quiet and beside a busy process\n")
    print("| threads | OMP_WAIT_POLICY | quiet ms | busy ms |\n|---|---|---|---|")
    script = ("import sys, torch, bench; torch.set_num_threads(int(sys.argv[1])); _, step = bench.calrec_step('cpu'); "
              "print(bench.timed(step, 'cpu', repeats=9, warmup=2))")
    settings, ms = ((1, "PASSIVE"), (2, "PASSIVE"), (2, "ACTIVE")), {}
    for busy in (False, True):
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads, policy in settings:
                out = subprocess.run([sys.executable, "-c", script, str(threads)], capture_output=True, text=True,
                                     env=dict(os.environ, OMP_WAIT_POLICY=policy), check=True,
                                     cwd=os.path.dirname(os.path.abspath(__file__)))
                ms[threads, policy, busy] = 1000 * float(out.stdout.split()[-1])
        finally:
            if burner:
                burner.kill()
    for threads, policy in settings:
        print(f"| {threads} | {policy} | {ms[threads, policy, False]:.0f} | {ms[threads, policy, True]:.0f} |")


PARTS = {"train": bench_train, "cache": bench_cache, "beam": bench_beam, "bm25": bench_bm25, "maml": bench_maml,
         "layernorm": bench_layernorm, "threads": bench_threads}


def main():
    p = Parser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
               allow_abbrev=False)
    p.add_argument("--only", choices=tuple(PARTS), action="append", help="run this part (may be repeated)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"), help="where to measure (default: cpu)")
    p.add_argument("--threads", type=thread_count, default=1,
                   help="torch's CPU threads for every part but threads (default: 1)")
    p.add_argument("--data", help="a benchmark folder for the bm25 part")
    try:  # a mistake is one line, as in train.py, and found before any part runs
        args = p.parse_args()
        if args.data is not None and not args.data.strip():
            raise UserError("--data: an empty path; give a benchmark folder")
        if args.data is not None and "bm25" not in (args.only or PARTS):
            raise UserError("--data: only the bm25 part reads it, and --only leaves that part out")
        if args.data is not None and not os.path.isdir(args.data):  # as train.py words it
            what = "is a file, not a folder" if os.path.exists(args.data) else "no such folder"
            raise UserError(f"--data {args.data}: {what}")
        catalog = data.read_atomic(args.data) if args.data is not None else None
        if catalog is not None and not catalog.test:  # (train.py refuses it too)
            raise UserError(f"{args.data}: has no test users, whose last items the bm25 part searches with")
        device = pick_device(args.device)
        torch.set_num_threads(args.threads)
        env = environment(device)
        print(f"## python bench.py: {device} ({env['gpu'] or env['cpu']}), {env['threads']} thread(s), "
              f"torch {env['torch']}")
        for part in dict.fromkeys(args.only or PARTS):  # a part named twice runs once
            PARTS[part](device, catalog=catalog)
    except UserError as e:
        print(error_line(e), file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # the reader of a pipe stopped early (| head): it has what it wanted
        os._exit(141)  # at once: the interpreter's exit would write into the closed pipe again


if __name__ == "__main__":
    main()
