"""exercise.py against what its commands promise: a handout holds no answer (no reference body, nor a near copy of
one); every exercise's graders fail on its blank and on each of its plausible wrong answers (tests/wrong_answers.py),
and pass without the functions a handout hides; handout, check and grade end to end. Run:
python -m pytest -q tests/test_exercises.py"""

import ast
import difflib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tokenize
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest

import exercise
from wrong_answers import WRONG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = [ex.name for ex in exercise.EXERCISES]
# the pytest processes started here load no third-party plugins: the project needs none
ENV = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(cwd or ROOT, "exercise.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=os.path.dirname(cwd or ROOT))


def source_of(where, text=None):
    """The text of a def (decorators to its last line) in its file, or in `text`, another version of the file."""
    file, _, qualname = where.partition(":")
    text = exercise.read(ROOT, file) if text is None else text
    node = exercise.find_def(text, qualname, where)
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return "".join(io.StringIO(text, newline="").readlines()[start - 1:node.end_lineno])


def blanked(where, name):
    """The def of `where` as a handout of exercise `name` has it."""
    file, _, qualname = where.partition(":")
    text = exercise.blank(exercise.read(ROOT, file), qualname, where, f"exercise {name}: see docs/exercises.md#{name}")
    return source_of(where, text)


def kept_lines(file, blanked_functions):
    """The lines of a project file outside every function a handout blanks."""
    text = exercise.read(ROOT, file)
    lines, drop = text.splitlines(), set()
    for where in (w for w in blanked_functions if w.startswith(file + ":")):
        node = exercise.find_def(text, where.partition(":")[2], where)
        drop.update(range(node.lineno - 1, node.end_lineno))
    return [line for i, line in enumerate(lines) if i not in drop]


def code_lines(where):
    """The lines of a def's body after its docstring."""
    file, _, qualname = where.partition(":")
    text = exercise.read(ROOT, file)
    node = exercise.find_def(text, qualname, where)
    body = node.body[1:] if ast.get_docstring(node, clean=False) is not None else node.body
    return text.splitlines()[body[0].lineno - 1:node.end_lineno] if body else []


# -----------------------------------------------------------------------------
# every exercise: its graders against its blank, its wrong answers and its hidden functions


def grade_variants(of_name, tmp):
    """{name: {variant index: [(test, passed)]}}: every grader of these exercises ({name: its variants}) run once
    per variant of its exercise, in one pytest process (tests/conftest.py); a wrong answer one grader failed counts
    as failed by the graders after it, which skip it. Whether each failed is all this needs: --tb=line, as writing
    out hundreds of tracebacks takes a good part of the time."""
    variants = {}  # node id -> [["EX=name=index", variant], ...]
    for name, its_variants in of_name.items():
        for test in exercise.exercise_named(name).tests:
            variants.setdefault(test, []).extend([f"EX={name}={i}", v] for i, v in enumerate(its_variants))
    path, report = tmp / "variants.json", tmp / "report.xml"
    path.write_text(json.dumps(variants), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line", f"--junitxml={report}",
                    *variants], cwd=ROOT, capture_output=True, env=dict(ENV, EXERCISE_VARIANTS=str(path)))
    out = {name: {} for name in of_name}
    for case in ET.parse(report).iter("testcase") if report.exists() else ():
        m = re.search(r"EX=([\w-]+)=(\d+)", case.get("name"))
        if m:
            failed = any(p.tag in ("failure", "error") or "caught by an earlier grader" in p.get("message", "")
                         for p in case)
            out[m.group(1)].setdefault(int(m.group(2)), []).append((case.get("name"), not failed))
    return out


def variants_of(name):
    """[hidden functions blanked, every function blanked, then each wrong answer]."""
    ex = exercise.exercise_named(name)
    return [{w: blanked(w, name) for w in ex.hide}, {w: blanked(w, name) for w in ex.functions}] + WRONG.get(name, [])


