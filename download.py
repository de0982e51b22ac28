"""
Fetch the real data sets into the folders that data.py reads. `python download.py ...` is the same command line.

examples:
  python data.py amazon Industrial_and_Scientific Video_Games   # -> data/amazon/<category>/
  python data.py glue                                           # -> data/glue/<task>/
  python data.py few-shot                                       # -> data/glue-16shot/<task>/16-<seed>/
  python data.py amazon --help                                  # one command's options

Downloads are kept in <out>/downloads/: a rerun resumes a partial one and skips a complete one. Each is checked
(gzip's and zip's CRC-32s, GLUE's row counts); a folder is built under a temporary name and renamed when complete,
so it is never half-written. A finished folder is left alone; delete it to rebuild it. Every folder a command
builds is checked before the first is written: a file in its way, or a folder missing a file data.py writes (or
holding it empty), is refused.
"""

import argparse
import contextlib
import gzip
import html
import http.client
import json
import logging
import os
import re
import reprlib
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import Counter

import numpy as np
from tqdm import tqdm

from data import (GLUE_TASKS, Domain, check_glue_task, glue_task, leave_one_out, read_atomic, read_glue_split,
                  shown)
from engine import SEED_MAX, ConsoleHandler, Parser, check_out_dir, held, positive_int, refusal
from model import UserError, error_line

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


TIMEOUT = 60  # seconds a server may send nothing


def fetch(url, path, hint_if_missing=None):
    """Download `url` to `path` unless it is there, and return `path`. The bytes go to path + ".part", renamed when
    complete; an interrupted download resumes with an HTTP Range request (a server that answers 200, not 206,
    starts it over). A network failure is a UserError naming the URL, with `hint_if_missing` on a 404."""
    if os.path.isfile(path):
        return path
    for where, kind, is_kind in ((os.path.dirname(path) or ".", "folder", os.path.isdir),
                                 (path, "file", os.path.isfile),
                                 (path + ".part", "file (no link)",  # the download so far, written to
                                  lambda p: os.path.isfile(p) and not os.path.islink(p))):
        if os.path.lexists(where) and not is_kind(where):  # something else stands in the way, a dangling link too
            raise UserError(f"{where}: is not a {kind}; data.py keeps its downloads there (move it away)")
    new = [d for d in _parents(os.path.dirname(path)) if not os.path.isdir(d)]  # the folders this call makes
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
        _unmade(part, new)
        raise UserError(f"{url}: HTTP {e.code} {e.reason}{hint}") from None
    except urllib.error.URLError as e:  # no connection: DNS, refused, timed out, no such local file
        _unmade(part, new)
        hint = f"; {hint_if_missing}" if isinstance(e.reason, FileNotFoundError) and hint_if_missing else ""
        raise UserError(f"{url}: {e.reason}{hint}") from None
    except (OSError, http.client.HTTPException) as e:  # mid-download: a timeout, a dropped connection
        _unmade(part, new)
        why = f"the server sent nothing for {TIMEOUT} s" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
        raise UserError(f"{url}: {why}; rerun to resume the download") from None
    if total is not None and os.path.getsize(part) != total:
        raise UserError(f"{url}: the connection closed after {os.path.getsize(part)} of {total} bytes; "
                        "rerun to resume the download")
    os.replace(part, path)
    return path


def _parents(folder):
    """folder, its parent, ... up to (not including) the current folder or the root."""
    while folder not in ("", os.sep) and os.path.dirname(folder) != folder:
        yield folder
        folder = os.path.dirname(folder)


def _unmade(part, folders):
    """Undo a download that failed before its first byte: the empty .part, then the folders made for it."""
    if os.path.isfile(part) and os.path.getsize(part) == 0:
        os.remove(part)
    for folder in folders:  # innermost first
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def _download(url, part, have, name):
    """Append `url` to `part` from byte `have` on (0 if the server sends it all); the file's length if known."""
    parts = urllib.parse.urlsplit(url)  # the scheme in any case: urlopen takes FILE:// as file://
    source = urllib.request.url2pathname(parts.path) if parts.scheme.lower() == "file" else None
    if source and os.path.exists(source) and not os.path.isfile(source):  # a folder, a named pipe, ...
        raise urllib.error.URLError(f"{source} is not a regular file")
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        length = response.headers.get("Content-Length")
        asked = re.fullmatch(r"bytes (\d+)-(\d+)/.*", response.headers.get("Content-Range") or "")
        if have and response.status == 206 and not (asked and int(asked[1]) == have and length in (
                None, str(int(asked[2]) + 1 - have))):  # other bytes than asked for: the file starts over, whole
            return _download(url, part, 0, name)
        if response.status != 206:
            have = 0
        total = have + int(length) if length is not None and length.isdigit() else None  # else unknown: as sent
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name)
        with open(part, "ab" if have else "wb") as f, bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    return total


