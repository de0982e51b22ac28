"""Checks that the graders share, each independent of the code it grades: a function leaves its inputs alone, and
its gradients equal finite differences (torch.autograd.gradcheck, in float64), and a call's memory stays within a
cap (a dense matrix of a real catalog's size cannot be made)."""

import contextlib
import os

import numpy as np
import pytest
import torch


def snapshot(x):
    """A copy of x to compare with later: tensors and arrays copied, lists, tuples and dicts in depth."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, (list, tuple)):
        return type(x)(snapshot(v) for v in x) if not hasattr(x, "_fields") else type(x)(*map(snapshot, x))
    if isinstance(x, dict):
        return {k: snapshot(v) for k, v in x.items()}
    return x


def same(a, b):
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.detach().nan_to_num(), b.nan_to_num())
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def leaves_inputs_alone(fn, *args, **kwargs):
    """fn(*args, **kwargs), after checking that the call changed none of its arguments (a caller's tensors, arrays,
    lists and dicts are the caller's)."""
    before = snapshot((args, kwargs))
    out = fn(*args, **kwargs)
    assert same((args, kwargs), before), f"{getattr(fn, '__qualname__', fn)} changed an input it was given"
    return out


def gradients_match_finite_differences(fn, *inputs, second_order=False):
    """fn's gradients with respect to every input, against finite differences, in float64; with second_order, its
    second derivatives too, against finite differences of its gradients (what second-order MAML differentiates)."""
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)
    assert not second_order or torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


@contextlib.contextmanager
def memory_capped(extra_bytes):
    """Inside, the process may map at most `extra_bytes` more than it maps now (Linux's RLIMIT_AS): an allocation past
    that fails at once (torch raises RuntimeError "... can't allocate memory ...") instead of filling the machine, so
    a grader can check that a call keeps a catalog's matrix sparse without the memory a dense one takes. Yields
    whether the cap is set (not where /proc/self/statm or RLIMIT_AS are missing: there nothing is capped)."""
    try:
        import resource
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = mapped + extra_bytes
        for limit in (soft, hard):
            if limit != resource.RLIM_INFINITY:
                cap = min(cap, limit)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, ValueError, AttributeError):
        yield False
        return
    try:
        yield True
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def out_of_memory(e):
    """An exception's allocation failure in a few words (under memory_capped), or None if it is another error."""
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "allocate" in first):
        return first[first.find("can't allocate"):] if "can't allocate" in first else first[:160]
    return None


def within_memory(call, what, extra_bytes=512 * 2 ** 20):
    """call() under memory_capped(extra_bytes): an allocation past the cap fails the grader, naming `what`."""
    try:
        with memory_capped(extra_bytes):
            return call()
    except Exception as e:
        if not out_of_memory(e):
            raise
        pytest.fail(f"{what}, with at most {extra_bytes // 2 ** 20} MiB more memory: {type(e).__name__}: "
                    f"{out_of_memory(e)}")