@pytest.fixture(scope="module")
def graded(request, tmp_path_factory):
    """name -> a future of its graded variants, for each exercise this session tests: one pytest process per core,
    each with a share of the exercises (a process spends seconds importing torch)."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_graders_catch_the_blank_and_every_wrong_answer"]
    cores = min(os.cpu_count() or 1, len(names)) or 1
    of_name = {name: variants_of(name) for name in names}  # here, not in the threads: ast.parse is not thread-safe
    pool = ThreadPoolExecutor(max_workers=cores)
    shares = [pool.submit(grade_variants, {n: of_name[n] for n in names[c::cores]},
                          tmp_path_factory.mktemp(f"share{c}")) for c in range(cores)]
    yield {name: shares[i % cores] for i, name in enumerate(names)}  # names[c::cores] went to shares[c]
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("name", NAMES)
def test_graders_catch_the_blank_and_every_wrong_answer(name, graded):
    results = graded[name].result()[name]
    n = len(variants_of(name))
    assert sorted(results) == list(range(n)), f"pytest ran {sorted(results)} of {n} variants"
    assert all(ok for _, ok in results[0]), f"the graders need a function the handout hides: {results[0]}"
    assert not any(ok for _, ok in results[1]), f"a grader passes on the blank: {results[1]}"
    missed = [i - 2 for i in range(2, n) if all(ok for _, ok in results[i])]
    assert not missed, f"wrong answers {missed} of tests/wrong_answers.py pass every grader of {name}"


def test_every_exercise_has_at_least_three_wrong_answers():
    assert set(WRONG) == set(NAMES)
    reference = {w: source_of(w).strip() for ex in exercise.EXERCISES for w in ex.functions}
    for name, answers in WRONG.items():
        assert len(answers) >= 3, name
        functions = exercise.exercise_named(name).functions
        for answer in answers:
            assert answer and set(answer) <= set(functions), (name, set(answer) - set(functions))
            for where, src in answer.items():
                assert re.search(rf"def {where.split('.')[-1].split(':')[-1]}\(", src), (name, where)
                assert src.strip() != reference[where], (name, where)  # not the reference itself


# -----------------------------------------------------------------------------
# a handout holds no answer


def body_tokens(node, text):
    """The tokens of a def's body after its docstring, comments and layout left out."""
    body = node.body[1:] if ast.get_docstring(node, clean=False) is not None else node.body
    if not body:
        return []
    src = "\n".join(text.splitlines()[body[0].lineno - 1:node.end_lineno])
    kinds = (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING)
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(src.strip()).readline) if t.type in kinds]
    except (tokenize.TokenError, IndentationError):
        return src.split()


def defs_of(root):
    """(path, name, body tokens) of every def in every .py file under root."""
    for folder, _, files in os.walk(root):
        for file in (f for f in files if f.endswith(".py")):
            text = open(os.path.join(folder, file), encoding="utf-8").read()
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield os.path.relpath(os.path.join(folder, file), root), node.name, body_tokens(node, text)