def already_built(folder, files, setting=""):
    """Whether `folder` holds a finished build (each of `files`), left alone (say so, and which `setting` it was built
    with); an empty one is removed, to be built again. A file in the way of the folder, or a build missing a file, is
    refused: each prepare_ function asks this of every folder before it writes anything."""
    for path in _parents(folder):  # the folder, and each folder above it up to the current one
        if os.path.lexists(path) and not os.path.isdir(path):
            raise UserError(f"{path}: is {'a file' if os.path.isfile(path) else 'not a folder'}; data.py builds a "
                            "folder there (move it away)")
    if os.path.isdir(folder) and not os.listdir(folder):
        if os.path.islink(folder):
            raise UserError(f"{folder}: a link to an empty folder; data.py builds a folder there (remove the link)")
        os.rmdir(folder)
    if not os.path.isdir(folder):
        return False
    for path in (os.path.join(folder, f) for f in files):  # each a file data.py writes, never an empty one
        if not os.path.isfile(path) or not os.path.getsize(path):
            what = "a folder" if os.path.isdir(path) else "empty" if os.path.isfile(path) else "missing"
            raise UserError(f"{path}: {what}, so data.py did not build {folder}; move that away to build there")
    log.info(f"{folder}: already there, as an earlier data.py built it{setting}; delete it to rebuild")
    return True


@contextlib.contextmanager
def reader_notes(build, final=None):
    """data.py's reader's notes (a control character kept, ...) while the build folder `build` is read: naming the
    folder `final` in its place, or none (final None: they were said when the source was read)."""
    def named(record):
        record.msg = str(record.msg).replace(os.path.join(build, ""), os.path.join(final or build, ""))
        return final is not None
    logging.getLogger("data").addFilter(named)
    try:
        yield
    finally:
        logging.getLogger("data").removeFilter(named)


@contextlib.contextmanager
def building(folder):
    """A temporary folder, renamed `folder` only if the body succeeds. It has `folder`'s name (read_atomic names
    the data set after it), inside a hidden sibling that is removed whatever happens."""
    parent, name = os.path.split(os.path.normpath(folder))
    scratch = os.path.join(parent, f".{name}.tmp")
    tmp = os.path.join(scratch, name)
    shutil.rmtree(scratch, ignore_errors=True)  # what a killed run left
    made = [p for p in _parents(parent) if not os.path.lexists(p)]  # innermost first
    os.makedirs(tmp)
    try:
        yield tmp
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(scratch)
        _unmade("", made)  # a folder made for it and left empty (the body failed)


# -----------------------------------------------------------------------------
# 2. Amazon Review Data 2018 -> benchmark folders: the raw files read by the protocol of docs/calrec.md
#    section 3, then written in the atomic layout that data.read_atomic reads

