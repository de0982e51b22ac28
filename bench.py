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
Peak memory is the process's peak resident set on CPU (it includes Python and torch themselves) and
torch's peak allocation on CUDA.
"""

import argparse
import platform
import resource
import time

import torch

from model import GPT, GPTConfig

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


def bench_maml(device):
    import maml
    if not hasattr(maml, "bench_maml"):
        print("\n(maml.bench_maml is not available)")
        return
    maml.bench_maml(device)


PARTS = {"train": bench_train, "generate": bench_generate, "beam": bench_beam, "maml": bench_maml}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], allow_abbrev=False)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--only", choices=tuple(PARTS), action="append",
                   help="run only this part (may be repeated)")
    args = p.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"## bench.py on {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    for part in args.only or PARTS:
        PARTS[part](device)
    print(f"\nPeak memory of the whole run: {peak_memory_mb(device):,.0f} MB")


if __name__ == "__main__":
    main()
