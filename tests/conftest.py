"""Shared by every test: one intra-op thread. The tests use tiny matrices, for which extra OpenMP threads on
a shared 2-core machine only wait for each other (measured up to ~1000x slower)."""

import importlib
import json
import os
import re
import textwrap

import pytest
import torch

# Tests that read real data take its folder from one environment variable: a folder holding amazon/Scientific
# (the RecBole/UniSRec benchmark files), glue/ and glue-16shot/ (the official GLUE layout, LM-BFF's splits).
# Without it they are skipped, with a reason. `python data.py --help` says how to fetch the data.
REAL_DATA_DIR = os.environ.get("REAL_DATA_DIR")


def real_data(*parts):
    """The path of a real-data folder, and a skip marker for when it is not there."""
    path = os.path.join(REAL_DATA_DIR, *parts) if REAL_DATA_DIR else None
    reason = (f"REAL_DATA_DIR is not set (it names a folder with {'/'.join(parts)})" if not REAL_DATA_DIR
              else f"{path} is not there")
    return path, pytest.mark.skipif(path is None or not os.path.isdir(path), reason=reason)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def torch_settings_left_as_they_were():
    """A call that turns gradients off, inference mode on or changes the default dtype for the whole process breaks
    what runs after it (the next training step's backward): every test, each grader too, fails on it."""
    def settings():
        return dict(grad_enabled=torch.is_grad_enabled(), inference_mode=torch.is_inference_mode_enabled(),
                    default_dtype=torch.get_default_dtype())
    before = settings()
    yield
    after = settings()
    torch.set_grad_enabled(before["grad_enabled"])
    torch.set_default_dtype(before["default_dtype"])
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, "the call left torch's process-wide settings changed: " + ", ".join(
        f"{k} {was} -> {now}" for k, (was, now) in changed.items()) + (
        " (a `with torch.no_grad():` block sets gradients back on leaving it; else set back what was changed)")


# tests/test_exercises.py runs the exercises' graders on wrong answers: EXERCISE_VARIANTS names a JSON file mapping
# a test's node id to its variants, [[id, {"file.py:function" or "file.py:Class.method": the source of a def}], ...];
# each such test then runs once per variant, with those functions replaced by the variant's.
VARIANTS = os.environ.get("EXERCISE_VARIANTS")


def pytest_generate_tests(metafunc):
    if VARIANTS and "exercise_variant" in metafunc.fixturenames:
        with open(VARIANTS, encoding="utf-8") as f:
            variants = json.load(f).get(metafunc.definition.nodeid.split("[")[0], [])
        metafunc.parametrize("exercise_variant", [v for _, v in variants], indirect=True, ids=[i for i, _ in variants])


# Variant 0 hides the exercise's hidden functions and variant 1 blanks them all: every grader runs on those. A
# variant from 2 on is a wrong answer, and one grader failing it is enough: the later graders skip it as "caught".
CAUGHT = set()


def wrong_answer(nodeid):
    """'EX=name=index' of the wrong answer a test runs on, or None."""
    variant = re.search(r"EX=[\w-]+=(\d+)", nodeid) if VARIANTS else None
    return variant.group(0) if variant and int(variant.group(1)) >= 2 else None


def pytest_runtest_logreport(report):
    if report.failed and wrong_answer(report.nodeid):
        CAUGHT.add(wrong_answer(report.nodeid))


# (variant, "file.py:function") -> the variant's function, made once for all the graders it meets: what it keeps at
# module level (a cache) lives on from one grader to the next, as in a handed-in file that `grade` runs them all on
MADE = {}


@pytest.fixture(autouse=True)
def exercise_variant(request, monkeypatch):
    if not hasattr(request, "param"):
        yield
        return
    if wrong_answer(request.node.nodeid) in CAUGHT:
        pytest.skip("caught by an earlier grader")
    variant = re.search(r"EX=[\w-]+=\d+", request.node.nodeid)
    variant = variant.group(0) if variant else request.node.nodeid  # a variant named otherwise: made per test
    for where, source in request.param.items():
        file, _, qualname = where.partition(":")
        module = importlib.import_module(file[:-len(".py")])
        *owner, name = qualname.split(".")
        if (variant, where) not in MADE:
            namespace = dict(vars(module))  # the module's globals: the variant sees what the original saw
            exec(compile(textwrap.dedent(source), where, "exec"), namespace)
            MADE[variant, where] = namespace[name]
        monkeypatch.setattr(getattr(module, owner[0]) if owner else module, name, MADE[variant, where])
    yield
