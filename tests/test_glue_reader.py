"""The GLUE reader on files written here in each official layout, its errors, and, when REAL_DATA_DIR is
present, the real files (fetching the official files: tests/test_data_download.py)."""

import logging
import os
import random

import pytest

import data
import maml
from conftest import real_data

HERE = os.path.dirname(os.path.abspath(__file__))
REAL_GLUE, needs_glue = real_data("glue")
REAL_16, needs_16shot = real_data("glue-16shot")

# one labelled file per task, in its official layout (a quote character inside a sentence on purpose)
LAYOUTS = {
    "CoLA": ("gj04\t1\t\tThe \"big\" dog barked.\n"
             "gj04\t0\t*\tDog the barked.\n"),
    "SST-2": "sentence\tlabel\nit 's a \"charming\" film\t1\na dull , lifeless mess\t0\n",
    "MRPC": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
             "1\t11\t12\tHe said \"yes\" .\tHe agreed .\n"
             "0\t13\t14\tIt rained .\tThe sun shone .\n"),
    "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
              "0\tmain-news\tx\t2012\t0001\tnone\tnone\tA man plays.\tA man is playing.\t4.750\n"
              "1\tmain-news\tx\t2012\t0002\tnone\tnone\t\"Quoted\" start\tno\t0\n"),
    "QQP": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
            "0\t1\t2\tHow do I learn \"Python\"?\tWhat is the best way to learn Python?\t1\n"
            "1\t3\t4\tWhy is the sky blue?\tHow tall is Everest?\t0\n"),
    "MNLI": ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
             "0\t1\t1e\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tA cat sat.\tAn animal sat.\tentailment\t"
             "entailment\n"
             "1\t2\t2c\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tIt is \"hot\".\tIt is cold.\tcontradiction\t"
             "contradiction\n"
             "2\t3\t3n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tA man.\tA tall man.\tneutral\tneutral\n"),
    "QNLI": ("index\tquestion\tsentence\tlabel\n"
             "0\tWho wrote \"Emma\"?\tJane Austen wrote Emma.\tentailment\n"
             "1\tWhen?\tIt is blue.\tnot_entailment\n"),
    "RTE": ("index\tsentence1\tsentence2\tlabel\n"
            "0\tA \"quoted\" premise.\tA hypothesis.\tnot_entailment\n"
            "1\tCats purr.\tCats make sounds.\tentailment\n"),
}
EXPECTED = {  # (text_a of row 0, text_b of row 0 or None, labels as class indices / scores)
    "CoLA": ('The "big" dog barked.', None, [1, 0]),
    "SST-2": ('it \'s a "charming" film', None, [1, 0]),
    "MRPC": ('He said "yes" .', "He agreed .", [1, 0]),
    "STS-B": ("A man plays.", "A man is playing.", [4.75, 0.0]),
    "QQP": ('How do I learn "Python"?', "What is the best way to learn Python?", [1, 0]),
    "MNLI": ("A cat sat.", "An animal sat.", [0, 2, 1]),
    "QNLI": ('Who wrote "Emma"?', "Jane Austen wrote Emma.", [0, 1]),
    "RTE": ('A "quoted" premise.', "A hypothesis.", [1, 0]),
}


