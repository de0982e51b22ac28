"""Every user mistake is one line: a table of bad inputs for all three tasks -- every reader, --init, --resume,
--out-dir and the flags -- each through train.main. Each must exit with status 2, name the offending file or
flag, print no traceback, and leave an earlier run's --out-dir byte for byte as it was."""

import gzip
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import download
import engine
import train
from test_calrec import write_atomic
from test_calrec_data import META, raw_reviews, text_folder, write_lines
from test_glue_reader import LAYOUTS, held_out, write_task
from test_gpt2_init import edit_safetensors, nan_weights, write_gpt2_folder
from engine import fingerprint
from model import UserError
from test_engine import RunsCode, resave

TINY_CALREC = ["--set", "stage1_steps=2", "--set", "stage2_steps=2", "--set", "sasrec_steps=2", "--eval-interval", "2",
               "--beams", "2", "--set", "constrained_beams=2", "--set", "select_users=4", "--set", "bm25_valid_users=4"]
DAMAGED = "state.pt: damaged or edited since the run wrote it (its fingerprint differs)"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good inputs of every kind, and the --out-dir of a finished run."""
    root = tmp_path_factory.mktemp("world")
    w = {"root": root}
    w["alpha"] = str(root / "Alpha")
    write_atomic(w["alpha"], "Alpha")
    (root / "text").mkdir()
    w["sci"] = text_folder(root / "text", "Sci", train_rows=("0\t0\t1", "0\t1\t2"))
    w["raw"] = str(root / "Tools")
    os.makedirs(w["raw"])
    write_lines(os.path.join(w["raw"], "Tools_5.json.gz"), raw_reviews())
    write_lines(os.path.join(w["raw"], "meta_Tools.json.gz"), META)
    glue = root / "glue"
    for name in ("RTE", "SST-2", "CoLA", "STS-B", "MRPC"):
        rows = LAYOUTS[name].splitlines(keepends=True)
        body = rows if name == "CoLA" else rows[1:]
        held_out(write_task(str(glue), name, ("" if name == "CoLA" else rows[0]) + "".join(body * 30)), name)  # validation: 6 rows
    w["glue"] = str(glue)
    w["gpt2"] = str(root / "gpt2")
    write_gpt2_folder(w["gpt2"], ["Title: Alpha gadget number 1, Brand: Brand1"] * 5, n_positions=200)
    w["out"] = str(root / "out")
    train.main(["--task", "calrec", "--data", w["alpha"], *TINY_CALREC, "--out-dir", w["out"]])
    return w


def snapshot(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


def copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def edit(path, old, new, count=1):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert old in text, (path, old)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new, count))


def write_gz(path, raw):
    with gzip.open(path, "wb") as f:
        f.write(raw)


def append_bytes(path, raw):
    with open(path, "ab") as f:
        f.write(raw)


def keep_header(path):
    with open(path, encoding="utf-8") as f:
        header = f.readline()
    with open(path, "w", encoding="utf-8") as f:
        f.write(header)


# -----------------------------------------------------------------------------
# the table: name -> case(world, tmp) returning (argv without --out-dir, text the message must hold)


def no_rows(folder):  # a benchmark folder whose three splits hold their header only
    for split in ("train", "valid", "test"):
        keep_header(os.path.join(folder, f"{os.path.basename(folder)}.{split}.inter"))
    return folder


def calrec_data(mutate, message, folder="alpha", flags=()):
    def case(w, tmp):
        d = copy(w[folder], tmp / os.path.basename(w[folder]))
        mutate(d)
        return ["--task", "calrec", "--data", d, *flags], message
    return case


def amazon_raw(mutate, message):
    """`python data.py amazon Tools` from a local mirror of the Amazon 2018 site, one of whose files `mutate` spoils."""
    def case(w, tmp):
        flat = copy(w["raw"], tmp / "Tools")
        mutate(flat)
        for sub, name in (("categoryFilesSmall", "Tools_5.json.gz"), ("metaFiles2", "meta_Tools.json.gz")):
            os.makedirs(tmp / "mirror" / sub, exist_ok=True)
            shutil.copy(os.path.join(flat, name), tmp / "mirror" / sub / name)
        return ["data.py", "amazon", "Tools", "--url", f"file://{tmp / 'mirror'}", "--out", str(tmp / "amazon")], message
    return case


def amazon_out(spoil, message):
    """`python data.py amazon Tools` from a good mirror into an --out where spoil(out) put something in the way."""
    def case(w, tmp):
        argv, _ = amazon_raw(lambda d: None, message)(w, tmp)
        spoil(tmp / "amazon")
        return argv, message
    return case


def integer_checkpoint(w, tmp):
    """A copy of the finished run's ckpt.pt whose position table holds integers."""
    folder = copy(w["out"], tmp / "int")
    ckpt = torch.load(os.path.join(folder, "ckpt.pt"), weights_only=True)
    ckpt["model"]["transformer.wpe.weight"] = ckpt["model"]["transformer.wpe.weight"].long()
    torch.save(ckpt, os.path.join(folder, "ckpt.pt"))
    return os.path.join(folder, "ckpt.pt")


def numbered_weight(w, tmp):
    """A copy of the finished run's ckpt.pt with one more weight, named by an integer."""
    folder = copy(w["out"], tmp / "numbered")
    ckpt = torch.load(os.path.join(folder, "ckpt.pt"), weights_only=True)
    ckpt["model"][0] = torch.zeros(1)
    torch.save(ckpt, os.path.join(folder, "ckpt.pt"))
    return os.path.join(folder, "ckpt.pt")


def numbered_bin(folder):
    """A GPT-2 folder whose weights are a pytorch_model.bin with one more weight, named by an integer."""
    from model import read_safetensors
    weights = read_safetensors(os.path.join(folder, "model.safetensors"))
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save({**weights, 0: torch.zeros(1)}, os.path.join(folder, "pytorch_model.bin"))


def few_shot_split(glue, seed_folder, first, dev_first=32):
    """glue-16shot/RTE/<seed_folder> beside the GLUE folder: train.tsv and dev.tsv of 16 examples of each label, made
    up, the examples numbered from `first` and `dev_first` (the same: dev.tsv a copy of train.tsv)."""
    for split, start in (("train", first), ("dev", dev_first)):
        rows = "".join(f"{i}\tPremise {i}.\tHypothesis {i}.\t{('entailment', 'not_entailment')[i % 2]}\n"
                       for i in range(start, start + 32))
        write_task(os.path.join(os.path.dirname(glue), "glue-16shot", "RTE"), seed_folder,
                   "index\tsentence1\tsentence2\tlabel\n" + rows, (split,))


SMALL_GLUE = ("--aux", "SST-2", "--targets", "RTE", "--n-train", "8")  # what the world's small GLUE files can train


def glue(mutate, message, flags=("--aux", "SST-2", "--targets", "RTE")):
    def case(w, tmp):
        g = copy(w["glue"], tmp / "glue")
        mutate(g)
        return ["--task", "maml", "--data", g, *flags], message
    return case


def init(make, message, task="calrec"):
    def case(w, tmp):
        path = make(w, tmp)
        data = ["--data", w["alpha"]] if task == "calrec" else []
        return ["--task", task, *data, "--init", path], message
    return case


def resume(mutate, message, flags=()):
    """--resume of the finished run, whose state.pt (a copy is put back afterwards) `mutate` may spoil."""
    def case(w, tmp):
        mutate(os.path.join(w["out"], "state.pt"), tmp)
        return ["--task", "calrec", "--data", w["alpha"], *TINY_CALREC, *flags, "--resume"], message
    return case


def flags(*argv, message):
    return lambda w, tmp: (list(argv), message)


def gpt2_variant(change):
    def make(w, tmp):
        folder = copy(w["gpt2"], tmp / "gpt2")
        change(folder)
        return folder
    return make


def named_twice(header, data):
    """An edit_safetensors change: wte.weight again, as transformer.wte.weight (a file merged from both layouts)."""
    begin, end = header["wte.weight"]["data_offsets"]
    header["transformer.wte.weight"] = dict(header["wte.weight"], data_offsets=[len(data), len(data) + end - begin])
    data.extend(bytes(end - begin))  # zeros: loading this copy would erase the embedding


def evil_checkpoint(path, tmp):
    torch.save(dict(model={}, config={}, step=0, metrics={}, payload=RunsCode(tmp / "ran")), path)


def data_py(*argv, message):
    """`python data.py ...` (download.main), from this test's folder."""
    return lambda w, tmp: (["data.py", *[a.format(tmp=tmp, **w) for a in argv]], message)


def settings(task, *pairs):
    """One setting given a value its field does not allow, through --set (and through its alias when there is one):
    the message names the setting."""
    return {f"{task} {name}={value}": flags("--task", task, "--set", f"{name}={value}", message=f"{name}")
            for name, value in pairs}


def other_tokenizer(w, tmp):
    """The finished run's checkpoint, beside another run's tokenizer.json."""
    folder = tmp / "ckpt"
    folder.mkdir()
    shutil.copy(os.path.join(w["out"], "ckpt.pt"), folder)
    shutil.copy(os.path.join(w["gpt2"], "tokenizer.json"), folder)
    return str(folder / "ckpt.pt")