def test_a_handout_of_every_exercise_holds_no_reference_body_nor_a_near_copy(tmp_path):
    out = tmp_path / "hw"
    made = cli("handout", *NAMES, "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert not (out / ".git").exists() and not (out / ".exercises").exists()
    assert json.loads((out / "exercises.json").read_text()) == NAMES
    everything = "\n".join(open(os.path.join(f, n), encoding="utf-8", errors="replace").read()
                           for f, _, files in os.walk(out) for n in files)
    handed = list(defs_of(out))
    blanked_everywhere = {w for ex in exercise.EXERCISES for w in ex.functions + ex.hide}
    kept_code = "\n".join(line for file in ("model.py", "data.py", "engine.py", "evaluation.py", "calrec.py",
                                            "calrec_extras.py", "maml.py") for line in kept_lines(file, blanked_everywhere))
    references = {}
    for ex in exercise.EXERCISES:
        for where in ex.functions + ex.hide:
            file, _, qualname = where.partition(":")
            text = exercise.read(ROOT, file)
            references[where] = body_tokens(exercise.find_def(text, qualname, where), text)
            assert len(references[where]) > 8, where
            for line in code_lines(where):  # no long line of the reference's code, verbatim, anywhere ...
                code = line.split("#")[0].strip()  # ... but the boilerplate it shares with code a handout keeps
                assert len(code) < 50 or code not in everything or code in kept_code, f"{where}: {code}"
    for path, name, tokens in handed:
        matcher = difflib.SequenceMatcher(None, b=tokens, autojunk=False)  # what it learns of b serves every a
        for where, reference in references.items():
            matcher.set_seq1(reference)
            if matcher.quick_ratio() >= 0.7:  # a bound from above of ratio(), which takes far longer
                ratio = matcher.ratio()
                assert ratio < 0.7, f"{path}:{name} is a near copy ({ratio:.2f}) of the reference {where}"


def test_a_handout_holds_what_git_tracks_and_no_solutions_or_earlier_handout_kept_beside_it(tmp_path):
    project = tmp_path / "project"  # a clone of the committed project: the tracked files are the committed ones
    if subprocess.run(["git", "clone", "-q", ROOT, str(project)], capture_output=True).returncode:
        pytest.skip("the project is no git checkout here")
    shutil.copy(os.path.join(ROOT, "exercise.py"), project)  # the version under test
    (project / "solutions").mkdir()
    (project / "solutions" / "key.py").write_text("ANSWER = 42\n")
    assert cli("handout", "bm25", "--out", str(project / "hw1"), cwd=str(project)).returncode == 0
    made = cli("handout", "bm25", "--out", str(tmp_path / "hw2"), cwd=str(project))
    assert made.returncode == 0, made.stderr
    handed = {os.path.relpath(os.path.join(f, n), tmp_path / "hw2") for f, _, files in os.walk(tmp_path / "hw2")
              for n in files}
    assert "model.py" in handed and "tests/test_calrec.py" in handed
    assert not [p for p in handed if p.startswith(("solutions", "hw1"))], sorted(handed)


# -----------------------------------------------------------------------------
# the command line, end to end


def test_handout_check_grade_end_to_end(tmp_path):
    out = tmp_path / "hw"
    assert cli("handout", "info-nce", "round-robin", "--out", str(out)).returncode == 0
    checked = cli("check", "info-nce", cwd=str(out))  # the student, inside the handout
    assert checked.returncode == 1 and "info-nce: 0 of 2 graders pass" in checked.stdout, checked.stdout
    assert "NotImplementedError: exercise info-nce" in checked.stdout and sys.executable in checked.stdout
    # the student writes round-robin's function (here: the reference) and spoils a test of info-nce: the teacher's
    # grade counts the teacher's tests
    path = out / "calrec.py"
    text = path.read_text(encoding="utf-8")
    text = text.replace(blanked("calrec.py:merge_round_robin", "round-robin"), source_of("calrec.py:merge_round_robin"))
    path.write_text(text, encoding="utf-8")
    (out / "tests" / "test_calrec.py").write_text("def test_info_nce_equals_naive_loop():\n    pass\n")
    os.symlink(tmp_path / "nowhere", out / "notes.txt")  # a student's stray links: copied as links, not followed
    os.symlink(".", out / "loop")
    (out / "conftest.py").write_text(PASS_EVERYTHING)  # nor do the copy's own pytest hooks and settings count
    (out / "pytest.ini").write_text("[pytest]\naddopts = -p no:junitxml\n")
    graded = cli("grade", str(out))
    assert graded.returncode == 1, graded.stdout + graded.stderr
    assert "round-robin: 1 of 1 graders pass -- done" in graded.stdout
    assert "info-nce: 0 of 2 graders pass" in graded.stdout
    assert f"the tracebacks (with the tests/ it holds): cd {out} && {sys.executable} -m pytest " in graded.stdout
    hint = graded.stdout.split("the tracebacks")[1]  # the graders of info-nce, not those of round-robin, done
    assert "test_info_nce_equals_naive_loop" in hint and "test_merge_round_robin" not in hint, hint
    assert "the tracebacks: cd" not in checked.stdout  # check runs where the student is
    shutil.rmtree(out / "tests")  # a tree without its graders: nothing to check with, said in one line
    checked = cli("check", "info-nce", cwd=str(out))
    assert (checked.returncode, checked.stdout, checked.stderr) == (
        2, "", f"error: {out / 'tests' / 'test_calrec.py'}: no such file; the graders are in a handout's tests/ (a "
               "fresh handout has them)\n")


def test_grading_reads_the_handouts_code_whatever_pythonpath_and_pytest_addopts_say(tmp_path):
    """The teacher's copy on PYTHONPATH (a shell set up for the project) must not answer for a blank handout, and a
    PYTEST_ADDOPTS that deselects graders must not make the rest a pass."""
    out = tmp_path / "hw"
    assert cli("handout", "info-nce", "--out", str(out)).returncode == 0
    for extra in (dict(PYTHONPATH=ROOT), dict(PYTEST_ADDOPTS="-k test_info_nce_equals_naive_loop")):
        graded = subprocess.run([sys.executable, os.path.join(ROOT, "exercise.py"), "grade", str(out)],
                                capture_output=True, text=True, env=dict(ENV, **extra))
        assert graded.returncode == 1 and "info-nce: 0 of 2 graders pass" in graded.stdout, (extra, graded.stdout)


def test_a_link_that_leads_out_of_the_handed_in_folder_is_refused_and_one_within_it_is_graded(tmp_path):
    """A handed-in model.py that links to the teacher's (or anyone's) file would be graded as that file."""
    out, mine = tmp_path / "hw", tmp_path / "mine"
    assert cli("handout", "layer-norm", "--out", str(out)).returncode == 0
    mine.mkdir()
    shutil.copy(os.path.join(ROOT, "model.py"), mine / "model.py")  # the reference: the answer, if it were read
    # the last leads nowhere from hw, and to the teacher's model.py from the copy the graders run in (tmp/work/)
    for target in (os.path.join(ROOT, "model.py"), "../mine/model.py", "../work" + "/.." * 40 + f"{ROOT}/model.py"):
        os.remove(out / "model.py")
        os.symlink(target, out / "model.py")
        graded = cli("grade", str(out))
        assert (graded.returncode, graded.stdout) == (2, ""), graded.stdout
        assert graded.stderr == f"error: {out / 'model.py'}: a link to {target}, outside the handed-in folder; hand " \
                                "in the file itself\n"
    os.remove(out / "model.py")
    shutil.copy(mine / "model.py", out / "answer.py")
    os.symlink("answer.py", out / "model.py")  # within the folder: graded as what it names
    graded = cli("grade", str(out), "layer-norm")
    assert graded.returncode == 0 and re.search(r"layer-norm: (\d+) of \1 graders pass -- done", graded.stdout)


PASS_EVERYTHING = """import pytest
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    report.get_result().outcome = "passed"
"""


def test_graders_that_never_end_are_stopped_at_the_timeout(tmp_path):
    out = tmp_path / "hw"
    assert cli("handout", "round-robin", "--out", str(out)).returncode == 0
    path = out / "calrec.py"
    path.write_text(path.read_text(encoding="utf-8").replace(
        blanked("calrec.py:merge_round_robin", "round-robin"), "def merge_round_robin(*args, **kwargs):\n"
        "    while True:\n        pass\n"), encoding="utf-8")
    with open(path, "a", encoding="utf-8") as f:  # and a worker started at import, which would outlive the graders
        f.write("\nimport subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', "
                "'stray-7319'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n")
    graded = cli("grade", str(out), "--timeout", "5")
    assert graded.returncode == 1 and graded.stderr == "", graded.stderr  # a student's failing, not a tool's error
    assert "round-robin: 0 of 0 graders pass (the graders ran over 5 s and were stopped" in graded.stdout
    if os.path.isdir("/proc"):  # the graders' process group is stopped whole
        time.sleep(0.5)
        left = [pid for pid in os.listdir("/proc") if pid.isdigit() and b"stray-7319" in read_or_empty(pid)]
        assert not left, f"processes the student's code started are still running after grade: {left}"


def read_or_empty(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:  # ended meanwhile
        return b""


def test_one_exercise_whose_code_breaks_the_graders_costs_only_its_own_score(tmp_path):
    """Each exercise's graders run in a process of their own: a syntax error in calrec.py, or a call that ends the
    process, leaves pooling (model.py, graded by tests that never import calrec.py) scored as written."""
    out = tmp_path / "hw"
    assert cli("handout", "round-robin", "pooling", "--out", str(out)).returncode == 0
    model = out / "model.py"
    text = model.read_text(encoding="utf-8")
    for where in ("model.py:mean_pool", "model.py:last_token_pool"):  # pooling written: the reference
        text = text.replace(blanked(where, "pooling"), source_of(where))
    model.write_text(text, encoding="utf-8")
    path = out / "calrec.py"
    blank = path.read_text(encoding="utf-8")
    line = blank.count("\n") + 2  # of `def broken(:`, where the hand-in fails to import
    for spoilt, why in ((blank + "\ndef broken(:\n", f"none ran: calrec.py:{line}: SyntaxError: invalid syntax)"),
                        (blank.replace(blanked("calrec.py:merge_round_robin", "round-robin"),
                                       "def merge_round_robin(*args, **kwargs):\n    import os\n    os._exit(0)\n"),
                         "pytest ran none of the graders, exit status 0")):
        path.write_text(spoilt, encoding="utf-8")
        graded = cli("grade", str(out))
        assert graded.returncode == 1 and "pooling: 5 of 5 graders pass -- done" in graded.stdout, graded.stdout
        assert f"round-robin: 0 of 0 graders pass ({why}" in graded.stdout, graded.stdout


def test_a_hand_in_grades_no_other_exercise_and_changes_no_file_of_the_teacher_unseen(tmp_path):
    """The graders run the student's code with the teacher's rights. Each exercise is graded in a fresh copy, so a
    hand-in that rewrites the graders of the next exercise in the copy changes nothing; a hand-in that rewrites the
    teacher's own tests/ is refused in one line (here in a copy of the project: the teacher's). A KeyboardInterrupt of
    the hand-in's ends its own exercise only."""
    teacher, out = project_copy(tmp_path / "teacher"), tmp_path / "hw"
    made = subprocess.run([sys.executable, "exercise.py", "handout", "layer-norm", "round-robin", "--out", str(out)],
                          capture_output=True, text=True, env=ENV, cwd=teacher)
    assert made.returncode == 0, made.stderr
    blank_model, blank_calrec = (out / "model.py").read_text(encoding="utf-8"), (out / "calrec.py").read_text("utf-8")
    (out / "model.py").write_text(blank_model + "\nimport pathlib\nfor t in pathlib.Path('tests').glob('test_*.py'):"
                                  "\n    t.write_text('def test_merge_round_robin_on_hand_made_lists():\\n    pass\\n')"
                                  "\n", encoding="utf-8")  # the graders' folder is the copy's
    (out / "calrec.py").write_text(blank_calrec.replace(blanked("calrec.py:merge_round_robin", "round-robin"),
                                   "def merge_round_robin(*args, **kwargs):\n    raise KeyboardInterrupt\n"), "utf-8")
    graded = subprocess.run([sys.executable, "exercise.py", "grade", str(out)], capture_output=True, text=True,
                            env=ENV, cwd=teacher)
    assert graded.returncode == 1 and graded.stderr == "", graded.stderr
    assert "layer-norm: 0 of" in graded.stdout and "round-robin: 0 of 1 graders pass (the graders were interrupted " \
        "(a KeyboardInterrupt of the hand-in's?))" in graded.stdout, graded.stdout
    (out / "model.py").write_text(blank_model + f"\nimport os\nos.makedirs({str(teacher / 'tests' / '.pytest_cache')!r}"
                                  f", exist_ok=True)\nopen({str(teacher / 'tests' / '.test_calrec.py.swp')!r}, 'w')\n",
                                  encoding="utf-8")  # what pytest run there and an editor write: no false alarm
    graded = subprocess.run([sys.executable, "exercise.py", "grade", str(out), "layer-norm"], capture_output=True,
                            text=True, env=ENV, cwd=teacher)
    assert graded.returncode == 1 and "layer-norm: 0 of" in graded.stdout, graded.stderr
    before = (teacher / "tests" / "test_calrec.py").read_text(encoding="utf-8")
    for path, tamper in ((teacher / "tests" / "test_calrec.py", f"open({str(teacher / 'tests' / 'test_calrec.py')!r}, "
                          "'a').write('# changed')"),  # and a link to a folder, which the next copies would hold
                         (teacher / "tests" / "torch", f"os.symlink({str(tmp_path)!r}, "
                          f"{str(teacher / 'tests' / 'torch')!r})")):
        (out / "model.py").write_text(blank_model + f"\nimport os\n{tamper}\n", encoding="utf-8")
        graded = subprocess.run([sys.executable, "exercise.py", "grade", str(out)], capture_output=True, text=True,
                                env=ENV, cwd=teacher)
        assert graded.returncode == 2 and graded.stderr == (
            f"error: {path}: written, added or removed while the graders of layer-norm ran the code of {out} (by that "
            "code, or by you?); grade again once it is as it should be (git status), a hand-in you do not trust as "
            "another user or in a container\n"), graded.stderr
    assert (teacher / "tests" / "test_calrec.py").read_text(encoding="utf-8") == before + "# changed"


def test_graders_that_end_with_a_thread_left_or_write_past_the_cap(tmp_path, monkeypatch):
    """Graders that all ran, in a process that a hand-in's thread keeps alive, are scored from their report (with a
    note, GRACE seconds after it, not at the timeout); on Linux a write past WRITES bytes fails its grader (a print in a
    loop fills no disk)."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import threading, time\n\ndef test_thread():\n    threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "\n\ndef test_big(tmp_path):\n    (tmp_path / 'big').write_bytes(b'x' * 2_000_000)\n")
    results, note = exercise.run_graders(str(tmp_path), ["tests/test_x.py::test_thread"], timeout=600)
    assert results == {"tests/test_x.py::test_thread": (True, "")} and note == (
        "the graders ended, but their process did not (a thread of the hand-in's?), and was stopped")
    if sys.platform.startswith("linux"):
        monkeypatch.setattr(exercise, "WRITES", 1_000_000)
        results, note = exercise.run_graders(str(tmp_path), ["tests/test_x.py::test_big"], timeout=60)
        (ok, message), = results.values()
        assert not ok and "File too large" in message and note is None, (ok, message)


def test_a_report_there_at_the_timeout_is_read_and_none_is_a_refusal(tmp_path):
    class Stuck:  # a graders' process that never ends
        def wait(self, timeout):
            raise subprocess.TimeoutExpired("graders", timeout)
    report = tmp_path / "report.xml"
    with pytest.raises(exercise.ExerciseError, match="the graders ran over 0 s and were stopped"):
        exercise.ended(Stuck(), str(report), timeout=0)
    report.write_text("<testsuites/>")  # every grader has run, and a thread of the hand-in's keeps the process alive
    assert exercise.ended(Stuck(), str(report), timeout=0) == (
        "the graders ended, but their process did not (a thread of the hand-in's?), and was stopped")


def test_a_handout_puts_no_answer_on_disk_and_clears_what_a_killed_one_left(tmp_path, monkeypatch, capsys):
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not exercise.alive(pid))
    (tmp_path / f".hw.tmp{dead}").mkdir()  # a killed handout's, one of a pid past any, and one of a handout at work
    (tmp_path / f".hw.tmp{10 ** 30}").mkdir()
    (tmp_path / f".hw.tmp{os.getpid()}x").mkdir()
    copied = []
    copy_tree = exercise.copy_tree

    def watched(src, dst, **kwargs):
        copy_tree(src, dst, **kwargs)
        copied.append(sorted(os.listdir(dst)))
    monkeypatch.setattr(exercise, "copy_tree", watched)
    assert exercise.main(["handout", "layer-norm", "--out", str(tmp_path / "hw")]) == 0
    assert "model.py" not in copied[0] and "calrec.py" in copied[0]  # the file with answers is written blanked
    assert sorted(os.listdir(tmp_path)) == [f".hw.tmp{os.getpid()}x", "hw"]
    assert exercise.main(["handout", "layer-norm", "--out", str(tmp_path / "new" / "hw")]) == 0  # folders made
    assert os.listdir(tmp_path / "new") == ["hw"]
    monkeypatch.setattr(exercise, "command", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert exercise.main(["list"]) == 130 and capsys.readouterr().err == "interrupted\n"  # Ctrl-C: one line


def test_grade_names_only_the_exercises_of_the_handout(tmp_path):
    """An exercise the handout never blanked holds its answer: naming it is refused. A manifest that is no file (a
    named pipe, which would block the read) is refused too; a copy's own `tests` file is replaced, whatever it is."""
    out = tmp_path / "hw"
    assert cli("handout", "round-robin", "--out", str(out)).returncode == 0
    graded = cli("grade", str(out), "info-nce")
    assert graded.returncode == 2 and graded.stderr == (f"error: info-nce: not an exercise of this handout "
                                                       f"({out / 'exercises.json'} lists round-robin)\n")
    graded = cli("grade", str(out), "round-robin", "round-robin")
    scores = [line for line in graded.stdout.splitlines() if line.startswith("round-robin: ")]
    assert len(scores) == 1, graded.stdout  # named twice, graded once
    shutil.rmtree(out / "tests")
    (out / "tests").write_text("a student's notes\n")
    graded = cli("grade", str(out))
    assert graded.returncode == 1 and "round-robin: 0 of 1 graders pass" in graded.stdout, graded.stdout + graded.stderr
    (out / "exercises.json").write_bytes(b'\xef\xbb\xbf["round-robin"]\r\n')  # as Notepad saves it, a BOM first
    graded = cli("grade", str(out))
    assert graded.returncode == 1 and "round-robin: 0 of 1 graders pass" in graded.stdout, graded.stdout + graded.stderr
    os.remove(out / "exercises.json")
    os.mkfifo(out / "exercises.json")
    graded = subprocess.run([sys.executable, os.path.join(ROOT, "exercise.py"), "grade", str(out)], capture_output=True,
                            text=True, env=ENV, timeout=60)
    assert graded.returncode == 2 and "exercises.json: not a JSON list of exercise names" in graded.stderr
    os.remove(out / "exercises.json")
    (out / "exercises.json").write_text('["round-robin"]')
    os.mkfifo(out / "notes")  # in the tree: a named pipe (or a device, which would be read forever) is not copied
    graded = subprocess.run([sys.executable, os.path.join(ROOT, "exercise.py"), "grade", str(out)], capture_output=True,
                            text=True, env=ENV, timeout=60)
    assert graded.returncode == 2 and graded.stderr.count("\n") == 1, graded.stdout + graded.stderr
    assert "notes: not a regular file (a device, a named pipe, a socket?)" in graded.stderr, graded.stderr


def project_copy(where):
    """The project's tracked files in `where`, with no .git: as a user who downloaded an archive has it."""
    exercise.copy_tree(ROOT, str(where), only=exercise.tracked(ROOT))
    return where


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".git")), reason="the project is not a git checkout here")
def test_a_checkout_whose_tracked_files_git_cannot_list_is_not_handed_out_whole(tmp_path):
    """With git missing, every file (a teacher's solutions folder too) went into the handout: refused instead."""
    made = subprocess.run([sys.executable, os.path.join(ROOT, "exercise.py"), "handout", "layer-norm", "--out",
                           str(tmp_path / "hw")], capture_output=True, text=True, env=dict(ENV, PATH="/nonexistent"))
    assert made.returncode == 2 and made.stderr.count("\n") == 1, made.stderr
    assert "git cannot list the files it tracks" in made.stderr and not (tmp_path / "hw").exists()


