"""Exercises: the project's own functions as assignments, graded by the project's own tests.

    python exercise.py list                                 # the exercises, by level
    python exercise.py handout info-nce bm25 --out hw       # a student's copy: those functions to write
    python exercise.py grade hw                             # a score per exercise of a handed-in copy
    python exercise.py check info-nce                       # in a handout: run the graders of one exercise

A handout is a copy of the files git tracks (no .git, outputs, data or untracked solutions), in which each function
of the chosen exercises keeps its decorators, signature and docstring while its body becomes `raise
NotImplementedError(...)`; so do the functions that would give an answer away (an exercise's `hide`). `grade` runs
the graders over a copy of the student's tree with the teacher's own tests/, so nothing a student edits in tests/
counts. Only the standard library: the project is never imported, so the commands work while a student's model.py
is half written.
"""

import argparse
import ast
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
import xml.etree.ElementTree as ET
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.abspath(__file__))  # the project: every path below is relative to it
MANIFEST = "exercises.json"                         # in a handout: the exercises it holds
NOT_HANDED_OUT = {".git", ".exercises", ".pytest_cache", "__pycache__", "out", "runs", "data", ".venv", MANIFEST,
                  "test_exercises.py"}  # and the wrong answers of tests/wrong_answers*.py: each is one edit from a key


# -----------------------------------------------------------------------------
# 1. the exercises (a teacher edits this list)


@dataclass(frozen=True)
class Exercise:
    name: str            # short and kebab-case: what the student types
    level: int           # 1: a formula; 2: a paper's equation as a batched tensor program; 3: an algorithm
    title: str           # one line
    functions: tuple     # what the student writes: "file.py:function" or "file.py:Class.method"
    tests: tuple         # the pytest node ids that grade it
    hide: tuple = ()     # also blanked in a handout: functions that would give the answer away


