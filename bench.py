"""
Measurements of the project's speed and memory, printed as Markdown tables for the README.

    python bench.py                      # everything, on the best device (CPU here)
    python bench.py --only train         # one part: train, generate, beam, maml
    python bench.py --device cpu

What it measures:
  train     tokens/s of forward + backward + AdamW step, for three model sizes
  generate  new tokens/s of greedy generation with and without the KV cache (64 new tokens)
  beam      beam search throughput, batched over prompts, with the KV cache
  maml      the vmap path against the per-task loop, second- vs first-order step time and memory
  mfu       (GPU) tokens/s and model FLOPs utilisation of the default size and GPT-2 124M in bf16:
            python bench.py --only mfu --compile
Peak memory is the process's peak resident set on CPU (it includes Python and torch themselves) and
torch's peak allocation on CUDA.
"""

import argparse
import platform
import resource
import time
import weakref

import numpy as np
import torch

import data
import maml
from model import GPT, GPTConfig, autocast, grad_scaler

SIZES = {  # name -> (n_layer, n_head, n_embd)
    "tiny": (2, 2, 64),
    "default": (GPTConfig.n_layer, GPTConfig.n_head, GPTConfig.n_embd),
    "medium": (6, 6, 384),
}


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


def make_model(size, device, block_size=256, vocab_size=4096):
    n_layer, n_head, n_embd = SIZES[size]
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    return GPT(cfg).to(device)


# -----------------------------------------------------------------------------

def bench_train(device, batch=8, seq=256):
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


def peak_tflops(device, given):
    if given is not None:
        return given
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in PEAK_BF16_TFLOPS.items():
            if key in name:
                return value
    return None


def bench_mfu(device, dtype="bfloat16", compile_model=False, batch=16, seq=1024, peak=None):
    """Training tokens/s and model FLOPs utilisation (MFU) for the default size and GPT-2 124M, in mixed
    precision. FLOPs per token as in the PaLM paper (appendix B): 6 N for the matrix products of forward and
    backward, plus 12 n_layer n_embd T for attention; MFU = achieved FLOPs / the card's peak."""
    peak = peak_tflops(device, peak)
    print(f"\n### Training throughput and MFU, {dtype}, batch {batch} x {seq} tokens"
          f"{', torch.compile' if compile_model else ''}; peak {peak or '?'} TFLOPS\n")
    print("| model | params | tokens/s | TFLOPS achieved | MFU |")
    print("|---|---|---|---|---|")
    shapes = {"default": (GPTConfig.n_layer, GPTConfig.n_head, GPTConfig.n_embd, 4096),
              "gpt2-124M": (12, 12, 768, 50304)}  # GPT-2's 50257 tokens padded to a multiple of 64
    for name, (n_layer, n_head, n_embd, vocab) in shapes.items():
        torch.manual_seed(0)
        m = GPT(GPTConfig(block_size=seq, vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
        m = m.to(device)
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
        flops_per_token = 6 * n + 12 * n_layer * n_embd * seq
        achieved = flops_per_token * batch * seq / t / 1e12
        mfu = f"{100 * achieved / peak:.1f}%" if peak else "? (give --peak-tflops)"
        print(f"| {name} | {n / 1e6:.1f}M | {batch * seq / t:,.0f} | {achieved:.1f} | {mfu} |")


def bench_generate(device, batch=8, prompt_len=64, new=64):
    print(f"\n### Greedy generation: {batch} prompts of {prompt_len} tokens, {new} new tokens each, "
          "default size\n")
    print("| KV cache | new tokens/s | seconds |")
    print("|---|---|---|")
    m = make_model("default", device).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, m.config.vocab_size, (batch, prompt_len), generator=g).tolist()
    times = {}
    for use_cache in (True, False):
        times[use_cache] = timed(lambda: m.generate(prompts, new, greedy=True, use_cache=use_cache),
                                 device, repeats=3)
        print(f"| {'yes' if use_cache else 'no'} | {batch * new / times[use_cache]:,.0f} | "
              f"{times[use_cache]:.2f} |")
    print(f"\nKV cache speed-up: {times[False] / times[True]:.1f}x")


def bench_beam(device, batch=16, prompt_len=128, new=32, beams=10):
    print(f"\n### Beam search: {batch} prompts of {prompt_len} tokens, {beams} beams, {new} new tokens, "
          "default size, KV cache\n")
    m = make_model("default", device).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, m.config.vocab_size, (batch, prompt_len), generator=g).tolist()
    # eos_id=-1 never matches: every beam runs the full length, so the work is fixed
    t = timed(lambda: m.beam_search(prompts, beams, new, eos_id=-1), device, repeats=3)
    print("| prompts/s | beam tokens/s | seconds |")
    print("|---|---|---|")
    print(f"| {batch / t:,.1f} | {batch * beams * new / t:,.0f} | {t:.2f} |")