def test_a_handout_into_a_folder_of_a_copy_without_git_does_not_copy_itself(tmp_path):
    """From a copy with no .git every file is handed out; the folder being filled is not one of them."""
    copy = project_copy(tmp_path / "project")
    made = subprocess.run([sys.executable, "exercise.py", "handout", "layer-norm", "--out", "docs/hw"],
                          capture_output=True, text=True, env=ENV, cwd=copy)
    assert made.returncode == 0, made.stderr
    assert not os.path.exists(copy / "docs" / "hw" / "docs" / "hw") and (copy / "docs" / "hw" / "model.py").is_file()
    assert not [n for n in os.listdir(copy / "docs" / "hw" / "docs") if n.startswith("hw")]


def test_a_failing_experiment_is_one_line_with_its_commands_own(tmp_path):
    copy = project_copy(tmp_path / "project")
    os.makedirs(copy / "out")
    (copy / "out" / "exp1").write_text("my notes\n")  # the first experiment's --out-dir cannot be made
    ran = subprocess.run([sys.executable, "exercise.py", "experiments"], capture_output=True, text=True, env=ENV,
                         cwd=copy, timeout=300)
    assert ran.returncode == 2 and ran.stderr.count("\n") == 1, ran.stderr
    assert ran.stderr.startswith("error: experiment 1: python train.py") and "failed (exit status 2): error: " \
        "--out-dir out/exp1/" in ran.stderr, ran.stderr


