"""Exercises: blank a function of the project, let a student write it again, grade it with the project's tests.

    python exercise.py list                 # the exercises by level, and which ones are started
    python exercise.py start info-nce       # replace the exercise's function bodies by a raise
    python exercise.py check info-nce       # run exactly the tests that grade it, one line per test
    python exercise.py restore info-nce     # put the reference code back

`start` keeps each function's decorators, signature and docstring byte for byte, replaces the rest of its
body by `raise NotImplementedError(...)`, and first saves the original text in .exercises/NAME.json
(git-ignored); `restore` puts that text back (without a saved copy: the function as committed at git's
HEAD). Only the standard library, and the project is never imported: the commands work while a student's
model.py is half written. Paths are relative to this file, so it runs from any folder.
"""

import argparse
import ast
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import tokenize
import xml.etree.ElementTree as ET
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.abspath(__file__))  # the project: every path below is relative to it
SAVED = os.path.join(ROOT, ".exercises")           # the original text of each started exercise


# -----------------------------------------------------------------------------
# 1. the exercises (a teacher edits this list)


@dataclass(frozen=True)
class Exercise:
    name: str        # short and kebab-case: what the student types
    level: int       # 1, 2 or 3
    title: str       # one line
    functions: list  # what the student writes: "file.py:function" or "file.py:Class.method"
    tests: list      # the pytest node ids that grade it (a parametrised test counts once per case)