def wordpiece_tokenizer(folder):
    """A BERT-style tokenizer.json (WordPiece, with GPT-2's special token) in place of GPT-2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordPiece({"<|endoftext|>": 0, "[UNK]": 1, "alpha": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(folder, "tokenizer.json"))


def short_model(w, tmp):
    """A project checkpoint whose GPT reads 48 tokens (as MAML's init_*.pt), with a tokenizer that fits it."""
    import data
    import engine
    from model import GPT, GPTConfig
    folder = tmp / "maml"
    folder.mkdir()
    tok = data.load_tokenizer(os.path.join(w["out"], "tokenizer.json"))
    engine.save_tokenizer(str(folder), tok)
    gpt = GPT(GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
    engine.save_checkpoint(str(folder / "init_maml.pt"), gpt, tok, step=0, metrics={})
    return str(folder / "init_maml.pt")


def resume_with_replaced_tokenizer(w, tmp):
    shutil.copy(os.path.join(w["gpt2"], "tokenizer.json"), os.path.join(w["out"], "tokenizer.json"))
    return ["--task", "calrec", "--data", w["alpha"], *TINY_CALREC, "--resume"], "was saved with another tokenizer than"


def checkpoint_without(key, w, tmp):
    """The finished run's ckpt.pt, less one entry, with its tokenizer.json beside it."""
    os.makedirs(tmp / "less")
    ckpt = torch.load(os.path.join(w["out"], "ckpt.pt"), weights_only=True)
    del ckpt[key]
    torch.save(ckpt, tmp / "less" / "ckpt.pt")
    shutil.copy(os.path.join(w["out"], "tokenizer.json"), tmp / "less")
    return str(tmp / "less" / "ckpt.pt")


def resume_after_the_init_file_changed(w, tmp):
    """A run from --init, resumed after other weights were written to that path (same sizes, same tokenizer)."""
    os.makedirs(tmp / "init")
    for n in ("ckpt.pt", "tokenizer.json"):
        shutil.copy(os.path.join(w["out"], n), tmp / "init" / n)
    argv = ["--task", "calrec", "--data", w["alpha"], *TINY_CALREC, "--init", str(tmp / "init" / "ckpt.pt"),
            "--out-dir", str(tmp / "run")]
    train.main(argv)
    ckpt = torch.load(tmp / "init" / "ckpt.pt", weights_only=True)
    ckpt["model"]["transformer.wte.weight"] += 1
    torch.save(ckpt, tmp / "init" / "ckpt.pt")
    return argv + ["--resume"], "was saved by a run with other init;"


def half_the_users(path):
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[:len(lines) // 2])


def copy_and_edit_alpha(w, tmp):
    """Alpha's folder with one item's text changed: other data than the finished run read."""
    d = copy(w["alpha"], tmp / "Alpha")
    edit(os.path.join(d, "Alpha.item"), "Alpha gadget number 0", "Alpha gizmo number 0")
    return d


def alpha_with_an_empty_column(w, tmp):
    """Alpha's folder with a colour column of no value: every item text gains 'Colour: Unknown', other data."""
    d = copy(w["alpha"], tmp / "Alpha")
    with open(os.path.join(d, "Alpha.item"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(os.path.join(d, "Alpha.item"), "w", encoding="utf-8") as f:
        f.write("\n".join([lines[0] + "\tcolour:token"] + [line + "\t" for line in lines[1:]]) + "\n")
    return d


def folder_holding(tmp, name):
    os.makedirs(tmp / "o" / name)
    return str(tmp / "o")


def link_holding(tmp, name):
    """An --out-dir whose `name` is a symbolic link to a file of the user's elsewhere."""
    os.makedirs(tmp / "o")
    (tmp / "mine.txt").write_text("the user's own file\n")
    os.symlink(tmp / "mine.txt", tmp / "o" / name)
    return str(tmp / "o")


def rewrite_json(path, **changes):
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(obj, **changes), f)


def refingerprinted(change):
    """A state.pt edit that keeps its fingerprint right: a state of another layout, as another version would write."""
    def mutate(path, tmp):
        saved = torch.load(path, weights_only=True)
        change(saved["state"])
        torch.save(dict(state=saved["state"], fingerprint=fingerprint(saved["state"])), path)
    return mutate


def odd_tensor_checkpoint(make):
    """A copy of the finished run's ckpt.pt whose position table make() turned into a sparse or a meta tensor."""
    def checkpoint(w, tmp):
        folder = copy(w["out"], tmp / "odd")
        resave(os.path.join(folder, "ckpt.pt"), lambda c: c["model"].update(
            {"transformer.wpe.weight": make(c["model"]["transformer.wpe.weight"])}))
        return os.path.join(folder, "ckpt.pt")
    return checkpoint


CASES = {
    # --- CALRec's readers: the benchmark folders (.item variant, .text + .item2index variant)
    "empty data folder": calrec_data(lambda d: [os.remove(os.path.join(d, f)) for f in os.listdir(d)],
                                     "Alpha: has neither Alpha.item nor Alpha.text"),
    "two benchmarks in one folder": calrec_data(
        lambda d: [shutil.copy(os.path.join(d, f), os.path.join(d, "Beta" + f[len("Alpha"):])) for f in os.listdir(d)],
        "Alpha: holds 2 benchmarks (Alpha, Beta); one folder each"),
    "empty inter file": calrec_data(lambda d: open(os.path.join(d, "Alpha.test.inter"), "w").close(),
                                    "Alpha.test.inter:1: header has no column 'user_id' (found nothing)"),
    "inter column count": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.train.inter"), b"3\t1 2\n"),
                                      "Alpha.train.inter:"),
    "inter unknown item": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.test.inter"), b"3\t1 99\t2\n"),
                                      "Alpha.test.inter:14: unknown item id '99'"),
    "inter empty history": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.valid.inter"), b"3\t\t2\n"),
                                       "Alpha.valid.inter:14: empty history"),
    "inter not utf-8": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.train.inter"), b"3\t1\t\xff2\n"),
                                   "Alpha.train.inter:"),
    "inter missing": calrec_data(lambda d: os.remove(os.path.join(d, "Alpha.valid.inter")), "Alpha.valid.inter"),
    "inter header": calrec_data(lambda d: edit(os.path.join(d, "Alpha.test.inter"), "item_id_list", "items"),
                                "Alpha.test.inter:1: header has no column 'item_id_list'"),
    "item listed twice": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.item"), b"3\tagain\tBrand0\n"),
                                     "Alpha.item:10: item 3 listed twice"),
    "item without text": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.item"), b"8\t \t \n"),
                                     "Alpha.item:10: item 8 has no text"),
    "item whose text shows nothing": calrec_data(lambda d: append_bytes(os.path.join(
        d, "Alpha.item"), "8\t\u200b\u200d\t\ufeff\u00a0\n".encode()), "Alpha.item:10: item 8 has no text"),
    "item not utf-8": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.item"), b"8\tgad\xc3get\tB\n"),
                                  "Alpha.item:10"),
    "item2index malformed": calrec_data(lambda d: append_bytes(os.path.join(d, "Sci.item2index"), b"AS4 three\n"),
                                        "Sci.item2index:4: expected 'ASIN<TAB>integer id'", folder="sci"),
    "text file with a column of its own": calrec_data(lambda d: write_lines(os.path.join(d, "Sci.text"), [
        "item_id:token\ttext:token_seq\tbrand:token", "AS1\tDrill. Root Tools. Bosch. \tBosch",
        "AS2\tSaw. Root Tools. . \tMakita", "AS3\tGlue. Root Glue. Gorilla. \tGorilla"]),
        "Sci.text:1: columns ['item_id', 'text', 'brand']; an X.text holds item_id and text only", folder="sci",
        flags=TINY_CALREC),
    "text asin unmapped": calrec_data(lambda d: append_bytes(os.path.join(d, "Sci.text"), b"AS9\tNail. Root. X. \n"),
                                      "Sci.text:5: item AS9 is not in", folder="sci"),
    "no training sequence": calrec_data(lambda d: (  # one user of three items: no training row, rightly
        edit(os.path.join(d, "Sci.train.inter"), "0\t0\t1\n0\t1\t2\n", ""), edit(os.path.join(
            d, "Sci.valid.inter"), "0\t0 1\t2", "0\t0\t1"), edit(os.path.join(d, "Sci.test.inter"), "0 1 2\t1", "0 1\t2")),
        "Sci: has no training sequence", folder="sci"),
    "train holds the valid rows": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.train.inter"), open(
        os.path.join(d, "Alpha.valid.inter"), "rb").read().split(b"\n", 1)[1]),
        "Alpha.valid.inter:2: this history is not the user's items before its target in the other rows"),
    "a training row missing": calrec_data(lambda d: edit(os.path.join(d, "Alpha.train.inter"), "0\t0 1\t2\n", ""),
                                          "Alpha.valid.inter:2: this history is not the user's items before its"),
    "a user's first training row missing": calrec_data(  # a file cut at its head: the rows that remain agree
        lambda d: edit(os.path.join(d, "Alpha.train.inter"), "\n0\t0\t1\n", "\n"),
        "Alpha.train.inter:2: this history is not the user's items before its target"),
    "a user's training rows all missing": calrec_data(
        lambda d: edit(os.path.join(d, "Alpha.train.inter"), "\n0\t0 1\t2\n0\t0\t1\n", "\n"),
        "Alpha.valid.inter:2: this history is not the user's items before its target"),
    "a training user in no other split": calrec_data(
        lambda d: append_bytes(os.path.join(d, "Alpha.train.inter"), b"zzz\t0\t1\n"),
        "Alpha.train.inter:26: user zzz is not in the valid split"),
    "a training row out of place": calrec_data(
        lambda d: edit(os.path.join(d, "Alpha.train.inter"), "1\t1\t2", "1\t3\t2"),
        "Alpha.train.inter:4: this history is not the user's items before"),
    "item file holds its header again": calrec_data(
        lambda d: append_bytes(os.path.join(d, "Alpha.item"), b"item_id:token\ttitle:token_seq\tbrand:token\n"),
        "Alpha.item:10: the header line again"),
    "item file holds its header again, with a BOM": calrec_data(  # as `cat a.item b.item` gives, b saved by an editor
        lambda d: append_bytes(os.path.join(d, "Alpha.item"), "\ufeffitem_id:token\ttitle:token_seq\tbrand:token\n"
                               .encode()), "Alpha.item:10: the header line again", flags=TINY_CALREC),
    "item file holds another header": calrec_data(  # other types, a space: the same names, not an item 'item_id:token'
        lambda d: append_bytes(os.path.join(d, "Alpha.item"), b"item_id:token\ttitle:token\tbrand:token_seq \n"),
        "Alpha.item:10: the header line again", flags=TINY_CALREC),
    "every split only its header": calrec_data(
        no_rows, "Alpha: has no valid users", flags=TINY_CALREC),
    "a stage-1 domain of no rows": lambda w, tmp: (["--task", "calrec", "--data", no_rows(copy(w["sci"], tmp / "Sci")),
                                                    w["alpha"], *TINY_CALREC], "Sci: has no training sequence"),
    "init checkpoint with a weight named by a number": init(numbered_weight, "the weights are not a dict of tensors"),
    "init GPT-2 weights named by a number": init(gpt2_variant(numbered_bin), "not a state dict of tensors by name"),
    "init a run's folder, not its checkpoint": init(lambda w, tmp: copy(w["out"], tmp / "earlier"),
                                                   "earlier/config.json: missing; a GPT-2 folder needs config.json and "
                                                   "weights (a run's checkpoint: its .pt)"),
    "init a file the run writes": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"], *TINY_CALREC, "--init",
                                                  os.path.join(w["out"], "ckpt.pt")], "the run writes there"),
    "init the out-dir itself": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"], *TINY_CALREC, "--init",
                                                w["out"]], "the run writes there"),
    "glue test.tsv label misspelled": glue(  # not GLUE's unlabelled test.tsv, whose columns are dev's, less the label
        lambda g: write_lines(os.path.join(g, "RTE", "test.tsv"), ["index\tsentence1\tsentence2\tlabl", "0\tA\tB\t0"]),
        "RTE/test.tsv:1: header has no column 'label'", flags=SMALL_GLUE),
    "glue MNLI dev.tsv a folder": glue(lambda g: os.mkdir(os.path.join(write_task(g, "MNLI", LAYOUTS["MNLI"], splits=(
        "train", "dev_matched")), "dev.tsv")),  # not read as missing, for dev_matched.tsv to stand in
        "MNLI/dev.tsv: is a folder, not a file", flags=("--aux", "MNLI", "--targets", "RTE", "--n-train", "8")),
    # the split a run reports on (a labelled test.tsv, else dev.tsv) must be held out: not a copy of the others
    "glue labelled test.tsv a copy of dev.tsv": glue(
        lambda g: shutil.copy(os.path.join(g, "RTE", "dev.tsv"), os.path.join(g, "RTE", "test.tsv")),
        "RTE/test.tsv: every example is also in another split of RTE; it is not held out", flags=SMALL_GLUE),
    "glue dev.tsv a copy of rows of train.tsv": glue(
        lambda g: write_lines(os.path.join(g, "RTE", "dev.tsv"), open(os.path.join(g, "RTE", "train.tsv"),
                                                                      encoding="utf-8").read().splitlines()[:4]),
        "RTE/dev.tsv: every example is also in another split of RTE; it is not held out", flags=SMALL_GLUE),
    "maml validation of one example": flags("--task", "maml", "--set", "val_max=1",  # every score alike: step 0 kept
                                            message="more-2-5: 1 examples in its validation split, under 2 labels or scores"),
    "glue reported dev.tsv of one label": glue(  # MCC, F1 and correlation are 0 on it whatever the model
        lambda g: edit(os.path.join(g, "RTE", "dev.tsv"), "not_entailment", "entailment", count=-1),
        "RTE: 60 examples in its dev split, under 2 labels or scores", flags=SMALL_GLUE),
    "glue STS-B reported dev.tsv of one score": glue(
        lambda g: write_lines(os.path.join(g, "STS-B", "dev.tsv"), [line.rsplit("\t", 1)[0] + "\t2.5" if i else line
                              for i, line in enumerate(open(os.path.join(g, "STS-B", "dev.tsv"), encoding="utf-8")
                                                       .read().splitlines())]),
        "STS-B: 60 examples in its dev split, under 2 labels or scores", flags=("--aux", "SST-2", "--targets",
                                                                               "STS-B", "--n-train", "8")),
    "glue test.tsv a folder": glue(lambda g: os.mkdir(os.path.join(g, "RTE", "test.tsv")),
                                   "RTE/test.tsv: is a folder, not a file", flags=SMALL_GLUE),
    "no test users": calrec_data(lambda d: keep_header(os.path.join(d, "Alpha.test.inter")),
                                 "Alpha.valid.inter:2: user 0 is not in the test split"),
    "two folders one name": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"],
                                             copy(w["alpha"], tmp / "x" / "Beta")], "both hold the domain Alpha"),
    "unknown target": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"], "--target", "Gamma"],
                                      "setting target=Gamma: not among the domains"),
    # --- CALRec's raw Amazon 2018 reader, through python data.py amazon; --data refuses raw files
    "raw reviews file of no review": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"), ["", " "]),
                                                "Tools_5.json.gz: holds no review"),
    "raw bad json": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"), raw_reviews() + ["{no"]),
                               "Tools_5.json.gz:20:2: not a JSON object (Expecting property name enclosed in double quotes)"),
    "raw no time": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"),
                                                    raw_reviews() + [{"reviewerID": "u9", "asin": "A"}]),
                              "Tools_5.json.gz:20: record has no 'unixReviewTime'"),
    "raw time not int": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"), raw_reviews() + [
        {"reviewerID": "u9", "asin": "A", "unixReviewTime": "abc"}]), "Tools_5.json.gz:20: unixReviewTime 'abc'",),
    "raw truncated gz": amazon_raw(lambda d: open(os.path.join(d, "Tools_5.json.gz"), "r+b").truncate(40),
                                   "Tools_5.json.gz: not a complete gzip file"),
    "raw meta not utf-8": amazon_raw(lambda d: write_gz(os.path.join(d, "meta_Tools.json.gz"),
                                                        b'{"asin": "A", "title": "Th\xffing"}\n'),
                                     "meta_Tools.json.gz:1:"),
    "raw meta no asin": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"),
                                                         META + [{"title": "x"}]),
                                   "meta_Tools.json.gz:9: record has no 'asin'"),
    "raw folder as --data": calrec_data(lambda d: None, "Tools_5.json.gz: raw Amazon 2018 files; convert them",
                                        folder="raw"),
    # --- MAML's GLUE reader and its flags
    "cola label 7": glue(lambda g: edit(os.path.join(g, "CoLA", "train.tsv"), "gj04\t1\t", "gj04\t7\t"),
                         "CoLA/train.tsv:1: label '7'", flags=("--aux", "SST-2", "--targets", "CoLA")),
    "stsb score abc": glue(lambda g: edit(os.path.join(g, "STS-B", "dev.tsv"), "4.750", "abc"),
                           "STS-B/dev.tsv:2: STS-B score 'abc' is not a number",
                           flags=("--aux", "SST-2", "--targets", "STS-B")),
    "stsb score 9.0": glue(lambda g: edit(os.path.join(g, "STS-B", "train.tsv"), "4.750", "9.0"),
                           "STS-B/train.tsv:2: STS-B score 9.0 is outside",
                           flags=("--aux", "SST-2", "--targets", "STS-B")),
    "missing header": glue(lambda g: edit(os.path.join(g, "RTE", "train.tsv"), "index\tsentence1\tsentence2\tlabel\n",
                                          ""), "RTE/train.tsv:1: header has no column"),
    "wrong column count": glue(lambda g: append_bytes(os.path.join(g, "SST-2", "dev.tsv"), b"a\tb\t1\n"),
                               "SST-2/dev.tsv:62: expected 2 tab-separated columns"),
    "missing dev": glue(lambda g: os.remove(os.path.join(g, "RTE", "dev.tsv")), "RTE/dev.tsv: no such file"),
    "glue not utf-8": glue(lambda g: append_bytes(os.path.join(g, "SST-2", "train.tsv"), b"bad \xfe byte\t1\n"),
                           "SST-2/train.tsv:62"),
    "target not in folder": glue(lambda g: None, "setting targets: QNLI: ", flags=("--aux", "SST-2", "--targets", "QNLI")),
    "aux and target": glue(lambda g: None, "settings aux and targets: RTE named twice",
                           flags=("--aux", "RTE", "--targets", "RTE")),
    "unknown glue task": glue(lambda g: None, "setting targets: 'WNLI' is not a task of GLUE",
                              flags=("--aux", "SST-2", "--targets", "WNLI")),
    "task named twice": glue(lambda g: None, "settings aux and targets: RTE named twice",
                             flags=("--aux", "SST-2,RTE", "--targets", "RTE")),
    "n-train too large": glue(lambda g: None, "setting n_train: 5000 is more than",
                              flags=("--aux", "SST-2", "--targets", "RTE", "--n-train", "5000")),
    "two glue folders": lambda w, tmp: (["--task", "maml", "--data", w["glue"], w["glue"]], "takes one GLUE folder"),
    # --- --init
    "init safetensors a broken link beside a .bin": init(gpt2_variant(lambda f: numbered_bin(f) or os.symlink(
        os.path.join(f, "nowhere"), os.path.join(f, "model.safetensors"))), "model.safetensors: No such file or directory"),
    "init safetensors a link to a named pipe": init(gpt2_variant(lambda f: os.remove(os.path.join(f, "model.safetensors"))
        or os.mkfifo(os.path.join(f, "pipe")) or os.symlink(os.path.join(f, "pipe"), os.path.join(f, "model.safetensors"))),
        "holds neither model.safetensors nor pytorch_model.bin"),  # passed over, not opened: open() would wait on it
    "init truncated safetensors": init(gpt2_variant(
        lambda f: open(os.path.join(f, "model.safetensors"), "r+b").truncate(300)), "model.safetensors"),
    "init config does not fit": init(gpt2_variant(lambda f: edit(os.path.join(f, "config.json"), '"n_embd": 32',
                                                                 '"n_embd": 64')), "model.safetensors: "),
    "init config not json": init(gpt2_variant(lambda f: open(os.path.join(f, "config.json"), "w").write("{")),
                                 "config.json: not a GPT-2 config.json"),
    "init no tokenizer": init(gpt2_variant(lambda f: os.remove(os.path.join(f, "tokenizer.json"))),
                              "tokenizer.json: no such file"),
    "init plain file": init(lambda w, tmp: (tmp / "notes.txt").write_text("hello") and str(tmp / "notes.txt"),
                            "notes.txt: cannot be read as a checkpoint"),
    "init corrupt checkpoint": init(lambda w, tmp: (tmp / "ckpt.pt").write_bytes(b"PK\x03\x04garbage") and
                                    str(tmp / "ckpt.pt"), "ckpt.pt: cannot be read", task="maml"),
    "init runs code": init(lambda w, tmp: evil_checkpoint(str(tmp / "evil.pt"), tmp) or str(tmp / "evil.pt"),
                           "evil.pt: refused"),
    "init checkpoint with no tokenizer fingerprint": init(lambda w, tmp: checkpoint_without("tokenizer", w, tmp),
                                                          "not a checkpoint of this project (missing ['tokenizer'])"),
    "init empty folder": init(lambda w, tmp: (tmp / "empty").mkdir() or str(tmp / "empty"), "config.json: missing"),
    # --- --resume
    "resume corrupt state": resume(lambda p, tmp: open(p, "wb").write(b"\x80\x02junk"), "state.pt: cannot be read"),
    "resume other settings": resume(lambda p, tmp: None, "state.pt: was saved by a run with other beta, tau;",
                                    flags=("--tau", "0.5", "--beta", "0.1")),  # each setting named
    "resume runs code": resume(lambda p, tmp: evil_checkpoint(p, tmp), "state.pt: refused"),
    "resume no state": lambda w, tmp: (["--task", "maml", "--resume", "--out-dir", str(tmp / "new")],
                                       "state.pt to resume from"),
    # --- --out-dir and flags
    "out-dir is a file": lambda w, tmp: (["--task", "sinusoid", "--out-dir", w["out"] + "/results.json"],
                                         "results.json: is a file"),
    "out-dir under a file": lambda w, tmp: (["--task", "calrec", "--out-dir", w["out"] + "/log.txt/sub"],
                                            "log.txt/sub: cannot be created"),
    "seed -1": flags("--task", "calrec", "--seed", "-1", message="--seed: must be a whole number from 0"),
    "seed text": flags("--task", "sinusoid", "--seed", "one", message="--seed: must be a whole number"),
    "set unknown": flags("--task", "sinusoid", "--set", "speed=3", message="--set: no setting 'speed'"),
    "one held-out sine": flags("--task", "sinusoid", "--set", "eval_tasks=1",  # a 95% CI of one value: none, not 0
                               message="setting eval_tasks=1: expected int >= 2"),
    "set bad value": flags("--task", "calrec", "--set", "tau=cold", message="--set: tau='cold': expected float > 0"),
    "alpha beta sum": flags("--task", "calrec", "--alpha", "0.7", "--beta", "0.6", message="setting alpha + beta = 0.7 + 0.6: must be <= 1"),
    "flag of another task": flags("--task", "sinusoid", "--beams", "3", message="--beams: --task sinusoid has no setting beams"),
    "data missing": flags("--task", "maml", "--data", "/no/such/glue", message="--data /no/such/glue"),
    # --- every kind of setting refuses what it does not allow, through --set as through its flag
    **settings("calrec", ("eval_interval", "0"), ("tau", "0"), ("beams", "0"), ("batch_size", "0"), ("n_head", "3"),
               ("vocab_size", "10"), ("alpha", "1.5"), ("dropout", "0.95"), ("max_history", "0"),
               ("softmax_over", "keys"), ("stages", "3"), ("every_position", "maybe"), ("prior_weights", ""),
               ("recent_decays", "0.5,2"), ("lr", "nan"), ("lr", "inf"), ("top_k", "-1"), ("block_size", "8")),
    **settings("maml", ("inner_steps", "0"), ("meta_batch", "0"), ("max_len", "2"), ("n_train", "0"),
               ("method", "bogus"), ("sampling", "bogus"), ("inner_lr", "-1"), ("seeds", "0"), ("n_head", "3")),
    **settings("sinusoid", ("steps", "0"), ("k", "0"), ("eval_steps", "1,x"), ("inner_lr", "-1")),
    "tau flag zero": flags("--task", "calrec", "--tau", "0", message="setting tau=0.0: expected float > 0"),
    "stages flag": flags("--task", "calrec", "--stages", "3", message="setting stages=3: expected 1 or 2 or both"),
    "inner steps flag": flags("--task", "maml", "--inner-steps", "0", message="setting inner_steps=0"),
    "n-train flag": flags("--task", "maml", "--n-train", "8,x", message="n_train='8,x'"),
    "threads zero": flags("--task", "sinusoid", "--threads", "0", message="--threads: must be a positive integer"),
    "seed too large": flags("--task", "sinusoid", "--seed", str(2 ** 32), message="--seed: must be a whole number"),
    "device unknown": flags("--task", "calrec", "--device", "tpu", message="--device: invalid choice"),
    # --- nothing silent: a repeated flag, an empty path, splits that contradict each other, a NUL byte
    "flag given twice": flags("--task", "calrec", "--beams", "2", "--beams", "3", message="--beams is given twice"),
    "data given twice": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"], "--data", w["sci"]],
                                        "--data is given twice"),
    "flag and set": flags("--task", "calrec", "--tau", "0.1", "--set", "tau=0.2", message="setting tau is given twice"),
    "set twice": flags("--task", "calrec", "--set", "tau=0.1", "--set", "tau=0.2", message="setting tau is given twice"),
    "empty out-dir": flags("--task", "sinusoid", "--out-dir", "", message="--out-dir: an empty path"),
    "empty data": flags("--task", "calrec", "--data", "", message="--data : no such folder"),
    "empty init": flags("--task", "calrec", "--init", "", message="--init : no such checkpoint"),
    "test user twice": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.test.inter"), b"0\t1 2 3\t4\n"),
                                   "Alpha.test.inter:14: user 0 listed twice (line 2)"),
    "valid user twice": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.valid.inter"), b"3\t1 2\t4\n"),
                                    "Alpha.valid.inter:14: user 3 listed twice"),
    "valid missing half": calrec_data(lambda d: half_the_users(os.path.join(d, "Alpha.valid.inter")),
                                      "Alpha.test.inter:7: user 5 is not in the valid split"),
    "test user unknown to valid": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.test.inter"),
                                                                     b"99\t1 2 3\t4\n"),
                                              "Alpha.test.inter:14: user 99 is not in the valid split"),
    "nul in item text": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.item"), b"8\tgad\x00get\tB\n"),
                                    "Alpha.item:10:6: a NUL byte"),
    "nul in text file": calrec_data(lambda d: append_bytes(os.path.join(d, "Sci.text"), b"AS4\tNa\x00il. X. Y. \n"),
                                    "Sci.text:5:", folder="sci"),
    "nul in glue": glue(lambda g: append_bytes(os.path.join(g, "SST-2", "train.tsv"), b"bad \x00 byte\t1\n"),
                        "SST-2/train.tsv:62:5: a NUL byte"),
    # --- a run refused part-way, into the finished run's --out-dir: its files are put back as they were
    "loss diverges": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"], *TINY_CALREC, "--set", "lr=1e30",
                                      "--set", "warmup=0"], "training diverged: the loss is nan"),
    "maml diverges": lambda w, tmp: (["--task", "maml", "--data", w["glue"], *SMALL_GLUE, "--method", "maml", "--set",
                                      "outer_lr=1e30", "--set", "meta_steps=3", "--set", "seeds=1"], "diverged"),
    "a fine-tune diverges (not hidden by selecting step 0)": lambda w, tmp: (
        ["--task", "maml", "--data", w["glue"], *SMALL_GLUE, "--method", "none", "--set", "inner_lr=1e30", "--set",
         "seeds=1"], "training diverged: the loss is nan"),
    "reptile diverges (its step returns no loss)": lambda w, tmp: (
        ["--task", "maml", "--data", w["glue"], *SMALL_GLUE, "--method", "reptile", "--set", "outer_lr=1e30", "--set",
         "meta_steps=3", "--set", "seeds=1"], "training diverged: the weights are not finite"),
    # --- a checkpoint and the tokenizer it was trained with
    "init a device": init(lambda w, tmp: os.devnull, f"{os.devnull}: not a regular file"),
    "init beside another tokenizer": init(other_tokenizer, "ckpt.pt: was trained with another tokenizer than"),
    "maml init into calrec": init(short_model, "init_maml.pt: its model reads at most 48 tokens"),
    "resume with replaced tokenizer": resume_with_replaced_tokenizer,
    "resume after the --init file changed": resume_after_the_init_file_changed,
    "resume with --init added": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"], *TINY_CALREC, "--init",
                                                 w["gpt2"], "--resume"], "was saved by a run with other init;"),
    "resume with an empty column added": lambda w, tmp: (["--task", "calrec", "--data", alpha_with_an_empty_column(
        w, tmp), *TINY_CALREC, "--resume"], "state.pt: was saved by a run with other data"),
    "resume with other data": lambda w, tmp: (["--task", "calrec", "--data", copy_and_edit_alpha(w, tmp), *TINY_CALREC,
                                               "--resume"], "state.pt: was saved by a run with other data"),
    "resume with other seed": resume(lambda p, tmp: None, "state.pt: was saved by a run with other seed",
                                     flags=("--seed", "3")),
    "resume with other threads": resume(lambda p, tmp: resave(p, lambda s: (s["state"]["key"].update(threads=3), s.update(
        fingerprint=fingerprint(s["state"])))), "state.pt: was saved by a run with other threads"),
    "resume of another task": lambda w, tmp: (["--task", "maml", "--resume"],
                                              "state.pt: is the state of a --task calrec run; resume it with that task"),
    # --- paths of the wrong kind
    "data is a file": lambda w, tmp: (["--task", "calrec", "--data", os.path.join(w["alpha"], "Alpha.item")],
                                      "Alpha.item: is a file, not a folder"),
    "results.json is a folder": lambda w, tmp: (["--task", "sinusoid", "--out-dir", folder_holding(tmp, "results.json")],
                                                "results.json: is a folder; a run writes a file there"),
    "state.pt is a folder": lambda w, tmp: (["--task", "calrec", "--out-dir", folder_holding(tmp, "state.pt")],
                                            "state.pt: is a folder; a run writes a file there"),
    "log.txt a link to a file elsewhere": lambda w, tmp: (  # appended to, it would change that file
        ["--task", "sinusoid", "--out-dir", link_holding(tmp, "log.txt")],
        "log.txt: is not a regular file; a run writes a file there"),
    "a link where results.json is written first": lambda w, tmp: (  # atomic_write would write through it
        ["--task", "sinusoid", "--out-dir", link_holding(tmp, ".results.json.tmp")],
        ".results.json.tmp: is not a regular file; a run writes a file there"),
    "a folder where results.json is written first": lambda w, tmp: (  # atomic_write's temporary file
        ["--task", "sinusoid", "--out-dir", folder_holding(tmp, ".results.json.tmp")],
        ".results.json.tmp: is a folder; a run writes a file there"),
    "init folder without config": init(lambda w, tmp: (tmp / "g").mkdir() or str(tmp / "g"), "config.json: missing"),
    "item file is a folder": calrec_data(lambda d: os.remove(os.path.join(d, "Alpha.valid.inter")) or
                                         os.mkdir(os.path.join(d, "Alpha.valid.inter")),
                                         "Alpha.valid.inter: is a folder, not a file"),
    "few-shot out is a file": data_py("few-shot", "--glue", "{glue}", "--out", "{out}/log.txt",
                                      message="log.txt: is a file, not a folder"),
    "few-shot glue is a file": data_py("few-shot", "--glue", "{out}/log.txt", message="log.txt: is a file, not a folder"),
    "file url of two slashes": data_py("amazon", "Tools", "--url", "file://tmp/mirror", "--out", "{tmp}/a",
                                       message="'file://tmp/mirror' names the host 'tmp'; a folder here is "
                                               "file:///tmp/mirror (three slashes)"),
    "few-shot glue missing": data_py("few-shot", "--glue", "{tmp}/nowhere", message="nowhere: no such folder"),
    "glue out is a file": data_py("glue", "--tasks", "RTE", "--out", "{out}/log.txt", message="is a file, not a folder"),
    "amazon out is a file": data_py("amazon", "Tools", "--out", "{out}/log.txt", message="is a file, not a folder"),
    "amazon out empty": data_py("amazon", "Tools", "--out", "", message="--out: an empty path"),
    "amazon bad category": data_py("amazon", "Tools/../x", "--out", "{tmp}/a", message="not an Amazon 2018 category"),
    "few-shot k zero": data_py("few-shot", "--glue", "{glue}", "--k", "0", message="--k: must be a positive integer"),
    "few-shot seeds": data_py("few-shot", "--glue", "{glue}", "--seeds", "1,x", message="--seeds: expected"),
    "glue unknown task": data_py("glue", "--tasks", "WNLI", "--out", "{tmp}/g", message="unknown GLUE task"),
    # --- the run's files: --out-dir, --init, --resume, the flags
    "out-dir a loop of links": lambda w, tmp: (os.symlink(tmp / "loop", tmp / "loop") or
                                               ["--task", "sinusoid", "--out-dir", str(tmp / "loop")],
                                               "loop: cannot be created"),
    "amazon out a dangling link": lambda w, tmp: (os.symlink(tmp / "nowhere" / "x", tmp / "a") or
                                                  ["data.py", "amazon", "Tools", "--out", str(tmp / "a")],
                                                  "a: cannot be created"),
    "log.txt a dangling link": lambda w, tmp: (copy(w["out"], tmp / "o") and os.remove(tmp / "o" / "log.txt") or
                                               os.symlink(tmp / "nowhere", tmp / "o" / "log.txt") or
                                               ["--task", "sinusoid", "--out-dir", str(tmp / "o")],
                                               "log.txt: is not a regular file; a run writes a file there"),
    "a list setting naming a value twice": flags("--task", "maml", "--n-train", "16,16",
                                                 message="setting n_train=16,16: expected comma-separated, each int > 0, none twice"),
    "vocabulary beyond the tokenizer trainer": flags("--task", "calrec", "--set", "vocab_size=1000000000000",
                                                     message="setting vocab_size=1000000000000: expected int 259..1048576"),
    "sinusoid beyond memory": flags("--task", "sinusoid", "--set", "k=100000000000", message="settings too large: "
                                    "a meta-step (meta_batch, k, hidden) needs at least 745,058.1 GB"),
    # ^ 4 bytes x 2 layers x meta_batch 25 x k 1e11 x hidden 40 = 745,058.1 GB
    "calrec batch beyond memory": flags("--task", "calrec", "--set", "batch_size=1000000000",
                                        message="a training step (n_layer, n_embd, block_size, vocab_size, batch_size)"),
    "calrec width beyond memory": flags("--task", "calrec", "--set", "n_embd=1000000", "--set", "n_head=1",
                                        message="a training step (n_layer, n_embd, block_size, vocab_size, batch_size)"),
    "calrec layers beyond memory": flags("--task", "calrec", "--set", "n_layer=100000000",  # the cache: 2 L C a slot
                                         message="beam search (eval_batch, beams, constrained_beams) needs"),
    "SASRec batch beyond memory": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"], "--set",
                                                   "sasrec_batch_size=10000000000000"],
                                                  "SASRec's training step (sasrec_*) needs at least"),
    "maml meta-batch beyond memory": flags("--task", "maml", "--set", "meta_batch=100000000000",
                                           message="a meta-step (n_layer, n_embd, max_len, vocab_size, meta_batch, "
                                                   "shot) needs at least"),
    "16-shot folder not named 16-<seed>": glue(lambda g: os.makedirs(os.path.join(os.path.dirname(g), "glue-16shot",
                                                                             "RTE", "16-013")),
                                               "RTE/16-013: not a 16-shot folder (a folder 16-<seed>", SMALL_GLUE),
    "glue-16shot a file": glue(lambda g: write_lines(os.path.join(os.path.dirname(g), "glue-16shot"), ["x"]),
                               "glue-16shot: not a folder one can read; RTE's 16-shot splits go there", SMALL_GLUE),
    "glue-16shot a link to nowhere": glue(lambda g: os.symlink(os.path.join(os.path.dirname(g), "nowhere"), os.path.join(
        os.path.dirname(g), "glue-16shot")), "glue-16shot: not a folder one can read; RTE's 16-shot splits go there", SMALL_GLUE),
    "16-shot folder a file": glue(lambda g: os.makedirs(os.path.join(os.path.dirname(g), "glue-16shot", "RTE")) or
                                  write_lines(os.path.join(os.path.dirname(g), "glue-16shot", "RTE", "16-13"), ["x"]),
                                  "RTE/16-13: not a 16-shot folder (a folder", SMALL_GLUE),
    "16-shot split holding every reported example": glue(lambda g: few_shot_split(g, "16-13", 0) or write_task(
        os.path.join(os.path.dirname(g), "glue-16shot", "RTE"), "16-13", (lambda rows: rows[0] + "".join(rows[1:3]) * 16)(
            open(os.path.join(g, "RTE", "dev.tsv"), encoding="utf-8").read().splitlines(keepends=True)), ("train",)),
        "RTE/16-13: holds every example of the dev split", SMALL_GLUE),  # ^ dev: two examples, 30 times each
    "16-shot dev.tsv a copy of train.tsv": glue(lambda g: few_shot_split(g, "16-13", 0, 0),
                                               "RTE/16-13: train.tsv holds every example of its dev.tsv", SMALL_GLUE),
    "16-shot seed folder a copy of another": glue(lambda g: few_shot_split(g, "16-13", 0) or few_shot_split(g, "16-21", 0),
                                                  "RTE/16-21: train.tsv holds every example of ", SMALL_GLUE),
    "16-shot split of other sizes": glue(lambda g: shutil.copytree(os.path.join(g, "RTE"), os.path.join(
        os.path.dirname(g), "glue-16shot", "RTE", "16-13")), "RTE/16-13: train holds [30, 30] examples per label, not "
        "16 of each", SMALL_GLUE),
    "inter file a named pipe": calrec_data(lambda d: os.remove(os.path.join(d, "Alpha.valid.inter")) or os.mkfifo(
        os.path.join(d, "Alpha.valid.inter")), "Alpha.valid.inter: not a regular file"),
    "amazon category a link to an empty folder": amazon_out(lambda o: os.makedirs(o / "empty") or os.symlink(
        o / "empty", o / "Tools"), "amazon/Tools: a link to an empty folder; data.py builds a folder there"),
    "amazon downloads a file": amazon_out(lambda o: os.makedirs(o) or (o / "downloads").write_text("x"),
                                          "amazon/downloads: is not a folder; data.py keeps its downloads there"),
    "amazon download a folder": amazon_out(lambda o: os.makedirs(o / "downloads" / "Tools_5.json.gz"),
                                           "downloads/Tools_5.json.gz: is not a file; data.py keeps its downloads"),
    "amazon category a file": amazon_out(lambda o: os.makedirs(o) or (o / "Tools").write_text("x"),
                                         "amazon/Tools: is a file; data.py builds a folder there"),
    "raw reviews an empty file": amazon_raw(lambda d: open(os.path.join(d, "Tools_5.json.gz"), "wb").close(),
                                            "Tools_5.json.gz: not a complete gzip file (an empty file); deleted"),
    "init safetensors of integers": init(gpt2_variant(lambda f: edit_safetensors(
        f, lambda h, d: h["wpe.weight"].update(dtype="I32"))), "tensor wpe.weight has unsupported dtype 'I32'"),
    "init checkpoint of integers": init(integer_checkpoint, "ckpt.pt: transformer.wpe.weight holds torch.int64 values, "
                                                            "not floating-point weights"),
    "init config with its own lm_head": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "config.json"), '"n_embd": 32', '"n_embd": 32, "tie_word_embeddings": false')),
        "asks for {'tie_word_embeddings': False}, which this GPT does not compute"),
    "item and text files both": calrec_data(lambda d: shutil.copy(os.path.join(d, "Alpha.item"),
                                                                  os.path.join(d, "Alpha.text")),
                                            "holds both Alpha.item and Alpha.text"),
    "sinusoid diverges": flags("--task", "sinusoid", "--set", "outer_lr=1e30", "--set", "steps=2",
                               message="training diverged: sinusoid maml's weights are not finite"),
    "init_maml.pt is a folder": lambda w, tmp: (["--task", "maml", "--out-dir", folder_holding(tmp, "init_maml.pt")],
                                                "init_maml.pt: is a folder; a run writes a file there"),
    "threads beyond the cpus": flags("--task", "sinusoid", "--threads", "99999999999999999999",
                                     message="--threads: must be a whole number from 1 to"),
    "constrained beams beyond memory": flags("--task", "calrec", "--set", "constrained_beams=5000",
                                             message="beam search (eval_batch, beams, constrained_beams)"),
    "init config beyond the weights": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "config.json"), '"n_positions": 200', f'"n_positions": {10 ** 12}')),
        "model.safetensors: wpe.weight has shape (200, 32), but"),
    "init safetensors offsets text": init(gpt2_variant(lambda f: edit_safetensors(
        f, lambda h, d: h["wpe.weight"].update(data_offsets=["0", "4"]))), "wpe.weight: not a safetensors entry"),
    "init safetensors shape negative": init(gpt2_variant(lambda f: edit_safetensors(
        f, lambda h, d: h["wpe.weight"].update(shape=[-1, -1]))), "wpe.weight: not a safetensors entry"),
    "init safetensors header past the end": init(gpt2_variant(lambda f: open(
        os.path.join(f, "model.safetensors"), "r+b").write((2 ** 63).to_bytes(8, "little"))),
        "model.safetensors: not a safetensors file"),
    "init safetensors tensors overlap": init(gpt2_variant(lambda f: edit_safetensors(f, lambda h, d: h[
        "h.0.ln_2.weight"].update(data_offsets=h["h.0.ln_1.weight"]["data_offsets"]))), "its tensors overlap"),
    "init safetensors bytes after the tensors": init(gpt2_variant(lambda f: edit_safetensors(
        f, lambda h, d: d.extend(bytes(8)))), "model.safetensors: not a safetensors file (its tensors overlap, or"),
    "init config of another activation": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "config.json"), '"n_positions"', '"activation_function": "relu", "n_positions"')),
        "config.json: asks for {'activation_function': 'relu'}, which this GPT does not compute"),
    "init with a model size set": lambda w, tmp: (["--task", "maml", "--init", w["gpt2"], "--set", "n_layer=3"],
                                                  "--set n_layer: --init "),
    "init tokenizer of other weights": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "config.json"), '"eos_token_id": 0', '"eos_token_id": 399')),
        "tokenizer.json: <|endoftext|> is id 0, but "),
    "init eos id as text": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "config.json"), '"eos_token_id": 0', '"eos_token_id": "0"')), "says eos_token_id '0': not"),
    "init weights named twice": init(gpt2_variant(lambda f: edit_safetensors(f, named_twice)),
                                     "missing [], unexpected ['transformer.wte.weight']"),
    "init config of another MLP width": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "config.json"), '"n_positions"', '"n_inner": 64, "n_positions"')),
        "config.json: n_inner = 64, but this GPT's MLP is 4 * n_embd wide"),
    "init config of another model": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "config.json"), '"n_positions"', '"model_type": "gpt_neo", "n_positions"')),
        "config.json: asks for {'model_type': 'gpt_neo'}"),
    "init wordpiece tokenizer": init(gpt2_variant(wordpiece_tokenizer),
                                     "tokenizer.json: a WordPiece tokenizer; GPT-2's is a byte-level BPE"),
    "init gpt2 weights nan": init(gpt2_variant(lambda f: edit_safetensors(f, nan_weights)),
                                  "model.safetensors: wpe.weight holds NaN"),
    "init checkpoint weights nan": init(lambda w, tmp: resave(copy(w["out"], tmp / "run") + "/ckpt.pt", lambda ck: ck[
        "model"]["transformer.wpe.weight"].mul_(float("nan"))), "ckpt.pt: transformer.wpe.weight holds NaN"),
    "init checkpoint weights past float32": init(lambda w, tmp: resave(copy(w["out"], tmp / "run") + "/ckpt.pt", lambda ck: ck[
        "model"].update({"transformer.wpe.weight": ck["model"]["transformer.wpe.weight"].double().index_fill(
            0, torch.tensor([0]), 1e300)})), "ckpt.pt: transformer.wpe.weight holds NaN, or values float32 cannot hold"),
    "init checkpoint dropout text": init(lambda w, tmp: resave(copy(w["out"], tmp / "run") + "/ckpt.pt", lambda ck: ck[
        "config"].update(dropout="high")), "ckpt.pt: its config does not describe a GPT"),
    "resume state of another layout": resume(lambda p, tmp: resave(p, lambda s: s.update(s.pop("state"))),
                                             "state.pt: not the state of a run of this project"),
    "resume state without done": resume(lambda p, tmp: resave(p, lambda s: s["state"].pop("done")), DAMAGED),
    "resume lm_config not a gpt": resume(lambda p, tmp: resave(p, lambda s: s["state"]["done"].update(
        lm_config={"x": 1})), DAMAGED),
    "resume lm_config of other sizes": resume(lambda p, tmp: resave(p, lambda s: s["state"]["done"]["lm_config"].update(
        vocab_size=7)), DAMAGED),
    "resume results not a dict": resume(lambda p, tmp: resave(p, lambda s: s["state"]["done"].update(results="xx")),
                                        DAMAGED),
    "resume stage weights of another shape": resume(lambda p, tmp: resave(p, lambda s: [
        w.resize_(1) for w in s["state"]["done"]["stage1"]["weights"].values()]), DAMAGED),
    "resume elapsed nan": resume(lambda p, tmp: resave(p, lambda s: s["state"].update(elapsed=float("nan"))), DAMAGED),
    "resume fingerprint of another state": resume(lambda p, tmp: resave(p, lambda s: s.update(fingerprint="0" * 64)),
                                                  DAMAGED),
    # --- the readers of data.py
    "item column named twice": calrec_data(lambda d: edit(os.path.join(d, "Alpha.item"), "brand:token", "TITLE"),
                                           "Alpha.item:1: column 3 ('TITLE') repeats the name of column 2"),
    "item column without a name": calrec_data(lambda d: edit(os.path.join(d, "Alpha.item"), "brand:", ":"),
                                              "Alpha.item:1: column 3 (':token') has no name"),
    "inter column named twice": calrec_data(lambda d: edit(os.path.join(d, "Alpha.valid.inter"), "item_id:token\n",
                                                           "item_id:token\titem_id:token\n"),
                                            "Alpha.valid.inter:1: column 4 ('item_id:token') repeats the name"),
    "glue column named twice": glue(lambda g: edit(os.path.join(g, "RTE", "dev.tsv"), "\tlabel\n", "\tlabel\tlabel\n"),
                                    "RTE/dev.tsv:1: column 5 ('label') repeats the name of column 4"),
    "stsb score arabic digit": glue(lambda g: edit(os.path.join(g, "STS-B", "train.tsv"), "4.750", "\u0663"),
                                    "STS-B/train.tsv:2: STS-B score '\u0663' is not a number",
                                    flags=("--aux", "SST-2", "--targets", "STS-B")),
    "stsb score 4_0": glue(lambda g: edit(os.path.join(g, "STS-B", "dev.tsv"), "4.750", "4_0"),
                           "STS-B/dev.tsv:2: STS-B score '4_0' is not a number",
                           flags=("--aux", "SST-2", "--targets", "STS-B")),
    "glue line of a no-break space": glue(lambda g: append_bytes(os.path.join(g, "SST-2", "train.tsv"), b"\xc2\xa0\n"),
                                          "SST-2/train.tsv:62: expected 2 tab-separated columns"),
    "few-shot line of a no-break space": lambda w, tmp: (
        append_bytes(os.path.join(copy(w["glue"], tmp / "glue"), "CoLA", "train.tsv"), b"\xc2\xa0\n")
        or ["data.py", "few-shot", "--glue", str(tmp / "glue"), "--out", str(tmp / "fs")],
        "CoLA/train.tsv:61: expected 4 tab-separated columns"),
    "data path ends in /.": lambda w, tmp: (["--task", "calrec", "--data", w["alpha"], w["alpha"] + "/."],
                                            "/.: both hold the domain Alpha (Alpha.*): give it once or rename one"),
    "item text file is a folder": calrec_data(lambda d: os.remove(os.path.join(d, "Alpha.item")) or
                                              os.mkdir(os.path.join(d, "Alpha.item")),
                                              "Alpha.item: is a folder, not a file"),
    "item id empty": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.item"), b" \tgadget\tB\n"),
                                 "Alpha.item:10: item id '' is empty or holds a space"),
    "item id with a space inside": calrec_data(lambda d: edit(os.path.join(d, "Alpha.item"), "\n3\t", "\n3 x\t"),
                                               "Alpha.item:5: item id '3 x' is empty or holds a space"),
    "item id with a space listed twice": calrec_data(lambda d: append_bytes(os.path.join(d, "Alpha.item"),
                                                                            b"3 \tagain\tBrand0\n"),
                                                     "Alpha.item:10: item 3 listed twice"),
    "init token id beyond the model": init(gpt2_variant(lambda f: (
        edit(os.path.join(f, "tokenizer.json"), '"<|endoftext|>": 0,', '"<|endoftext|>": 100000,'),
        edit(os.path.join(f, "config.json"), '"eos_token_id": 0', '"eos_token_id": 100000'))),  # config.json agrees
                                           "tokenizer.json: token '<|endoftext|>' has id 100000, beyond a model"),
    # --- the data commands (download.py)
    "raw id a list": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"), raw_reviews() + [
        {"reviewerID": ["u9"], "asin": "A", "unixReviewTime": 1}]),
        "Tools_5.json.gz:20: reviewerID ['u9'] is not an id"),
    "raw meta id a dict": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"), META + [
        {"asin": {"x": 1}, "title": "x"}]), "meta_Tools.json.gz:9: asin {'x': 1} is not an id"),
    "raw meta id a number": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"), META + [
        {"asin": 17, "title": "x"}]), "meta_Tools.json.gz:9: asin 17 is not an id"),
    "raw meta id empty": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"), META + [
        {"asin": "", "title": "x"}]), "meta_Tools.json.gz:9: asin '' is not an id"),
    "raw meta id with a space": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"), META + [
        {"asin": "H X", "title": "x"}]), "downloads/meta_Tools.json.gz:9: asin 'H X' is not an id"),  # the raw file
    "raw time too large": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"), raw_reviews() + [
        '{"reviewerID": "u9", "asin": "A", "unixReviewTime": 1e999}']),
        "Tools_5.json.gz:20: unixReviewTime inf is not an integer"),
    "raw time a bool": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"), raw_reviews() + [
        {"reviewerID": "u9", "asin": "A", "unixReviewTime": True}]), "Tools_5.json.gz:20: unixReviewTime True is not"),
    "raw meta text a dict": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"), META + [
        {"asin": "H", "title": "x", "brand": {"x": "y"}}]), "meta_Tools.json.gz:9: brand {'x': 'y'} is not text"),
    "raw meta title a list": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"), META + [
        {"asin": "H", "title": ["a", "b"]}]), "meta_Tools.json.gz:9: title ['a', 'b'] is not text"),
    "raw meta category path": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"), META + [
        {"asin": "H", "title": "x", "category": ["Root", 3]}]), "meta_Tools.json.gz:9: category ['Root', 3] is not a"),
    "raw meta text with nul": amazon_raw(lambda d: write_lines(os.path.join(d, "meta_Tools.json.gz"), META + [
        {"asin": "H", "title": "a\0b"}]), "meta_Tools.json.gz:9: title 'a\\x00b' is not text"),
    "amazon url without scheme": data_py("amazon", "Tools", "--url", "{tmp}/mirror", "--out", "{tmp}/a",
                                         message="--url: expected an http://, https:// or file:// URL"),
    "few-shot seed too large": data_py("few-shot", "--glue", "{glue}", "--seeds", f"13,{2 ** 32}",
                                       message="--seeds: expected comma-separated integers from 0 to 4294967295"),
    "few-shot seed twice": data_py("few-shot", "--glue", "{glue}", "--seeds", "13,13", "--out", "{tmp}/s",
                                   message="--seeds: expected comma-separated integers from 0 to 4294967295, none twice"),
    "few-shot out the glue folder": data_py("few-shot", "--glue", "{glue}", "--out", "{glue}",
                                            message="is the --glue folder; the 16-shot splits go into a folder of"),
    "item2index blank line then a bad one": calrec_data(
        lambda d: append_bytes(os.path.join(d, "Sci.item2index"), b"\n\nAS9\tx\n"),
        "Sci.item2index:6: expected 'ASIN<TAB>integer id'", folder="sci"),
    # --- found by a sixth probe
    "init config.json nested deeply": init(gpt2_variant(lambda f: open(os.path.join(f, "config.json"), "w").write(
        "[" * 100000 + "]" * 100000)), "config.json: not a GPT-2 config.json (RecursionError"),
    "init config.json integer of 5000 digits": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "config.json"), '"n_layer": 1', '"n_layer": 1' + "0" * 5000)), "config.json: not a GPT-2"),
    "raw review nested deeply": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"), raw_reviews() + [
        "[" * 100000 + "]" * 100000]), "Tools_5.json.gz:20: not a JSON object"),
    "raw time of 5000 digits": amazon_raw(lambda d: write_lines(os.path.join(d, "Tools_5.json.gz"), raw_reviews() + [
        '{"reviewerID": "u9", "asin": "A", "unixReviewTime": 1' + "0" * 5000 + "}"]),
        "Tools_5.json.gz:20: not a JSON object"),
    "init weight sparse": init(odd_tensor_checkpoint(lambda t: t.to_sparse()), "wpe.weight is not a dense tensor"),
    "init weight on the meta device": init(odd_tensor_checkpoint(lambda t: torch.empty_like(t, device="meta")),
                                           "wpe.weight is not a dense tensor"),
    "resume state refingerprinted without resumes": resume(refingerprinted(lambda st: st.pop("resumes")),
                                             "state.pt: not the state of a run of this project"),
    "resume state elapsed text": resume(refingerprinted(lambda st: st.update(elapsed="1 s")),
                                        "state.pt: not the state of a run of this project"),
    "init tokenizer that truncates": init(gpt2_variant(lambda f: edit(
        os.path.join(f, "tokenizer.json"), '"truncation": null', '"truncation": {"direction": "Right", '
        '"max_length": 3, "strategy": "LongestFirst", "stride": 0}')),
        "tokenizer.json: does not encode text as GPT-2's tokenizer does"),
    "init tokenizer without its decoder": init(gpt2_variant(lambda f: rewrite_json(os.path.join(f, "tokenizer.json"),
                                                                                   decoder=None)),
                                               "tokenizer.json: does not encode text as GPT-2's tokenizer does"),
    "glue 16-shot task a file": glue(lambda g: os.makedirs(os.path.join(os.path.dirname(g), "glue-16shot")) or
                                     open(os.path.join(os.path.dirname(g), "glue-16shot", "RTE"), "w").close(),
                                     "glue-16shot/RTE: not a folder one can read; RTE's 16-shot splits go there",
                                     flags=SMALL_GLUE),
    "valid target not the item before the test target": calrec_data(lambda d: shutil.copy(
        os.path.join(d, "Alpha.test.inter"), os.path.join(d, "Alpha.valid.inter")),
        "Alpha.valid.inter:2: this history is not the user's items before its target"),
    "learning rate past a float32 step": flags("--task", "calrec", "--set", "lr=1e40",
                                               message="setting lr=1e+40: expected float 0..1e30"),
    "inner learning rate past a float32 step": flags("--task", "maml", "--set", "inner_lr=1e308",
                                                     message="setting inner_lr=1e+308: expected float 0..1e30"),
    "top_k below the cut-offs reported": flags("--task", "calrec", "--set", "top_k=10",
                                               message="setting top_k=10: expected int >= 20"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_input_is_one_line_and_changes_nothing(world, tmp_path, capsys, name):
    original = snapshot(world["out"])
    try:
        argv, message = CASES[name](world, tmp_path)  # a --resume case may spoil the run's state.pt first
        if "--out-dir" not in argv and argv[0] != "data.py":
            argv = argv + ["--out-dir", world["out"]]
        before = snapshot(world["out"])
        with pytest.raises(SystemExit) as e:
            download.main(argv[1:]) if argv[0] == "data.py" else train.main(argv)
        out, err = capsys.readouterr()
        assert e.value.code == 2, err
        assert message in err, err
        lines = [line for line in err.splitlines() if line.strip() and "%|" not in line and "B/s]" not in line]
        # ^ not progress bars (with a total: "%|"; a download of unknown length: "... B/s]")
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in out + err
        after = snapshot(world["out"])
        assert after == before, sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
        assert not (tmp_path / "ran").exists()  # no pickle's code ran
    finally:
        for rel, raw in original.items():
            with open(os.path.join(world["out"], rel), "wb") as f:
                f.write(raw)


def test_the_table_covers_every_task_and_kind_of_input():
    assert len(CASES) >= 100
    kinds = {"calrec": 0, "maml": 0, "sinusoid": 0, "init": 0, "resume": 0, "out-dir": 0, "raw": 0, "glue": 0}
    for name, case in CASES.items():
        text = name + repr(case.__code__.co_consts) + repr([c.cell_contents for c in case.__closure__ or ()])
        for kind in kinds:
            kinds[kind] += kind in text
    assert all(kinds.values()), kinds


def test_a_disk_that_fills_up_mid_run_is_one_line_and_leaves_the_earlier_run(world, monkeypatch, capsys):
    """Every file a run writes goes through a temporary file (here: the tokenizer's, the first write, fails)."""
    original, real_open = snapshot(world["out"]), open

    def full_disk(path, *args, **kwargs):
        if os.path.basename(str(path)).startswith(".tokenizer.json.tmp"):
            raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--out-dir", world["out"]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "tokenizer.json: cannot be written (No space left on device)" in err
    assert snapshot(world["out"]) == original


def test_a_run_whose_console_goes_away_finishes_with_every_line_in_its_log(world, tmp_path):
    read, write = os.pipe()
    os.close(read)  # `| head` that has what it wanted: every console line meets a closed pipe
    run = subprocess.run([sys.executable, "train.py", "--task", "calrec", "--data", world["alpha"], *TINY_CALREC,
                          "--out-dir", str(tmp_path / "out")], stdout=write, stderr=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.abspath(train.__file__)))
    os.close(write)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert (tmp_path / "out" / "results.json").is_file()
    assert "wrote " + str(tmp_path / "out" / "results.json") in (tmp_path / "out" / "log.txt").read_text()