def test_a_refusal_naming_a_path_with_a_newline_is_one_line(tmp_path):
    (tmp_path / "hw\n2").mkdir()
    made = cli("handout", "info-nce", "--out", str(tmp_path / "hw\n2"))
    assert made.returncode == 2 and made.stderr.count("\n") == 1 and "hw\\n2: already there" in made.stderr


def test_a_handout_inside_the_projects_tests_is_refused(tmp_path):
    # the suite (python -m pytest tests) would collect the handout's own tests/ beside the project's, and stop
    copy = project_copy(tmp_path / "project")
    for out in ("tests/hw", "tests/a/../hw"):
        made = subprocess.run([sys.executable, "exercise.py", "handout", "layer-norm", "--out", out],
                              capture_output=True, text=True, env=ENV, cwd=copy, timeout=300)
        assert made.returncode == 2 and made.stderr.count("\n") == 1, made.stderr
        assert f"{out}: inside the project's tests/" in made.stderr and not (copy / "tests" / "hw").exists()


def test_refusals_write_nothing(tmp_path):
    unknown = cli("handout", "no-such-exercise", "--out", str(tmp_path / "a"))
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: ") and not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    there = cli("handout", "info-nce", "--out", str(tmp_path / "b"))
    assert there.returncode == 2 and "already there" in there.stderr and os.listdir(tmp_path / "b") == []
    not_a_handout = cli("grade", str(tmp_path / "b"))
    assert not_a_handout.returncode == 2 and "not a handout" in not_a_handout.stderr
    for manifest in ("null", '{"names": ["info-nce"]}', '["info-nce", 3]', "[]"):  # JSON, but no list of names
        (tmp_path / "b" / "exercises.json").write_text(manifest)
        graded = cli("grade", str(tmp_path / "b"))
        assert graded.returncode == 2 and graded.stderr.count("\n") == 1 and "exercises.json: not a JSON list of " \
            "exercise names" in graded.stderr, (manifest, graded.stderr)  # the file is there: what is wrong with it
    into_a_file = cli("handout", "round-robin", "--out", str(tmp_path / "b" / "exercises.json" / "hw"))
    assert into_a_file.returncode == 2 and into_a_file.stderr.count("\n") == 1, into_a_file.stderr
    (tmp_path / "b" / "exercises.json").write_text('["bm25", "no-such-exercise"]')
    unknown_in_manifest = cli("grade", str(tmp_path / "b"))
    assert unknown_in_manifest.returncode == 2 and "exercises.json: names 'no-such-exercise'" in \
        unknown_in_manifest.stderr
    (tmp_path / "c").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "c" / "link")
    for out in ("", "link"):  # an empty path; a link to nowhere: refused before anything is copied
        refused = subprocess.run([sys.executable, os.path.join(ROOT, "exercise.py"), "handout", "bm25", "--out", out],
                                 capture_output=True, text=True, env=ENV, cwd=tmp_path / "c")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert sorted(os.listdir(tmp_path)) == ["b", "c"] and os.listdir(tmp_path / "c") == ["link"]


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("list", "extra"), ("check",), ("grade",),
                                  ("check", "info-nce", "--timeout", "0"), ("grade", "hw", "--timeout", "soon"),
                                  ("check", "info-nce", "--timeout", "2147484"),
                                  *(("check", "info-nce", "--timeout", t) for t in ("٣", "1_0", " 5", "+5")),  # digits
                                  ("check", "info-nce", "--timeout", "5", "--timeout", "9"),  # not the last, silently
                                  ("handout", "bm25", "--out", "hw1", "--out", "hw2")])
