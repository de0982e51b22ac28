"""
Everything that turns files and text into tensors, for both tasks.

Read in this order:
  1. the tokenizer: a byte-level BPE trained with the `tokenizers` package on the task's own text, or
     GPT-2's pretrained `tokenizer.json` when GPT-2 weights are swapped in;
  2. CALRec data: the built-in multi-domain shopping world, readers for the Amazon benchmark files and the
     raw Amazon 2018 downloads, the text templates, and batches;
  3. MAML data: the GLUE reader, the built-in task family, and batches;
  4. getting the real data, from the command line:

    python data.py amazon Industrial_and_Scientific Video_Games   # -> data/amazon/<category>/
    python data.py glue                                           # -> data/glue/<task>/
    python data.py few-shot                                       # -> data/glue-16shot/<task>/16-<seed>/
"""

import argparse
import contextlib
import gzip
import http.client
import io
import json
import logging
import os
import random
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from model import UserError, load_init

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# 1. tokenizer

EOT = "<|endoftext|>"  # ends a document; GPT-2's only special token
PAD = "<|pad|>"        # fills right-padded batches (masked out of attention and loss)
SEP = "<|sep|>"        # separates the two sentences of a pair task
SPECIAL_TOKENS = (EOT, PAD, SEP)


class TextTokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` that knows the project's special tokens.

    GPT-2's own tokenizer has only <|endoftext|>; there the padding and separator fall back to it (padding
    is masked anyway, and a pair is then joined by the end-of-text token).
    """

    def __init__(self, tokenizer, path=None):
        self.tok = tokenizer
        self.path = path
        self.eot_id = tokenizer.token_to_id(EOT)
        if self.eot_id is None:
            raise UserError(f"{path or 'tokenizer'}: has no {EOT} token; train one with train_tokenizer() "
                            "or use GPT-2's tokenizer.json")
        pad, sep = tokenizer.token_to_id(PAD), tokenizer.token_to_id(SEP)
        self.pad_id = self.eot_id if pad is None else pad
        self.sep_id = self.eot_id if sep is None else sep

    @property
    def vocab_size(self):
        return self.tok.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tok.encode_batch(list(texts))]

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def decode_batch(self, batch):
        return self.tok.decode_batch([list(ids) for ids in batch], skip_special_tokens=True)

    def save(self, path):
        self.tok.save(path)

    def check_fits(self, vocab_size, path=None):
        """The model's embedding table must have a row for every token id."""
        if self.vocab_size > vocab_size:
            raise UserError(f"{path or self.path or 'tokenizer'}: vocabulary of {self.vocab_size} tokens does "
                            f"not fit a model with vocab_size={vocab_size}")


def train_tokenizer(texts, vocab_size=4096, special_tokens=SPECIAL_TOKENS):
    """Train a byte-level BPE (GPT-2's scheme: bytes, then merges) on an iterable of strings."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok)


def load_tokenizer(path):
    """Load a `tokenizer.json` (ours, or GPT-2's); `path` may be the file or the folder holding it."""
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no tokenizer.json here")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers package raises a bare Exception on a bad file
        raise UserError(f"{path}: not a valid tokenizer.json ({e})") from None
    return TextTokenizer(tok, path=path)


def load_pretrained(path, dropout=0.0):
    """What --init names -> (GPT, its tokenizer): a project checkpoint (.pt, with the tokenizer.json written
    next to it by the run that made it) or a Hugging Face GPT-2 folder (config.json, weights, tokenizer.json)."""
    gpt = load_init(path, dropout=dropout)
    tokenizer = load_tokenizer(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    tokenizer.check_fits(gpt.config.vocab_size)
    return gpt, tokenizer


def read_text(path):
    """The text of a file (a .gz one unpacked; a leading byte-order mark dropped), with a UserError naming the
    file, and the line and column of the first bad byte when it is not UTF-8."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}:{_where(raw, e.start)}: not UTF-8 text (byte {raw[e.start]:#04x})") from None


def _where(raw, offset):
    """'line:column' (from 1) of a byte offset."""
    line, line_start = raw.count(b"\n", 0, offset) + 1, raw.rfind(b"\n", 0, offset) + 1
    return f"{line}:{offset - line_start + 1}"


def pad_batch(seqs, pad_id, length=None):
    """Right-pad lists of ids -> idx (B, T) long, attention_mask (B, T) long (1 = real token)."""
    T = length or max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return idx, mask


# -----------------------------------------------------------------------------
# 2. CALRec data
#
# One "domain" (an Amazon category, or a part of the built-in world) is a catalog of items, each a dict of
# named text attributes, and three lists of (history, target) examples in item indices 0..n_items-1:
# train (every prefix of the training part), valid (target = second to last item), test (target = last).


@dataclass
class Domain:
    name: str
    items: list                  # items[i] = {"Title": str, "Brand": str, ...}; a missing value is absent
    item_keys: list              # the dataset's own id of item i (ASIN, .inter id, or a built-in name)
    train: list                  # [(history: list[int], target: int)], every training prefix
    valid: list                  # one (history, target) per user, target = the second to last item
    test: list                   # one (history, target) per user, target = the last item
    train_sequences: list = field(default_factory=list)  # per user, the training part as one sequence
    attributes: tuple = ("Title", "Category", "Brand", "Price")  # rendered in this order

    @property
    def n_items(self):
        return len(self.items)


def _check_examples(domain, split, source):
    for line, (history, target) in enumerate(getattr(domain, split), 1):
        if not history:
            raise UserError(f"{source}: {split} example {line} has an empty history")
        for i in list(history) + [target]:
            if not 0 <= i < domain.n_items:
                raise UserError(f"{source}: {split} example {line} names item {i}, not in the catalog")


def leave_one_out(sequences):
    """Chronological per-user sequences -> train prefixes, valid and test examples (the usual split).

    A sequence [a, b, c, d, e] gives test ([a, b, c, d], e), valid ([a, b, c], d), train prefixes
    ([a], b), ([a, b], c), and the training part [a, b, c] (for SASRec and popularity counts).
    Users with fewer than 3 items have no training example and are left out (counted by the caller).
    """
    train, valid, test, train_sequences = [], [], [], []
    for seq in sequences:
        if len(seq) < 3:
            continue
        test.append((list(seq[:-1]), seq[-1]))
        valid.append((list(seq[:-2]), seq[-2]))
        train_sequences.append(list(seq[:-2]))
        for t in range(1, len(seq) - 2):
            train.append((list(seq[:t]), seq[t]))
    return train, valid, test, train_sequences


# -----------------------------------------------------------------------------
# 2a. the built-in multi-domain shopping world
#
# Shared latent structure across domains: the same brands (each with a price tier) and the same kinds of
# behaviour. Every domain has a chain of complementary categories bought in order (a camera body, then a
# lens, then a memory card, ...); each brand sells two product lines in every domain, each product in two
# colours. A user keeps their brand and line (mostly), walks the chain in order, and keeps their colour.
# So the next item is predictable from the *text* of the history (brand, line, colour words, the category
# that comes next), and order matters (the chain only goes forward). A few items are "new releases": they
# never appear in a history or as a training target, only as a last (test) item -- cold items that an
# item-id model has never seen, but whose words a text model has.

WORLD_BRANDS = (("Korvo", 1.0), ("Lumen", 1.3), ("Varta", 0.8), ("Ostra", 1.6),
                ("Pelin", 0.9), ("Quori", 1.2), ("Sendo", 0.7), ("Talvi", 1.4))
WORLD_LINES = ("Apex", "Nova", "Terra", "Orbit", "Echo", "Prism", "Drift", "Ember",
               "Flux", "Haven", "Ion", "Jade", "Krest", "Lyra", "Mesa", "Nimbus")
WORLD_COLOURS = ("Black", "Silver", "Red", "Blue")
WORLD_DOMAINS = {  # domain -> its chain of (category, base price in dollars)
    "Cameras": (("Camera Body", 420), ("Zoom Lens", 260), ("Memory Card", 30), ("Camera Bag", 55),
                ("Tripod", 80), ("Flash Unit", 120)),
    "Kitchen": (("Espresso Machine", 300), ("Coffee Grinder", 90), ("Milk Frother", 40),
                ("Tamper Set", 25), ("Knock Box", 30), ("Cleaning Kit", 20)),
    "Outdoor": (("Hiking Boots", 140), ("Trail Socks", 18), ("Backpack", 110), ("Water Bottle", 22),
                ("Headlamp", 35), ("Rain Jacket", 160)),
}


def make_world(seed=0, users_per_domain=500, min_len=4, max_len=6, p_stay=0.85, p_colour=0.85,
               cold_fraction=0.1, price_missing=0.05):
    """Generate the built-in world: one Domain per entry of WORLD_DOMAINS, deterministic in `seed`."""
    rng = random.Random(seed)
    domains = []
    for d, (dname, chain) in enumerate(WORLD_DOMAINS.items()):
        items, keys, index = [], [], {}
        for b, (brand, tier) in enumerate(WORLD_BRANDS):
            for li in range(2):
                line = WORLD_LINES[(2 * b + li + 3 * d) % len(WORLD_LINES)]
                for c, (category, base) in enumerate(chain):
                    for colour in WORLD_COLOURS[(b + li) % 3: (b + li) % 3 + 2]:  # two colours per line
                        item = {"Title": f"{brand} {line} {category}, {colour}", "Category": category,
                                "Brand": brand}
                        if rng.random() >= price_missing:
                            item["Price"] = f"${base * tier * (1.0 + 0.1 * li):.0f}"
                        index[(b, li, c, colour)] = len(items)
                        items.append(item)
                        keys.append(f"{dname}-{b}-{li}-{c}-{colour}")
        cold = set()  # at most one colour of a product is a new release, so the other can stand in for it
        for (b, li, c, colour), i in index.items():
            if colour == WORLD_COLOURS[(b + li) % 3] and rng.random() < 2 * cold_fraction:
                cold.add(i if rng.random() < 0.5 else index[(b, li, c, WORLD_COLOURS[(b + li) % 3 + 1])])
        sequences = []
        for _ in range(users_per_domain):
            b, li = rng.randrange(len(WORLD_BRANDS)), rng.randrange(2)
            n = rng.randint(min_len, max_len)
            start = rng.randrange(len(chain))  # the chain is a cycle: any category can come first
            colours = WORLD_COLOURS[(b + li) % 3: (b + li) % 3 + 2]
            colour = rng.choice(colours)
            seq = []
            for t in range(n):
                c = (start + t) % len(chain)
                if t > 0 and rng.random() > p_stay:  # an occasional switch of line, or of brand
                    if rng.random() < 0.5:
                        li = 1 - li
                    else:
                        b = rng.randrange(len(WORLD_BRANDS))
                    colours = WORLD_COLOURS[(b + li) % 3: (b + li) % 3 + 2]
                    colour = colours[0] if colour not in colours else colour
                pick = colour if rng.random() < p_colour else rng.choice(colours)
                i = index[(b, li, c, pick)]
                if i in cold and t < n - 1:  # a new release is only ever bought last
                    i = index[(b, li, c, colours[1 - colours.index(pick)])]
                if i in seq:  # already owned: skip this step
                    continue
                seq.append(i)
            sequences.append(seq)
        train, valid, test, train_sequences = leave_one_out(sequences)
        domains.append(Domain(dname, items, keys, train, valid, test, train_sequences))
    return domains


# -----------------------------------------------------------------------------
# 2b. the RecBole / UniSRec atomic benchmark folders (X.train.inter, X.valid.inter, X.test.inter + X.item
#     or X.text + X.item2index)

def _read_atomic_table(path, required):
    """A tab-separated file with a `name:type` header -> (column names, rows as lists of strings, line no.)."""
    lines = io.StringIO(read_text(path), newline=None)  # universal newlines
    header = lines.readline().rstrip("\n").split("\t")
    names = [h.split(":")[0] for h in header]
    for r in required:
        if r not in names:
            raise UserError(f"{path}:1: header has no column '{r}' (found {header})")
    rows = []
    for line_no, line in enumerate(lines, 2):
        line = line.rstrip("\n")
        if not line:
            continue
        cols = line.split("\t")
        if len(cols) != len(names):
            raise UserError(f"{path}:{line_no}: expected {len(names)} tab-separated columns, got {len(cols)}")
        rows.append((line_no, cols))
    return names, rows


def _split_text_column(text):
    """UniSRec's X.text value is 'title. category path. brand. ' (a missing field is empty): split it back."""
    s = text[:-2] if text.endswith(". ") else text.rstrip()
    parts = s.rsplit(". ", 2)
    parts = [""] * (3 - len(parts)) + parts if len(parts) < 3 else parts
    return {"Title": parts[0].strip(), "Category": parts[1].strip(), "Brand": parts[2].strip()}


def _drop_common_category_root(items, share=0.9):
    """'Industrial & Scientific Fasteners Nuts' -> 'Fasteners Nuts': drop the longest word prefix that at least
    `share` of the items' categories start with (the category root, the same for the whole file)."""
    paths = [it["Category"].split() for it in items if it.get("Category")]
    root = []
    while paths:
        counts = Counter(tuple(p[:len(root) + 1]) for p in paths if len(p) > len(root))
        if not counts:
            break
        prefix, n = counts.most_common(1)[0]
        if n < share * len(paths):
            break
        root = list(prefix)
    if not root:
        return
    for it in items:
        words = it.get("Category", "").split()
        if words[:len(root)] == root:
            if len(words) > len(root):
                it["Category"] = " ".join(words[len(root):])
            else:
                del it["Category"]


def read_atomic(folder):
    """Read one UniSRec/RecBole benchmark folder (its name is the domain's name) into a Domain."""
    folder = folder.rstrip("/")
    name = os.path.basename(folder)
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such folder")
    item_path, text_path = os.path.join(folder, f"{name}.item"), os.path.join(folder, f"{name}.text")
    items, keys, index, missing = [], [], {}, Counter()
    if os.path.isfile(item_path):  # ids are the .inter ids; every text column is an attribute
        names, rows = _read_atomic_table(item_path, ["item_id"])
        text_cols = [(j, n) for j, n in enumerate(names) if n != "item_id"]
        if not text_cols:
            raise UserError(f"{item_path}:1: no text column besides item_id")
        attributes = tuple(n.replace("_", " ").title() for _, n in text_cols)
        id_col = names.index("item_id")  # found by header name, wherever it stands
        for line_no, cols in rows:
            key = cols[id_col]
            item = {}
            for j, n in text_cols:
                value = cols[j].strip()
                if value:
                    item[n.replace("_", " ").title()] = value
                else:
                    missing[n] += 1
            if not item:
                raise UserError(f"{item_path}:{line_no}: item {key} has no text at all")
            if key in index:
                raise UserError(f"{item_path}:{line_no}: item {key} listed twice")
            index[key] = len(items)
            items.append(item)
            keys.append(key)
    elif os.path.isfile(text_path):  # ids are ASINs, mapped to the .inter ids by X.item2index
        map_path = os.path.join(folder, f"{name}.item2index")
        if not os.path.isfile(map_path):
            raise UserError(f"{map_path}: needed to map the ASINs of {text_path} to .inter ids")
        asin_to_id, id_line = {}, {}
        for line_no, line in enumerate(io.StringIO(read_text(map_path), newline=None), 1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 2 or not cols[1].strip().isdigit():
                raise UserError(f"{map_path}:{line_no}: expected 'ASIN<TAB>integer id'")
            asin, i = cols[0], cols[1].strip()
            if asin in asin_to_id or i in id_line:  # an ASIN with two ids, or an id with two ASINs
                raise UserError(f"{map_path}:{line_no}: " + (f"item {asin} listed twice" if asin in asin_to_id
                                                             else f"id {i} already given to line {id_line[i]}"))
            asin_to_id[asin], id_line[i] = i, line_no
        attributes = ("Title", "Category", "Brand")
        names, rows = _read_atomic_table(text_path, ["item_id", "text"])
        id_col, text_col = names.index("item_id"), names.index("text")
        for line_no, cols in rows:
            asin, text = cols[id_col], cols[text_col]
            if asin not in asin_to_id:
                raise UserError(f"{text_path}:{line_no}: item {asin} is not in {map_path}")
            if asin_to_id[asin] in index:
                raise UserError(f"{text_path}:{line_no}: item {asin} listed twice")
            item = {k: v for k, v in _split_text_column(text).items() if v}
            for k in attributes:
                if k not in item:
                    missing[k] += 1
            if not item:
                raise UserError(f"{text_path}:{line_no}: item {asin} has no text at all")
            index[asin_to_id[asin]] = len(items)
            items.append(item)
            keys.append(asin)
        _drop_common_category_root(items)
    else:
        raise UserError(f"{folder}: has neither {name}.item nor {name}.text (a benchmark folder), nor the raw "
                        f"Amazon files <Category>_5.json.gz and meta_<Category>.json.gz")
    if missing:
        log.info(f"{folder}: missing attribute values written as Unknown: "
              + ", ".join(f"{k} {v}" for k, v in missing.items()))

    splits = {}
    for split in ("train", "valid", "test"):
        path = os.path.join(folder, f"{name}.{split}.inter")
        names, rows = _read_atomic_table(path, ["user_id", "item_id_list", "item_id"])
        ju, jh, jt = names.index("user_id"), names.index("item_id_list"), names.index("item_id")
        examples = []
        for line_no, cols in rows:
            ids = cols[jh].split() + [cols[jt].strip()]
            for i in ids:
                if i not in index:
                    raise UserError(f"{path}:{line_no}: unknown item id '{i}' (not in the item text file)")
            if len(ids) < 2:
                raise UserError(f"{path}:{line_no}: empty history")
            seq = [index[i] for i in ids]
            examples.append((cols[ju], seq[:-1], seq[-1]))
        splits[split] = examples
    longest = {}  # the training part of each user = the longest training row, history + target
    for user, history, target in splits["train"]:
        if len(history) + 1 > len(longest.get(user, ())):
            longest[user] = history + [target]
    domain = Domain(name, items, keys,
                    train=[(h, t) for _, h, t in splits["train"]],
                    valid=[(h, t) for _, h, t in splits["valid"]],
                    test=[(h, t) for _, h, t in splits["test"]],
                    train_sequences=list(longest.values()), attributes=attributes)
    return domain


# -----------------------------------------------------------------------------
# 2c. the raw Amazon 2018 downloads: <Category>_5.json(.gz) reviews + meta_<Category>.json(.gz)

def _json_lines(path):
    """(line number, record) of a JSON-lines file, plain or .gz, read line by line (the files are large)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}:{line_no}:{e.start + 1}: not UTF-8 text (byte {raw[e.start]:#04x})") \
                        from None
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{line_no}: not a JSON object ({e.msg})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}:{line_no}: not a JSON object")
                yield line_no, record
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz
        raise UserError(f"{path}: cannot be read ({e})") from None


def _meta_value(record, key, skipped):
    """A metadata field as clean text; '' when missing. A list (the category path) is joined without its
    root; a value that is page markup rather than text (a few records) counts in `skipped` as missing."""
    v = record.get(key)
    if isinstance(v, list):
        v = " ".join(str(x).strip() for x in v[1:] if str(x).strip())  # drop the category root
    v = "" if v is None else str(v).strip()
    if v.startswith("<") or len(v) > 300:
        skipped[key] += 1
        return ""
    return v


def read_amazon_raw(reviews_path, meta_path, name=None, min_count=5):
    """Raw Amazon 2018 files -> Domain, with the protocol of the spec (docs/calrec.md section 6).

    1. items = metadata records with a title (the others are dropped, counted);
    2. each user's reviews sorted by unixReviewTime, ties kept in file order (a stable sort), never by id;
    3. a repeated item in a user's sequence is kept at its first purchase only;
    4. iterative k-core: drop users and items with fewer than `min_count` interactions until none is left;
    5. leave-one-out. Item indices follow sorted ASINs (not order of appearance, which would leak).
    """
    name = name or os.path.basename(reviews_path).split("_5.json")[0].split(".json")[0]
    meta, dropped_no_title, markup = {}, 0, Counter()
    for line_no, r in _json_lines(meta_path):
        if "asin" not in r:
            raise UserError(f"{meta_path}:{line_no}: record has no 'asin'")
        title = _meta_value(r, "title", markup)
        if not title:
            dropped_no_title += 1
            continue
        item = {"Title": title}
        for key, attr in (("category", "Category"), ("brand", "Brand"), ("price", "Price")):
            value = _meta_value(r, key, markup)
            if value:
                item[attr] = value
        meta[r["asin"]] = item
    by_user, n_reviews, dropped_unknown = {}, 0, 0
    for line_no, r in _json_lines(reviews_path):
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if key not in r:
                raise UserError(f"{reviews_path}:{line_no}: record has no '{key}'")
        try:
            t = int(r["unixReviewTime"])
        except (TypeError, ValueError):
            raise UserError(f"{reviews_path}:{line_no}: unixReviewTime {r['unixReviewTime']!r} is not an integer") \
                from None
        n_reviews += 1
        if r["asin"] not in meta:
            dropped_unknown += 1
            continue
        by_user.setdefault(r["reviewerID"], []).append((t, r["asin"]))
    sequences = {}
    for user, events in by_user.items():
        events.sort(key=lambda e: e[0])  # stable: equal times keep file order
        seen, seq = set(), []
        for _, asin in events:
            if asin not in seen:
                seen.add(asin)
                seq.append(asin)
        sequences[user] = seq
    while True:  # iterative k-core
        item_count = Counter(a for seq in sequences.values() for a in seq)
        kept = {u: [a for a in seq if item_count[a] >= min_count] for u, seq in sequences.items()}
        kept = {u: seq for u, seq in kept.items() if len(seq) >= min_count}
        if kept == sequences:
            break
        sequences = kept
    if markup:
        log.info(f"{meta_path}: values that are page markup, not text, treated as missing: "
              + ", ".join(f"{k} {v}" for k, v in markup.items()))
    asins = sorted({a for seq in sequences.values() for a in seq})
    index = {a: i for i, a in enumerate(asins)}
    train, valid, test, train_sequences = leave_one_out([[index[a] for a in seq] for seq in sequences.values()])
    log.info(f"{reviews_path}: {n_reviews} reviews; {dropped_no_title} metadata records without a title and "
          f"{dropped_unknown} reviews of such items dropped; {len(sequences)} users and {len(asins)} items "
          f"after {min_count}-core")
    return Domain(name, [meta[a] for a in asins], asins, train, valid, test, train_sequences)


def load_domains(folders):
    """One Domain per folder: an atomic benchmark folder, or a folder with the raw Amazon 2018 files."""
    domains = []
    for folder in folders:
        name = os.path.basename(folder.rstrip("/"))
        files = os.listdir(folder) if os.path.isdir(folder) else []
        raw = sorted(f for f in files if re.search(r"_5\.json(\.gz)?$", f))
        meta = sorted(f for f in files if re.match(r"meta_.*\.json(\.gz)?$", f))
        if raw and meta:
            domains.append(read_amazon_raw(os.path.join(folder, raw[0]), os.path.join(folder, meta[0]), name=name))
        elif raw or meta:
            have, lack = (raw[0], "meta_<Category>.json.gz") if raw else (meta[0], "<Category>_5.json.gz")
            raise UserError(f"{os.path.join(folder, have)}: the raw Amazon layout needs {lack} beside it "
                            f"(python data.py amazon writes both)")
        else:
            domains.append(read_atomic(folder))
        for split in ("train", "valid", "test"):
            _check_examples(domains[-1], split, folder)
    return domains


# -----------------------------------------------------------------------------
# 2d. the text templates (spec section 1) and batches

HISTORY_HEADER = "User purchase history: This is a summary of the user's purchase history.\n"
FIRST_ITEM = "The first purchased item is as follows:"
NEXT_ITEM = "The next purchased item is as follows:"
ITEM_END = ".\n"


def item_text(item, attributes, max_words=24):
    """'Title: X, Category: Y, Brand: Z, Price: Unknown' -- each value capped at `max_words` words (one cap for
    every attribute, or a list of one per attribute)."""
    caps = max_words if isinstance(max_words, (list, tuple)) else [max_words] * len(attributes)
    return ", ".join(f"{a}: {' '.join(item.get(a, 'Unknown').split()[:cap])}" for a, cap in zip(attributes, caps))


def fitted_item_texts(items, max_words, tokenizer, max_tokens):
    """item_text of every (item, attributes) pair, shortened to at most max_tokens tokens (as PromptBuilder
    encodes it, after a space) without losing an attribute: while an item is too long, its longest value (in
    words; the first of equals) gives up its last word. A value keeps at least one word.

    Cutting the tokens at the end instead drops the last attributes: on Amazon Scientific (Title, Category, Brand,
    at most 10 words each) 82% of the items are longer than 32 tokens, and a cut at the end took the brand of
    nearly all of them (train.py logs the share of long items of each domain)."""
    caps = [[min(len(item.get(a, "Unknown").split()), max_words) for a in attributes] for item, attributes in items]
    pending = list(range(len(items)))
    while pending:  # one round shortens every item still too long by one word
        texts = [item_text(*items[i], caps[i]) for i in pending]
        lengths = [len(ids) for ids in tokenizer.encode_batch([" " + t for t in texts])]
        longer = []
        for i, n in zip(pending, lengths):
            j = max(range(len(caps[i])), key=lambda k: caps[i][k], default=None)
            if n > max_tokens and j is not None and caps[i][j] > 1:
                caps[i][j] -= 1
                longer.append(i)
        pending = longer
    return [item_text(*pair, cap) for pair, cap in zip(items, caps)]


def history_prompt(texts):
    """The few-shot style prompt over the item texts of a history; ends where the next item's text goes."""
    s = HISTORY_HEADER
    for k, t in enumerate(texts):
        s += (FIRST_ITEM if k == 0 else NEXT_ITEM) + " " + t + ITEM_END
    return s + NEXT_ITEM


class PromptBuilder:
    """Token ids of prompts and training rows, assembled from pre-tokenised pieces (each item is encoded once).

    Every item is encoded as " " + its text, the way it follows 'as follows:' in a prompt; the item tower reads
    exactly these tokens too, so v_T and v_T|U pool over the same token sequence. A prompt keeps the most recent
    history items (at most max_history) that fit block_size together with room for the longest item and its
    end-of-text. Training and inference use that one rule: a training row is exactly the prompt that inference
    builds for its history, followed by its target.
    """

    def __init__(self, tokenizer, item_texts, block_size, max_history=20, max_item_tokens=None):
        self.tok = tokenizer
        self.block_size = block_size
        self.max_history = max_history
        # item i -> its tokens, cut at max_item_tokens (the same cut wherever the item appears)
        self.item_ids = [t[:max_item_tokens] for t in tokenizer.encode_batch([" " + t for t in item_texts])]
        self.header = tokenizer.encode(HISTORY_HEADER)
        self.first = tokenizer.encode(FIRST_ITEM)
        self.next = tokenizer.encode(NEXT_ITEM)
        self.end = tokenizer.encode(ITEM_END)
        self.room = max(len(t) for t in self.item_ids) + 1  # the longest target and its end-of-text
        one_item = len(self.header) + len(self.first) + self.room - 1 + len(self.end) + len(self.next)
        if one_item + self.room > block_size:
            raise UserError(f"block_size={block_size} cannot hold a prompt of one history item and a target of "
                            f"{self.room - 1} tokens; raise block_size or lower the per-attribute word cap")

    def _kept(self, history, room=None):
        """The most recent items of `history` whose prompt leaves `room` tokens (default: the longest target)."""
        budget = self.block_size - (room or self.room) - len(self.header) - len(self.next)
        kept, used = [], 0
        prefix = max(len(self.first), len(self.next))  # which item comes first is known only at the end
        for i in reversed(history[-self.max_history:]):
            cost = prefix + len(self.item_ids[i]) + len(self.end)
            if used + cost > budget:
                break
            kept.append(i)
            used += cost
        return kept[::-1]

    def _assemble(self, items):
        """Header, then each item as 'The first/next purchased item is as follows: <item>.\n', then the prefix
        of the next item. Returns the ids and where each item's tokens sit: [(start, end), ...]."""
        ids, spans = list(self.header), []
        for k, i in enumerate(items):
            ids += self.first if k == 0 else self.next
            spans.append((len(ids), len(ids) + len(self.item_ids[i])))
            ids += self.item_ids[i] + self.end
        return ids + self.next, spans

    def prompt(self, history):
        """Tokens of the prompt for `history`: it ends where the next item's text goes."""
        return self._assemble(self._kept(history))[0]

    def prompt_batch(self, histories):
        """Histories -> right-padded prompts (B, T) and attention_mask (B, T), and the prompts as lists: the
        input of beam search and of the user tower at inference."""
        rows = [self.prompt(h) for h in histories]
        return (*pad_batch(rows, self.tok.pad_id), rows)

    def item_batch(self, item_indices):
        """Items -> right-padded item-only texts (B, T) and attention_mask (B, T): the item tower's input."""
        return pad_batch([self.item_ids[i] for i in item_indices], self.tok.pad_id)

    def training_batch(self, sequences, every_position=False, same_room=True):
        """Item sequences, each a history followed by its target -> the rows of the joint (user) tower.

        A row is prompt(history), the target's tokens and end-of-text. The target is predicted; with
        every_position [beyond the paper] so is every kept history item after the first, each read after the
        items before it (one pass gives a prediction at every item boundary, as SASRec trains). same_room=False
        reserves room for the actual target only, not for the longest (so a row may keep more history than
        inference would: the mismatch this project had before; kept to measure it).
        Returns a dict: idx, attention_mask (B, T); targets (B, T), the next token at each position whose
        token belongs to a predicted item (its end-of-text included for the target), -100 elsewhere; and per
        prediction (P,): row, start, end (where the item's tokens sit: its prompt is [0, start)), item, and
        position (its index in the row's sequence: the history before it is sequence[:position]).
        """
        rows, row, start, end, item, position = [], [], [], [], [], []
        for b, sequence in enumerate(sequences):
            room = None if same_room else len(self.item_ids[sequence[-1]]) + 1
            items = self._kept(sequence[:-1], room) + [sequence[-1]]
            ids, spans = self._assemble(items)
            ids = ids[:spans[-1][1]] + [self.tok.eot_id]  # the target ends with end-of-text, not with a prefix
            rows.append(ids)
            for k, ((s, e), i) in enumerate(zip(spans, items)):
                if k == len(items) - 1 or (every_position and k > 0):
                    row.append(b), start.append(s), end.append(e), item.append(i)
                    position.append(len(sequence) - len(items) + k)
        idx, attention_mask = pad_batch(rows, self.tok.pad_id)
        targets = torch.full_like(idx, -100)
        for b, s, e in zip(row, start, end):
            last = e + 1 if e == len(rows[b]) - 1 else e  # the target also predicts its end-of-text
            targets[b, s - 1:last - 1] = idx[b, s:last]   # position t predicts token t + 1
        return dict(idx=idx, attention_mask=attention_mask, targets=targets, row=torch.tensor(row),
                    start=torch.tensor(start), end=torch.tensor(end), item=torch.tensor(item),
                    position=torch.tensor(position))


# -----------------------------------------------------------------------------
# 3. MAML data
#
# A task is a dict: name, kind ("classification" or "regression"), labels (the label strings of a
# classification task, in class-index order), metrics (GLUE's names), pair (True for sentence pairs) and
# one split per stage, each {"text_a": [str], "text_b": [str] or None, "y": [int class index or float]}.
# Splits: "train" for training, "dev" for validation (choosing the stop point), "test" for the one final
# report (a labelled test.tsv in dev.tsv's layout, when present).


# Each task's official layout: the columns read by name (CoLA: by position, it has no header).
GLUE_TASKS = {
    "CoLA": dict(text_a=3, text_b=None, label=1, labels=("0", "1"), metrics=("mcc",), header=False),
    "SST-2": dict(text_a="sentence", text_b=None, label="label", labels=("0", "1"), metrics=("accuracy",)),
    "MRPC": dict(text_a="#1 String", text_b="#2 String", label="Quality", labels=("0", "1"),
                 metrics=("f1", "accuracy")),
    "STS-B": dict(text_a="sentence1", text_b="sentence2", label="score", labels=None,
                  metrics=("pearson", "spearman")),
    "QQP": dict(text_a="question1", text_b="question2", label="is_duplicate", labels=("0", "1"),
                metrics=("f1", "accuracy")),
    "MNLI": dict(text_a="sentence1", text_b="sentence2", label="gold_label",
                 labels=("entailment", "neutral", "contradiction"), metrics=("accuracy",)),
    "QNLI": dict(text_a="question", text_b="sentence", label="label", labels=("entailment", "not_entailment"),
                 metrics=("accuracy",)),
    "RTE": dict(text_a="sentence1", text_b="sentence2", label="label", labels=("entailment", "not_entailment"),
                metrics=("accuracy",)),
}
COLA_COLUMNS = 4  # source, label, original label (* for unacceptable), sentence
STSB_RANGE = (0.0, 5.0)


def check_glue_task(name):
    if name not in GLUE_TASKS:
        raise UserError(f"unknown GLUE task {name!r}; expected one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def read_tsv_rows(path):
    """Lines split on tabs with no quote handling (csv.QUOTE_NONE, as GLUE's loaders read them); a leading
    byte-order mark (MRPC) is dropped. Returns [(line number, [fields])], blank lines skipped."""
    rows = []
    for lineno, line in enumerate(io.StringIO(read_text(path), newline=""), start=1):  # lines as written
        line = line.rstrip("\r\n")
        if line.strip():
            rows.append((lineno, line.split("\t")))
    return rows


def read_glue_split(path, task):
    """One split file of a GLUE task in its official layout -> {"text_a", "text_b", "y"}."""
    spec = check_glue_task(task)
    rows = read_tsv_rows(path)
    if spec.get("header", True):
        if not rows:
            raise UserError(f"{path}:1: empty file, expected a header line")
        lineno, header = rows[0]
        rows = rows[1:]
        wanted = [c for c in (spec["text_a"], spec["text_b"], spec["label"]) if c is not None]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise UserError(f"{path}:{lineno}: header has no column {', '.join(map(repr, missing))} "
                             f"(not the official {task} layout; header: {header})")
        col = {c: header.index(c) for c in wanted}
        n_cols = len(header)
    else:  # CoLA: no header, columns by position
        col = {c: c for c in (spec["text_a"], spec["label"])}
        n_cols = COLA_COLUMNS
        if rows and len(rows[0][1]) == 2 and rows[0][1][0] == "index":
            raise UserError(f"{path}:{rows[0][0]}: this is CoLA's unlabelled test layout (index, sentence); "
                             "a labelled file has 4 columns and no header")
    out = {"text_a": [], "text_b": [] if spec["text_b"] is not None else None, "y": []}
    for lineno, fields in rows:
        if len(fields) != n_cols:
            raise UserError(f"{path}:{lineno}: expected {n_cols} tab-separated columns for {task}, "
                             f"got {len(fields)}")
        raw = fields[col[spec["label"]]].strip()
        if spec["labels"] is None:  # STS-B: a similarity score
            try:
                y = float(raw)
            except ValueError:
                raise UserError(f"{path}:{lineno}: {task} score {raw!r} is not a number") from None
            if not STSB_RANGE[0] <= y <= STSB_RANGE[1]:
                raise UserError(f"{path}:{lineno}: {task} score {y} is outside {STSB_RANGE}")
        else:
            if raw not in spec["labels"]:
                raise UserError(f"{path}:{lineno}: label {raw!r} is not one of {task}'s labels "
                                 f"{list(spec['labels'])}")
            y = spec["labels"].index(raw)
        out["text_a"].append(fields[col[spec["text_a"]]])
        if spec["text_b"] is not None:
            out["text_b"].append(fields[col[spec["text_b"]]])
        out["y"].append(y)
    if not out["y"]:
        raise UserError(f"{path}: no examples")
    return out


def glue_task(name, folder):
    """A GLUE task from `folder` holding train.tsv, dev.tsv and optionally a labelled test.tsv."""
    spec = check_glue_task(name)
    splits = {}
    for split in ("train", "dev", "test"):
        path = os.path.join(folder, f"{split}.tsv")
        if split == "dev" and name == "MNLI" and not os.path.isfile(path):
            path = os.path.join(folder, "dev_matched.tsv")  # the official MNLI download's name
        if split == "test" and not os.path.isfile(path):
            continue
        splits[split] = read_glue_split(path, name)
    return dict(name=name, kind="regression" if spec["labels"] is None else "classification",
                labels=spec["labels"], metrics=spec["metrics"], pair=spec["text_b"] is not None, **splits)


def load_glue(root, names):
    """{name: task} for the named tasks under `root` (root/<name>/train.tsv ...)."""
    tasks = {}
    for name in names:
        check_glue_task(name)
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: no folder for GLUE task {name}")
        tasks[name] = glue_task(name, folder)
    return tasks


def few_shot_folders(root, name):
    """The LM-BFF few-shot splits root/<name>/16-<seed>/ (sorted by seed), or [] when there are none."""
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
        return []
    seeds = sorted(int(d[3:]) for d in os.listdir(folder) if d.startswith("16-") and d[3:].isdigit())
    return [os.path.join(folder, f"16-{s}") for s in seeds]


# --- the built-in task family ----------------------------------------------------
#
# A made-up language: eight word *kinds* of twelve made-up words each, plus filler words. A sentence is a
# shuffle of fillers and some kind-words. Every task asks something about the kinds of the words in a
# sentence (or a pair), so all of them need the same knowledge — which word belongs to which kind — and
# differ in what they do with it: that knowledge lives in the encoder (what transfers), the question in the
# head and the top layers (what each task must adapt). The target tasks ask questions no meta-training task
# asks (disjoint names and rules), about kinds the meta-training tasks do teach.

FAMILY_KINDS = 8
FAMILY_WORDS_PER_KIND = 12
FAMILY_FILLERS = 24
FAMILY_SENTENCE_LEN = (5, 9)   # words per sentence
FAMILY_SEED = 1234             # the language itself (fixed; the run's --seed only changes sampling)

# name -> (rule, arguments, examples in train/dev/test). Rules:
#   has k: 1 if a word of kind k occurs;  more a b: 1 if kind a occurs more often than kind b;
#   most a b c: which of kinds a, b, c occurs most (3 classes);  count k: how many words of kind k (regression);
#   share k: pair task, 1 if both sentences hold a word of kind k;  same a: pair, 1 if the two sentences hold
#   the same number of kind-a words.
FAMILY_AUX = {
    "has-0": ("has", (0,), 1200), "has-1": ("has", (1,), 400), "has-2": ("has", (2,), 800),
    "has-5": ("has", (5,), 300), "more-0-1": ("more", (0, 1), 1000), "more-3-4": ("more", (3, 4), 600),
    "most-1-2-4": ("most", (1, 2, 4), 1000), "count-3": ("count", (3,), 500),
    "count-5": ("count", (5,), 400), "share-0": ("share", (0,), 800), "share-4": ("share", (4,), 400),
    "same-2": ("same", (2,), 600),
}
FAMILY_TARGETS = {
    "more-2-5": ("more", (2, 5), 1000), "share-3": ("share", (3,), 1000),
    "count-4": ("count", (4,), 1000), "most-0-3-5": ("most", (0, 3, 5), 1000),
}
FAMILY_DEV, FAMILY_TEST = 100, 300   # target tasks: validation and test examples (aux: 10% dev)


def family_vocabulary():
    """The made-up words: kinds[k] is the list of words of kind k; fillers a list of neutral words."""
    rng = random.Random(FAMILY_SEED)
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "n", "r", "s", "k"]
    words = set()
    while len(words) < FAMILY_KINDS * FAMILY_WORDS_PER_KIND + FAMILY_FILLERS:
        n_syll = rng.choice((2, 2, 3))
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n_syll)))
    words = sorted(words)
    rng.shuffle(words)
    n = FAMILY_WORDS_PER_KIND
    kinds = [words[k * n:(k + 1) * n] for k in range(FAMILY_KINDS)]
    return kinds, words[FAMILY_KINDS * n:]


def family_sentence(rng, kinds, fillers, counts):
    """A sentence holding counts[k] words of each kind k, padded with fillers, shuffled."""
    words = [rng.choice(kinds[k]) for k, c in counts.items() for _ in range(c)]
    length = max(len(words), rng.randint(*FAMILY_SENTENCE_LEN))
    words += [rng.choice(fillers) for _ in range(length - len(words))]
    rng.shuffle(words)
    return " ".join(words)


def family_example(rng, rule, args, kinds, fillers):
    """(text_a, text_b or None, y) for one example of a rule; labels are balanced by construction."""
    def random_counts(exclude=()):
        return {k: rng.choice((0, 0, 0, 1)) for k in range(FAMILY_KINDS) if k not in exclude}
    if rule == "has":
        (k,) = args
        counts = random_counts((k,))
        y = rng.randint(0, 1)
        counts[k] = rng.randint(1, 2) if y else 0
        return family_sentence(rng, kinds, fillers, counts), None, y
    if rule == "more":
        a, b = args
        counts = random_counts((a, b))
        lo, hi = sorted(rng.sample(range(4), 2))
        y = rng.randint(0, 1)
        counts[a], counts[b] = (hi, lo) if y else (lo, hi)
        return family_sentence(rng, kinds, fillers, counts), None, y
    if rule == "most":
        counts = random_counts(args)
        y = rng.randrange(3)
        top = rng.randint(2, 3)
        for i, k in enumerate(args):
            counts[k] = top if i == y else rng.randint(0, top - 1)
        return family_sentence(rng, kinds, fillers, counts), None, y
    if rule == "count":
        (k,) = args
        counts = random_counts((k,))
        counts[k] = rng.randint(0, 4)
        return family_sentence(rng, kinds, fillers, counts), None, float(counts[k])
    if rule == "share":
        (k,) = args
        y = rng.randint(0, 1)
        has = (1, 1) if y else rng.choice(((1, 0), (0, 1), (0, 0)))
        sentences = []
        for h in has:
            counts = random_counts((k,))
            counts[k] = rng.randint(1, 2) if h else 0
            sentences.append(family_sentence(rng, kinds, fillers, counts))
        return sentences[0], sentences[1], y
    if rule == "same":
        (a,) = args
        y = rng.randint(0, 1)
        n1 = rng.randint(0, 3)
        n2 = n1 if y else rng.choice([n for n in range(4) if n != n1])
        sentences = []
        for n in (n1, n2):
            counts = random_counts((a,))
            counts[a] = n
            sentences.append(family_sentence(rng, kinds, fillers, counts))
        return sentences[0], sentences[1], y
    raise ValueError(f"unknown family rule {rule!r}")


def family_task(name, rule, args, sizes):
    """A task of the family; sizes: {split: number of examples}. Deterministic in the task's name."""
    kinds, fillers = family_vocabulary()
    rng = random.Random(f"{FAMILY_SEED}:{name}")
    pair = rule in ("share", "same")
    task = dict(name=name, kind="regression" if rule == "count" else "classification",
                labels={"has": ("no", "yes"), "more": ("no", "yes"), "share": ("no", "yes"),
                        "same": ("no", "yes"), "most": tuple(f"kind {k}" for k in args)}.get(rule),
                metrics=("pearson", "spearman") if rule == "count" else ("mcc", "accuracy") if len(args) < 3
                else ("accuracy",), pair=pair)
    for split, n in sizes.items():
        ex = [family_example(rng, rule, args, kinds, fillers) for _ in range(n)]
        task[split] = {"text_a": [e[0] for e in ex], "text_b": [e[1] for e in ex] if pair else None,
                       "y": [e[2] for e in ex]}
    return task


def task_family():
    """(aux tasks, target tasks) of the built-in family, each {name: task}."""
    aux = {name: family_task(name, rule, args, {"train": n - n // 10, "dev": n // 10})
           for name, (rule, args, n) in FAMILY_AUX.items()}
    targets = {name: family_task(name, rule, args, {"train": n, "dev": FAMILY_DEV, "test": FAMILY_TEST})
               for name, (rule, args, n) in FAMILY_TARGETS.items()}
    return aux, targets


# --- batches ------------------------------------------------------------------------


def encode_examples(tokenizer, split, max_len):
    """Token ids of each example: text_a, or text_a <sep> text_b for a pair (each side cut to fit), then
    <eot>. Returns a list of lists of ints, none longer than max_len."""
    a_ids = tokenizer.encode_batch(split["text_a"])
    if split["text_b"] is None:
        return [ids[:max_len - 1] + [tokenizer.eot_id] for ids in a_ids]
    b_ids = tokenizer.encode_batch(split["text_b"])
    out = []
    for a, b in zip(a_ids, b_ids):
        room = max_len - 2                      # <sep> and <eot>
        while len(a) + len(b) > room:           # trim the longer side first, as BERT's recipe does
            if len(a) >= len(b):
                a = a[:-1]
            else:
                b = b[:-1]
        out.append(a + [tokenizer.sep_id] + b + [tokenizer.eot_id])
    return out




# -----------------------------------------------------------------------------
# 4. getting the real data: python data.py amazon | glue | few-shot
#
# Each data set is fetched from its official address into <out>/downloads/ (kept: a rerun resumes a partial
# download and skips a complete one), checked (gzip's and zip's CRC-32s, GLUE's row counts), and laid out in
# the folder format that the readers above take. A data set's folder is built under a temporary name and
# renamed when it is complete, so it is never half-written; one that is already there is left alone.

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


def fetch(url, path, hint_if_missing=None):
    """Download `url` to `path` (unless it is there already) and return `path`.

    The bytes go to path + ".part" and only a complete download is renamed to `path`. An interrupted download
    resumes: the server is asked for the rest (an HTTP Range request); one that answers with the whole file
    (200 instead of 206 Partial Content) starts it over. A network failure is a UserError naming the URL;
    `hint_if_missing` is added when the server has no such file (HTTP 404).
    """
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    part = path + ".part"
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    ranged = have > 0 and url.startswith(("http://", "https://"))  # file:// URLs are read whole
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if ranged else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if response.status != 206:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=os.path.basename(path))
            with open(part, "ab" if have else "wb") as f, bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
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


@contextlib.contextmanager
def building(folder):
    """Yield a temporary folder to write `folder`'s files into; it becomes `folder` only if the body succeeds.

    The temporary folder has `folder`'s name (readers such as `read_atomic` take the data set's name from it),
    inside a hidden sibling that is removed whatever happens.
    """
    parent, name = os.path.split(os.path.normpath(folder))
    scratch = os.path.join(parent, f".{name}.tmp{os.getpid()}")
    tmp = os.path.join(scratch, name)
    os.makedirs(tmp)
    try:
        yield tmp
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(scratch)


# --- Amazon Review Data 2018 -> benchmark folders ------------------------------------


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
    """A Domain -> the RecBole/UniSRec atomic files of section 2b in `folder` (named like the domain):
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
    """Amazon Review Data 2018 categories -> out/<category>/, benchmark folders that `load_domains` reads.

    `categories` are the site's file stems (Industrial_and_Scientific, Video_Games, ...). Each one's 5-core
    reviews and metadata go through `read_amazon_raw` (the spec's protocol), are written by
    `write_benchmark_folder`, and read back with `read_atomic`: the folder must hold exactly that Domain.
    """
    for category in categories:
        if not re.fullmatch(r"[A-Za-z0-9_]+", category):
            raise UserError(f"{category!r}: not an Amazon 2018 category file name; those are words joined by "
                            "underscores, such as Industrial_and_Scientific")
    downloads = os.path.join(out, "downloads")
    for category in categories:
        folder = os.path.join(out, category)
        if os.path.exists(folder):
            log.info(f"{folder}: already there; delete it to rebuild")
            continue
        hint = f"is {category!r} an Amazon 2018 category file name such as Industrial_and_Scientific?"
        paths = [fetch(f"{base_url}/{sub}/{file}", os.path.join(downloads, file), hint) for sub, file in
                 (("categoryFilesSmall", f"{category}_5.json.gz"), ("metaFiles2", f"meta_{category}.json.gz"))]
        for path in paths:
            check_gzip(path)
        try:
            domain = read_amazon_raw(*paths, name=category, min_count=min_count)
        except ValueError as e:  # a record that is not what the 2018 files hold, named by file and line
            raise UserError(str(e)) from None
        if not domain.test:
            raise UserError(f"{paths[0]}: no user is left after the {min_count}-core; a smaller --min-count?")
        with building(folder) as tmp:
            write_benchmark_folder(domain, tmp)
            with contextlib.redirect_stdout(io.StringIO()):  # its note on missing values comes at every load
                back = read_atomic(tmp)
            items = [{a: fold_whitespace(v) for a, v in item.items()} for item in domain.items]
            if (back.item_keys, back.items, back.train, back.valid, back.test) != \
                    (domain.item_keys, items, domain.train, domain.valid, domain.test):
                raise RuntimeError(f"{folder}: reads back other items or examples than were written")
        log.info(f"{folder}: {len(domain.test)} users, {domain.n_items} items; {len(domain.train)} train, "
              f"{len(domain.valid)} valid and {len(domain.test)} test examples")


# --- GLUE -> one folder per task --------------------------------------------------------


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
    """The official GLUE files -> out/<task>/ (train.tsv, dev.tsv; MNLI: dev_matched.tsv, dev_mismatched.tsv).

    The official test files are unlabelled, so they are left out: dev then plays the held-out role, and the
    MAML run carves its validation split out of train. Every split is parsed (`glue_task`) and its rows counted
    against `expected_rows` ({task: (train, dev)}; None skips the count). The URLs are arguments so that tests
    can serve files of the official layout from a local server.
    """
    downloads = os.path.join(out, "downloads")
    for name in names:
        check_glue_task(name)
        folder = os.path.join(out, name)
        if os.path.exists(folder):
            log.info(f"{folder}: already there; delete it to rebuild")
            continue
        if name == "MRPC":
            sources = [fetch(mrpc_url + "msr_paraphrase_train.txt",
                             os.path.join(downloads, "msr_paraphrase_train.txt")),
                       fetch(mrpc_dev_ids_url, os.path.join(downloads, "mrpc_dev_ids.tsv"))]
        else:
            sources = [fetch(base_url + GLUE_ARCHIVES[name], os.path.join(downloads, GLUE_ARCHIVES[name]))]
        with building(folder) as tmp:
            if name == "MRPC":
                build_mrpc(*sources, tmp)
            else:
                unpack_glue_archive(sources[0], tmp)
            try:
                task = glue_task(name, tmp)  # every line of every split, or an error naming file and line
            except (ValueError, FileNotFoundError) as e:
                raise UserError(str(e)) from None
            rows = (len(task["train"]["y"]), len(task["dev"]["y"]))
            if expected_rows is not None and rows != tuple(expected_rows[name]):
                raise UserError(f"{sources[0]}: gives {name} {rows[0]} train and {rows[1]} dev rows, the official "
                                f"files have {expected_rows[name][0]} and {expected_rows[name][1]}")
        log.info(f"{folder}: {rows[0]} train and {rows[1]} dev examples")


# --- few-shot splits (LM-BFF) ------------------------------------------------------------


LM_BFF_SEEDS = (100, 13, 21, 42, 87)  # the order of LM-BFF's script, which matters for CoLA (see below)


def make_few_shot(glue_root, out, names=("CoLA", "MRPC", "STS-B", "RTE"), k=16, seeds=LM_BFF_SEEDS):
    """LM-BFF's few-shot splits (Gao, Fisch and Chen, ACL 2021; their tools/generate_k_shot_data.py) drawn
    from glue_root/<task>/train.tsv -> out/<task>/<k>-<seed>/train.tsv and dev.tsv, k examples per label in each.

    For each task and seed: the data lines, kept byte for byte, are shuffled by numpy's legacy generator
    seeded with the seed, grouped by label in order of first appearance (STS-B: score < 2.5 or not);
    train.tsv = the header + the first k lines of each group, dev.tsv (MNLI: dev_matched.tsv) = the header +
    the next k. GLUE's dev set stays the test set. One quirk is kept so that the splits equal the released
    ones: LM-BFF's script shuffles a file without a header (CoLA) in place, so each seed's shuffle starts from
    the previous seed's order, the seeds taken in the script's order (100, 13, 21, 42, 87); a file with a
    header is shuffled afresh from the file's order for every seed.
    """
    for name in names:
        spec = check_glue_task(name)
        path = os.path.join(glue_root, name, "train.tsv")
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file; fetch GLUE first: python data.py glue --out {glue_root}")
        try:
            read_glue_split(path, name)  # every line well-formed, or an error naming file and line
        except ValueError as e:
            raise UserError(str(e)) from None
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
        dev_name = "dev_matched.tsv" if name == "MNLI" else "dev.tsv"
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
                continue
            groups = {}
            for line in shuffled:
                groups.setdefault(label[line], []).append(line)
            for value, group in groups.items():
                if len(group) < 2 * k:
                    raise UserError(f"{path}: label {value!r} has {len(group)} lines, fewer than 2k = {2 * k}")
            with building(folder) as tmp:
                for file, part in (("train.tsv", slice(0, k)), (dev_name, slice(k, 2 * k))):
                    with open(os.path.join(tmp, file), "wb") as f:
                        f.write(b"".join(header + [line for group in groups.values() for line in group[part]]))
                shot = glue_task(name, tmp)
                if not len(shot["train"]["y"]) == len(shot["dev"]["y"]) == k * len(groups):
                    raise RuntimeError(f"{folder}: does not read back as {k} examples per label")
            log.info(f"{folder}: {k} train and {k} dev examples for each of {len(groups)} labels")


# --- the command line ------------------------------------------------------------------

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
    p = argparse.ArgumentParser(
        prog="data.py", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Fetch the real data sets and lay them out in the folders that train.py reads.",
        epilog="examples:\n"
               "  python data.py amazon Industrial_and_Scientific Video_Games   # -> data/amazon/<category>/\n"
               "  python data.py glue                                           # -> data/glue/<task>/\n"
               "  python data.py few-shot                                       # -> data/glue-16shot/\n"
               "  python data.py amazon --help                                  # one command's options\n\n"
               "Downloads are kept in <out>/downloads/: an interrupted command resumes where it stopped.\n"
               "A finished folder is left alone; delete it to rebuild it.")
    commands = p.add_subparsers(dest="command", required=True, metavar="{amazon,glue,few-shot}")

    def command(name, summary, description, example):
        return commands.add_parser(name, help=summary, description=description, epilog="example:\n" + example,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)

    a = command(
        "amazon", "Amazon Review Data 2018 categories -> benchmark folders for --task calrec",
        "Fetch each category's 5-core reviews and metadata (Amazon Review Data 2018, Ni, Li and\n"
                    "McAuley, EMNLP 2019), apply the spec's protocol (items without a title dropped, time order,\n"
                    "de-duplication, iterative k-core, leave-one-out) and write <out>/<category>/ in the\n"
                    "RecBole/UniSRec atomic format (<category>.item, .train.inter, .valid.inter, .test.inter).",
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
        "Fetch GLUE's official archives (MRPC: built as GLUE's download script builds it), check\n"
                    "them (zip CRCs, every line parsed, the official row counts), drop the unlabelled test\n"
                    "files and write <out>/<task>/train.tsv and dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv).",
        "  python data.py glue --tasks CoLA,MRPC,STS-B,RTE --out data/glue\n"
        "  python train.py --task maml --data data/glue")
    g.add_argument("--tasks", type=_glue_tasks, default=list(GLUE_TASKS),
                   help=f"comma-separated GLUE tasks (default: all eight, {','.join(GLUE_TASKS)})")
    g.add_argument("--out", default="data/glue", help="where the task folders go (default: %(default)s)")

    f = command(
        "few-shot", "LM-BFF's k-shot splits of GLUE's training files",
        "Draw LM-BFF's few-shot splits (Gao, Fisch and Chen, ACL 2021) from <glue>/<task>/train.tsv:\n"
                    "for each seed, k training and k validation examples per label, in <out>/<task>/<k>-<seed>/.\n"
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