def _json_lines(path):
    """(line number, record) of a JSON-lines file, plain or .gz, read line by line (the files are large)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            packed = f.read(2) == b"\x1f\x8b"  # gzip's magic number, whatever the file's name
        with (gzip.open if packed else open)(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}:{line_no}:{e.start + 1}: not UTF-8 text (byte {raw[e.start]:#04x})") \
                        from None
                except (ValueError, RecursionError) as e:  # JSONDecodeError, or an integer of over 4300 digits
                    json_error = isinstance(e, json.JSONDecodeError)
                    at, why = (f":{e.colno}", e.msg.removesuffix(" at")) if json_error else ("", e)
                    raise UserError(f"{path}:{line_no}{at}: not a JSON object ({why})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}:{line_no}: not a JSON object")
                yield line_no, record
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz
        raise UserError(f"{path}: cannot be read ({e})") from None


def _is_text(v):  # a string a UTF-8 text file can hold: no NUL (read_text refuses it), no lone surrogate
    return isinstance(v, str) and not re.search(r"[\0\ud800-\udfff]", v)


def _field(path, line_no, record, key, kind):
    """record[key], checked to be of its kind ("id", "integer", "text", "texts": a list), or an error naming the raw
    file and line, never the folder it is written to. Text may be missing (None); an id or an integer may not."""
    if key not in record and kind in ("id", "integer"):
        raise UserError(f"{path}:{line_no}: record has no '{key}'")
    v = record.get(key)
    if kind == "id":  # a cell of an atomic file, and a word of its item lists
        ok, wanted = _is_text(v) and v.split() == [v], "an id (non-empty text without whitespace)"
    elif kind == "integer":
        ok, wanted = type(v) is int, "an integer"  # not a bool, nor a float (1e999)
    elif kind == "text":
        ok, wanted = v is None or _is_text(v), "text"
    else:  # the category path
        ok, wanted = v is None or isinstance(v, list) and all(map(_is_text, v)), "a list of texts"
    if not ok:
        raise UserError(f"{path}:{line_no}: {key} {reprlib.repr(v)} is not {wanted}")
    return v


PRICE = re.compile(r"\$?\d[\d,]*(\.\d+)?( - \$?\d[\d,]*(\.\d+)?)?")  # $12.99, $1,299.00, $12.99 - $15.99


def _meta_value(path, line_no, record, key, skipped):
    """A metadata field as the page shows it, '' when missing: its tags left out ('<b>'; not '< 10k >'), then its HTML
    entities decoded ('&amp;' -> '&', as UniSRec's clean_text; '&lt;b&gt;' is text, '<b>'). The category path (a list)
    is joined without its root. Page markup instead of text (a value, or a category, that starts with '<'; style
    rules, '{color:gray}'; a value past 2,000 characters, UniSRec's limit, counted as such; a price that is no price)
    counts in `skipped` and as missing."""
    v = _field(path, line_no, record, key, "texts" if key == "category" else "text")
    values = [] if v is None else v[1:] if isinstance(v, list) else [v]
    kept = [x for x in values if not x.strip().startswith("<")]  # and any markup among the categories
    text = fold_whitespace(" ".join(shown(html.unescape(re.sub(r"<[A-Za-z/!][^<>]*>", " ", x))) for x in kept))
    markup = len(kept) < len(values) and not isinstance(v, list) or re.search(r"\{[^{}]*:[^{}]*\}", text)
    if markup or len(text) > 2000 or key == "price" and text and not PRICE.fullmatch(text):
        skipped[key, " over 2,000 characters" if len(text) > 2000 else ""] += 1
        return ""
    return text


def _read_meta(path):
    """Metadata -> {ASIN: item} of the records with a title, and how many records had none. An ASIN's first
    record counts: the files repeat a few, which the log counts."""
    meta, no_title, markup, seen, repeats = {}, 0, Counter(), set(), 0
    for line_no, r in _json_lines(path):
        asin = _field(path, line_no, r, "asin", "id")
        if asin in seen:
            repeats += 1
            continue
        seen.add(asin)
        title = _meta_value(path, line_no, r, "title", markup)
        if not title:
            no_title += 1
            continue
        item = {"Title": title} | {key.title(): _meta_value(path, line_no, r, key, markup)
                                   for key in ("category", "brand", "price")}
        meta[asin] = {a: v for a, v in item.items() if v}
    if markup:
        log.info(f"{path}: values that are page markup (or no price), not text, or too long, treated as missing: "
                 + ", ".join(f"{k} {n}{why}" for (k, why), n in markup.items()))
    if repeats:
        log.info(f"{path}: {repeats} records of an ASIN read before, skipped")
    return meta, no_title


def _read_purchases(path, meta):
    """Reviews -> {user: [ASIN, ...]} in time order, ties in file order (a stable sort), never by id; an item at
    its first purchase only; items not in `meta` dropped. Also how many reviews there were, were dropped and were a
    user's repeat of an item."""
    by_user, n_reviews, dropped = {}, 0, 0
    for line_no, r in _json_lines(path):
        user, asin, t = (_field(path, line_no, r, key, kind) for key, kind in
                         (("reviewerID", "id"), ("asin", "id"), ("unixReviewTime", "integer")))
        n_reviews += 1
        if asin not in meta:
            dropped += 1
            continue
        by_user.setdefault(user, []).append((t, asin))
    sequences = {user: list(dict.fromkeys(asin for _, asin in sorted(events, key=lambda e: e[0])))
                 for user, events in by_user.items()}
    return sequences, n_reviews, dropped, n_reviews - dropped - sum(map(len, sequences.values()))


def _k_core(sequences, k):
    """Drop the items of fewer than k users and the users of fewer than k items, until none is left."""
    while True:
        item_count = Counter(a for seq in sequences.values() for a in seq)
        kept = {u: [a for a in seq if item_count[a] >= k] for u, seq in sequences.items()}
        kept = {u: seq for u, seq in kept.items() if len(seq) >= k}
        if kept == sequences:
            return sequences
        sequences = kept


def read_amazon_raw(reviews_path, meta_path, name=None, min_count=5):
    """Raw Amazon 2018 files -> Domain, by the protocol of docs/calrec.md section 3 (`min_count`-core)."""
    name = name or os.path.basename(reviews_path).split("_5.json")[0].split(".json")[0]
    meta, no_title = _read_meta(meta_path)
    sequences, n_reviews, dropped, repeats = _read_purchases(reviews_path, meta)
    if not n_reviews:
        raise UserError(f"{reviews_path}: holds no review (a file of reviews, one JSON record a line)")
    if dropped == n_reviews:
        raise UserError(f"{meta_path}: no record with a title is an item of {reviews_path} ({len(meta)} records with a "
                        "title); is it the same category's metadata?")
    sequences = _k_core(sequences, min_count)
    asins = sorted({a for seq in sequences.values() for a in seq})
    index = {a: i for i, a in enumerate(asins)}
    log.info(f"{reviews_path}: {n_reviews} reviews; {no_title} metadata records without a title; {dropped} reviews "
             f"of items without a record with a title dropped; {repeats} repeat reviews of an item by its user dropped "
             f"(the first kept); {len(sequences)} users and {len(asins)} items after {min_count}-core")
    return Domain(name, [meta[a] for a in asins], asins,
                  *leave_one_out([[index[a] for a in seq] for seq in sequences.values()]))


def check_gzip(path):
    """Read a .gz file to its end, where gzip checks its CRC-32 and length; delete a truncated or corrupt one,
    so that a rerun fetches it again."""
    try:
        if os.path.getsize(path) == 0:  # gzip reads an empty file as empty data
            raise EOFError("an empty file")
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as e:
        with open(path, "rb") as f:  # a server or proxy that answers with a page of its own (a login, an error)
            page = f.read(1024).lstrip().lower().startswith((b"<!doctype html", b"<html"))
        os.remove(path)
        why = ("an HTML page, not the gzip file (the server answered with a page of its own); deleted" if page else
               f"not a complete gzip file ({e}); deleted, so a rerun downloads it again (the same error again: the "
               "source's copy is damaged)")
        raise UserError(f"{path}: {why}") from None


def fold_whitespace(text):  # tabs, newlines, ... -> one space: a cell must stay in its column and on its line
    return " ".join(text.split())


HISTORY = 50  # the items a written history keeps, its last: UniSRec's files keep 50


def write_benchmark_folder(domain, folder):
    """A Domain -> the atomic files read_atomic reads: <name>.item (the keys, a column per attribute, a missing
    value empty) and <name>.train/.valid/.test.inter, a row per example of `leave_one_out`, users 0..n-1, each
    history cut to its last 50 items as in UniSRec's files (a user of n items would take n²/2 ids uncut)."""
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
                for hist, t in leave_one_out([history + [target]])[s]:
                    f.write(f"{user}\t{' '.join(keys[i] for i in hist[-HISTORY:])}\t{keys[t]}\n")


def fetch_category(base_url, out, category):
    """The paths of a category's two files (reviews, metadata), fetched into out/downloads and checked whole."""
    hint = f"is {category!r} an Amazon 2018 category file name such as Industrial_and_Scientific?"
    paths = [fetch(f"{base_url}/{sub}/{file}", os.path.join(out, "downloads", file), hint) for sub, file in
             (("categoryFilesSmall", f"{category}_5.json.gz"), ("metaFiles2", f"meta_{category}.json.gz"))]
    for path in paths:
        check_gzip(path)
    return paths


def prepare_amazon(categories, out, base_url=AMAZON_2018_URL, min_count=5):
    """Amazon 2018 categories (file stems: Industrial_and_Scientific, ...) -> out/<category>/: the 5-core reviews
    and metadata through read_amazon_raw, written and read back with read_atomic, which must give the same Domain."""
    for category in categories:
        if not re.fullmatch(r"[A-Za-z0-9_]+", category):
            raise UserError(f"{category!r}: not an Amazon 2018 category file name; those are words joined by "
                            "underscores, such as Industrial_and_Scientific")
    built = {c: already_built(os.path.join(out, c), [f"{c}.{s}" for s in ("item", "train.inter", "valid.inter",
                                                                         "test.inter")], " with its own --min-count")
             for c in categories}  # each checked before the first is written; each once, however often named
    for category in (c for c, done in built.items() if not done):
        folder, paths = os.path.join(out, category), fetch_category(base_url, out, category)
        try:
            domain = read_amazon_raw(*paths, name=category, min_count=min_count)
        except UserError as e:  # a download it names is not kept: a rerun (from another --url) fetches it again
            named = [path for path in paths if str(e).startswith(path)]
            for path in named:
                os.remove(path)
            raise UserError(f"{e}; deleted, so a rerun downloads it again (the same error again: the source's copy is "
                            "not as Amazon 2018 wrote it)" if named else str(e)) from None
        if not domain.test:
            raise UserError(f"{paths[0]}: no user is left after the {min_count}-core; a smaller --min-count?")
        if not domain.train:  # train.py needs a training sequence of two items or more: a user of 4 items or more
            raise UserError(f"{paths[0]}: after the {min_count}-core no user has 4 items or more, so there is no "
                            "training example; a larger category or a higher --min-count?")
        with building(folder) as tmp:
            write_benchmark_folder(domain, tmp)
            with reader_notes(tmp):
                back = read_atomic(tmp)
            items = [{a: fold_whitespace(v) for a, v in item.items()} for item in domain.items]
            cut = [[(h[-HISTORY:], t) for h, t in split] for split in (domain.train, domain.valid, domain.test)]
            if (back.item_keys, back.items, back.train, back.valid, back.test, back.train_sequences) != \
                    (domain.item_keys, items, *cut, domain.train_sequences):
                raise RuntimeError(f"{folder}: reads back other items or examples than were written")
        log.info(f"{folder}: {len(domain.test)} users, {domain.n_items} items; {len(domain.train)} train, "
                 f"{len(domain.valid)} valid and {len(domain.test)} test examples")


# -----------------------------------------------------------------------------
# 3. GLUE -> one folder per task

def unpack_glue_archive(archive, folder, max_bytes=2**31):
    """The files of a GLUE archive's top-level folder (CoLA/, ...) -> folder, less the unlabelled test*.tsv and
    the subfolders (the pre-GLUE originals). A file over max_bytes (GLUE's largest has a few 100 MB) is refused."""
    try:
        with zipfile.ZipFile(archive) as z:
            huge = [i for i in z.infolist() if i.file_size > max_bytes]  # before a byte is unpacked
            if huge:
                raise UserError(f"{archive}: {huge[0].filename} unpacks to {huge[0].file_size:,} bytes, more than any "
                                "GLUE file; not GLUE's archive")
            bad = z.testzip()  # reads every member, checking its CRC-32
            if bad is not None:
                raise zipfile.BadZipFile(f"{bad} fails its CRC check")
            tops = {n.split("/")[0] for n in z.namelist()}
            if len(tops) != 1:
                raise UserError(f"{archive}: expected one top-level folder, found {sorted(tops)}")
            for member in z.namelist():
                _, _, file = member.partition("/")
                if file not in ("", ".", "..") and "/" not in file and not re.fullmatch(r"test.*\.tsv", file):
                    with z.open(member) as src, open(os.path.join(folder, file), "wb") as dst:
                        shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UserError(f"{archive}: not a complete zip archive ({e})") from None
    except (NotImplementedError, RuntimeError) as e:  # a compression method zipfile lacks (Deflate64), a password
        raise UserError(f"{archive}: not a zip archive as GLUE serves it ({e})") from None


def build_mrpc(source, dev_ids, folder):
    """MRPC as GLUE's download script makes it: the lines of msr_paraphrase_train.txt whose pair of ids is in GLUE's
    dev list -> dev.tsv, the others -> train.tsv, after the header as it is; each stripped, with '\\n' line ends."""
    lines = {}
    for path in (source, dev_ids):
        try:
            with open(path, encoding="utf-8") as f:
                lines[path] = f.readlines()
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason}: byte {e.object[e.start:e.start + 1]!r})") from None
    dev = {tuple(line.strip().split("\t")) for line in lines[dev_ids] if line.strip()}
    with open(os.path.join(folder, "train.tsv"), "w", encoding="utf-8", newline="\n") as train_f, \
            open(os.path.join(folder, "dev.tsv"), "w", encoding="utf-8", newline="\n") as dev_f:
        header, *rows = lines[source] or [""]
        train_f.write(header)
        dev_f.write(header)
        for line_no, line in enumerate(rows, 2):
            fields = line.strip().split("\t")
            if len(fields) != 5:
                raise UserError(f"{source}:{line_no}: expected 5 tab-separated columns, got {len(fields)}")
            (dev_f if tuple(fields[1:3]) in dev else train_f).write("\t".join(fields) + "\n")