def test_no_room_to_set_the_earlier_run_aside_is_one_line_and_changes_nothing(world, monkeypatch, capsys):
    original, entries = snapshot(world["out"]), sorted(os.listdir(world["out"]))

    def no_room(*args, **kwargs):  # out of inodes: neither a hard link nor a copy can be made
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "link", no_room)
    monkeypatch.setattr(shutil, "copy2", no_room)
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--out-dir", world["out"]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"--out-dir {world['out']}: cannot set the earlier run's files aside (No space left on device)" in err
    assert snapshot(world["out"]) == original and sorted(os.listdir(world["out"])) == entries  # no .earlier<pid>


class DiskWithRoom(io.RawIOBase):
    """A file appended to on a disk with `room` bytes left: a write past them fails, as ENOSPC does."""

    def __init__(self, path, room):
        self.file, self.room = open(path, "ab"), room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(b)
        return self.file.write(b)

    def close(self):
        self.file.close()
        super().close()


@pytest.mark.parametrize("room", [0, 3000])  # full at the run's header line in log.txt, or after some lines
def test_a_disk_that_fills_up_under_log_txt_is_one_line_and_leaves_the_earlier_run(world, monkeypatch, capsys, room):
    original = snapshot(world["out"])
    monkeypatch.setattr(engine.LogFile, "_open", lambda self: io.TextIOWrapper(
        io.BufferedWriter(DiskWithRoom(self.baseFilename, room)), encoding="utf-8"))
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--out-dir", world["out"]])
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bars
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "log.txt: cannot be written (No space left on device)" in err
    assert snapshot(world["out"]) == original  # log.txt cut back to its length, the other files put back


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_a_read_only_out_dir_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "sinusoid", "--out-dir", str(folder)])
    assert e.value.code == 2 and "ro: this folder is not writable" in capsys.readouterr().err