M, C = "tests/test_model.py::", "tests/test_calrec.py::"          # the graders' files, shortened below
Q, D = "tests/test_maml_core.py::", "tests/test_maml_metrics.py::"
EXERCISES = [
    # --- level 1: one idea in a few lines
    Exercise("layer-norm", 1, "LayerNorm written out: each position to mean 0 and variance 1, then scale and shift",
             ("model.py:LayerNorm.forward",),
             (M + "test_layer_norm_equals_torch", M + "test_layer_norm_by_hand",
              M + "test_layer_norm_gradients_match_finite_differences_and_leave_the_input_alone",
              M + "test_second_order_through_vmap_equals_a_loop_over_tasks",
              M + "test_layer_norm_equals_float64_on_any_batch_shape_stride_dtype_and_offset")),
    Exercise("pooling", 1, "Mean pooling over a span, and the last real token of a right-padded row",
             ("model.py:mean_pool", "model.py:last_token_pool"),
             (M + "test_pooling_by_hand", M + "test_pooling_of_holes_empty_spans_and_full_rows_by_hand",
              M + "test_pooling_is_one_row_per_batch_row_in_the_dtype_of_h",
              M + "test_pooling_gradients_match_finite_differences_with_an_empty_span",
              M + "test_pooling_equals_a_naive_loop_on_strides_dtypes_devices_and_under_vmap")),
    Exercise("kv-cache", 1, "The KV cache step: write the new keys and values in place, return all so far",
             ("model.py:KVCache.extend",),
             (M + "test_greedy_batched_equals_one_at_a_time_and_cache_equals_no_cache",
              M + "test_cached_logits_equal_full_forward", M + "test_kv_cache_extend_by_hand",
              M + "test_kv_cache_extend_returns_views_with_several_rows_and_heads",
              M + "test_kv_cache_extend_writes_at_length_and_refuses_what_runs_past_its_capacity")),
    Exercise("task-sampling", 1, "Which auxiliary task a meta-batch slot draws: uniform, proportional to size, mixed",
             ("maml.py:task_probabilities",),
             (Q + "test_task_samplers", Q + "test_task_probabilities_leave_the_sizes_alone",
              Q + "test_task_probabilities_over_a_family_are_float64_arrays_numpy_can_draw_from")),
    Exercise("glue-metrics", 1, "GLUE's metrics: F1, Matthews correlation, Pearson, Spearman with tied ranks",
             ("evaluation.py:f1", "evaluation.py:mcc", "evaluation.py:pearson", "evaluation.py:average_ranks"),
             (D + "test_accuracy_f1_mcc_by_hand", D + "test_pearson_by_hand", D + "test_spearman_with_ties_by_hand",
              D + "test_degenerate_cases", D + "test_a_diverged_prediction_scores_nan_not_zero",
              D + "test_mcc_of_a_large_table_by_hand",
              D + "test_metrics_over_a_family_equal_exact_arithmetic_and_are_python_floats")),
    Exercise("calrec-loss", 1, "CALRec's mixture L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT",
             ("calrec.py:calrec_loss",),
             (C + "test_loss_mixture_by_hand", C + "test_loss_mixture_gradients_match_finite_differences")),
    Exercise("round-robin", 1, "Merge the beams' BM25 lists into one ranking, round by round",
             ("calrec.py:merge_round_robin",), (C + "test_merge_round_robin_on_hand_made_lists",)),
    Exercise("info-nce", 1, "InfoNCE with in-batch negatives, keys of the same item masked out, CLIP-shaped",
             ("calrec.py:info_nce",),
             (C + "test_info_nce_equals_naive_loop", C + "test_duplicate_targets_are_not_negatives")),
    Exercise("prefix-pooling", 1, "The user tower at every item boundary: running means of the hidden states",
             ("calrec.py:user_vectors", "calrec.py:target_vectors"),
             (C + "test_user_and_target_vectors_are_means_over_their_spans",)),
    Exercise("inner-loop", 1, "MAML's inner loop: k steps of gradient descent with torch.func.grad",
             ("maml.py:adapt",),
             (Q + "test_adapt_by_hand", Q + "test_adapt_least_squares_closed_form",
              Q + "test_adapt_second_order_keeps_the_inner_gradients_and_first_order_drops_them",
              Q + "test_adapt_equals_a_loop_on_a_tanh_mlp", Q + "test_adapt_leaves_its_inputs_alone",
              Q + "test_adapt_over_a_family_under_vmap_equals_a_loop_per_task"),
             hide=("maml.py:meta_loss_loop",)),
    Exercise("reptile", 1, "Reptile's direction: the mean of where each task's inner loop moved",
             ("maml.py:reptile_direction",),
             (Q + "test_reptile_direction_by_hand", Q + "test_reptile_direction_equals_a_loop_over_tasks",
              Q + "test_reptile_direction_holds_no_graph", Q + "test_reptile_one_step_is_one_sgd_step",
              Q + "test_reptile_direction_under_dropout_draws_a_mask_per_task",
              Q + "test_reptile_direction_over_a_family_equals_a_loop_and_leaves_theta_alone",
              Q + "test_reptile_direction_runs_its_tasks_at_once_under_vmap"),
             hide=("maml.py:meta_loss_vmap",)),
    # --- level 2: a paper's equation as a batched tensor program
    Exercise("attention", 2, "Attention written out, and the mask of a padded causal batch",
             ("model.py:manual_attention", "model.py:attention_mask_4d"),
             (M + "test_sdpa_equals_manual_attention", M + "test_attention_mask_by_hand",
              M + "test_attention_mask_of_padding_queries_by_hand", M + "test_padded_rows_equal_unpadded",
              M + "test_manual_attention_on_large_scores_equals_sdpa", M + "test_manual_attention_dropout",
              M + "test_attention_mask_is_made_on_the_device_of_key_mask",
              M + "test_manual_attention_equals_sdpa_in_float64_on_dtypes_strides_and_masks",
              M + "test_manual_attention_dropout_drops_attention_weights_not_outputs")),
    Exercise("ranking-metrics", 2, "Full-catalog ranks (history excluded, ties against the target), Recall, NDCG",
             ("evaluation.py:ranks_from_scores", "evaluation.py:rank_metrics"),
             (C + "test_metrics_on_hand_made_ranks",
              C + "test_ranks_exclude_history_and_count_ties_against_the_target",
              C + "test_ranks_from_scores_equal_a_naive_loop")),
    Exercise("bm25", 2, "Lucene's BM25 as a sparse matrix, and queries scored by one product",
             ("calrec.py:BM25.__init__", "calrec.py:BM25.scores"),
             (C + "test_bm25_matches_hand_computed_scores", C + "test_bm25_equals_a_naive_loop_for_any_k1_and_b")),
    Exercise("baselines", 2, "What every recommender must beat: a first-order Markov chain, the last item's text",
             ("evaluation.py:rank_markov", "evaluation.py:rank_last_item_bm25"),
             (C + "test_markov_and_last_item_baselines_by_hand", C + "test_markov_equals_a_naive_loop")),
    Exercise("recent-items", 2, "The recent items of the dense path: a decayed mean of each history's item vectors",
             ("calrec_extras.py:recent_vectors",),
             (C + "test_recent_vectors_by_hand", C + "test_dense_ranks_with_the_recent_items_equal_a_naive_loop",
              C + "test_train_step_loss_equals_the_loss_computed_by_hand")),
    # --- level 3: an algorithm with its bookkeeping
    Exercise("beam-search", 3, "Batched beam search with finished beams and a shared prompt cache",
             ("model.py:GPT.beam_search", "model.py:_beam_choose", "model.py:GPT._beam_next"),
             (M + "test_beam_search_is_exact_when_the_beam_holds_every_prefix",
              M + "test_beam_search_batched_and_constrained_is_exact",
              M + "test_beam_search_batched_equals_single_and_cached_equals_uncached",
              M + "test_beam_search_dead_beams_score_minus_infinity",
              M + "test_beam_search_refuses_a_prompt_and_new_tokens_past_block_size",
              M + "test_beam_search_of_a_bfloat16_model_scores_in_float32",
              M + "test_beam_search_makes_its_tensors_on_the_models_device")),
    Exercise("catalog-trie", 3, "Constrained decoding: a prefix tree of the catalog that lets beams write only items",
             ("calrec_extras.py:CatalogTrie.__init__", "calrec_extras.py:CatalogTrie.node",
              "calrec_extras.py:CatalogTrie.__call__", "calrec_extras.py:CatalogTrie.ranked_items"),
             (C + "test_catalog_trie_by_hand", C + "test_catalog_beams_are_exactly_the_best_catalog_items",
              C + "test_catalog_trie_makes_its_mask_on_the_device_of_the_tokens")),
    Exercise("meta-gradient", 3, "MAML's meta-gradient, all tasks under vmap and one by one with autograd.grad",
             ("maml.py:adapt", "maml.py:meta_loss_vmap", "maml.py:meta_loss_loop"),
             (Q + "test_one_dimensional_hand_check", Q + "test_least_squares_closed_form",
              Q + "test_maml_equals_fomaml_when_inner_lr_is_zero", Q + "test_vmap_equals_loop_float64",
              Q + "test_finite_differences_tanh_mlp", Q + "test_dropout_under_vmap_draws_a_mask_per_task",
              Q + "test_two_tasks_two_steps_by_hand", Q + "test_adapt_by_hand",
              Q + "test_adapt_least_squares_closed_form", Q + "test_adapt_leaves_its_inputs_alone",
              Q + "test_adapt_over_a_family_under_vmap_equals_a_loop_per_task",
              Q + "test_meta_loss_over_a_family_equals_a_loop",
              Q + "test_meta_loss_vmap_runs_its_tasks_at_once_under_vmap"),
             hide=("maml.py:reptile_direction",)),
]