def test_a_command_line_mistake_is_one_line(args):
    refused = cli(*args)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, (
        refused.stderr)
    assert refused.stdout == ""


def test_a_timeout_of_thousands_of_digits_gets_the_timeouts_own_message():
    refused = cli("check", "info-nce", "--timeout", "9" * 5000)  # past int()'s 4,300 digits
    assert refused.returncode == 2 and "must be a number of seconds from 1 to 86400" in refused.stderr, refused.stderr


def test_grading_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "hw.zip").write_bytes(b"PK\x03\x04")
    graded = cli("grade", str(tmp_path / "hw.zip"))
    assert graded.returncode == 2 and graded.stderr == f"error: {tmp_path / 'hw.zip'}: is a file, not a folder\n"


def test_a_reader_that_stops_reading_is_no_error():
    """python exercise.py list | head -1: stdout's reader gone (here: before the first line) is no mistake."""
    read, write = os.pipe()
    os.close(read)
    try:
        listed = subprocess.run([sys.executable, os.path.join(ROOT, "exercise.py"), "list"], stdout=write,
                                stderr=subprocess.PIPE, text=True, env=ENV)
    finally:
        os.close(write)
    assert listed.returncode == 1 and listed.stderr == "", listed.stderr


FAKE_PYTEST = """import sys
open(MARK, "a").write("pytest.py ran ")
report = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--junitxml=")][0]
cases = [a.split("::") for a in sys.argv if "::" in a]
with open(report, "w") as f:
    f.write("<testsuite>" + "".join('<testcase classname="%s" name="%s"/>' % (path[:-3].replace("/", "."), name)
                                    for path, name in cases) + "</testsuite>")
"""