def write_task(root, name, text, splits=("train", "dev")):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    for split in splits:
        with open(os.path.join(folder, f"{split}.tsv"), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return folder


def held_out(folder, name):
    """folder/dev.tsv (and a test.tsv) with each first sentence changed: examples train.tsv does not hold, as a
    target's reported split must (a copy of train is refused)."""
    column = data.GLUE_TASKS[name]["text_a"]
    for split in ("dev", "test"):
        path = os.path.join(folder, f"{split}.tsv")
        if os.path.exists(path):
            with open(path, encoding="utf-8", newline="") as f:
                lines = [line.rstrip("\r\n").split("\t") for line in f]
            header = [] if isinstance(column, int) else lines.pop(0)
            col = column if isinstance(column, int) else [h.lstrip("\ufeff") for h in header].index(column)
            for fields in lines:
                fields[col] += " (held out)"
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.writelines("\t".join(fields) + "\n" for fields in ([header] if header else []) + lines)
    return folder


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_reads_each_official_layout(tmp_path, name):
    folder = write_task(tmp_path, name, LAYOUTS[name])
    task = data.glue_task(name, folder)
    a, b, ys = EXPECTED[name]
    for split in ("train", "dev"):
        assert task[split]["text_a"][0] == a
        assert (task[split]["text_b"] or [None])[0] == b
        assert task[split]["y"] == ys
    assert "test" not in task
    assert task["pair"] == (b is not None)
    assert task["kind"] == ("regression" if name == "STS-B" else "classification")


def test_labelled_test_split_is_read_when_present(tmp_path):
    folder = write_task(tmp_path, "RTE", LAYOUTS["RTE"], splits=("train", "dev", "test"))
    assert data.glue_task("RTE", folder)["test"]["y"] == [1, 0]


@pytest.mark.parametrize("end", ["\r\n", "\r"])
def test_crlf_and_cr_line_endings_in_every_split(tmp_path, end):
    folder = write_task(tmp_path, "SST-2", LAYOUTS["SST-2"].replace("\n", end), splits=("train", "dev", "test"))
    task = data.glue_task("SST-2", folder)  # test.tsv too: read as labelled, not left out
    assert [task[s]["text_a"][1] for s in ("train", "dev", "test")] == ["a dull , lifeless mess"] * 3


def test_an_error_s_line_number_counts_cr_line_ends_as_the_reader_does(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\rgood\t1\r\nbad \xff\t0\n")  # CR, CR LF, LF: the bad byte is on line 3
    with pytest.raises(data.UserError, match=r"train.tsv:3:5: not UTF-8 text \(byte 0xff\)"):
        data.read_glue_split(str(path), "SST-2")


def test_a_file_is_read_as_gzip_by_its_bytes_and_unreadable_files_say_why(tmp_path, monkeypatch):
    import gzip
    (tmp_path / "train.tsv").write_bytes(gzip.compress(LAYOUTS["SST-2"].encode()))  # packed, not named .gz
    assert data.read_text(str(tmp_path / "train.tsv")) == LAYOUTS["SST-2"]
    (tmp_path / "cut.tsv").write_bytes(gzip.compress(LAYOUTS["SST-2"].encode())[:-9])
    with pytest.raises(data.UserError, match=r"cut.tsv: cannot be read \(Compressed file ended"):
        data.read_text(str(tmp_path / "cut.tsv"))

    def refused(path, mode="r", *args, **kwargs):  # what open says of a file its user may not read
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr("builtins.open", refused)
    with pytest.raises(data.UserError, match=r"train.tsv: permission denied$"):
        data.read_text(str(tmp_path / "train.tsv"))


@pytest.mark.parametrize("name, text, message", [
    ("RTE", LAYOUTS["RTE"].replace("\tentailment\n", "\tmaybe\n"), r"train.tsv:3: label 'maybe'"),
    ("STS-B", LAYOUTS["STS-B"].replace("4.750", "high"), r"train.tsv:2: STS-B score 'high' is not a number"),
    ("STS-B", LAYOUTS["STS-B"].replace("4.750", "7"), r"train.tsv:2: STS-B score 7.0 is outside"),
    ("QNLI", LAYOUTS["QNLI"].replace("question\t", "query\t"), r"train.tsv:1: header has no column 'question'"),
    ("CoLA", LAYOUTS["CoLA"].replace("gj04\t0\t*\t", "gj04\t0\t"), r"train.tsv:2: expected 4 tab-separated"),
    ("CoLA", "index\tsentence\n0\tA test sentence.\n", r"train.tsv:1: this is CoLA's unlabelled test layout"),
    ("RTE", LAYOUTS["RTE"].replace("label\n", "label\tlabel\n").replace("ent\n", "ent\tentailment\n"),
     r"train.tsv:1: column 5 \('label'\) repeats the name of column 4"),
    ("SST-2", LAYOUTS["SST-2"].replace("label\n", "label\t\n"), r"train.tsv:1: column 3 \(''\) has no name"),
    ("STS-B", LAYOUTS["STS-B"].replace("4.750", "\u0663"), r"train.tsv:2: STS-B score '\u0663' is not a number"),
    ("STS-B", LAYOUTS["STS-B"].replace("4.750", "4_0"), r"train.tsv:2: STS-B score '4_0' is not a number"),
    ("STS-B", LAYOUTS["STS-B"].replace("4.750", "nan"), r"train.tsv:2: STS-B score 'nan' is not a number"),
    ("SST-2", LAYOUTS["SST-2"] + "\u00a0\n", r"train.tsv:4: expected 2 tab-separated columns"),  # not blank
])
def test_bad_input_names_file_and_line(tmp_path, name, text, message):
    folder = write_task(tmp_path, name, text)
    with pytest.raises(data.UserError, match=message):
        data.glue_task(name, folder)


@pytest.mark.parametrize("score", ["0", "5", "4.750", "3.", ".5", "+2.5", "-0.0"])
def test_scores_in_plain_decimal_notation(tmp_path, score):
    folder = write_task(tmp_path, "STS-B", LAYOUTS["STS-B"].replace("4.750", score))
    assert data.glue_task("STS-B", folder)["train"]["y"][0] == float(score)


def test_blank_lines_are_skipped(tmp_path):
    folder = write_task(tmp_path, "SST-2", LAYOUTS["SST-2"].replace("\n", "\n \t\r\n\n", 1))
    assert data.glue_task("SST-2", folder)["train"]["y"] == [1, 0]


def old_trim(a, b, budget):
    """BERT's _truncate_seq_pair, one token at a time (O(n^2) on a long sentence): the longer loses its last token,
    text_b when they are as long. The reference."""
    while len(a) + len(b) > budget:
        a, b = (a[:-1], b) if len(a) > len(b) else (a, b[:-1])
    return a, b


def test_pair_lengths_trim_as_the_token_by_token_loop():
    rng = random.Random(0)
    cases = [(n_a, n_b, budget) for n_a in range(15) for n_b in range(15) for budget in range(30)]
    cases += [(rng.randint(0, 400), rng.randint(0, 400), rng.randint(2, 500)) for _ in range(3000)]
    for n_a, n_b, budget in cases:
        a, b = old_trim(list(range(n_a)), list(range(n_b)), budget)
        assert maml.pair_lengths(n_a, n_b, budget) == (len(a), len(b)), (n_a, n_b, budget)


def test_encode_examples_cuts_pairs_as_before():
    tok = data.train_tokenizer([LAYOUTS["MNLI"]], vocab_size=300)
    words = LAYOUTS["MNLI"].split()
    split = {"text_a": [" ".join(words[:n]) for n in (0, 3, 17, 40)],
             "text_b": [" ".join(words[-n:]) for n in (9, 40, 1, 17)]}
    for max_len in (4, 7, 12, 33, 200):
        cut = [old_trim(tok.encode(a), tok.encode(b), max_len - 2) for a, b in zip(split["text_a"], split["text_b"])]
        assert maml.encode_examples(tok, split, max_len) == [a + [tok.sep_id] + b + [tok.eot_id] for a, b in cut]


def test_missing_files_and_unknown_tasks(tmp_path):
    folder = write_task(tmp_path, "RTE", LAYOUTS["RTE"], splits=("train",))
    with pytest.raises(data.UserError, match="dev.tsv"):
        data.glue_task("RTE", folder)
    with pytest.raises(data.UserError, match=r"MRPC.train\.tsv: no such file"):
        data.load_glue(str(tmp_path), ["MRPC"])
    with pytest.raises(data.UserError, match="unknown GLUE task 'WNLI'"):
        data.load_glue(str(tmp_path), ["WNLI"])


def test_a_validation_split_that_is_the_train_split_is_refused(tmp_path):
    """With a labelled test.tsv, dev.tsv is a target's validation split: a copy of train.tsv would choose the model on
    the training data. Without one, dev.tsv is reported, and a copy of train.tsv is not held out."""
    folder = held_out(write_task(tmp_path, "RTE", LAYOUTS["RTE"], splits=("train", "test")), "RTE")  # test: labelled
    write_task(tmp_path, "RTE", LAYOUTS["RTE"], splits=("dev",))  # dev.tsv: train.tsv's examples again
    with pytest.raises(data.UserError, match=r"RTE.dev\.tsv: every example is also in .*RTE.train\.tsv"):
        data.glue_task("RTE", folder, target=True)
    header, *rows = LAYOUTS["RTE"].splitlines(keepends=True)  # a part of train.tsv's examples: validation on them
    write_task(tmp_path, "RTE", header + rows[1], splits=("dev",))
    with pytest.raises(data.UserError, match=r"RTE.dev\.tsv: every example is also in .*RTE.train\.tsv"):
        data.glue_task("RTE", folder, target=True)
    write_task(tmp_path, "RTE", LAYOUTS["RTE"], splits=("dev",))
    assert len(data.glue_task("RTE", folder)["dev"]["y"]) == len(data.glue_task("RTE", folder)["train"]["y"])  # aux
    os.remove(os.path.join(folder, "test.tsv"))
    with pytest.raises(data.UserError, match=r"RTE.dev\.tsv: every example is also in another split"):
        data.glue_task("RTE", folder, target=True)


def test_a_file_without_a_line_end_at_its_end_is_read_with_a_warning(tmp_path, caplog):
    """A file cut short inside its last value reads as a file whose last value is shorter: its missing line end is the
    one sign, said as a warning (a hand-made file may lack it too)."""
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"a\tb\n1\t4.2\n")
    assert data.read_text(str(path)) == "a\tb\n1\t4.2\n" and not caplog.records
    path.write_bytes(b"a\tb\n1\t4.")
    assert data.read_text(str(path)) == "a\tb\n1\t4."
    assert [r.getMessage() for r in caplog.records] == [f"{path}:2:5: the last line has no line end (a file cut short?)"]
    caplog.clear()
    path.write_bytes(b"\xef\xbb\xbf")  # a byte-order mark alone: no line at all, so no last line to end
    assert data.read_text(str(path)) == "" and not caplog.records


def test_a_file_too_large_for_memory_is_named(tmp_path):
    """A file past the memory a process may take (here a cap of 256 MiB more, and a sparse file of 2 GiB, which
    takes no disk): one line naming it, not an out-of-memory error blamed on a setting."""
    from oracles import memory_capped
    path = tmp_path / "train.tsv"
    with open(path, "wb") as f:
        f.truncate(2 << 30)
    with memory_capped(256 << 20) as capped:
        if not capped:
            pytest.skip("no memory cap on this system (Linux's RLIMIT_AS)")
        with pytest.raises(data.UserError, match=f"^{path}: too large$"):
            data.read_text(str(path))


def test_a_warning_of_a_file_read_twice_is_said_once(tmp_path, capsys):
    """glue_task reads dev.tsv and test.tsv a second time (is test.tsv labelled?): each warning once, on the console,
    in log.txt and in what results.json lists."""
    import engine
    folder = write_task(tmp_path, "RTE", LAYOUTS["RTE"], splits=("train", "dev", "test"))
    for split in ("dev", "test"):
        with open(os.path.join(folder, f"{split}.tsv"), "rb+") as f:
            f.truncate(len(f.read()) - 1)  # the last line end gone
    engine.setup_logging(0)
    log_file = engine.open_log_file(str(tmp_path), ["--task", "maml"], False)
    try:
        assert data.glue_task("RTE", folder)["test"]["y"] == [1, 0]
        said = capsys.readouterr().out.splitlines()
        want = [f"{folder}/{s}.tsv:3:42: the last line has no line end (a file cut short?)" for s in ("dev", "test")]
        assert said == want and engine.WARNINGS.messages == want
    finally:
        log_file.close()
        logging.getLogger().handlers[:] = []
    logged = (tmp_path / "log.txt").read_text(encoding="utf-8").splitlines()
    assert [sum(line.endswith(w) for line in logged) for w in want] == [1, 1], logged


@needs_glue
def test_real_glue_files_parse_completely():
    for name in data.GLUE_TASKS:
        task = data.glue_task(name, os.path.join(REAL_GLUE, name))
        for split in ("train", "dev"):
            with open(os.path.join(REAL_GLUE, name, f"{split}.tsv"), "rb") as f:
                lines = [line for line in f.read().split(b"\n") if line.strip()]  # blank: ASCII whitespace
            n_header = 0 if name == "CoLA" else 1
            assert len(task[split]["y"]) == len(lines) - n_header, (name, split)  # nothing dropped


@needs_16shot
def test_real_few_shot_folders():
    folders = data.few_shot_folders(REAL_16, "MRPC")
    assert [f.rsplit("-", 1)[1] for f in folders] == ["13", "21", "42", "87", "100"]
    task = data.glue_task("MRPC", folders[0])  # these files keep the byte-order mark
    assert sorted(task["train"]["y"]) == [0] * 16 + [1] * 16


# GLUE's own test files, with their unlabelled layouts (the index, the sentences: their labels are not public)
UNLABELLED_TEST = {"CoLA": "index\tsentence\n0\tBill whistled past the house.\n",
                   "RTE": "index\tsentence1\tsentence2\n0\tDogs bark.\tAnimals make sounds.\n",
                   "QQP": "id\tquestion1\tquestion2\n0\tWhy?\tHow?\n",
                   "STS-B": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
                            "0\tmain-news\tx\t2012\t0001\tnone\tnone\tA man plays.\tA man is playing.\n"}


@pytest.mark.parametrize("name", sorted(UNLABELLED_TEST))
def test_glue_s_own_unlabelled_test_file_is_left_out_and_a_labelled_one_read(tmp_path, name):
    folder = write_task(tmp_path, name, LAYOUTS[name])
    with open(os.path.join(folder, "test.tsv"), "w", encoding="utf-8") as f:
        f.write(UNLABELLED_TEST[name])
    task = data.glue_task(name, folder)  # as a folder of GLUE's download holds it: the task reports on dev.tsv
    assert "test" not in task and len(task["dev"]["y"]) == len(task["train"]["y"]) == 2, sorted(task)
    with open(os.path.join(folder, "test.tsv"), "w", encoding="utf-8") as f:
        f.write(LAYOUTS[name])  # a labelled test split (a re-split of GLUE's files): the one the task reports on
    assert len(data.glue_task(name, folder)["test"]["y"]) == 2


def test_16_shot_folders_that_cannot_be_read_are_refused_not_taken_for_none(monkeypatch, tmp_path):
    """A glue-16shot (or its RTE/) without read or search permission hides its 16-<seed> folders: a run must not go on
    without the 16-shot rows as if there were none. (os.access stands in for the permissions: root may read anything.)"""
    root = tmp_path / "glue-16shot"
    (root / "RTE" / "16-13").mkdir(parents=True)
    real = os.access
    for hidden in (root, root / "RTE"):
        monkeypatch.setattr(os, "access", lambda path, mode, h=str(hidden): os.fspath(path) != h and real(path, mode))
        with pytest.raises(data.UserError, match=f"{hidden}: not a folder one can read; RTE's 16-shot splits go there"):
            data.few_shot_folders(str(root), "RTE")
    monkeypatch.setattr(os, "access", real)
    assert data.few_shot_folders(str(root), "RTE") == [str(root / "RTE" / "16-13")]
