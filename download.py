"""
Fetch the real data sets into the folders that data.py reads (nanoGPT keeps a prepare.py per data set; this one
file holds all three):

  amazon    Amazon Review Data 2018 (Ni, Li and McAuley, EMNLP 2019) from datarepo.eng.ucsd.edu: each category's
            5-core reviews and metadata -> <out>/<category>/, a RecBole/UniSRec benchmark folder
  glue      the official GLUE files from dl.fbaipublicfiles.com (MRPC built as GLUE's download script builds it)
            -> <out>/<task>/train.tsv and dev.tsv
  few-shot  LM-BFF's k-shot splits (Gao, Fisch and Chen, ACL 2021), drawn from GLUE's training files
            -> <out>/<task>/<k>-<seed>/

examples (python download.py ... is the same command line):
  python data.py amazon Industrial_and_Scientific Video_Games   # -> data/amazon/<category>/
  python data.py glue                                           # -> data/glue/<task>/
  python data.py few-shot                                       # -> data/glue-16shot/<task>/16-<seed>/
  python data.py amazon --help                                  # one command's options

Downloads are kept in <out>/downloads/: a rerun resumes a partial one and skips a complete one. Each is checked
(gzip's and zip's CRC-32s, GLUE's row counts); a folder is built under a temporary name and renamed when complete,
so it is never half-written. A finished folder is left alone; delete it to rebuild it.
"""

import argparse
import contextlib
import gzip
import http.client
import logging
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
import zlib

import numpy as np
from tqdm import tqdm

from data import GLUE_TASKS, check_glue_task, glue_task, leave_one_out, read_amazon_raw, read_atomic, read_glue_split
from model import UserError

log = logging.getLogger(__name__)

AMAZON_2018_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
# The official GLUE archives, as GLUE's own download script names them. MRPC is not in one archive: it is
# built from the Microsoft corpus's training file (mirrored by SentEval) and GLUE's list of dev pairs.
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
GLUE_ARCHIVES = {"CoLA": "CoLA.zip", "SST-2": "SST-2.zip", "QQP": "QQP-clean.zip", "STS-B": "STS-B.zip",
                 "MNLI": "MNLI.zip", "QNLI": "QNLIv2.zip", "RTE": "RTE.zip"}
MRPC_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"
MRPC_DEV_IDS_URL = ("https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/"
                    "data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc")
GLUE_ROWS = {  # task -> (train rows, dev rows) of the official files (MNLI's dev: dev_matched.tsv)
    "CoLA": (8551, 1043), "SST-2": (67349, 872), "MRPC": (3668, 408), "STS-B": (5749, 1500),
    "QQP": (363846, 40430), "MNLI": (392702, 9815), "QNLI": (104743, 5463), "RTE": (2490, 277),
}

# -----------------------------------------------------------------------------
# 1. downloads that resume, folders that appear only when complete


def fetch(url, path, hint_if_missing=None):
    """Download `url` to `path` (unless it is there already) and return `path`. The bytes go to path + ".part",
    renamed only when complete; an interrupted download resumes with an HTTP Range request (a server that answers
    with the whole file, 200 not 206, starts it over). A network failure is a UserError naming the URL, with
    `hint_if_missing` when the server has no such file (404)."""
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    part = path + ".part"
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    ranged = have > 0 and url.startswith(("http://", "https://"))  # file:// URLs are read whole
    try:
        total = _download(url, part, have if ranged else 0, os.path.basename(path))
    except urllib.error.HTTPError as e:
        if e.code == 416 and ranged:  # "range not satisfiable": the .part is no prefix of this file
            os.remove(part)
            return fetch(url, path, hint_if_missing)
        hint = f"; {hint_if_missing}" if e.code == 404 and hint_if_missing else ""
        raise UserError(f"{url}: HTTP {e.code} {e.reason}{hint}") from None
    except urllib.error.URLError as e:  # no connection: DNS, refused, timed out, no such local file
        raise UserError(f"{url}: {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:  # mid-download: a timeout, a dropped connection
        raise UserError(f"{url}: {str(e) or type(e).__name__}; rerun to resume the download") from None
    if total is not None and os.path.getsize(part) != total:
        raise UserError(f"{url}: the connection closed after {os.path.getsize(part)} of {total} bytes; "
                        "rerun to resume the download")
    os.replace(part, path)
    return path


def _download(url, part, have, name):
    """Append `url` to `part` from byte `have` on (from 0 when the server sends the whole file), with a progress
    bar; return the whole file's length when the server gives it."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.status != 206:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name)
        with open(part, "ab" if have else "wb") as f, bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    return total


@contextlib.contextmanager
def building(folder):
    """Yield a temporary folder to write `folder`'s files into; it becomes `folder` only if the body succeeds.
    It has `folder`'s name (read_atomic takes the data set's name from it), inside a hidden sibling that is
    removed whatever happens."""
    parent, name = os.path.split(os.path.normpath(folder))
    scratch = os.path.join(parent, f".{name}.tmp{os.getpid()}")
    tmp = os.path.join(scratch, name)
    os.makedirs(tmp)
    try:
        yield tmp
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(scratch)


# -----------------------------------------------------------------------------
# 2. Amazon Review Data 2018 -> benchmark folders


def check_gzip(path):
    """Read a .gz file to its end, where gzip checks the CRC-32 and length of what it unpacked. A truncated
    or corrupt download is deleted, so that a rerun fetches it again."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as e:
        os.remove(path)
        raise UserError(f"{path}: not a complete gzip file ({e}); deleted, rerun to download it again") from None