def test_a_module_of_the_handed_in_tree_never_takes_the_place_of_an_installed_one(tmp_path):
    """A pytest.py at the top of the tree that writes every grader as passed, or a numpy.py, is not what the graders
    import: they run isolated, the tree last on sys.path."""
    out, mark = tmp_path / "hw", tmp_path / "shadowed"
    assert cli("handout", "info-nce", "--out", str(out)).returncode == 0
    (out / "pytest.py").write_text(FAKE_PYTEST.replace("MARK", repr(str(mark))))
    (out / "numpy.py").write_text(f"open({str(mark)!r}, 'a').write('numpy.py ran ')\n")
    graded = cli("grade", str(out))
    assert graded.returncode == 1 and "info-nce: 0 of 2 graders pass" in graded.stdout, graded.stdout + graded.stderr
    assert not mark.exists(), mark.read_text()


# -----------------------------------------------------------------------------
# blanking a function, on hand-made source: methods, multi-line signatures, decorators, CRLF

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
BLANKED = {  # what a handout makes of each function of DEMO, written out by hand
    "area": DEMO.replace('    return w * h\n', f'    {RAISE}\n'),
    "Box.area": DEMO.replace('        def inner(): return 1   # a nested def\n        return w * h + inner()\n',
                             f'        {RAISE}\n'),
    "Box.fetch": DEMO.replace('        # no docstring\n        return url\n', f'        {RAISE}\n'),
}