def prepare_glue(out, names=tuple(GLUE_TASKS), base_url=GLUE_URL, mrpc_url=MRPC_URL,
                 mrpc_dev_ids_url=MRPC_DEV_IDS_URL, expected_rows=GLUE_ROWS):
    """The official GLUE files -> out/<task>/ (train.tsv, dev.tsv; MNLI: dev_matched.tsv, dev_mismatched.tsv), no
    unlabelled test files. Every split is parsed and its rows counted against `expected_rows` ({task: (train,
    dev)}; None: no count). The URLs are arguments so that tests can serve the layout from a local server."""
    downloads = os.path.join(out, "downloads")
    for name in names:
        check_glue_task(name)
    built = {name: already_built(os.path.join(out, name), ["train.tsv"] + (
        ["dev_matched.tsv", "dev_mismatched.tsv"] if name == "MNLI" else ["dev.tsv"])) for name in names}
    for name in (n for n, done in built.items() if not done):
        folder = os.path.join(out, name)
        files = ({"msr_paraphrase_train.txt": mrpc_url + "msr_paraphrase_train.txt",
                  "mrpc_dev_ids.tsv": mrpc_dev_ids_url} if name == "MRPC" else
                 {GLUE_ARCHIVES[name]: base_url + GLUE_ARCHIVES[name]})
        sources = [fetch(url, os.path.join(downloads, file)) for file, url in files.items()]
        try:
            with building(folder) as tmp:
                rows = build_glue_task(name, sources, tmp, None if expected_rows is None else expected_rows[name])
        except UserError as e:  # a download that is not what GLUE serves: fetched again by a rerun
            for source in sources:
                os.remove(source)
            what, it = ("both downloads deleted", "them") if len(sources) > 1 else ("deleted", "it")
            raise UserError(f"{e}; {what}, so a rerun downloads {it} again (the same error again: the source's copy "
                            "is damaged)") from None
        log.info(f"{folder}: {rows[0]} train and {rows[1]} dev examples")


