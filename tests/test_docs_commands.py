"""The real-data commands of README.md and docs/*.md work as written once their `python data.py` commands have
run: tiny files in the official layouts (Amazon 2018, the GLUE archives, MRPC's sources) are served by a local
HTTP server, each `python data.py ...` of the docs is parsed by data.py's own parser and carried out against that
server, and each `python train.py ...` that reads `data/` runs from the folder they wrote, with flags appended
that only make it tiny."""

import glob
import gzip
import json
import os
import random
import re
import shlex
import zipfile


import data
import download
import train
from test_data_download import server  # noqa: F401  (the local HTTP server fixture)
from test_glue_reader import LAYOUTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"calrec": ["--set", "stage1_steps=2", "--set", "stage2_steps=2", "--eval-interval", "2", "--beams", "2",
                   "--set", "constrained_beams=2", "--set", "select_users=4", "--set", "bm25_valid_users=4", "--set", "sasrec_steps=2",
                   "--set", "n_layer=1", "--set", "n_embd=32", "--set", "vocab_size=400"],
        "maml": ["--set", "meta_steps=2", "--n-train", "8", "--eval-interval", "1", "--set", "n_layer=1",
                 "--set", "n_embd=16", "--set", "n_head=1", "--set", "vocab_size=300", "--set", "seeds=1",
                 "--set", "ft_steps=1", "--set", "max_len=32"]}


def doc_commands(program):
    """Every `python <program> ...` line of the docs' code blocks (a trailing backslash joins lines)."""
    found = []
    for path in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        with open(path, encoding="utf-8") as f:
            text = f.read().replace("\\\n", " ")
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            for line in block.splitlines():
                line = line.split("#")[0].strip()
                if line.startswith(f"python {program} "):
                    found.append(shlex.split(line)[2:])
    return found


# --- tiny data in the official layouts ----------------------------------------------


def amazon_files(root, category, seed):
    """A category's 5-core reviews and metadata, dense enough that the 5-core keeps users and items."""
    rng = random.Random(seed)
    items = [f"{category[:3].upper()}{i:03d}" for i in range(12)]
    meta = [{"asin": a, "title": f"{category} thing {i}", "brand": f"Brand{i % 3}", "category": ["Root", "Kind"]}
            for i, a in enumerate(items)]
    reviews = [{"reviewerID": f"u{u}", "asin": a, "unixReviewTime": 1000 + t, "overall": 5.0}
               for u in range(40) for t, a in enumerate(rng.sample(items, 8))]
    for sub, name, records in (("categoryFilesSmall", f"{category}_5.json.gz", reviews),
                               ("metaFiles2", f"meta_{category}.json.gz", meta)):
        os.makedirs(root / "amazon" / sub, exist_ok=True)
        with gzip.open(root / "amazon" / sub / name, "wt", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))


def glue_rows(name, n, offset=0):
    """n labelled rows of a GLUE task in its official layout, unique sentences, labels balanced."""
    header, first = LAYOUTS[name].splitlines()[0], LAYOUTS[name].splitlines()[-1].split("\t")
    spec = data.GLUE_TASKS[name]
    if not spec.get("header", True):
        header, first = None, LAYOUTS[name].splitlines()[0].split("\t")
    columns = header.lstrip("\ufeff").split("\t") if header else None
    rows = []
    for i in range(offset, offset + n):
        fields = list(first)
        for key in (spec["text_a"], spec["text_b"]):
            if key is not None:
                fields[columns.index(key) if columns else key] = f"sentence {i} of {key} words {i * 7 % 13}"
        if columns and "#1 ID" in columns:  # MRPC's pair ids: GLUE's dev list names pairs by them
            fields[columns.index("#1 ID")], fields[columns.index("#2 ID")] = str(i), str(10000 + i)
        label = spec["label"] if not columns else columns.index(spec["label"])
        fields[label] = f"{(i % 2) * 4.0 + 0.5}" if spec["labels"] is None else spec["labels"][i % len(spec["labels"])]
        rows.append("\t".join(fields))
    return ((header + "\n") if header else "") + "".join(r + "\n" for r in rows)


def glue_files(root):
    os.makedirs(root / "glue")
    for name, archive in download.GLUE_ARCHIVES.items():
        folder = {"QNLIv2.zip": "QNLI", "QQP-clean.zip": "QQP"}.get(archive, archive[:-4])
        dev = "dev_matched.tsv" if name == "MNLI" else "dev.tsv"
        with zipfile.ZipFile(root / "glue" / archive, "w") as z:
            z.writestr(f"{folder}/train.tsv", glue_rows(name, 90))
            z.writestr(f"{folder}/{dev}", glue_rows(name, 20, offset=1000))
    os.makedirs(root / "senteval")
    rows = glue_rows("MRPC", 110).splitlines()
    (root / "senteval" / "msr_paraphrase_train.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    dev_ids = [r.split("\t")[1:3] for r in rows[1:][:20]]
    (root / "mrpc_dev_ids.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in dev_ids), encoding="utf-8")


def test_the_docs_real_data_commands_work_as_written(server, tmp_path, monkeypatch):  # noqa: F811
    amazon, glue = doc_commands("data.py"), doc_commands("train.py")
    assert any(c[0] == "amazon" for c in amazon) and any(c[0] == "glue" for c in amazon)
    for i, category in enumerate({c for cmd in amazon if cmd[0] == "amazon" for c in
                                  download.build_parser().parse_args(cmd).categories}):
        amazon_files(server.root, category, seed=i)
    glue_files(server.root)
    work = tmp_path / "user"
    work.mkdir()
    monkeypatch.chdir(work)  # the docs' paths are relative: data/amazon, data/glue, ...
    for argv in amazon:  # python data.py ...: parsed as data.py parses it, fetched from the local server
        args = download.build_parser().parse_args(argv)
        if args.command == "amazon":
            download.prepare_amazon(args.categories, args.out, base_url=server.url + "/amazon",
                                    min_count=args.min_count)
        elif args.command == "glue":
            download.prepare_glue(args.out, args.tasks, base_url=server.url + "/glue/", mrpc_url=server.url + "/senteval/",
                                  mrpc_dev_ids_url=server.url + "/mrpc_dev_ids.tsv", expected_rows=None)
        else:
            download.main(argv)  # few-shot: local, exactly as written
    ran = 0
    for argv in glue:
        if not any(a.startswith("data/") for a in argv) or "--init" in argv:
            continue
        if "--set" in argv or any("$" in a for a in argv):  # docs/results.md's runs: longer schedules, shell variables
            continue
        task = argv[argv.index("--task") + 1]
        if "--out-dir" in argv:  # the run goes to this test's folder
            del argv[argv.index("--out-dir"):argv.index("--out-dir") + 2]
        out = train.main(argv + TINY[task] + ["--out-dir", str(tmp_path / f"run{ran}")])
        assert out is not None and os.path.isfile(tmp_path / f"run{ran}" / "results.json")
        ran += 1
    assert ran >= 2  # at least the CALRec and the MAML commands of the README