def test_resuming_after_the_16_shot_splits_changed_is_refused(world, tmp_path, capsys):
    """The run's data are the GLUE files and the 16-shot splits next to them: a changed split is other data."""
    g = copy(world["glue"], tmp_path / "glue")
    few_shot_split(g, "16-13", 0)
    shot = str(tmp_path / "glue-16shot" / "RTE" / "16-13")
    argv = ["--task", "maml", "--data", g, *SMALL_GLUE[:4], "--n-train", "8", "--set", "meta_steps=2", "--set",
            "ft_steps=2", "--set", "eval_interval=1", "--set", "seeds=1", "--method", "maml", "--out-dir", str(tmp_path / "o")]
    train.main(argv)
    edit(os.path.join(shot, "train.tsv"), "Premise 0.", "Premise zero.")
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--resume"])
    assert e.value.code == 2 and "state.pt: was saved by a run with other data" in capsys.readouterr().err


@pytest.mark.parametrize("spoil", ["delete", "truncate"])
def test_resuming_a_finished_run_writes_a_deleted_or_damaged_checkpoint_again(world, tmp_path, spoil):
    out = copy(world["out"], tmp_path / "out")
    before = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    if spoil == "delete":
        os.remove(os.path.join(out, "ckpt.pt"))
    else:
        os.truncate(os.path.join(out, "ckpt.pt"), 1000)
    train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--out-dir", out, "--resume"])
    after = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert after.keys() == before.keys() and all(torch.equal(after["model"][k], v) for k, v in before["model"].items())


