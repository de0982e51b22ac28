"""exercise.py against what its commands promise, each check on a temporary copy of the project: `start`
makes every grading test of every exercise fail with that exercise's NotImplementedError and `restore` gives
every file back byte for byte; start keeps signatures and docstrings (checked with ast and byte for byte) and
refuses what it cannot do without changing anything; the command line end to end. The copies hold the
project's *.py files and tests/, nothing else. Run: python -m pytest -q tests/test_exercises.py"""

import ast
import copy
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest

import exercise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = [ex.name for ex in exercise.EXERCISES]
# the pytest processes started here load no third-party plugins: the project needs none, and loading those
# that a machine happens to have installed can take longer than the tests themselves
ENV = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")


def copy_project(dst):
    """The project's *.py files and tests/ (no .git, no data, no caches) in a new folder dst."""
    os.makedirs(dst)
    for name in os.listdir(ROOT):
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, name), dst)
    shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(dst, "tests"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return str(dst)


def snapshot(root):
    """{relative path: bytes} of every file under root (bytecode caches aside)."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                files[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return files


def changed(before, after):
    return sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path))


def cli(repo, *args, env=ENV):
    """The copy's exercise.py, run from the folder above the copy: paths must not depend on the caller's folder."""
    return subprocess.run([sys.executable, os.path.join(repo, "exercise.py"), *args], cwd=os.path.dirname(repo),
                          capture_output=True, text=True, env=env)


def find(tree, qualname):
    """The def of `function` or `Class.method` at the top level of a module (or of its class)."""
    node = tree
    for part in qualname.split("."):
        node = next(n for n in node.body if getattr(n, "name", None) == part)
    return node


# -----------------------------------------------------------------------------
# (a) start makes every grading test fail; restore gives back every byte


def run_grading_tests(repo, node_ids, report):
    """[(classname, name, [(tag, message) of its failures and errors])] for each test case pytest ran."""
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                    *node_ids], cwd=repo, capture_output=True, env=ENV)
    if not os.path.exists(report):
        return []
    return [(case.get("classname"), case.get("name"),
             [(p.tag, p.get("message") or "") for p in case if p.tag in ("failure", "error")])
            for case in ET.parse(report).iter("testcase")]


def cases_of(node_id, cases):
    """The test cases of one node id: "tests/test_a.py::test_b" is classname tests.test_a, name test_b[...]."""
    path, *names = node_id.split("::")
    classname = ".".join([path[:-len(".py")].replace("/", ".")] + names[:-1])
    return [c for c in cases if c[0] == classname and re.fullmatch(re.escape(names[-1]) + r"(\[.*\])?", c[1])]


def start_and_grade(name, tmp):
    repo = copy_project(tmp / "repo")
    before = snapshot(repo)
    started = cli(repo, "start", name)
    cases = run_grading_tests(repo, exercise.exercise_named(name).tests, tmp / "report.xml")
    return repo, before, started, cases


@pytest.fixture(scope="module")
def blanked(request, tmp_path_factory):
    """name -> a future of start_and_grade(name), for each exercise that this session's selection tests.

    Each pytest process spends most of its few seconds importing torch, so the copies run side by side,
    one per core.
    """
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_start_fails_every_grading_test"]
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    yield {name: pool.submit(start_and_grade, name, tmp_path_factory.mktemp(name)) for name in names}
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("name", NAMES)
def test_start_fails_every_grading_test(name, blanked):
    repo, before, started, cases = blanked[name].result()
    assert started.returncode == 0, started.stderr
    for node_id in exercise.exercise_named(name).tests:
        assert cases_of(node_id, cases), f"pytest ran nothing for {node_id}; it ran {cases}"
        for _, test, problems in cases_of(node_id, cases):
            assert any(tag == "failure" and f"NotImplementedError: exercise {name}" in message
                       for tag, message in problems), f"{test} did not fail on the blank: {problems or 'passed'}"
    restored = cli(repo, "restore", name)
    assert restored.returncode == 0, restored.stderr
    assert changed(before, snapshot(repo)) == []


# -----------------------------------------------------------------------------
# (b) the command line, end to end


def test_command_line_start_check_restore(tmp_path):
    repo = copy_project(tmp_path / "repo")
    helped = cli(repo, "--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("list", "start", "check", "restore"))
    assert cli(repo, "start", "info-nce").returncode == 0
    assert re.search(r"info-nce +started", cli(repo, "list").stdout)

    checked = cli(repo, "check", "info-nce")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    failed = [line for line in checked.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 2 and all("NotImplementedError: exercise info-nce" in line for line in failed), failed
    assert "test_info_nce_equals_naive_loop" in failed[0] and "0 of 2 pass" in checked.stdout

    assert cli(repo, "restore", "info-nce").returncode == 0
    checked = cli(repo, "check", "info-nce")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"^passed +test_duplicate_targets_are_not_negatives$", checked.stdout, re.M)
    assert "2 of 2 tests pass: exercise done" in checked.stdout
    assert not re.search(r"info-nce +started", cli(repo, "list").stdout)


# -----------------------------------------------------------------------------
# (c) start keeps decorators, signatures and docstrings; refusals change nothing


@pytest.mark.parametrize("name", NAMES)
def test_start_keeps_signatures_and_docstrings_and_refuses_twice(name, tmp_path):
    repo = copy_project(tmp_path / "repo")
    original = snapshot(repo)
    assert cli(repo, "start", name).returncode == 0
    started = snapshot(repo)
    raise_line = f'raise NotImplementedError("exercise {name}: see docs/exercises.md#{name}")'
    for where in exercise.exercise_named(name).functions:
        file, qualname = where.split(":")
        old_text, new_text = original[file].decode(), started[file].decode()
        old, new = find(ast.parse(old_text), qualname), find(ast.parse(new_text), qualname)
        # by ast: the same signature and docstring, and the body after the docstring is one raise
        old_head, new_head = copy.copy(old), copy.copy(new)   # name, decorators, arguments, annotations
        old_head.body = new_head.body = []
        assert ast.dump(new_head) == ast.dump(old_head), where
        docstring = ast.get_docstring(old, clean=False)
        assert ast.get_docstring(new, clean=False) == docstring, where
        assert len(new.body) == 1 + (docstring is not None), where
        assert ast.dump(new.body[-1]) == ast.dump(ast.parse(raise_line).body[0]), where
    # byte for byte: each file is its original with, for each function (the last first, so that line numbers
    # stay valid), the lines after the docstring up to the function's end replaced by the one raise line
    by_file = {}
    for where in exercise.exercise_named(name).functions:
        file, qualname = where.split(":")
        by_file.setdefault(file, []).append(find(ast.parse(original[file].decode()), qualname))
    for file, nodes in by_file.items():
        lines = original[file].decode().split("\n")
        for node in sorted(nodes, key=lambda n: -n.lineno):
            has_doc = ast.get_docstring(node, clean=False) is not None
            first = node.body[0].end_lineno if has_doc else node.body[0].lineno - 1
            indent = lines[node.body[-1].lineno - 1][:node.body[-1].col_offset]
            lines[first:node.end_lineno] = [indent + raise_line]
        assert started[file].decode() == "\n".join(lines), file
    assert changed(original, started) == sorted({f.split(":")[0] for f in exercise.exercise_named(name).functions}
                                                | {os.path.join(".exercises", name + ".json")})

    again = cli(repo, "start", name)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
    assert changed(started, snapshot(repo)) == []


def test_refusals_change_nothing(tmp_path):
    repo = copy_project(tmp_path / "repo")
    original = snapshot(repo)
    unknown = cli(repo, "start", "no-such-exercise")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: ") and unknown.stderr.count("\n") == 1
    # a function that is not in its file any more: the exercise cannot start, and nothing is written
    ex = exercise.EXERCISES[0]
    file, qualname = ex.functions[0].split(":")
    name = qualname.split(".")[-1]
    path = os.path.join(repo, file)
    with open(path, encoding="utf-8") as f:
        text = re.sub(rf"\bdef {name}\(", f"def {name}_renamed(", f.read())
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    renamed = snapshot(repo)
    assert changed(original, renamed) == [file]
    missing = cli(repo, "start", ex.name)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    assert changed(renamed, snapshot(repo)) == []


def test_restore_without_saved_copy_takes_git_head(tmp_path):
    repo = copy_project(tmp_path / "repo")
    original = snapshot(repo)
    ex = exercise.EXERCISES[0]
    assert cli(repo, "start", ex.name).returncode == 0
    shutil.rmtree(os.path.join(repo, ".exercises"))                    # the saved copy is lost
    started = snapshot(repo)
    no_git = dict(ENV, GIT_CEILING_DIRECTORIES=str(tmp_path))  # the copy is in no git repository
    refused = cli(repo, "restore", ex.name, env=no_git)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    assert changed(started, snapshot(repo)) == []
    if shutil.which("git") is None:
        pytest.skip("no git on this machine")
    # commit the reference code, with the exercise's functions blanked no more
    for file in {f.split(":")[0] for f in ex.functions}:
        with open(os.path.join(repo, file), "wb") as f:
            f.write(original[file])
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "core.autocrlf=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "reference"]):
        subprocess.run(git + command, cwd=repo, check=True, capture_output=True)
    assert cli(repo, "start", ex.name).returncode == 0
    shutil.rmtree(os.path.join(repo, ".exercises"))
    restored = cli(repo, "restore", ex.name)
    assert restored.returncode == 0, restored.stderr
    after = snapshot(repo)
    assert changed(original, {p: b for p, b in after.items() if not p.startswith(".git" + os.sep)}) == []


# -----------------------------------------------------------------------------
# finding and blanking a function, on hand-made source: methods, multi-line signatures, decorators, CRLF

DEMO = '''\
import functools


def area(w, h):
    """Module level; a method below has the same name."""
    return w * h


class Box:
    """A class."""

    @functools.lru_cache(maxsize=None)
    @staticmethod
    def area(
        w: int = 2,
        h: "dict[str, int]" = {"a": 1},
        key=lambda x: x,
    ) -> int:
        """The method.

        Two paragraphs.
        """
        def inner(): return 1   # a nested def
        return w * h + inner()

    async def fetch(self, url):
        # no docstring
        return url
'''
RAISE = 'raise NotImplementedError("exercise demo: see docs")'
BLANKED = {  # what start should make of each function of DEMO, written out by hand
    "area": DEMO.replace('    return w * h\n', f'    {RAISE}\n'),
    "Box.area": DEMO.replace('        def inner(): return 1   # a nested def\n        return w * h + inner()\n',
                             f'        {RAISE}\n'),
    "Box.fetch": DEMO.replace('        # no docstring\n        return url\n', f'        {RAISE}\n'),
}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("qualname", list(BLANKED))
def test_blank_and_replace_on_hand_made_source(qualname, newline):
    source, expected = DEMO.replace("\n", newline), BLANKED[qualname].replace("\n", newline)
    assert expected != source
    where = "demo.py:" + qualname
    blanked = exercise.blank(source, qualname, where, "exercise demo: see docs")
    assert blanked == expected
    original = exercise.function_text(source, qualname, where)
    assert exercise.replace_def(blanked, qualname, where, original) == source


def test_one_line_functions_and_missing_names_are_refused():
    with pytest.raises(exercise.ExerciseError):
        exercise.blank("def f(x): return x\n", "f", "demo.py:f", "exercise demo")
    with pytest.raises(exercise.ExerciseError):
        exercise.blank(DEMO, "Box.volume", "demo.py:Box.volume", "exercise demo")
    with pytest.raises(exercise.ExerciseError):
        exercise.blank(DEMO, "Box", "demo.py:Box", "exercise demo")  # a class is no function


# -----------------------------------------------------------------------------
# the registry, as a teacher may edit it


def test_registry_is_well_formed():
    assert len(set(NAMES)) == len(NAMES)
    for ex in exercise.EXERCISES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", ex.name), ex.name
        assert ex.level in (1, 2, 3) and ex.title and "\n" not in ex.title, ex.name
        assert ex.functions and ex.tests, ex.name
        for where in ex.functions:
            assert re.fullmatch(r"[\w/]+\.py:\w+(\.\w+)?", where), where
            assert os.path.isfile(os.path.join(ROOT, where.split(":")[0])), where
        for node_id in ex.tests:
            assert re.fullmatch(r"tests/\w+\.py(::\w+)+(\[.+\])?", node_id), node_id
            assert os.path.isfile(os.path.join(ROOT, node_id.split("::")[0])), node_id