def build_glue_task(name, sources, tmp, expected_rows):
    """A task's downloads -> its folder `tmp`, every line of every split parsed; (train, dev) rows, which must be
    `expected_rows` unless it is None. An error names the download, the file and the line."""
    if name == "MRPC":
        build_mrpc(*sources, tmp)
    else:
        unpack_glue_archive(*sources, tmp)
    try:  # the notes name the folder building() renames tmp to
        with reader_notes(tmp, os.path.join(os.path.dirname(os.path.dirname(tmp)), name)):
            task = glue_task(name, tmp)
    except UserError as e:  # (not the build folder, which is removed)
        raise UserError(f"{sources[0]}: {str(e).replace(tmp + os.sep, name + '/')}") from None
    rows = (len(task["train"]["y"]), len(task["dev"]["y"]))
    if expected_rows is not None and rows != tuple(expected_rows):
        raise UserError(f"{sources[0]}: gives {name} {rows[0]} train and {rows[1]} dev rows, the official files have "
                        f"{expected_rows[0]} and {expected_rows[1]}")
    return rows


# -----------------------------------------------------------------------------
# 4. few-shot splits (LM-BFF)

LM_BFF_SEEDS = (100, 13, 21, 42, 87)  # the order of LM-BFF's script, which matters for CoLA (see below)