M, C = "tests/test_model.py::", "tests/test_calrec.py::"          # the graders' files, shortened below
Q, D = "tests/test_maml_core.py::", "tests/test_maml_metrics.py::"
EXERCISES = [
    # --- level 1: one idea, a few lines (about 20-30 minutes each)
    Exercise(name="layer-norm", level=1,
             title="LayerNorm written out: normalise each position to mean 0, variance 1, then scale and shift",
             functions=["model.py:LayerNorm.forward"],
             tests=[M + "test_layer_norm_equals_torch",
                    M + "test_second_order_through_vmap_equals_a_loop_over_tasks"]),
    Exercise(name="attention", level=1,
             title="Attention written out, and the mask of a padded causal batch",
             functions=["model.py:manual_attention", "model.py:attention_mask_4d"],
             tests=[M + "test_sdpa_equals_manual_attention", M + "test_attention_mask_by_hand",
                    M + "test_padded_rows_equal_unpadded"]),
    Exercise(name="pooling", level=1,
             title="Mean pooling over a span, and the last real token of a right-padded row",
             functions=["model.py:mean_pool", "model.py:last_token_pool"],
             tests=[M + "test_pooling_by_hand"]),
    Exercise(name="ranking-metrics", level=1,
             title="Full-catalog ranks (history excluded, ties against the target), Recall and NDCG",
             functions=["evaluation.py:ranks_from_scores", "evaluation.py:rank_metrics"],
             tests=[C + "test_metrics_on_hand_made_ranks",
                    C + "test_ranks_exclude_history_and_count_ties_against_the_target"]),
    Exercise(name="glue-metrics", level=1,
             title="GLUE's metrics: Matthews correlation, Pearson, Spearman with tied ranks",
             functions=["evaluation.py:mcc", "evaluation.py:pearson", "evaluation.py:average_ranks"],
             tests=[D + "test_accuracy_f1_mcc_by_hand", D + "test_pearson_by_hand",
                    D + "test_spearman_with_ties_by_hand", D + "test_degenerate_cases"]),
    Exercise(name="task-sampling", level=1,
             title="Which auxiliary task a meta-batch slot draws: uniform, proportional to size, mixed",
             functions=["maml.py:task_probabilities"],
             tests=[Q + "test_task_samplers"]),
    # --- level 2: a paper's equation, as a batched tensor program (about 45 minutes each)
    Exercise(name="info-nce", level=2,
             title="InfoNCE with in-batch negatives, keys of the same item masked out, CLIP-shaped",
             functions=["calrec.py:info_nce"],
             tests=[C + "test_info_nce_equals_naive_loop", C + "test_duplicate_targets_are_not_negatives"]),
    Exercise(name="calrec-loss", level=2,
             title="CALRec's mixture L = (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT",
             functions=["calrec.py:calrec_loss"],
             tests=[C + "test_loss_mixture_by_hand"]),
    Exercise(name="prefix-pooling", level=2,
             title="The user tower at every item boundary: running means of the hidden states",
             functions=["calrec.py:user_vectors", "calrec.py:target_vectors"],
             tests=[C + "test_user_and_target_vectors_are_means_over_their_spans"]),
    Exercise(name="bm25", level=2,
             title="Lucene's BM25 as a sparse matrix, and queries scored by one product",
             functions=["calrec.py:BM25.__init__", "calrec.py:BM25.scores"],
             tests=[C + "test_bm25_matches_hand_computed_scores"]),
    Exercise(name="round-robin", level=2,
             title="Merge the beams' BM25 lists into one ranking, round by round",
             functions=["calrec.py:merge_round_robin"],
             tests=[C + "test_merge_round_robin_on_hand_made_lists"]),
    Exercise(name="baselines", level=2,
             title="The anchors every recommender must beat: a first-order Markov chain, the last item's text",
             functions=["evaluation.py:rank_markov", "evaluation.py:rank_last_item_bm25"],
             tests=[C + "test_markov_and_last_item_baselines_by_hand"]),
    Exercise(name="kv-cache", level=2,
             title="The KV cache step: write the new keys and values in place, attend over all so far",
             functions=["model.py:KVCache.extend"],
             tests=[M + "test_greedy_batched_equals_one_at_a_time_and_cache_equals_no_cache",
                    M + "test_cached_logits_equal_full_forward"]),
    Exercise(name="inner-loop", level=2,
             title="MAML's inner loop: k steps of gradient descent with torch.func.grad",
             functions=["maml.py:adapt"],
             tests=[Q + "test_one_dimensional_hand_check", Q + "test_least_squares_closed_form"]),
    Exercise(name="reptile", level=2,
             title="Reptile's direction: the mean of where each task's inner loop moved",
             functions=["maml.py:reptile_direction"],
             tests=[Q + "test_reptile_one_step_is_one_sgd_step"]),
    # --- level 3: an algorithm with its bookkeeping (an hour or two each)
    Exercise(name="beam-search", level=3,
             title="Batched beam search with finished beams and a shared prompt cache",
             functions=["model.py:GPT.beam_search"],
             tests=[M + "test_beam_search_is_exact_when_the_beam_holds_every_prefix",
                    M + "test_beam_search_batched_equals_single_and_cached_equals_uncached"]),
    Exercise(name="catalog-trie", level=3,
             title="Constrained decoding: a prefix tree of the catalog that only lets beams write real items",
             functions=["calrec_extras.py:CatalogTrie.__init__", "calrec_extras.py:CatalogTrie.node",
                        "calrec_extras.py:CatalogTrie.__call__"],
             tests=[C + "test_catalog_beams_are_exactly_the_best_catalog_items"]),
    Exercise(name="meta-gradient", level=3,
             title="First- and second-order meta-gradients, task by task, with autograd.grad(create_graph=...)",
             functions=["maml.py:meta_loss_loop"],
             tests=[Q + "test_vmap_equals_loop_float64", Q + "test_least_squares_closed_form",
                    Q + "test_one_dimensional_hand_check"]),
    Exercise(name="vmap-tasks", level=3,
             title="Every task of a meta-batch at once: vmap over adapt, then the query loss",
             functions=["maml.py:meta_loss_vmap"],
             tests=[Q + "test_maml_equals_fomaml_when_inner_lr_is_zero", Q + "test_finite_differences_tanh_mlp",
                    Q + "test_vmap_equals_loop_float64"]),
]


class ExerciseError(Exception):
    """A mistake of the user (an unknown name, an exercise started twice, ...): one line, exit status 2."""


def exercise_named(name):
    for ex in EXERCISES:
        if ex.name == name:
            return ex
    raise ExerciseError(f"no exercise named {name!r} (python exercise.py list shows them)")


def saved_path(ex):
    return os.path.join(SAVED, ex.name + ".json")


def is_started(ex):
    return os.path.exists(saved_path(ex))


# -----------------------------------------------------------------------------
# 2. finding a function in a source file with ast, and rewriting its lines