@pytest.mark.parametrize("task", ["calrec", "maml"])
def test_resuming_a_run_whose_tokenizer_was_deleted_trains_the_same_one_again(world, tmp_path, task):
    argv = (["--task", "calrec", "--data", world["alpha"], *TINY_CALREC] if task == "calrec" else
            ["--task", "maml", "--data", world["glue"], *SMALL_GLUE, "--method", "maml", "--set", "meta_steps=2",
             "--set", "ft_steps=2", "--set", "eval_interval=1", "--set", "seeds=1"])
    out = copy(world["out"], tmp_path / "out") if task == "calrec" else str(tmp_path / "out")
    if task == "maml":
        train.main(argv + ["--out-dir", out])
    before = snapshot(out)["tokenizer.json"]
    os.remove(os.path.join(out, "tokenizer.json"))
    train.main(argv + ["--out-dir", out, "--resume"])
    assert snapshot(out)["tokenizer.json"] == before


@pytest.mark.parametrize("env", [dict(RANK="0", MASTER_PORT=None), dict(MASTER_ADDR=None), dict(WORLD_SIZE="0"),
                                 dict(RANK="3"), dict(MASTER_PORT="99999"), dict(MASTER_ADDR=" "),
                                 dict(LOCAL_RANK="-1"), dict(WORLD_SIZE="2²")])