def bench_maml(device, repeats=5):
    """vmap over the tasks of a meta-batch vs the per-task loop; second- vs first-order step time and the
    memory autograd keeps for the backward pass, for 1-5 inner steps. Prints Markdown tables.

    Two models: the sinusoid MLP (1-40-40-1) and the built-in family's classifier (GPT 2x64, the default
    `python train.py --task maml` size). Memory: on CUDA torch's peak allocation during the step; on CPU the
    bytes of the tensors autograd saves for backward during the forward (process RSS only ever grows, so it
    cannot tell two configurations apart)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: on shared CPU cores extra OpenMP threads only wait
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
        amp, phase, support = maml.sample_sines(n_tasks, maml.SINE_K, g)
        query = maml.sine_points(amp, phase, maml.SINE_K, g)
        support = {k: v.to(device) for k, v in support.items()}
        query = {k: v.to(device) for k, v in query.items()}
        for first_order in (False, True):
            ms = {}
            for name, fn in (("loop", maml.meta_loss_loop), ("vmap", maml.meta_loss_vmap)):
                ms[name] = timed_ms(lambda: fn(sine, maml.sine_loss, [support], query, 0.01, 1,
                                               first_order).backward(), sine_repeats)
            print(f"| {n_tasks} | {'first' if first_order else 'second'} | {ms['loop']:.1f} | {ms['vmap']:.1f} "
                  f"| {ms['loop'] / ms['vmap']:.1f}x |")

    # --- the family's GPT classifier
    aux, _ = data.task_family()
    names = list(aux)
    tok = data.train_tokenizer([t for n in names for t in aux[n]["train"]["text_a"]], vocab_size=512)
    cfg = maml.FAMILY_CONFIG
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=cfg.max_len, vocab_size=576, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        n_embd=cfg.n_embd))
    model = maml.TaskClassifier(gpt, [1 if aux[n]["kind"] == "regression" else len(aux[n]["labels"])
                                      for n in names], [aux[n]["kind"] == "regression" for n in names]).to(device)
    encs = [maml.encode_split(tok, aux[n], aux[n]["train"], i, cfg.max_len, 4.0) for i, n in enumerate(names)]
    fast, loss_fn = maml.make_task_loss(model, maml.adapted_names(model, "all"))
    rng = np.random.default_rng(0)

    def batches_for(n_tasks, steps):
        return maml.stack_tasks([encs[i % len(encs)] for i in range(n_tasks)], steps + 1, cfg.shot, rng,
                                tok.pad_id, device)

    print(f"\n### MAML on the GPT classifier ({cfg.n_layer} layers x {cfg.n_embd}, {cfg.shot} examples per "
          f"batch, 1 inner step): vmap vs loop\n")
    print("| meta-batch | order | loop ms | vmap ms | speed-up |")
    print("|---|---|---|---|---|")
    with maml.second_order_math_attention():
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
    torch.set_num_threads(threads)


PARTS = {"train": bench_train, "generate": bench_generate, "beam": bench_beam, "maml": bench_maml,
         "mfu": bench_mfu}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], allow_abbrev=False)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--only", choices=tuple(PARTS), action="append",
                   help="run only this part (may be repeated); mfu runs by default on CUDA only")
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
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"## bench.py on {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    parts = args.only or [p for p in PARTS if p != "mfu" or device == "cuda"]
    for part in parts:
        if part == "mfu":
            bench_mfu(device, args.dtype, args.compile, batch=args.mfu_batch, peak=args.peak_tflops)
        else:
            PARTS[part](device)
    print(f"\nPeak memory of the whole run: {peak_memory_mb(device):,.0f} MB")


if __name__ == "__main__":
    main()