def read(file):
    """The text of a project file, line endings untouched (newline=""), so that a rewrite is byte-exact."""
    try:
        with open(os.path.join(ROOT, file), encoding="utf-8", newline="") as f:
            return f.read()
    except OSError as e:
        raise ExerciseError(f"cannot read {file}: {e.strerror}") from None


def write(file, text):
    with open(os.path.join(ROOT, file), "w", encoding="utf-8", newline="") as f:
        f.write(text)


def lines_of(text):
    """The lines of `text` with their endings; like ast, only \\n, \\r\\n and \\r end a line."""
    return io.StringIO(text, newline="").readlines()


def find_def(source, qualname, where):
    """The ast node of `function` or `Class.method` defined at the top level of the module (of the class)."""
    try:
        node = ast.parse(source)
    except SyntaxError as e:
        file = where.partition(":")[0]
        raise ExerciseError(f"cannot parse {file}, line {e.lineno}: {e.msg} (fix it first)") from None
    for part in qualname.split("."):
        found = [n for n in node.body if getattr(n, "name", None) == part
                 and isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        if len(found) != 1:
            raise ExerciseError(f"cannot find {where}: {len(found) or 'no'} definitions of {part}")
        node = found[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ExerciseError(f"{where} is a class, not a function")
    return node


def span(node):
    """First and last line (1-based, inclusive) of a def, decorators included."""
    return min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno


def function_text(source, qualname, where):
    first, last = span(find_def(source, qualname, where))
    return "".join(lines_of(source)[first - 1:last])


def replace_def(source, qualname, where, text):
    """`source` with the whole text of the function (decorators to last line) replaced by `text`."""
    first, last = span(find_def(source, qualname, where))
    lines = lines_of(source)
    return "".join(lines[:first - 1]) + text + "".join(lines[last:])


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

    Decorators, signature and docstring are kept byte for byte, and so is every line outside the function.
    """
    node = find_def(source, qualname, where)
    lines = lines_of(source)
    head = signature_end(lines, node)  # the last line kept: the signature's, or the docstring's (below)
    if node.body[0].lineno == head:
        raise ExerciseError(f"cannot blank {where}: its body starts on the line of its signature")
    indent = re.match(r"[ \t]*", lines[node.body[0].lineno - 1]).group()
    rest = node.body                    # the statements that the raise replaces
    if ast.get_docstring(node, clean=False) is not None:
        head, rest = node.body[0].end_lineno, node.body[1:]
    if rest and rest[0].lineno <= head:
        raise ExerciseError(f"cannot blank {where}: its code starts on the line where its docstring ends")
    newline = re.search(r"\r\n|\r|\n|$", source).group() or "\n"  # the file's own line ending
    kept = "".join(lines[:head])
    if not kept.endswith(("\n", "\r")):  # a function with only a docstring, on the file's last line
        kept += newline
    return kept + f'{indent}raise NotImplementedError("{message}"){newline}' + "".join(lines[node.end_lineno:])


def committed_text(where):
    """The function's text as committed at git's HEAD: restore's fallback when there is no saved copy."""
    file, _, qualname = where.partition(":")
    try:
        run = subprocess.run(["git", "show", f"HEAD:./{file}"], cwd=ROOT, capture_output=True, check=True)
    except OSError as e:
        raise ExerciseError(f"no saved copy in .exercises/ and no git to ask ({e.strerror})") from None
    except subprocess.CalledProcessError as e:
        why = "".join(e.stderr.decode(errors="replace").strip().splitlines()[:1])
        raise ExerciseError(f"no saved copy in .exercises/ and git cannot show HEAD:{file} ({why})") from None
    return function_text(run.stdout.decode("utf-8"), qualname, where + " at git HEAD")


# -----------------------------------------------------------------------------
# 3. the commands


def list_exercises():
    width = max(len(ex.name) for ex in EXERCISES)
    for level in sorted({ex.level for ex in EXERCISES}):
        print(f"level {level}")
        for ex in (ex for ex in EXERCISES if ex.level == level):
            status = "started" if is_started(ex) else "not started"
            print(f"  {ex.name:<{width}}  {status:<11}  {ex.title}")
            print(f"  {'':<{width}}  {'':<11}  write {', '.join(ex.functions)}")
    return 0


def start(ex):
    if is_started(ex):
        raise ExerciseError(f"exercise {ex.name} is already started (restore puts the reference code back)")
    for other in EXERCISES:
        shared = set(other.functions) & set(ex.functions)
        if other is not ex and shared and is_started(other):
            raise ExerciseError(f"exercise {other.name} also blanks {shared.pop()} and is started: restore it")
    # everything is computed in memory first, so that a refusal changes nothing
    message = f"exercise {ex.name}: see docs/exercises.md#{ex.name}"
    sources, originals = {}, {}
    for where in ex.functions:
        file, _, qualname = where.partition(":")
        if file not in sources:
            sources[file] = read(file)
        originals[where] = function_text(sources[file], qualname, where)
        sources[file] = blank(sources[file], qualname, where, message)
    os.makedirs(SAVED, exist_ok=True)
    with open(saved_path(ex), "w", encoding="utf-8") as f:  # saved before any file changes
        json.dump({"exercise": ex.name, "functions": originals}, f, indent=1)
    for file, text in sources.items():
        write(file, text)
    print(f"started {ex.name}: write {', '.join(ex.functions)}; then python exercise.py check {ex.name}")
    return 0


def restore(ex):
    if is_started(ex):
        with open(saved_path(ex), encoding="utf-8") as f:
            originals = json.load(f)["functions"]
    else:
        originals = {where: committed_text(where) for where in ex.functions}
        print(f"no saved copy of {ex.name}: restoring the functions as committed at git's HEAD")
    sources = {}
    for where, text in originals.items():
        file, _, qualname = where.partition(":")
        if file not in sources:
            sources[file] = read(file)
        sources[file] = replace_def(sources[file], qualname, where, text)
    for file, text in sources.items():
        write(file, text)
    if is_started(ex):
        os.remove(saved_path(ex))
    if os.path.isdir(SAVED) and not os.listdir(SAVED):
        os.rmdir(SAVED)
    print(f"restored {', '.join(originals)}")
    return 0


def read_report(report):
    """[(test name, outcome, one-line reason)] from pytest's junit xml report; outcome: passed, FAILED, skipped."""
    results = []
    for case in ET.parse(report).iter("testcase"):
        outcome, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            problem = case.find(tag)
            if problem is not None:
                outcome = "skipped" if tag == "skipped" else "FAILED"
                reason = (problem.get("message") or tag).strip().split("\n")[0]
                if tag == "error":  # collection or fixture: the message is generic, the error ends the traceback
                    e_lines = [line[1:].strip() for line in (problem.text or "").splitlines()
                               if line.startswith("E ")]
                    reason = e_lines[-1] if e_lines else reason
                reason = reason[:200]
                break
        results.append((case.get("name"), outcome, reason))
    return results


def check(ex):
    if not is_started(ex):
        print(f"(exercise {ex.name} is not started: this checks the reference code)")
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.xml")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                   *ex.tests]
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        results = read_report(report) if os.path.exists(report) else []
    if not results:
        print((run.stdout + run.stderr)[-3000:], end="")
        print(f"pytest ran none of the tests of {ex.name} (exit status {run.returncode})")
        return 1
    for name, outcome, reason in results:
        print(f"{outcome:<6}  {name}" + (f": {reason}" if reason else ""))
    n_pass = sum(outcome == "passed" for _, outcome, _ in results)
    if n_pass == len(results) and run.returncode == 0:
        print(f"{n_pass} of {len(results)} tests pass: exercise done")
        return 0
    print(f"{n_pass} of {len(results)} pass; the tracebacks: python -m pytest {' '.join(ex.tests)}")
    return 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("list", help="the exercises by level, and which ones are started")
    for command, text in [("start", "blank the exercise's functions (after saving them)"),
                          ("check", "run the tests that grade the exercise"),
                          ("restore", "put the reference code back")]:
        commands.add_parser(command, help=text).add_argument("name", help="an exercise's name (see list)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return list_exercises()
        command = {"start": start, "check": check, "restore": restore}[args.command]
        return command(exercise_named(args.name))
    except ExerciseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