def test_rank_without_torchrun_is_one_line(tmp_path, monkeypatch, capsys, env):
    """torchrun's variables, one of them missing or impossible (RANK 3 of 2 would wait forever for its peers)."""
    good = dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29555", LOCAL_RANK="0")
    for name, value in dict(good, **env).items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "calrec", "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: RANK is set, but not with WORLD_SIZE, MASTER_ADDR and "
                                                "MASTER_PORT as torchrun sets them") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_one_process_of_torchrun_s_variables_joins_no_group(world, tmp_path, monkeypatch):
    """WORLD_SIZE=1 (torchrun --nproc_per_node=1, or variables left in a shell): a master that cannot be reached
    made the run wait for it half an hour; one process has no peer to wait for."""
    for name, value in dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="no.such.host.invalid", MASTER_PORT="29520").items():
        monkeypatch.setenv(name, value)
    train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--out-dir", str(tmp_path / "one")])
    assert (tmp_path / "one" / "results.json").is_file()


def test_a_world_size_of_one_written_01_joins_no_group(monkeypatch):
    """WORLD_SIZE=01 is one process, as the check of torchrun's variables reads it: no master to wait for."""
    for name, value in dict(RANK="0", WORLD_SIZE="01", MASTER_ADDR="no.such.host.invalid", MASTER_PORT="29520").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("joined a group of one"))
    assert engine.setup_distributed("cpu") == (0, "cpu")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("scheme", ["file", "FILE"])  # urlopen takes the scheme in any case