def _labelled_lines(glue_root, name):
    """glue_root/<name>/train.tsv -> its path, header ([] or [line]), data lines (bytes, as in the file) and
    {line: label} (STS-B: whether the score is at least 2.5)."""
    spec = check_glue_task(name)
    path = os.path.join(glue_root, name, "train.tsv")
    if not os.path.lexists(path):  # else read_glue_split says what it is (a folder, a named pipe, ...)
        raise UserError(f"{path}: no such file; fetch GLUE first: python data.py glue --out {glue_root}")
    y = read_glue_split(path, name)["y"]  # every line well-formed, or an error naming file and line
    with open(path, "rb") as f:  # split as read_glue_split does (on \n, \r, \r\n), blank lines dropped as it does
        raw = f.read()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw  # unpacked as read_glue_split unpacks it
        lines = [line for n, line in enumerate(raw.splitlines(keepends=True))
                 if line.decode("utf-8-sig" if n == 0 else "utf-8").strip(" \t\n\r\f\v")]
    if not lines[-1].endswith((b"\n", b"\r")):
        lines[-1] += b"\n"  # a last line without its line end must not run into the next one
    header, lines = (lines[:1], lines[1:]) if spec.get("header", True) else ([], lines)
    labelled = zip(lines, y, strict=True)  # STS-B's scores in two bins
    label = {line: int(v >= 2.5) if spec["labels"] is None else spec["labels"][v] for line, v in labelled}
    return path, header, lines, label


def few_shot_files(name):
    """The files of a few-shot split of task `name`: train.tsv, and dev.tsv (MNLI: dev_matched.tsv)."""
    return "train.tsv", "dev_matched.tsv" if name == "MNLI" else "dev.tsv"


def _write_few_shot(path, name, folder, header, shuffled, label, k):
    """The first k lines of each label -> folder/train.tsv, the next k -> dev.tsv (MNLI: dev_matched.tsv)."""
    groups = {}
    for line in shuffled:
        groups.setdefault(label[line], []).append(line)
    for value in check_glue_task(name)["labels"] or (0, 1):  # every label of the task (STS-B: score < 2.5, or not)
        n = len(groups.get(value, []))
        if n < 2 * k:
            raise UserError(f"{path}: label {value!r} has {n} lines, fewer than 2k = {2 * k}")
    with building(folder) as tmp:
        for file, part in zip(few_shot_files(name), (slice(0, k), slice(k, 2 * k))):
            try:
                with open(os.path.join(tmp, file), "wb") as f:
                    f.write(b"".join(header + [line for group in groups.values() for line in group[part]]))
            except OSError as e:  # a full disk: name the file (the folder is never half-written)
                raise UserError(f"{os.path.join(folder, file)}: cannot be written ({e.strerror})") from None
        with reader_notes(tmp):
            shot = glue_task(name, tmp)
        if not len(shot["train"]["y"]) == len(shot["dev"]["y"]) == k * len(groups):
            raise RuntimeError(f"{folder}: does not read back as {k} examples per label")
        train, dev = ({*zip(shot[s]["text_a"], shot[s]["text_b"] or shot[s]["text_a"])} for s in ("train", "dev"))
        if dev <= train:  # lines repeated so often that dev holds no example of its own: train.py refuses it
            raise UserError(f"{path}: repeats its lines so often that every example of {folder}'s dev.tsv is also in "
                            "its train.tsv; validation needs examples of its own")
    log.info(f"{folder}: {k} train and {k} dev examples for each of {len(groups)} labels")