@pytest.mark.parametrize("start", ["", "\ufeff"])  # a byte-order mark first, as a Windows editor may save a file
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("qualname", list(BLANKED))
def test_blank_on_hand_made_source(qualname, newline, start):
    source, expected = start + DEMO.replace("\n", newline), start + BLANKED[qualname].replace("\n", newline)
    assert exercise.blank(source, qualname, "demo.py:" + qualname, "exercise demo: see docs") == expected


def test_one_line_functions_and_missing_names_are_refused():
    for qualname, source in (("f", "def f(x): return x\n"), ("Box.volume", DEMO), ("Box", DEMO)):
        with pytest.raises(exercise.ExerciseError):
            exercise.blank(source, qualname, "demo.py:" + qualname, "exercise demo")


def test_registry_is_well_formed():
    assert len(set(NAMES)) == len(NAMES)
    for ex in exercise.EXERCISES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", ex.name) and ex.level in (1, 2, 3), ex.name
        assert ex.title and "\n" not in ex.title and ex.functions and ex.tests, ex.name
        for where in ex.functions + ex.hide:
            assert source_of(where), where  # each names a def that exists
        for node_id in ex.tests:
            assert re.fullmatch(r"tests/\w+\.py(::\w+)+", node_id), node_id
            assert re.search(rf"^def {node_id.split('::')[-1]}\(", open(os.path.join(ROOT, node_id.split("::")[0]),
                                                                        encoding="utf-8").read(), re.M), node_id


# -----------------------------------------------------------------------------
# the experiments of docs/experiments.md: its commands are the runner's, and the runner reports stale answers


def test_the_runner_reads_each_answered_experiments_commands_from_the_page():
    text = open(os.path.join(ROOT, "docs", "experiments.md"), encoding="utf-8").read()
    commands = exercise.experiment_commands(text)
    assert {n: len(c) for n, c in commands.items()} == {1: 3, 2: 2, 3: 3, 4: 2, 5: 1, 6: 1}  # 7 has no answer
    assert commands[1][2] == ("python train.py --task calrec --stages both --set baselines=false --set "
                              "stage1_steps=120 --set stage2_steps=120 --out-dir out/exp1/both")
    assert commands[6][0].startswith('python -c "\nimport torch, maml\n') and commands[6][0].endswith('\n"')
    assert commands[6][0].count("\n") == 14  # the whole script (15 lines), one command
    assert all("--out-dir out/exp" in c for n in range(1, 6) for c in commands[n])


def test_experiments_report_the_answers_that_no_longer_match(tmp_path, monkeypatch, capsys):
    run = tmp_path / "out" / "exp1" / "both"
    run.mkdir(parents=True)
    scores = {p: {"ndcg@10": v} for p, v in (("calrec_generative", 0.5), ("calrec_constrained", 0.25),
                                             ("calrec_dense", 0.125))}
    (run / "results.json").write_text(json.dumps({"test": scores, "environment": {
        "cpu": "x", "threads": 1, "torch": "t", "python": "p"}}))
    table = "| run | generative+BM25 | catalog beams | dense |\n|---|---|---|---|\n| `out/exp1/both` | 0.500 | 0.250 | 0.125 |"
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "experiments.md"
    page = ("## 1. One\n\n```bash\npython -c pass --out-dir out/exp1/both\n```\n\n"
            '## 6. Six\n\n```bash\npython -c "\nprint(42)\n"\n```\n\n'
            '## 7. No answer\n\n```bash\npython -c "import sys; sys.exit(3)"\n```\n\n## Answers\n\n')
    answers = "<!-- answer 1 -->\n{}\n<!-- end -->\ntext\n<!-- answer 6 -->\n{}\n<!-- end -->\n"
    doc.write_text(page + answers.format(table, 41))
    monkeypatch.setattr(exercise, "ROOT", str(tmp_path))
    assert exercise.experiments(write=False) == 1
    assert "no longer match docs/experiments.md: [6]" in capsys.readouterr().out
    assert exercise.experiments(write=True) == 0
    assert doc.read_text() == page + answers.format(table, 42)