def test_a_mirror_s_named_pipe_is_refused_not_read_forever(world, tmp_path, capsys, scheme):
    for sub, name in (("categoryFilesSmall", "Tools_5.json.gz"), ("metaFiles2", "meta_Tools.json.gz")):
        os.makedirs(tmp_path / "mirror" / sub)
        os.mkfifo(tmp_path / "mirror" / sub / name)
    with pytest.raises(SystemExit) as e:
        download.main(["amazon", "Tools", "--url", f"{scheme}://{tmp_path / 'mirror'}", "--out", str(tmp_path / "a")])
    assert e.value.code == 2 and "Tools_5.json.gz is not a regular file" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(world, monkeypatch):
    """Anything that is not the user's mistake is not turned into a one-liner."""
    import calrec
    monkeypatch.setattr(calrec, "prepare", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train.main(["--task", "calrec", "--out-dir", str(world["root"] / "bug")])

    def bug(*args):
        raise RuntimeError("a shape mismatch")  # a RuntimeError other than running out of memory
    monkeypatch.setattr(calrec, "prepare", bug)
    with pytest.raises(RuntimeError, match="a shape mismatch"):
        train.main(["--task", "calrec", "--out-dir", str(world["root"] / "bug")])


@pytest.mark.parametrize("error, size", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ..."), "2.00 GiB"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 400000000000 bytes."),
     "400000000000 bytes"),
    (MemoryError(), None)])