def make_few_shot(glue_root, out, names=("CoLA", "MRPC", "STS-B", "RTE"), k=16, seeds=LM_BFF_SEEDS):
    """LM-BFF's few-shot splits (Gao, Fisch and Chen, ACL 2021; their tools/generate_k_shot_data.py) of
    glue_root/<task>/train.tsv -> out/<task>/<k>-<seed>/: per seed, the data lines (byte for byte) shuffled by
    numpy's legacy generator, grouped by label in order of first appearance, the first k of each label to
    train.tsv, the next k to dev.tsv (GLUE's dev set stays the test set). LM-BFF's quirk is kept, so that the
    splits equal the released ones: a file without a header (CoLA) is shuffled in place, each seed starting from
    the previous seed's order, in the script's order of seeds. So one of LM-BFF's seeds replays the shuffles of
    those before it in LM_BFF_SEEDS, whichever seeds are asked for and in whatever order (a split is the same
    alone or among others); any other seed, and every seed of a file with a header, shuffles the file's order."""
    built = {(name, seed): already_built(os.path.join(out, name, f"{k}-{seed}"), few_shot_files(name))
             for name in names for seed in seeds}
    for name in names:
        path, header, lines, label = _labelled_lines(glue_root, name)
        for seed in seeds:
            chain = LM_BFF_SEEDS[:LM_BFF_SEEDS.index(seed)] if not header and seed in LM_BFF_SEEDS else ()
            shuffled = list(lines)
            for s in chain + (seed,):  # = np.random.seed(s); np.random.shuffle(...), see above
                np.random.RandomState(s).shuffle(shuffled)
            if not built[name, seed]:
                _write_few_shot(path, name, os.path.join(out, name, f"{k}-{seed}"), header, shuffled, label, k)


# -----------------------------------------------------------------------------
# 5. the command line