def fold_whitespace(text):
    """Runs of whitespace (tabs, newlines, ...) -> one space: a cell must stay in its column and on its line."""
    return " ".join(text.split())


def write_benchmark_folder(domain, folder):
    """A Domain -> the RecBole/UniSRec atomic files that read_atomic reads, in `folder` (named like the domain):
    <name>.item (the item keys, one text column per attribute, a missing value an empty cell) and
    <name>.train/.valid/.test.inter with one row per example of `leave_one_out`, users numbered 0..n-1."""
    name, keys = os.path.basename(folder), domain.item_keys
    columns = [f"{a.lower().replace(' ', '_')}:token_seq" for a in domain.attributes]  # read back as .title()
    with open(os.path.join(folder, f"{name}.item"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(["item_id:token"] + columns) + "\n")
        for key, item in zip(keys, domain.items):
            f.write("\t".join([key] + [fold_whitespace(item.get(a, "")) for a in domain.attributes]) + "\n")
    for s, split in enumerate(("train", "valid", "test")):  # the order of leave_one_out's results
        with open(os.path.join(folder, f"{name}.{split}.inter"), "w", encoding="utf-8", newline="\n") as f:
            f.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
            for user, (history, target) in enumerate(domain.test):  # a test example holds the whole sequence
                for h, t in leave_one_out([history + [target]])[s]:
                    f.write(f"{user}\t{' '.join(keys[i] for i in h)}\t{keys[t]}\n")


def prepare_amazon(categories, out, base_url=AMAZON_2018_URL, min_count=5):
    """Amazon Review Data 2018 categories (the site's file stems: Industrial_and_Scientific, ...) -> out/<category>/:
    the 5-core reviews and metadata go through read_amazon_raw (the spec's protocol), are written by
    write_benchmark_folder and read back with read_atomic, which must give the same Domain."""
    for category in categories:
        if not re.fullmatch(r"[A-Za-z0-9_]+", category):
            raise UserError(f"{category!r}: not an Amazon 2018 category file name; those are words joined by "
                            "underscores, such as Industrial_and_Scientific")
    for category in categories:
        folder = os.path.join(out, category)
        if os.path.exists(folder):
            log.info(f"{folder}: already there; delete it to rebuild")
            continue
        hint = f"is {category!r} an Amazon 2018 category file name such as Industrial_and_Scientific?"
        paths = [fetch(f"{base_url}/{sub}/{file}", os.path.join(out, "downloads", file), hint) for sub, file in
                 (("categoryFilesSmall", f"{category}_5.json.gz"), ("metaFiles2", f"meta_{category}.json.gz"))]
        for path in paths:
            check_gzip(path)
        domain = read_amazon_raw(*paths, name=category, min_count=min_count)
        if not domain.test:
            raise UserError(f"{paths[0]}: no user is left after the {min_count}-core; a smaller --min-count?")
        with building(folder) as tmp:
            write_benchmark_folder(domain, tmp)
            back = read_atomic(tmp)
            items = [{a: fold_whitespace(v) for a, v in item.items()} for item in domain.items]
            if (back.item_keys, back.items, back.train, back.valid, back.test) != \
                    (domain.item_keys, items, domain.train, domain.valid, domain.test):
                raise RuntimeError(f"{folder}: reads back other items or examples than were written")
        log.info(f"{folder}: {len(domain.test)} users, {domain.n_items} items; {len(domain.train)} train, "
                 f"{len(domain.valid)} valid and {len(domain.test)} test examples")


# -----------------------------------------------------------------------------
# 3. GLUE -> one folder per task


def unpack_glue_archive(archive, folder):
    """The files of an official GLUE archive's one top-level folder (CoLA/, QNLI/ in QNLIv2.zip, ...) -> folder,
    less the unlabelled test files (test*.tsv) and the subfolders (the pre-GLUE originals)."""
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()  # reads every member, checking its CRC-32
            if bad is not None:
                raise zipfile.BadZipFile(f"{bad} fails its CRC check")
            tops = {n.split("/")[0] for n in z.namelist()}
            if len(tops) != 1:
                raise UserError(f"{archive}: expected one top-level folder, found {sorted(tops)}")
            for member in z.namelist():
                _, _, file = member.partition("/")
                if file and "/" not in file and not (file.startswith("test") and file.endswith(".tsv")):
                    with z.open(member) as src, open(os.path.join(folder, file), "wb") as dst:
                        shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        os.remove(archive)
        raise UserError(f"{archive}: not a complete zip archive ({e}); deleted, rerun to download it "
                        "again") from None


def build_mrpc(source, dev_ids, folder):
    """GLUE's MRPC, made as GLUE's download script makes it: the lines of msr_paraphrase_train.txt whose pair
    of ids is in GLUE's dev list go to dev.tsv, the others to train.tsv; both start with the header line as it
    is (byte-order mark included). Each line is stripped, split on tabs and rejoined, with '\\n' line ends."""
    with open(dev_ids, encoding="utf-8") as f:
        dev = {tuple(line.strip().split("\t")) for line in f if line.strip()}
    with open(source, encoding="utf-8") as f, \
            open(os.path.join(folder, "train.tsv"), "w", encoding="utf-8", newline="\n") as train_f, \
            open(os.path.join(folder, "dev.tsv"), "w", encoding="utf-8", newline="\n") as dev_f:
        header = f.readline()
        train_f.write(header)
        dev_f.write(header)
        for line_no, line in enumerate(f, 2):
            fields = line.strip().split("\t")
            if len(fields) != 5:
                raise UserError(f"{source}:{line_no}: expected 5 tab-separated columns, got {len(fields)}")
            (dev_f if tuple(fields[1:3]) in dev else train_f).write("\t".join(fields) + "\n")


def prepare_glue(out, names=tuple(GLUE_TASKS), base_url=GLUE_URL, mrpc_url=MRPC_URL,
                 mrpc_dev_ids_url=MRPC_DEV_IDS_URL, expected_rows=GLUE_ROWS):
    """The official GLUE files -> out/<task>/ (train.tsv, dev.tsv; MNLI: dev_matched.tsv, dev_mismatched.tsv),
    without the unlabelled test files (dev plays the held-out role; the MAML run carves its validation split out
    of train). Every split is parsed and its rows counted against `expected_rows` ({task: (train, dev)}; None
    skips the count). The URLs are arguments so that tests can serve the official layout from a local server."""
    downloads = os.path.join(out, "downloads")
    for name in names:
        check_glue_task(name)
        folder = os.path.join(out, name)
        if os.path.exists(folder):
            log.info(f"{folder}: already there; delete it to rebuild")
            continue
        files = ({"msr_paraphrase_train.txt": mrpc_url + "msr_paraphrase_train.txt",
                  "mrpc_dev_ids.tsv": mrpc_dev_ids_url} if name == "MRPC" else
                 {GLUE_ARCHIVES[name]: base_url + GLUE_ARCHIVES[name]})
        sources = [fetch(url, os.path.join(downloads, file)) for file, url in files.items()]
        with building(folder) as tmp:
            if name == "MRPC":
                build_mrpc(*sources, tmp)
            else:
                unpack_glue_archive(*sources, tmp)
            task = glue_task(name, tmp)  # every line of every split, or an error naming file and line
            rows = (len(task["train"]["y"]), len(task["dev"]["y"]))
            if expected_rows is not None and rows != tuple(expected_rows[name]):
                raise UserError(f"{sources[0]}: gives {name} {rows[0]} train and {rows[1]} dev rows, the official "
                                f"files have {expected_rows[name][0]} and {expected_rows[name][1]}")
        log.info(f"{folder}: {rows[0]} train and {rows[1]} dev examples")


# -----------------------------------------------------------------------------
# 4. few-shot splits (LM-BFF)

LM_BFF_SEEDS = (100, 13, 21, 42, 87)  # the order of LM-BFF's script, which matters for CoLA (see below)


def _labelled_lines(glue_root, name):
    """glue_root/<name>/train.tsv checked (every line well-formed) -> its path, header ([] or [line]), data lines
    (bytes, as in the file) and {line: label} (STS-B: whether the score is at least 2.5)."""
    spec = check_glue_task(name)
    path = os.path.join(glue_root, name, "train.tsv")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; fetch GLUE first: python data.py glue --out {glue_root}")
    read_glue_split(path, name)  # every line well-formed, or an error naming file and line
    with open(path, "rb") as f:
        lines = [line for line in f.read().splitlines(keepends=True) if line.strip()]
    if not lines[-1].endswith((b"\n", b"\r")):
        lines[-1] += b"\n"  # a last line without its line end must not run into the next one
    if spec.get("header", True):
        header, lines = lines[:1], lines[1:]
        column = header[0].decode("utf-8-sig").rstrip("\r\n").split("\t").index(spec["label"])
    else:
        header, column = [], spec["label"]  # CoLA: by position
    label = {line: line.decode("utf-8").rstrip("\r\n").split("\t")[column].strip() for line in lines}
    if spec["labels"] is None:  # STS-B: the score, in two bins
        label = {line: int(float(score) >= 2.5) for line, score in label.items()}
    return path, header, lines, label


def _write_few_shot(path, name, folder, header, shuffled, label, k):
    """The first k lines of each label -> folder/train.tsv, the next k -> dev.tsv (MNLI: dev_matched.tsv)."""
    groups = {}
    for line in shuffled:
        groups.setdefault(label[line], []).append(line)
    for value, group in groups.items():
        if len(group) < 2 * k:
            raise UserError(f"{path}: label {value!r} has {len(group)} lines, fewer than 2k = {2 * k}")
    dev_name = "dev_matched.tsv" if name == "MNLI" else "dev.tsv"
    with building(folder) as tmp:
        for file, part in (("train.tsv", slice(0, k)), (dev_name, slice(k, 2 * k))):
            with open(os.path.join(tmp, file), "wb") as f:
                f.write(b"".join(header + [line for group in groups.values() for line in group[part]]))
        shot = glue_task(name, tmp)
        if not len(shot["train"]["y"]) == len(shot["dev"]["y"]) == k * len(groups):
            raise RuntimeError(f"{folder}: does not read back as {k} examples per label")
    log.info(f"{folder}: {k} train and {k} dev examples for each of {len(groups)} labels")


def make_few_shot(glue_root, out, names=("CoLA", "MRPC", "STS-B", "RTE"), k=16, seeds=LM_BFF_SEEDS):
    """LM-BFF's few-shot splits (Gao, Fisch and Chen, ACL 2021; their tools/generate_k_shot_data.py) of
    glue_root/<task>/train.tsv -> out/<task>/<k>-<seed>/: for each seed, the data lines (byte for byte) shuffled
    by numpy's legacy generator, grouped by label in order of first appearance (STS-B: score < 2.5 or not), the
    first k of each label to train.tsv, the next k to dev.tsv. GLUE's dev set stays the test set. A quirk is kept
    so that the splits equal the released ones: LM-BFF's script shuffles a file without a header (CoLA) in place,
    so each seed starts from the previous seed's order, in the script's order of seeds (100, 13, 21, 42, 87)."""
    for name in names:
        path, header, lines, label = _labelled_lines(glue_root, name)
        in_place = not header  # LM-BFF's quirk, see above
        order = sorted(seeds, key=lambda s: LM_BFF_SEEDS.index(s) if s in LM_BFF_SEEDS else len(LM_BFF_SEEDS))
        shuffled = list(lines)
        for seed in order if in_place else seeds:
            if not in_place:
                shuffled = list(lines)
            np.random.RandomState(seed).shuffle(shuffled)  # = np.random.seed(seed); np.random.shuffle(...)
            folder = os.path.join(out, name, f"{k}-{seed}")
            if os.path.exists(folder):
                log.info(f"{folder}: already there; delete it to rebuild")
            else:
                _write_few_shot(path, name, folder, header, shuffled, label, k)


# -----------------------------------------------------------------------------
# 5. the command line

def _positive_int(text):
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _seeds(text):
    seeds = text.split(",")
    if not all(s.strip().isdigit() for s in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return [int(s) for s in seeds]


def _glue_tasks(text):
    names = [t.strip() for t in text.split(",")]
    for t in names:
        if t not in GLUE_TASKS:
            raise argparse.ArgumentTypeError(f"unknown GLUE task {t!r}; expected some of {','.join(GLUE_TASKS)}")
    return names


def build_parser():
    p = argparse.ArgumentParser(prog="data.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="{amazon,glue,few-shot}")

    def command(name, summary, description, example):
        return commands.add_parser(name, help=summary, description=description, epilog="example:\n" + example,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)

    a = command(
        "amazon", "Amazon Review Data 2018 categories -> benchmark folders for --task calrec",
        "Fetch each category's 5-core reviews and metadata (Amazon Review Data 2018, Ni, Li and McAuley, EMNLP\n"
        "2019), apply the spec's protocol (items without a title dropped, time order, de-duplication, iterative\n"
        "k-core, leave-one-out) and write <out>/<category>/ in the RecBole/UniSRec atomic format\n"
        "(<category>.item, .train.inter, .valid.inter, .test.inter).",
        "  python data.py amazon Industrial_and_Scientific Video_Games --out data/amazon\n"
        "  python train.py --task calrec --data data/amazon/Video_Games data/amazon/Industrial_and_Scientific")
    a.add_argument("categories", nargs="+", metavar="CATEGORY",
                   help="a category's file name on the Amazon 2018 site, e.g. Industrial_and_Scientific")
    a.add_argument("--out", default="data/amazon", help="where the folders go (default: %(default)s)")
    a.add_argument("--min-count", type=_positive_int, default=5,
                   help="k of the iterative k-core: users and items with fewer interactions go "
                        "(default: %(default)s)")
    a.add_argument("--url", default=AMAZON_2018_URL,
                   help="the Amazon 2018 site, or a mirror laid out like it (categoryFilesSmall/, metaFiles2/; "
                        "file:// works) (default: %(default)s)")

    g = command(
        "glue", "the official GLUE files -> one folder per task for --task maml",
        "Fetch GLUE's official archives (MRPC: built as GLUE's download script builds it), check them (zip CRCs,\n"
        "every line parsed, the official row counts), drop the unlabelled test files and write\n"
        "<out>/<task>/train.tsv and dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv).",
        "  python data.py glue --tasks CoLA,MRPC,STS-B,RTE --out data/glue\n"
        "  python train.py --task maml --data data/glue")
    g.add_argument("--tasks", type=_glue_tasks, default=list(GLUE_TASKS),
                   help=f"comma-separated GLUE tasks (default: all eight, {','.join(GLUE_TASKS)})")
    g.add_argument("--out", default="data/glue", help="where the task folders go (default: %(default)s)")

    f = command(
        "few-shot", "LM-BFF's k-shot splits of GLUE's training files",
        "Draw LM-BFF's few-shot splits (Gao, Fisch and Chen, ACL 2021) from <glue>/<task>/train.tsv: for each\n"
        "seed, k training and k validation examples per label, in <out>/<task>/<k>-<seed>/.\n"
        "train.py --task maml --data <glue> uses the 16-shot splits in glue-16shot next to <glue>.",
        "  python data.py glue --tasks CoLA,MRPC,STS-B,RTE\n"
        "  python data.py few-shot --glue data/glue --out data/glue-16shot")
    f.add_argument("--glue", default="data/glue", help="the GLUE folder of `data.py glue` (default: %(default)s)")
    f.add_argument("--out", default=None, help="where the splits go (default: glue-16shot next to --glue)")
    f.add_argument("--tasks", type=_glue_tasks, default=["CoLA", "MRPC", "STS-B", "RTE"],
                   help="comma-separated GLUE tasks (default: CoLA,MRPC,STS-B,RTE)")
    f.add_argument("--k", type=_positive_int, default=16,
                   help="examples per label in each split (default: %(default)s)")
    f.add_argument("--seeds", type=_seeds, default=list(LM_BFF_SEEDS),
                   help="comma-separated seeds, one split per seed (default: LM-BFF's, 100,13,21,42,87)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler(sys.stdout)  # the progress lines of the data sets, as they are done
    logging.getLogger().addHandler(console)
    logging.getLogger().setLevel(logging.INFO)
    try:
        if args.command == "amazon":
            prepare_amazon(args.categories, args.out, base_url=args.url, min_count=args.min_count)
        elif args.command == "glue":
            prepare_glue(args.out, args.tasks)
        else:
            next_to_glue = os.path.join(os.path.dirname(os.path.abspath(args.glue)), "glue-16shot")  # as maml.py
            make_few_shot(args.glue, args.out or os.path.relpath(next_to_glue), args.tasks, k=args.k,
                          seeds=args.seeds)
    except UserError as e:  # a problem with what was asked or downloaded: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: partial downloads are kept (<file>.part); the same command resumes them",
              file=sys.stderr)
        sys.exit(130)
    finally:
        logging.getLogger().removeHandler(console)


if __name__ == "__main__":
    main()