def test_running_out_of_memory_mid_run_is_one_line(world, monkeypatch, capsys, error, size):
    """What the estimate before the run cannot foresee: an allocation fails during training (on any device)."""
    import calrec

    def oom(*args):
        raise error
    monkeypatch.setattr(calrec, "train_stage", oom)  # after the run has written its tokenizer, state and log
    out = copy(world["out"], world["root"] / f"oom-{size}")  # an earlier run's folder, as it must stay
    before = snapshot(out)
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--seed", "1", "--out-dir", out])
    line = f"error: out of memory{f' (allocating {size})' if size else ''}: a setting asks for more than this machine"
    assert e.value.code == 2 and capsys.readouterr().err.startswith(line)
    assert snapshot(out) == before, "a run out of memory changed the files an earlier run wrote"


@pytest.mark.parametrize("where", ["prepare", "log"])
def test_a_file_the_system_refuses_is_one_line(world, monkeypatch, capsys, where):
    """No permission (a folder that cannot be listed, a log.txt that cannot be appended to: what a user who is not
    root meets) is the path and the reason on one line, whichever step meets it; an OSError of no file is a bug."""
    import calrec
    out = copy(world["out"], world["root"] / f"refused-{where}")
    before, denied = snapshot(out), PermissionError(13, "Permission denied", os.path.join(out, "log.txt"))

    def refuse(*args):
        raise denied
    monkeypatch.setattr(*(calrec, "prepare") if where == "prepare" else (train, "open_log_file"), refuse)
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--seed", "1", "--out-dir", out])
    assert e.value.code == 2 and capsys.readouterr().err == f"error: {denied.filename}: Permission denied\n"
    assert snapshot(out) == before
    denied.filename = None
    with pytest.raises(PermissionError):
        train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--seed", "1", "--out-dir", out])


def test_compile_is_for_a_gpu_and_the_cpu_runs_the_loss_as_it_is(world, monkeypatch, tmp_path):
    """torch.compile on the CPU needs a C++ compiler (many machines have none) and failed at the first step, after
    the run had replaced an earlier run's files; --compile applies on a GPU, as --dtype does."""
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
    monkeypatch.setattr(torch, "compile", no_compiler)
    train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--compile", "--out-dir",
                str(tmp_path / "run")])
    assert (tmp_path / "run" / "results.json").is_file()


def test_a_folder_of_the_users_whose_name_starts_like_a_runs_aside_folder_is_kept(world):
    """A run puts its earlier files aside in .earlier<pid> and clears those a killed run left: nothing else."""
    out = copy(world["out"], world["root"] / "notes")
    os.makedirs(os.path.join(out, ".earlier-runs"))
    with open(os.path.join(out, ".earlier-runs", "notes.txt"), "w") as f:
        f.write("mine\n")
    os.makedirs(os.path.join(out, ".earlier12345"))  # left by a run killed outright
    train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--seed", "1", "--out-dir", out])
    assert os.path.isfile(os.path.join(out, ".earlier-runs", "notes.txt"))
    assert not os.path.exists(os.path.join(out, ".earlier12345"))


def test_a_file_that_cannot_be_put_back_keeps_its_earlier_copy(world, monkeypatch, capsys):
    """A refused run puts the earlier run's files back; one that cannot be (made immutable since) is not lost: the
    others are put back, and its earlier copy stays in a folder the one error line names."""
    import calrec
    out = copy(world["out"], world["root"] / "immutable")
    before, replace = snapshot(out), os.replace

    def refused(*args):
        raise UserError("a refusal part-way")

    def replace_but_the_checkpoint(src, dst):
        if ".earlier" in str(src) and os.path.basename(dst) == "ckpt.pt":
            raise PermissionError(1, "Operation not permitted", dst)
        replace(src, dst)
    monkeypatch.setattr(calrec, "train_stage", refused)
    monkeypatch.setattr(os, "replace", replace_but_the_checkpoint)
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--seed", "1", "--out-dir", out])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "a refusal part-way; and ckpt.pt (Operation not permitted) " \
        "could not be put back: the earlier run's files are in " in err, err
    kept = err.rstrip("\n").rsplit(" ", 1)[1]
    with open(os.path.join(kept, "ckpt.pt"), "rb") as f:
        assert f.read() == before["ckpt.pt"]
    after = snapshot(out)
    assert {n: after[n] for n in before if n != "ckpt.pt"} == {n: b for n, b in before.items() if n != "ckpt.pt"}


def test_a_domain_temperature_near_0_is_a_valid_setting(world, tmp_path):
    """P(domain) ~ n ** (1 / T) overflows as T -> 0 unless it is computed in logs, and log(n) / T does too (inf - inf is
    nan) unless it is taken relative to the largest domain: T = 5e-324, the smallest float above 0, must run."""
    train.main(["--task", "calrec", "--data", world["alpha"], *TINY_CALREC, "--set", "domain_temperature=5e-324",
                "--out-dir", str(tmp_path / "cold")])
    assert (tmp_path / "cold" / "results.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--data", "{tmp}/nowhere"], "error: --data {tmp}/nowhere: no such folder"),  # refused before the first part
    (["--only", "train", "--only", "bm25", "--data", "{tmp}/Alpha/Alpha.item"], "Alpha.item: is a file, not a folder"),
    (["--only", "bm25", "--data", "{tmp}/Alpha", "--data", "{tmp}/Empty"], "--data is given twice"),
    (["--only", "bm25", "--data", ""], "--data: an empty path"),  # not the current folder
    (["--only", "train", "--data", "{tmp}/Alpha"], "--data: only the bm25 part reads it"),  # a good folder, unread
    (["--only", "bm25", "--data", "{tmp}/Empty"], "Empty: has no test users")])  # "0 queries ... 0.00 s", as a time
def test_bench_data_is_checked_before_any_part_runs(tmp_path, monkeypatch, capsys, argv, message):
    import bench
    write_atomic(str(tmp_path / "Alpha"), "Alpha")
    write_atomic(str(tmp_path / "Empty"), "Empty")
    no_rows(str(tmp_path / "Empty"))
    ran = []
    for part in set(bench.PARTS) - {"bm25"}:  # bm25 itself reads --data
        monkeypatch.setitem(bench.PARTS, part, lambda device, part=part, **_: ran.append(part))
    monkeypatch.setattr("sys.argv", ["bench.py", *[a.format(tmp=tmp_path) for a in argv]])
    with pytest.raises(SystemExit) as e:
        bench.main()
    out, err = capsys.readouterr()
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err and out == "" and ran == []


def test_bench_bm25_reads_the_data_folder(tmp_path, monkeypatch, capsys):
    import bench
    write_atomic(str(tmp_path / "Alpha"), "Alpha")
    monkeypatch.setattr("sys.argv", ["bench.py", "--only", "bm25", "--data", str(tmp_path / "Alpha"), "--only", "bm25"])
    bench.main()
    assert capsys.readouterr().out.count("### BM25 top-100 (Alpha): ") == 1  # named twice, run once