class ExerciseError(Exception):
    """A mistake of the user (an unknown name, a folder that is not a handout, ...): one line, exit status 2."""


def exercise_named(name):
    for ex in EXERCISES:
        if ex.name == name:
            return ex
    raise ExerciseError(f"no exercise named {name!r} (python exercise.py list shows them)")


# -----------------------------------------------------------------------------
# 2. finding a function in a source file with ast, and blanking its body


def read(root, file):
    """The text of a file, line endings untouched (newline=""), so that a rewrite is byte-exact."""
    try:
        with open(os.path.join(root, file), encoding="utf-8", newline="") as f:
            return f.read()
    except OSError as e:
        raise ExerciseError(f"cannot read {file}: {e.strerror}") from None


def find_def(source, qualname, where):
    """The ast node of `function` or `Class.method` defined at the top level of the module (or of its class)."""
    try:
        node = ast.parse(source.removeprefix("\ufeff"))  # a byte-order mark first (a Windows editor's) is no code
    except SyntaxError as e:
        raise ExerciseError(f"cannot parse {where.partition(':')[0]}, line {e.lineno}: {e.msg}") from None
    for part in qualname.split("."):
        found = [n for n in node.body if getattr(n, "name", None) == part
                 and isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        if len(found) != 1:
            raise ExerciseError(f"cannot find {where}: {len(found) or 'no'} definitions of {part}")
        node = found[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ExerciseError(f"{where} is a class, not a function")
    return node


def signature_end(lines, node):
    """The line of the ':' that ends a def's signature: the first ':' after `def` outside any brackets."""
    depth = 0
    for tok in tokenize.generate_tokens(iter(lines[node.lineno - 1:]).__next__):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
            return node.lineno + tok.start[0] - 1


def blank(source, qualname, where, message):
    """`source` with the function's body after its docstring replaced by `raise NotImplementedError(message)`.
    Decorators, signature and docstring are kept byte for byte, and so is every line outside the function."""
    node = find_def(source, qualname, where)
    lines = io.StringIO(source, newline="").readlines()
    head = signature_end(lines, node)  # the last line kept: the signature's, or the docstring's (below)
    if node.body[0].lineno == head:
        raise ExerciseError(f"cannot blank {where}: its body starts on the line of its signature")
    indent = re.match(r"[ \t]*", lines[node.body[0].lineno - 1]).group()
    rest = node.body
    if ast.get_docstring(node, clean=False) is not None:
        head, rest = node.body[0].end_lineno, node.body[1:]
    if rest and rest[0].lineno <= head:
        raise ExerciseError(f"cannot blank {where}: its code starts on the line where its docstring ends")
    newline = re.search(r"\r\n|\r|\n|$", source).group() or "\n"  # the file's own line ending
    kept = "".join(lines[:head])
    if not kept.endswith(("\n", "\r")):
        kept += newline
    return kept + f'{indent}raise NotImplementedError("{message}"){newline}' + "".join(lines[node.end_lineno:])


# -----------------------------------------------------------------------------
# 3. the commands


def list_exercises():
    width = max(len(ex.name) for ex in EXERCISES)
    for level in sorted({ex.level for ex in EXERCISES}):
        print(f"level {level}")
        for ex in (ex for ex in EXERCISES if ex.level == level):
            print(f"  {ex.name:<{width}}  {ex.title}\n  {'':<{width}}  write {', '.join(ex.functions)}")
    return 0


def copy_tree(src, dst, only=None, skip=()):
    """The project's files under src, less what a handout leaves out, into dst; with `only` (paths relative to
    src), those alone, less those in `skip`. A folder holding an exercises.json is an earlier handout, and is left out
    too. A device, a named pipe or a socket among the rest is refused."""
    def ignore(folder, names):
        rel = os.path.relpath(folder, src)
        left_out = [n for n in names if n in NOT_HANDED_OUT or n.endswith(".pyc") or n.startswith("wrong_answers")
                    or os.path.isfile(os.path.join(folder, n, MANIFEST))
                    or os.path.abspath(os.path.join(folder, n)) == os.path.abspath(dst)  # never the copy into itself
                    or only is not None and os.path.normpath(os.path.join(rel, n)) not in only
                    or os.path.normpath(os.path.join(rel, n)) in skip]
        for path in (os.path.join(folder, n) for n in names if n not in left_out):  # a device is read forever, a
            if not (os.path.islink(path) or os.path.isdir(path) or os.path.isfile(path)):  # named pipe waited on
                raise ExerciseError(f"{path}: not a regular file (a device, a named pipe, a socket?); copy files alone")
        return left_out
    shutil.copytree(src, dst, ignore=ignore, symlinks=True)  # a link is copied as a link, dangling or not


def tracked(src):
    """The files git tracks under src and the folders that hold them, or None where src is no checkout: a handout
    copies these alone, so that nothing a teacher keeps beside the project (a solutions folder) is handed out."""
    try:
        listing = subprocess.run(["git", "-C", src, "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        if os.path.lexists(os.path.join(src, ".git")):  # a checkout whose list cannot be read: not every file
            why = e.strerror if isinstance(e, OSError) else e.stderr.decode(errors="replace").strip()
            raise ExerciseError(f"{src}: git cannot list the files it tracks ({why}), and a handout holds those "
                                "alone (not a solutions folder beside them); install git, or work in a copy without "
                                ".git") from None
        return None
    paths = set()
    for path in os.fsdecode(listing).split("\0"):
        while path:
            paths.add(os.path.normpath(path))
            path = os.path.dirname(path)
    return paths or None  # src untracked inside another checkout: every file


def alive(pid):
    if os.name == "nt":  # where os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process, nor such a number of one
        return False
    except OSError:  # another user's, or a system without signals: alive for all we know
        pass
    return True


def handout(names, out):
    """A student's copy of the project in `out` (which must not exist): every function of the exercises named,
    and every function they hide, blanked; the exercises' names in out/exercises.json."""
    exercises = [exercise_named(n) for n in dict.fromkeys(names)]
    if not out.strip():
        raise ExerciseError("--out: an empty path; a handout goes into a new folder")
    if os.path.lexists(out):  # a link to nowhere too
        raise ExerciseError(f"{out}: already there; a handout goes into a new folder")
    tests = os.path.realpath(os.path.join(ROOT, "tests"))
    if os.path.commonpath([tests, os.path.realpath(out)]) == tests:
        raise ExerciseError(f"{out}: inside the project's tests/, whose run would collect the handout's copy of them")
    sources = {}
    for ex in exercises:  # everything is blanked in memory first, so that a refusal writes nothing
        for where in ex.functions + ex.hide:
            file, _, qualname = where.partition(":")
            sources.setdefault(file, read(ROOT, file))
            message = f"exercise {ex.name}: see docs/exercises.md#{ex.name}"
            sources[file] = blank(sources[file], qualname, where, message)
    parent, name = os.path.split(os.path.abspath(out))
    left = os.listdir(parent) if os.path.isdir(parent) else []  # what killed handouts left (never an answer: below)
    for stale in (n for n in left if re.fullmatch(rf"\.{re.escape(name)}\.tmp\d+", n)):
        if not alive(int(stale.rpartition("tmp")[2])):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tmp = os.path.join(parent, f".{name}.tmp{os.getpid()}")
    try:  # the files with answers are not copied, but written blanked: no answer is ever on disk beside the handout
        copy_tree(ROOT, tmp, only=tracked(ROOT), skip={os.path.normpath(file) for file in sources})
        for file, text in sources.items():
            with open(os.path.join(tmp, file), "w", encoding="utf-8", newline="") as f:
                f.write(text)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump([ex.name for ex in exercises], f)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # what is left of it when something failed
    print(f"wrote {out}: write {', '.join(w for ex in exercises for w in ex.functions)}; then, in {out}, "
          f"python exercise.py check NAME; a teacher grades it with python exercise.py grade {shlex.quote(out)}")
    return 0


# `python -m pytest`, but with the tree (the working directory) last on sys.path, not first: its modules are found,
# but a pytest.py or numpy.py of its own never before the installed one. User site-packages and PYTHONPATH stay, less
# a folder holding a module of the project's (the teacher's copy on PYTHONPATH must not answer for the tree's code).
# On Linux the graders end when exercise.py does, even killed, and no file they write grows past WRITES bytes.
GRADERS = """import os, sys
tree, mods = sys.argv.pop(1), sys.argv.pop(1).split(',')
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != os.path.abspath(tree)
               and not any(os.path.isfile(os.path.join(p or '.', m)) for m in mods)] + [tree]
if sys.platform == 'linux':
    import ctypes, resource
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv.pop(1)),) * 2)
import pytest
sys.exit(pytest.console_main())"""
WRITES, GRACE = 2 ** 30, 5  # bytes a file of the graders may hold; seconds their process may outlive its report
MODULES = sorted(f for f in os.listdir(ROOT) if f.endswith(".py"))  # the project's, found in the tree alone


def run_graders(root, node_ids, timeout):
    """({pytest node id: (passed, message)}, a note or None) of the graders run in `root` with the interpreter running
    this file, with no pytest settings or conftest.py but tests/' own, nor a module of root's in place of an installed
    one (a handed-in copy's cannot change how it is graded). The note: what went wrong around the graders."""
    with tempfile.TemporaryDirectory() as tmp:
        report, ini = os.path.join(tmp, "report.xml"), os.path.join(tmp, "pytest.ini")
        with open(ini, "w", encoding="utf-8") as f:
            f.write("[pytest]\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # no -k or --deselect of its own
        output = open(os.path.join(tmp, "output"), "wb+")  # not a pipe: what a stray writer sends takes no memory
        run = subprocess.Popen([sys.executable, "-c", GRADERS, root, ",".join(MODULES),
                                *[str(WRITES)] * sys.platform.startswith("linux"), "-q", "-p", "no:cacheprovider",
                                "-c", ini, "--rootdir", root, "--confcutdir", os.path.join(root, "tests"),
                                f"--junitxml={report}", *node_ids], cwd=root, stdout=output, stderr=output,
                               env=dict(env, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"), start_new_session=True)
        try:
            note = ended(run, report, timeout)
        finally:  # the graders' process group, with anything the student's code left running (POSIX)
            with contextlib.suppress(ProcessLookupError, PermissionError):  # none left
                if hasattr(os, "killpg"):
                    os.killpg(run.pid, signal.SIGKILL)
            run.kill()
            run.wait()
            output.seek(max(0, output.seek(0, os.SEEK_END) - 4096))
            tail = output.read().decode(errors="replace")
            output.close()
        if not os.path.exists(report):
            last = tail.strip().splitlines()[-1:]  # its last word, if it said any
            raise ExerciseError(f"pytest ran none of the graders, exit status {run.returncode}" + "".join(
                f": {line[-300:]}" for line in last))
        cases = list(ET.parse(report).iter("testcase"))
        if any(case.get("classname") is None for case in cases):  # pytest's record of a KeyboardInterrupt
            note, cases = "the graders were interrupted (a KeyboardInterrupt of the hand-in's?)", [
                case for case in cases if case.get("classname") is not None]
        return {node_id(case): outcome(case) for case in cases}, note


def ended(run, report, timeout):
    """None once the graders' process ends; a note when it is stopped GRACE seconds after pytest wrote its report
    (every grader has run: a thread of the hand-in's keeps the process alive), or at the timeout, which without a
    report is an ExerciseError."""
    start, reported = time.monotonic(), None
    while True:
        try:
            run.wait(timeout=0.5)
            return None
        except subprocess.TimeoutExpired:
            now = time.monotonic()
            reported = reported or (os.path.exists(report) and now)
            if reported and (now - reported > GRACE or now - start > timeout):
                return "the graders ended, but their process did not (a thread of the hand-in's?), and was stopped"
            if now - start > timeout:
                raise ExerciseError(f"the graders ran over {timeout} s and were stopped (a loop that never ends?); "
                                    "--timeout gives them longer") from None


def node_id(case):
    """The node id of a junit test case: classname tests.test_a, name test_b[x] -> tests/test_a.py::test_b[x]."""
    parts = case.get("classname").split(".")
    return "/".join(parts[:2]) + ".py::" + "::".join(parts[2:] + [case.get("name")])


def outcome(case):
    """(passed, what went wrong in a few lines: the exception and the assertion's own lines)."""
    for problem in case:
        if problem.tag in ("failure", "error"):
            text = problem.text or ""
            lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")][:8]
            return False, "\n".join(lines) or (problem.get("message") or problem.tag).strip()
        if problem.tag == "skipped":
            return False, "skipped: " + (problem.get("message") or "")
    return True, ""


def what_stopped(results, root):
    """What kept the graders from running (a file of the hand-in that fails to import), in one line, or None."""
    for ok, message in results.values():
        if not ok and message.strip():
            where = re.search(r'File "(.*)", line (\d+)', message)
            return (f"{os.path.relpath(where[1], root)}:{where[2]}: " if where else "") + message.split("\n")[-1][-300:]
    return None


def grade(tree, names, timeout, where=None):
    """Run the graders of each exercise in the folder that `tree(name)` yields, in a process of its own (code that
    fails to import, loops or ends the process costs its own exercise only), and print a score per exercise; 0 if
    every one passes. where: the folder whose copy the tree is, where the printed pytest command runs (None: the
    working folder)."""
    exercises, failed = [exercise_named(n) for n in names], []
    for ex in exercises:
        with tree(ex.name) as root:
            try:
                results, note = run_graders(root, ex.tests, timeout)
                why = f"none ran: {what_stopped(results, root) or 'does a file of it fail to import? see below'}"
            except ExerciseError as e:  # its process ended early, or ran over the timeout
                results, note, why = {}, None, str(e)
        ran = {t: {k: v for k, v in results.items() if k == t or k.startswith(t + "[")} for t in ex.tests}
        mine = {k: v for t in ex.tests for k, v in ran[t].items()}
        mine |= {t: (False, "did not run") for t in ex.tests if (mine or note) and not ran[t]}  # each must have
        passed = sum(ok for ok, _ in mine.values())
        print(f"{ex.name}: {passed} of {len(mine)} graders pass" + (" -- done" if mine and passed == len(mine) else
              "" if mine else f" ({why})") + (f" ({note})" if note else ""))
        for test, (ok, message) in mine.items():
            if not ok:
                print(f"  FAILED {test.split('::', 1)[1]}")
                print("\n".join("    " + line for line in message.splitlines()))
        failed += [] if mine and passed == len(mine) else [ex]
    if failed:
        cd = f"cd {shlex.quote(where)} && " if where else ""
        print(f"the tracebacks{' (with the tests/ it holds)' if where else ''}: {cd}{sys.executable} -m pytest "
              + " ".join(t for ex in failed for t in ex.tests))  # of the exercises not done
    return 1 if failed else 0


def refuse_links_out(folder, copy):
    """Refuse a link of the handed-in tree that leads out of it to a file or folder, in `folder` or in its `copy`
    (where the graders run: a relative link may lead elsewhere there): the grade would be that file's (a link to
    nowhere, a student's stray one, reads nothing)."""
    def leaves(path, top):
        return os.path.exists(path) and os.path.commonpath([os.path.realpath(path), os.path.realpath(top)]) != \
            os.path.realpath(top)
    for at, dirs, files in os.walk(copy):
        dirs[:] = [d for d in dirs if (at, d) != (copy, "tests")]  # this project's own
        for n in (n for n in dirs + files if os.path.islink(os.path.join(at, n))):
            link = os.path.join(folder, os.path.relpath(os.path.join(at, n), copy))
            if leaves(link, folder) or leaves(os.path.join(at, n), copy):
                raise ExerciseError(f"{link}: a link to {os.readlink(os.path.join(at, n))}, outside the handed-in "
                                    "folder; hand in the file itself")


def grade_handout(folder, names, timeout):
    """A handed-in copy, graded with this project's own tests/ (a copy of the student's tree is graded)."""
    if not os.path.isdir(folder):
        raise ExerciseError(f"{folder}: {'is a file, not a folder' if os.path.exists(folder) else 'no such folder'}")
    manifest, listed = os.path.join(folder, MANIFEST), None
    if os.path.isfile(manifest):  # a named pipe there would block the read
        try:
            with open(manifest, encoding="utf-8-sig") as f:  # as a Windows editor may save it: a BOM first
                listed = json.load(f)
        except (OSError, ValueError, RecursionError, MemoryError):
            pass
    if not (isinstance(listed, list) and listed and all(isinstance(n, str) for n in listed)):
        if names and not os.path.lexists(manifest):  # not a handout: a tree of the teacher's choosing
            listed = names
        else:
            raise ExerciseError(f"{manifest}: not a JSON list of exercise names (as handout writes it)" if
                                os.path.lexists(manifest) else f"{folder}: no {MANIFEST} listing its exercises, so "
                                "not a handout; name the exercises to grade")
    unknown = [n for n in listed if n not in {ex.name for ex in EXERCISES}]
    if unknown:
        raise ExerciseError(f"{manifest}: names {unknown[0]!r}, which is no exercise (python exercise.py list shows "
                            "them)")
    apart = [n for n in names if n not in listed]  # its function was never blanked: the copy holds the answer
    if apart:
        raise ExerciseError(f"{apart[0]}: not an exercise of this handout ({manifest} lists {', '.join(listed)})")
    names = list(dict.fromkeys(names or listed))  # an exercise named twice is graded once
    return grade(lambda name: graded_copy(folder, name), names, timeout, where=folder)


@contextlib.contextmanager
def graded_copy(folder, name):
    """A copy of the handed-in tree with this project's tests/, made anew for each exercise: the code of one cannot
    change the graders of the next. The graders run the student's code with the teacher's rights; if this project's
    tests/ or exercise.py changed meanwhile, the grade is refused."""
    before = own_files()
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "work")
        copy_tree(folder, work)
        theirs = os.path.join(work, "tests")  # whatever the copy holds there: a folder, a file, a link
        if os.path.isdir(theirs) and not os.path.islink(theirs):
            shutil.rmtree(theirs)
        elif os.path.lexists(theirs):
            os.remove(theirs)
        copy_tree(os.path.join(ROOT, "tests"), theirs)
        refuse_links_out(folder, work)
        yield work
    after = own_files()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        raise ExerciseError(f"{changed[0]}: written, added or removed while the graders of {name} ran the code of "
                            f"{folder} (by that code, or by you?); grade again once it is as it should be (git "
                            "status), a hand-in you do not trust as another user or in a container")


def own_files():
    """{path: its bytes, where it links, or None for a folder} of what grades a hand-in: exercise.py and each file,
    folder and link of this project's tests/ that a graded copy takes (not compiled files, nor an editor's hidden or
    backup ones: swap files, locks, pytest's cache)."""
    with open(os.path.join(ROOT, "exercise.py"), "rb") as f:
        contents = {os.path.join(ROOT, "exercise.py"): f.read()}
    def kept(n):
        return not (n in NOT_HANDED_OUT or n.startswith((".", "wrong_answers")) or n.endswith((".pyc", "~")))
    for at, dirs, files in os.walk(os.path.join(ROOT, "tests")):  # a link to a folder is listed, not followed
        dirs[:] = [d for d in dirs if kept(d)]
        for path in (os.path.join(at, n) for n in dirs + files if kept(n)):
            if os.path.islink(path) or not os.path.isfile(path):  # a link, a folder, a named pipe, ...
                contents[path] = os.readlink(path) if os.path.islink(path) else None
            else:
                with open(path, "rb") as f:
                    contents[path] = f.read()
    return contents


# -----------------------------------------------------------------------------
# 4. the experiments of docs/experiments.md: their commands are the page's, and the tables of their answers


def experiment_commands(doc):
    """{N: commands} of each "## N." section of docs/experiments.md that has an answer (<!-- answer N -->): a line of
    its ```bash blocks is a command, but a `python -c "` command runs on to the first line that ends in '"'."""
    parts = re.split(r"^## (\d+)\. ", doc.partition("\n## Answers")[0], flags=re.M)[1:]  # N, its text, N, ...
    commands = {}
    for number, text in zip(parts[::2], parts[1::2]):
        if f"<!-- answer {number} -->" in doc:
            script = "".join(re.findall(r"```bash\n(.*?)```", text, re.S))
            commands[int(number)] = re.findall(r'^python -c ".*?"$|^[^\n]+$', script, re.S | re.M)
    return commands


def answer(number, commands, output):
    """An experiment's answer, as docs/experiments.md holds it: a table from its runs' results.json, or what its
    command printed."""
    if number == 6:
        return output.strip()
    dirs = [cmd.split("--out-dir ")[1].split()[0] for cmd in commands]
    res = {d: json.load(open(os.path.join(ROOT, d, "results.json"), encoding="utf-8")) for d in dirs}
    if number == 5:
        methods = res[dirs[0]]["methods"]
        steps = [f"MSE after {k} step{'s' * (k != '1')}" for k in methods["maml"]]  # as train.py's table says it
        return "\n".join(["| method | " + " | ".join(steps) + " |",
                          "|---|" + "---|" * len(methods["maml"])] + [
            f"| {m} | " + " | ".join(f"{v['mse']:.3f} ± {v['mse_ci95']:.3f}" for v in r.values()) + " |"
            for m, r in methods.items()])
    paths = ("calrec_generative", "calrec_constrained", "calrec_dense")
    return "\n".join(["| run | generative+BM25 | catalog beams | dense |", "|---|---|---|---|"] + [
        f"| `{d}` | " + " | ".join(f"{res[d]['test'][p]['ndcg@10']:.3f}" for p in paths) + " |" for d in dirs])


def experiments(write):
    """Run every experiment of docs/experiments.md, print its answer, and say which of the doc's answers no longer
    match (each stands between <!-- answer N --> and <!-- end -->); with write, put the new ones in the doc."""
    doc, stale = read(ROOT, "docs/experiments.md"), []
    for number, commands in experiment_commands(doc).items():
        output = ""
        for cmd in commands:
            print(f"$ {cmd}", flush=True)
            run = subprocess.run([sys.executable] + shlex.split(cmd)[1:], cwd=ROOT, capture_output=True, text=True)
            if run.returncode != 0:  # its own one line says why
                last = run.stderr.strip().splitlines()[-1:] or [""]
                raise ExerciseError(f"experiment {number}: {cmd} failed (exit status {run.returncode}): {last[0]}")
            output = run.stdout
        new = answer(number, commands, output)
        old = re.search(rf"<!-- answer {number} -->\n(.*?)<!-- end -->", doc, re.S)
        print(new)
        if old is None or old.group(1).strip() != new:
            stale.append(number)
            doc = doc.replace(old.group(0), f"<!-- answer {number} -->\n{new}\n<!-- end -->") if old else doc
    env = json.load(open(os.path.join(ROOT, "out/exp1/both/results.json"), encoding="utf-8"))["environment"]
    print(f"ran on {env['cpu']}, {env['threads']} thread(s), torch {env['torch']}, python {env['python']}\n"
          f"answers that no longer match docs/experiments.md: {stale or 'none'}")
    if write and stale:
        with open(os.path.join(ROOT, "docs", "experiments.md"), "w", encoding="utf-8") as f:
            f.write(doc)
    return 1 if stale and not write else 0


def error_line(message):  # as model.error_line, which this tool does not import (it would load torch)
    return "error: " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def command(args):
    if args.command == "list":
        return list_exercises()
    if args.command == "handout":
        return handout(args.names, args.out)
    if args.command == "grade":
        return grade_handout(args.folder, args.names, args.timeout)
    if args.command == "experiments":
        return experiments(args.write)
    missing = [f for f in dict.fromkeys(t.split("::")[0] for t in exercise_named(args.name).tests)
               if not os.path.isfile(os.path.join(ROOT, f))]
    if missing:  # a tests/ removed, or its files: nothing to grade with
        raise ExerciseError(f"{os.path.join(ROOT, missing[0])}: no such file; the graders are in a handout's tests/ "
                            "(a fresh handout has them)")
    return grade(lambda name: contextlib.nullcontext(ROOT), [args.name], args.timeout)


class Parser(argparse.ArgumentParser):  # as engine.Parser: a bad command line, a flag given twice too, is one line
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, Once)

    def parse_known_args(self, args=None, namespace=None):
        self.given = set()  # the flags Once has stored
        return super().parse_known_args(args, namespace)

    def error(self, message):
        raise ExerciseError(f"{message} (see python {self.prog.split()[0]} --help)")


class Once(argparse.Action):  # as engine.Once
    def __call__(self, parser, namespace, values, option_string=None):
        if option_string and self.dest in parser.given:
            parser.error(f"{option_string} is given twice")
        parser.given.add(self.dest)
        setattr(namespace, self.dest, values)


def seconds(text):  # an argparse type: ASCII digits, as every command of the project reads a number
    if not (text.isascii() and text.isdigit() and len(text.lstrip("0")) < 6 and 0 < int(text) <= 86400):
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 1 to 86400 (a day), got {text!r}")
    return int(text)


def main(argv=None):
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("list", help="the exercises, by level")
    hand = commands.add_parser("handout", help="write a student's copy with the exercises' functions blanked")
    hand.add_argument("names", nargs="+", metavar="NAME")
    hand.add_argument("--out", required=True, help="the new folder")
    g = commands.add_parser("grade", help="the graders of a handed-in copy, with this project's tests")
    g.add_argument("folder")
    g.add_argument("names", nargs="*", metavar="NAME",
                   help="default: the exercises its exercises.json lists (a file the student can edit)")
    c = commands.add_parser("check", help="the graders of an exercise, in this tree")
    c.add_argument("name")
    for p in (g, c):
        p.add_argument("--timeout", type=seconds, default=600,
                       help="seconds the graders of one exercise may run (default: 600; at most a day)")
    e = commands.add_parser("experiments", help="run docs/experiments.md's commands one after another and compare "
                            "its tables (about 20 minutes on one thread)")
    e.add_argument("--write", action="store_true", help="put the new tables into docs/experiments.md")
    try:
        args = parser.parse_args(argv)
        status = command(args)
        sys.stdout.flush()  # here, so that a reader gone (| head) is seen below, not at exit
        return status
    except BrokenPipeError:  # stdout's reader stopped reading: no mistake of the user, and nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ExerciseError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM or SIGHUP (below): the graders' process and copies went already
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a folder that cannot be read or written; shutil.Error: (source, target, why) per file
        source, _, why = e.args[0][0] if isinstance(e, shutil.Error) else (e.filename, None, e.strerror or e)
        print(error_line(f"{source}: {why}" if source else why), file=sys.stderr)
        return 2


if __name__ == "__main__":
    for stop in ("SIGTERM", "SIGHUP"):  # as Ctrl-C: the graders' process and the copies go with this one
        if hasattr(signal, stop):
            signal.signal(getattr(signal, stop), signal.default_int_handler)
    sys.exit(main())