def build_parser():
    p = Parser(prog="data.py", description=__doc__, allow_abbrev=False,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="{amazon,glue,few-shot}")

    def add_command(name, summary, description, example):
        return commands.add_parser(name, help=summary, description=description, epilog="example:\n" + example,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)

    def seed_list(text):
        seeds = [s.strip() for s in text.split(",")]
        if not all(re.fullmatch("[0-9]+", s) and int(s) <= SEED_MAX for s in seeds) or len(set(seeds)) < len(seeds):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers from 0 to {SEED_MAX}, none twice, "
                                             f"got {text!r}")
        return [int(s) for s in seeds]

    def core_size(text):  # leave-one-out needs three items of a user: for train, valid and test
        if positive_int(text) < 3:
            raise argparse.ArgumentTypeError(f"must be 3 or more (a user's items for train, valid, test), got {text!r}")
        return int(text)

    def url(text):
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https", "file"):
            raise argparse.ArgumentTypeError(f"expected an http://, https:// or file:// URL, got {text!r}")
        try:
            parts.port  # a port that is no number (or past 65535) is refused here, not blamed on the network
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
        if parts.query or parts.fragment or text.endswith(("?", "#")):  # the file names go after the URL's path
            raise argparse.ArgumentTypeError(f"{text!r} has a query or fragment (?, #); give the folder's URL alone")
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):  # file://tmp/x: 'tmp' read as a host
            raise argparse.ArgumentTypeError(f"{text!r} names the host {parts.netloc!r}; a folder here is "
                                             f"file:///{parts.netloc}{parts.path} (three slashes)")
        return text

    def task_list(text):
        names = [t.strip() for t in text.split(",")]
        for t in names:
            if t not in GLUE_TASKS:
                raise argparse.ArgumentTypeError(f"unknown GLUE task {t!r}; expected some of {','.join(GLUE_TASKS)}")
            if names.count(t) > 1:
                raise argparse.ArgumentTypeError(f"{t} is named twice")
        return names

    a = add_command(
        "amazon", "Amazon Review Data 2018 categories -> benchmark folders for --task calrec",
        "Each category's 5-core reviews and metadata (Amazon Review Data 2018, Ni, Li and McAuley, EMNLP 2019), by\n"
        "the protocol of docs/calrec.md section 3 -> <out>/<category>/, a RecBole/UniSRec benchmark folder.",
        "  python data.py amazon Industrial_and_Scientific Video_Games --out data/amazon\n"
        "  python train.py --task calrec --data data/amazon/Video_Games data/amazon/Industrial_and_Scientific")
    a.add_argument("categories", nargs="+", metavar="CATEGORY",
                   help="a category's file name on the Amazon 2018 site, e.g. Industrial_and_Scientific")
    a.add_argument("--out", default="data/amazon", help="where the folders go (default: %(default)s)")
    a.add_argument("--min-count", type=core_size, default=5,
                   help="k of the iterative k-core: users and items with fewer interactions go; at least 3, the "
                        "items of leave-one-out (default: %(default)s)")
    a.add_argument("--url", type=url, default=AMAZON_2018_URL,
                   help="the Amazon 2018 site, or a mirror laid out like it (categoryFilesSmall/, metaFiles2/; "
                        "file:// works) (default: %(default)s)")

    g = add_command(
        "glue", "the official GLUE files -> one folder per task for --task maml",
        "GLUE's official archives (MRPC: built as GLUE's download script builds it), every line parsed, less the\n"
        "unlabelled test files -> <out>/<task>/train.tsv and dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv).",
        "  python data.py glue --out data/glue                  # all eight: the auxiliary tasks and the targets\n"
        "  python train.py --task maml --data data/glue")
    g.add_argument("--tasks", type=task_list, default=list(GLUE_TASKS),
                   help=f"comma-separated GLUE tasks (default: all eight, {','.join(GLUE_TASKS)})")
    g.add_argument("--out", default="data/glue", help="where the task folders go (default: %(default)s)")

    f = add_command(
        "few-shot", "LM-BFF's k-shot splits of GLUE's training files",
        "Draw LM-BFF's few-shot splits (Gao, Fisch and Chen, ACL 2021) from <glue>/<task>/train.tsv: for each\n"
        "seed, k training and k validation examples per label, in <out>/<task>/<k>-<seed>/.\n"
        "train.py --task maml --data <glue> uses the 16-shot splits in glue-16shot next to <glue>.",
        "  python data.py glue\n"
        "  python data.py few-shot --glue data/glue             # -> data/glue-16shot, where train.py looks")
    f.add_argument("--glue", default="data/glue", help="the GLUE folder of `data.py glue` (default: %(default)s)")
    f.add_argument("--out", default=None, help="where the splits go (default: glue-16shot next to --glue, the one "
                   "place train.py looks)")
    f.add_argument("--tasks", type=task_list, default=["CoLA", "MRPC", "STS-B", "RTE"],
                   help="comma-separated GLUE tasks (default: CoLA,MRPC,STS-B,RTE)")
    f.add_argument("--k", type=positive_int, default=16,
                   help="examples per label in each split (default: %(default)s; train.py reads the 16-shot splits)")
    f.add_argument("--seeds", type=seed_list, default=list(LM_BFF_SEEDS),
                   help="comma-separated seeds, one split per seed (default: LM-BFF's, 100,13,21,42,87)")
    return p


def main(argv=None):
    console = ConsoleHandler(logging.INFO)  # the progress lines of the data sets, as they are done
    logging.getLogger().addHandler(console)
    logging.getLogger().setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "few-shot" and not os.path.isdir(args.glue):
            what = "is a file, not a folder" if os.path.exists(args.glue) else "no such folder"
            raise UserError(f"--glue {args.glue}: {what} (python data.py glue writes one)")
        if args.command == "few-shot" and args.out and os.path.realpath(args.out) == os.path.realpath(args.glue):
            raise UserError(f"--out {args.out}: is the --glue folder; the 16-shot splits go into a folder of their own")
        if args.out is not None:
            check_out_dir(args.out, "--out")
        next_to_glue = args.command == "few-shot" and os.path.join(os.path.dirname(os.path.abspath(args.glue)),
                                                                    "glue-16shot")  # where maml.py looks
        out = args.out or (next_to_glue if os.path.isabs(args.glue) else os.path.relpath(next_to_glue))  # as --glue
        with held(out, "--out"):  # a second data.py would share its hidden build folders and downloads
            if args.command == "amazon":
                prepare_amazon(args.categories, out, base_url=args.url, min_count=args.min_count)
            elif args.command == "glue":
                prepare_glue(out, args.tasks)
            else:
                make_few_shot(args.glue, out, args.tasks, k=args.k, seeds=args.seeds)
    except (UserError, OSError) as e:  # what was asked or downloaded, a file in the way, a full disk: one line
        print(error_line(refusal(e) or e), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: partial downloads are kept (<file>.part); the same command resumes them",
              file=sys.stderr)
        sys.exit(130)
    finally:
        logging.getLogger().removeHandler(console)


if __name__ == "__main__":
    main()
