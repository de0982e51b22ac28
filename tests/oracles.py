"""Checks that the graders share, each independent of the code it grades: a function leaves its inputs alone, and
its gradients equal finite differences (torch.autograd.gradcheck, in float64)."""

import numpy as np
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


def gradients_match_finite_differences(fn, *inputs):
    """fn's gradients with respect to every input, against finite differences, in float64."""
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)
