"""
Everything that turns files and text into tensors, for both tasks, in this order: 1. the tokenizer, a byte-level
BPE trained on the task's own text, or GPT-2's `tokenizer.json`; 2. CALRec's data: the built-in shopping world, the
reader of the Amazon benchmark folders, the text templates and batches; 3. MAML's data: the GLUE reader, the
built-in task family (maml.py batches them). Fetching the data (`python data.py amazon | glue | few-shot`): download.py.
"""

import functools
import gzip
import hashlib
import io
import logging
import os
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model import UserError

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# 1. tokenizer

EOT = "<|endoftext|>"  # ends a document; GPT-2's only special token
PAD = "<|pad|>"        # fills right-padded batches (masked out of attention and loss)
SEP = "<|sep|>"        # separates the two sentences of a pair task
SPECIAL_TOKENS = (EOT, PAD, SEP)


class TextTokenizer:
    """A `tokenizers.Tokenizer` that knows the project's special tokens. GPT-2's own has only <|endoftext|>;
    there padding (masked anyway) and the separator of a pair fall back to it."""

    def __init__(self, tokenizer, path=None):
        tokenizer.encode_special_tokens = True  # '<|pad|>' in a text is text: the special tokens are added by id
        self.tok, self.path = tokenizer, path
        self.eot_id = tokenizer.token_to_id(EOT)
        if self.eot_id is None:
            raise UserError(f"{path or 'tokenizer'}: has no {EOT} token; train one with train_tokenizer() "
                            "or use GPT-2's tokenizer.json")
        self.pad_id, self.sep_id = (self.eot_id if t is None else t for t in map(tokenizer.token_to_id, (PAD, SEP)))
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tok.encode_batch(list(texts))]

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=True)

    @property
    def fingerprint(self):
        """Recorded by checkpoints: --init and --resume refuse a model of another tokenizer (other ids)."""
        return hashlib.sha1(self.tok.to_str().encode()).hexdigest()[:16]


def train_tokenizer(texts, vocab_size=4096, special_tokens=SPECIAL_TOKENS):
    """A byte-level BPE (GPT-2's scheme: bytes, then merges) trained on an iterable of strings."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # every byte: none unknown
    # a word over 1,000 characters (none in real text) is learnt from its first 1,000: BPE's time grows as length²
    tok.train_from_iterator((re.sub(r"(?<!\S)(\S{1000})\S+", r"\1", t) for t in texts), trainer=trainer)
    return TextTokenizer(tok)


def load_tokenizer(path):
    """A `tokenizer.json` (ours, or GPT-2's); `path` may be the file or the folder holding it."""
    path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    text = read_text(path)  # no such file, not a regular file (a named pipe), not UTF-8, ...: says so
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # the tokenizers package raises a bare Exception on a bad file
        raise UserError(f"{path}: not a valid tokenizer.json ({e})") from None
    return TextTokenizer(tok, path=path)


def read_text(path):
    """A file's text (gzip unpacked, a byte-order mark dropped). Not UTF-8, or a NUL byte (never in text): an error
    naming line and column. Other control characters (a few GLUE sentences hold some) are kept, with a warning."""
    try:
        if os.path.exists(path) and not os.path.isfile(path):  # a named pipe, which open would wait on, ...
            raise UserError(f"{path}: {'is a folder, not a file' if os.path.isdir(path) else 'not a regular file'}")
        with open(path, "rb") as f:
            raw = f.read()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw  # gzip's magic number, whatever the name
    except (OSError, EOFError, zlib.error, MemoryError) as e:  # else errno's words
        known = {FileNotFoundError: "no such file", PermissionError: "permission denied", MemoryError: "too large"}
        raise UserError(f"{path}: {known.get(type(e), f'cannot be read ({e})')}") from None
    def where(at):  # 'line:column' of a byte; a line ends at \n, \r\n or \r, as the readers split lines
        ends = [m.end() for m in re.finditer(rb"\r\n?|\n", raw[:at])]
        return f"{len(ends) + 1}:{at - (ends[-1] if ends else 0) + 1}"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}:{where(e.start)}: not UTF-8 text (byte {raw[e.start]:#04x})") from None
    if b"\0" in raw:
        raise UserError(f"{path}:{where(raw.index(bytes(1)))}: a NUL byte, which no text file holds")
    control = re.search(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]", raw)
    if control:
        log.warning(f"{path}:{where(control.start())}: a control character ({control.group()!r}), kept as it is")
    if text and text[-1] not in "\r\n" and not path.endswith(".json"):  # the one sign of a file cut short
        log.warning(f"{path}:{where(len(raw))}: the last line has no line end (a file cut short?)")
    return text


def pad_batch(seqs, pad_id, length=None):
    """Right-pad lists of ids -> idx (B, T) long, attention_mask (B, T) long (1 = real token)."""
    T = length or max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return idx, (torch.arange(T) < torch.tensor([len(s) for s in seqs])[:, None]).long()


# -----------------------------------------------------------------------------
# 2. CALRec data
#
# A domain (an Amazon category, or a part of the built-in world) is a catalog of items, each a dict of named text
# attributes, and (history, target) examples in item indices 0..n_items-1, split by leave_one_out.

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


def leave_one_out(sequences):
    """Per-user sequences in time order -> train, valid, test examples and training parts: [a, b, c, d, e] gives
    test ([a, b, c, d], e), valid ([a, b, c], d), train ([a], b), ([a, b], c) and the training part [a, b, c]
    (for SASRec and popularity counts). A user with fewer than 3 items is left out."""
    train, valid, test, train_sequences = [], [], [], []
    for seq in (s for s in sequences if len(s) >= 3):
        test.append((list(seq[:-1]), seq[-1]))
        valid.append((list(seq[:-2]), seq[-2]))
        train_sequences.append(list(seq[:-2]))
        train.extend((list(seq[:t]), seq[t]) for t in range(1, len(seq) - 2))
    return train, valid, test, train_sequences


# -----------------------------------------------------------------------------
# 2a. the built-in multi-domain shopping world
#
# The domains share brands (each with a price tier) and behaviour: a chain of categories bought in order (a camera
# body, a lens, a memory card, ...); each brand sells two product lines, each product in two colours. A user mostly
# keeps a brand, line and colour and walks the chain forward, so the next item follows from the *text* of the
# history, and order matters. A few "new releases" are only ever bought last (test targets): cold items that an
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
                ("Headlamp", 35), ("Rain Jacket", 160))}


def _colours(b, li):  # the two colours of brand b's product line li
    return WORLD_COLOURS[(b + li) % 3:(b + li) % 3 + 2]


def _world_catalog(rng, d, name, chain, price_missing, cold_fraction):
    """Domain d's items, keys, index[(brand, line, category, colour)] -> item, and the new releases."""
    items, keys, index = [], [], {}
    for b, (brand, tier) in enumerate(WORLD_BRANDS):
        for li in range(2):
            line = WORLD_LINES[(2 * b + li + 3 * d) % len(WORLD_LINES)]
            for c, (category, base) in enumerate(chain):
                for colour in _colours(b, li):
                    item = {"Title": f"{brand} {line} {category}, {colour}", "Category": category, "Brand": brand}
                    if rng.random() >= price_missing:
                        item["Price"] = f"${base * tier * (1.0 + 0.1 * li):.0f}"
                    index[(b, li, c, colour)] = len(items)
                    items.append(item)
                    keys.append(f"{name}-{b}-{li}-{c}-{colour}")
    cold = set()  # at most one colour of a product is a new release, so the other can stand in for it
    for (b, li, c, colour), i in index.items():
        first, second = _colours(b, li)
        if colour == first and rng.random() < 2 * cold_fraction:
            cold.add(i if rng.random() < 0.5 else index[(b, li, c, second)])
    return items, keys, index, cold


def _world_user(rng, chain, index, cold, min_len, max_len, p_stay, p_colour):
    """One user's purchases: the chain walked forward from a random category, in a brand, line and colour."""
    b, li, n = rng.randrange(len(WORLD_BRANDS)), rng.randrange(2), rng.randint(min_len, max_len)
    start = rng.randrange(len(chain))  # the chain is a cycle: any category can come first
    colours = _colours(b, li)
    colour = rng.choice(colours)
    seq = []
    for t in range(n):
        if t > 0 and rng.random() > p_stay:  # an occasional switch of line, or of brand
            li, b = (1 - li, b) if rng.random() < 0.5 else (li, rng.randrange(len(WORLD_BRANDS)))
            colours = _colours(b, li)
            colour = colours[0] if colour not in colours else colour
        pick = colour if rng.random() < p_colour else rng.choice(colours)
        c = (start + t) % len(chain)
        i = index[(b, li, c, pick)]
        if i in cold and t < n - 1:  # a new release is only ever bought last
            i = index[(b, li, c, colours[1 - colours.index(pick)])]
        if i not in seq:  # already owned: skip this step
            seq.append(i)
    return seq


def make_world(seed=0, users_per_domain=500, min_len=4, max_len=6, p_stay=0.85, p_colour=0.85,
               cold_fraction=0.1, price_missing=0.05):
    """One Domain per entry of WORLD_DOMAINS, deterministic in `seed`."""
    rng, domains = random.Random(seed), []
    for d, (name, chain) in enumerate(WORLD_DOMAINS.items()):
        items, keys, index, cold = _world_catalog(rng, d, name, chain, price_missing, cold_fraction)
        sequences = [_world_user(rng, chain, index, cold, min_len, max_len, p_stay, p_colour)
                     for _ in range(users_per_domain)]
        domains.append(Domain(name, items, keys, *leave_one_out(sequences)))
    return domains


# -----------------------------------------------------------------------------
# 2b. RecBole / UniSRec benchmark folders: X.train.inter, X.valid.inter, X.test.inter; X.item or X.text + X.item2index

def check_column_names(path, line_no, header, names, key=str):
    """Every column of a header has a name, and one of its own (names compared as key() reads them)."""
    first = {}  # key(name) -> the number of the first column with that name
    for j, (col, name) in enumerate(zip(header, names), 1):
        k = first.setdefault(key(name), j) if name.strip() else None
        if k != j:
            raise UserError(f"{path}:{line_no}: column {j} ({col!r}) " + (
                f"repeats the name of column {k} ({header[k - 1]!r})" if k else "has no name"))


def _attribute_name(column):  # how a column of an .item file is rendered in an item's text: sales_type -> Sales Type
    return column.replace("_", " ").title()


def _read_atomic_table(path, required):
    """A tab-separated file with a `name:type` header -> (column names, [(line number, columns)])."""
    lines = io.StringIO(read_text(path), newline=None)
    header = lines.readline().rstrip("\n").split("\t")
    names = [col.split(":")[0].strip() for col in header]
    for r in required:
        if r not in names:
            raise UserError(f"{path}:1: header has no column '{r}' (found {'nothing' if header == [''] else header})")
    check_column_names(path, 1, header, names, key=_attribute_name)  # title and TITLE are one name
    rows = [(line_no, line.rstrip("\n").split("\t")) for line_no, line in enumerate(lines, 2) if line.rstrip("\n")]
    for line_no, cols in rows:
        if len(cols) != len(names):
            raise UserError(f"{path}:{line_no}: expected {len(names)} tab-separated columns, got {len(cols)}")
        if [c.lstrip("\ufeff").split(":")[0].strip().lower() for c in cols] == [n.lower() for n in names]:
            raise UserError(f"{path}:{line_no}: the header line again (files joined?); only the first line is one")
    return names, rows


def _item_key(path, line_no, raw):  # an item's id in an item file: a token, as in the .inter files (stripped)
    if not raw.strip() or len(raw.split()) > 1:  # a history lists ids split on spaces: 'a b' would be two items
        raise UserError(f"{path}:{line_no}: item id {raw.strip()!r} is empty or holds a space (a history splits there)")
    return raw.strip()


def shown(value):  # a value stripped; '' when it shows nothing (only spaces, zero-width or control characters)
    return value.strip() if any(c.isprintable() and not c.isspace() for c in value) else ""


def _read_item_file(path):
    """X.item (a column besides item_id: an attribute) -> attributes, missing values per column, {id: (id, item)}."""
    names, rows = _read_atomic_table(path, ["item_id"])
    text_cols = [(j, n) for j, n in enumerate(names) if n != "item_id"]
    if not text_cols:
        raise UserError(f"{path}:1: no text column besides item_id")
    attributes = tuple(_attribute_name(n) for _, n in text_cols)
    id_col = names.index("item_id")
    entries, missing = {}, Counter()
    for line_no, cols in rows:
        key = _item_key(path, line_no, cols[id_col])
        item = {a: shown(cols[j]) for (j, _), a in zip(text_cols, attributes) if shown(cols[j])}
        missing.update(n for j, n in text_cols if not shown(cols[j]))
        if not item:
            raise UserError(f"{path}:{line_no}: item {key} has no text at all")
        if key in entries:
            raise UserError(f"{path}:{line_no}: item {key} listed twice")
        entries[key] = (key, item)
    return attributes, missing, entries


def _read_item2index(path):
    """X.item2index: 'ASIN<TAB>integer id' lines -> {ASIN: id}, each ASIN and each id given once."""
    asin_to_id, id_line = {}, {}
    for line_no, line in enumerate(io.StringIO(read_text(path), newline=None), 1):
        if not line.strip():  # a blank line, as the .inter files allow
            continue
        cols = line.rstrip("\n").split("\t")
        if len(cols) != 2 or not re.fullmatch(r"[0-9]+", cols[1].strip()):
            raise UserError(f"{path}:{line_no}: expected 'ASIN<TAB>integer id'")
        asin, i = _item_key(path, line_no, cols[0]), cols[1].strip()
        if asin in asin_to_id:
            raise UserError(f"{path}:{line_no}: item {asin} listed twice")
        if i in id_line:
            raise UserError(f"{path}:{line_no}: id {i} already given to line {id_line[i]}")
        asin_to_id[asin], id_line[i] = i, line_no
    return asin_to_id


def _category_root(texts, share=0.9):
    """The longest word prefix ('Industrial & Scientific') that `share` of UniSRec's texts hold right after a '. '."""
    segments = [[part.split() for part in text.split(". ")[1:]] for text in texts]  # per text, where a path may start
    root = []
    while True:
        n = len(root) + 1
        counts = Counter(p for segs in segments
                         for p in dict.fromkeys(tuple(s[:n]) for s in segs if len(s) >= n and s[:n - 1] == root))
        prefix, k = counts.most_common(1)[0] if counts else ((), 0)
        if not counts or k < share * len(texts) or prefix[-1] in root and prefix[-1].isalpha():  # no text: no root;
            return " ".join(root)  # a word of the root again starts a level of its own ('Office Products' 'Office ...')
        root = list(prefix)


def _split_text(text, root):
    """UniSRec's 'title. category path. brand. ' -> [title, the path less its root, brand], '' where missing. The root
    marks where the path starts, so that a title or a brand may hold '. ' too ('Mr. Heater'); else an empty path
    ('title. . brand'), else the longest start of the root (a path of a branch most items are not in)."""
    body, words = text.rstrip().removesuffix("."), root.split()  # the last '. ' (its space stripped or not)
    paths = [re.escape(" ".join(words[:n])) + r"(?= |\. |$)" for n in range(len(words), 0, -1)]
    at = next(filter(None, (re.search(r"\. " + p, body) for p in paths[:1] + [r"(?=\. )"] + paths[1:])), None)
    if at is None:  # no root: the last two '. ' split three parts or more; fewer are a title (which may hold '. ')
        return [body, "", ""] if len(parts := body.rsplit(". ", 2)) < 3 else parts
    category, _, brand = body[at.end():].lstrip(" ").partition(". ")
    return [body[:at.start()], category, brand]


def _read_text_files(path, map_path):
    """X.text and X.item2index (ASIN -> .inter id) -> what _read_item_file returns."""
    if not os.path.lexists(map_path):
        raise UserError(f"{map_path}: needed to map the ASINs of {path} to .inter ids")
    asin_to_id = _read_item2index(map_path)
    attributes = ("Title", "Category", "Brand")
    names, rows = _read_atomic_table(path, ["item_id", "text"])
    if len(names) > 2:  # UniSRec's X.text: the ASIN and one text, whose parts are the attributes
        raise UserError(f"{path}:1: columns {names}; an X.text holds item_id and text only (more attributes: X.item)")
    id_col, text_col = names.index("item_id"), names.index("text")
    entries, missing, root = {}, Counter(), _category_root([cols[text_col] for _, cols in rows])
    for line_no, cols in rows:
        asin, text = _item_key(path, line_no, cols[id_col]), cols[text_col]
        if asin not in asin_to_id:
            raise UserError(f"{path}:{line_no}: item {asin} is not in {map_path} (X.text names items by ASIN)")
        if asin_to_id[asin] in entries:
            raise UserError(f"{path}:{line_no}: item {asin} listed twice")
        item = {a: shown(v) for a, v in zip(attributes, _split_text(text, root)) if shown(v)}
        missing.update(a for a in attributes if a not in item)
        if not item:
            raise UserError(f"{path}:{line_no}: item {asin} has no text at all")
        entries[asin_to_id[asin]] = (asin, item)
    return attributes, missing, entries


def _read_inter(path, index):
    """X.<split>.inter -> [(line number, user, history, target)] in item indices (index: .inter id -> index)."""
    names, rows = _read_atomic_table(path, ["user_id", "item_id_list", "item_id"])
    ju, jh, jt = names.index("user_id"), names.index("item_id_list"), names.index("item_id")
    examples = []
    for line_no, cols in rows:
        ids = cols[jh].split() + [cols[jt].strip()]
        for i in ids:
            if i not in index:
                raise UserError(f"{path}:{line_no}: unknown item id {i!a} (not in the item text file)")
        if len(ids) < 2:
            raise UserError(f"{path}:{line_no}: empty history")
        examples.append((line_no, cols[ju].strip(), [index[i] for i in ids[:-1]], index[ids[-1]]))
    return examples


def read_atomic(folder):
    """One UniSRec/RecBole benchmark folder -> a Domain named like the folder (or like its one X.train.inter)."""
    folder = os.path.normpath(folder)  # Games/, Games/. and . (inside Games) are all the folder Games
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: {'is a file, not a folder' if os.path.exists(folder) else 'no such folder'}")
    named = [f[:-len(".train.inter")] for f in os.listdir(folder) if f.endswith(".train.inter") and f[0] != "."]
    if len(named) > 1:
        raise UserError(f"{folder}: holds {len(named)} benchmarks ({', '.join(sorted(named))}); one folder each")
    name = named[0] if len(named) == 1 else os.path.basename(os.path.abspath(folder))  # a folder renamed, or linked
    path = os.path.join(folder, name)
    if os.path.lexists(f"{path}.item") and os.path.lexists(f"{path}.text"):
        raise UserError(f"{folder}: holds both {name}.item and {name}.text; keep the one that is its item text")
    if os.path.lexists(f"{path}.item"):  # whatever is there (a folder, a broken link): read_text says what is wrong
        attributes, missing, entries = _read_item_file(f"{path}.item")
    elif os.path.lexists(f"{path}.text"):
        attributes, missing, entries = _read_text_files(f"{path}.text", f"{path}.item2index")
    else:
        raw = [f for f in sorted(os.listdir(folder)) if re.search(r"(_5|^meta_.*)\.json(\.gz)?$", f)]
        inner = [f"{folder}/{d}" for d in sorted(os.listdir(folder)) if os.path.isfile(f"{folder}/{d}/{d}.test.inter")]
        raise UserError(f"{os.path.join(folder, raw[0])}: raw Amazon 2018 files; convert them into a benchmark folder "
                        "first: python data.py amazon CATEGORY --url file:///FOLDER (FOLDER as the Amazon site)" if raw
                        else f"{folder}: has neither {name}.item nor {name}.text (a benchmark folder)"
                        + (f"; it holds {', '.join(inner)}: give those" if inner else ""))
    if missing:
        log.info(f"{folder}: missing attribute values written as Unknown: "
                 + ", ".join(f"{k} {v}" for k, v in missing.items()))
    index = {key: i for i, key in enumerate(entries)}
    train, valid, test = (_read_inter(f"{path}.{split}.inter", index) for split in ("train", "valid", "test"))
    return Domain(name, [item for _, item in entries.values()], [key for key, _ in entries.values()],
                  *([(hist, t) for _, _, hist, t in split] for split in (train, valid, test)),
                  train_sequences=_training_parts(path, train, valid, test), attributes=attributes)


def _training_parts(path, train, valid, test):
    """Each user's training part, its rows checked: valid and test hold one row per user, the same users; each row's
    history is the user's items before its target, cut to the longest (UniSRec cuts at 50): none missing or added."""
    for split, rows, other in (("valid", valid, test), ("test", test, valid)):
        repeated = sum(target in history for _, _, history, target in rows)
        if repeated:
            log.warning(f"{path}.{split}.inter: {repeated} of {len(rows)} targets are in their user's history, which "
                        "the ranking excludes: they count as misses")
        seen, others = {}, {user for _, user, _, _ in other}
        for line_no, user, _, _ in rows:
            if user in seen:
                raise UserError(f"{path}.{split}.inter:{line_no}: user {user} listed twice (line {seen[user]}); a "
                                "split holds one row per user")
            if user not in others:
                raise UserError(f"{path}.{split}.inter:{line_no}: user {user} is not in the "
                                f"{'test' if split == 'valid' else 'valid'} split; both hold every user")
            seen[user] = line_no
    rows, cap = {}, max((len(hist) for split in (train, valid, test) for _, _, hist, _ in split), default=0)
    for line_no, user, history, target in train:
        rows.setdefault(user, []).append((line_no, history, target))
    parts, checks, after_valid = {}, [], {u: hist + [t] for _, u, hist, t in valid}  # checks: (split, line number,
    for user, rs in rows.items():  # history, the last cap items before its target); UniSRec: rows latest first
        if user not in after_valid:
            raise UserError(f"{path}.train.inter:{rs[0][0]}: user {user} is not in the valid split")
        rs = sorted(rs[::-1] if len(rs[0][1]) > len(rs[-1][1]) else rs, key=lambda r: len(r[1]))
        parts[user] = rs[0][1][:1] + [t for _, _, t in rs]  # a user's first row has one item of history
        checks += [("train", n, hist, parts[user][max(0, k + 1 - cap):k + 1]) for k, (n, hist, _) in enumerate(rs)]
    checks += [("valid", n, hist, parts.setdefault(u, hist[:1])) for n, u, hist, _ in valid]  # no rows: part [first]
    checks += [("test", n, hist, after_valid[u]) for n, u, hist, _ in test]
    for split, line_no, history, before in checks:
        if history != before[-len(history):] or len(history) != min(len(before), cap):
            raise UserError(f"{path}.{split}.inter:{line_no}: this history is not the user's items before its target "
                            "in the other rows (a row missing, added or out of place)")
    return list(parts.values())


# -----------------------------------------------------------------------------
# 2c. the text templates (docs/calrec.md section 1) and batches

HISTORY_HEADER = "User purchase history: This is a summary of the user's purchase history.\n"
FIRST_ITEM = "The first purchased item is as follows:"
NEXT_ITEM = "The next purchased item is as follows:"
ITEM_END = ".\n"


def item_text(item, attributes, max_words=24):
    """'Title: X, Category: Y, Brand: Z, Price: Unknown', each value cut at max_words words (one per attribute)."""
    caps = max_words if isinstance(max_words, (list, tuple)) else [max_words] * len(attributes)
    return ", ".join(f"{a}: {' '.join(item.get(a, 'Unknown').split()[:cap])}" for a, cap in zip(attributes, caps))


def history_prompt(texts):
    """The prompt over the item texts of a history; it ends where the next item's text goes."""
    items = "".join((FIRST_ITEM if k == 0 else NEXT_ITEM) + " " + t + ITEM_END for k, t in enumerate(texts))
    return HISTORY_HEADER + items + NEXT_ITEM


class PromptBuilder:
    """history_prompt in token ids, assembled from pieces tokenised once. Each item is encoded as " " + its text
    (as it follows 'as follows:'), cut at max_item_tokens (None: no cut); the item tower reads these tokens too,
    so v_T and v_T|U pool over the same sequence. A prompt keeps the most recent history items (at most
    max_history) that fit block_size with room for the longest item and its end-of-text; a training row is the
    prompt inference builds for its history, followed by its target."""

    def __init__(self, tokenizer, item_texts, block_size, max_history, max_item_tokens):
        self.tok, self.max_history = tokenizer, max_history
        self.item_ids = [t[:max_item_tokens] for t in tokenizer.encode_batch([" " + t for t in item_texts])]
        self.header, self.first = tokenizer.encode(HISTORY_HEADER), tokenizer.encode(FIRST_ITEM)
        self.next, self.end = tokenizer.encode(NEXT_ITEM), tokenizer.encode(ITEM_END)
        self.room = max(len(t) for t in self.item_ids) + 1  # the longest target and its end-of-text
        self.budget = block_size - self.room - len(self.header) - len(self.next)  # for the history items
        if len(self.first) + self.room - 1 + len(self.end) > self.budget:  # not even one
            raise UserError(f"block_size={block_size} cannot hold a prompt of one history item and a target of "
                            f"{self.room - 1} tokens; it takes a longer block_size or a lower max_item_tokens")

    def _kept(self, history):
        prefix = max(len(self.first), len(self.next))  # which item comes first is known only at the end
        kept, used = [], 0
        for i in reversed(history[-self.max_history:]):
            used += prefix + len(self.item_ids[i]) + len(self.end)
            if used > self.budget:
                break
            kept.append(i)
        return kept[::-1]

    def _assemble(self, items):
        """history_prompt of `items` as ids, and where each item's tokens sit: [(start, end), ...]."""
        ids, spans = list(self.header), []
        for k, i in enumerate(items):
            ids += self.first if k == 0 else self.next
            spans.append((len(ids), len(ids) + len(self.item_ids[i])))
            ids += self.item_ids[i] + self.end
        return ids + self.next, spans

    def prompt(self, history):
        return self._assemble(self._kept(history))[0]

    def prompt_batch(self, histories):
        """Histories -> right-padded prompts (B, T), attention_mask (B, T), and the prompts as lists."""
        rows = [self.prompt(hist) for hist in histories]
        return (*pad_batch(rows, self.tok.pad_id), rows)

    def item_batch(self, item_indices):
        """Items -> the item tower's input: right-padded item texts (B, T) and attention_mask (B, T)."""
        return pad_batch([self.item_ids[i] for i in item_indices], self.tok.pad_id)

    def training_batch(self, sequences, every_position=False):
        """Item sequences, each a history followed by its target -> the rows of the user tower: prompt(history),
        the target's tokens and end-of-text. The target is predicted; with every_position [beyond the paper] so is
        every kept history item after the first (as SASRec trains). Returns idx, attention_mask, targets (B, T)
        (the next token where it belongs to a predicted item, the target's end-of-text included; -100 elsewhere)
        and per prediction (P,): row, start, end (the item's tokens; its prompt is [0, start)), item, and
        position (its index in the row's sequence)."""
        rows, predicted = [], []  # predicted: (row, start, end, item, position)
        for b, sequence in enumerate(sequences):
            items = self._kept(sequence[:-1]) + [sequence[-1]]
            ids, spans = self._assemble(items)
            rows.append(ids[:spans[-1][1]] + [self.tok.eot_id])  # the target ends with end-of-text, not a prefix
            for k, ((s, e), i) in enumerate(zip(spans, items)):
                if k == len(items) - 1 or (every_position and k > 0):
                    predicted.append((b, s, e, i, len(sequence) - len(items) + k))
        idx, attention_mask = pad_batch(rows, self.tok.pad_id)
        targets = torch.full_like(idx, -100)
        for b, s, e, _, _ in predicted:
            last = e + 1 if e == len(rows[b]) - 1 else e  # the target also predicts its end-of-text
            targets[b, s - 1:last - 1] = idx[b, s:last]   # position t predicts token t + 1
        row, start, end, item, position = map(torch.tensor, zip(*predicted))
        return dict(idx=idx, attention_mask=attention_mask, targets=targets, row=row, start=start, end=end,
                    item=item, position=position)


# -----------------------------------------------------------------------------
# 3. MAML data
#
# A task is a dict: name, kind ("classification" or "regression"), labels (label strings in class-index order),
# metrics (GLUE's names), pair (True for sentence pairs) and its splits "train", "dev" and "test" (if labelled; their
# roles: maml.target_runs), each {"text_a": [str], "text_b": [str] or None, "y": [int or float]}.

# Each task's official layout: the columns read by name (CoLA: by position, it has no header).
BOOL, ENTAILS = ("0", "1"), ("entailment", "not_entailment")  # label sets that several tasks share
GLUE_TASKS = {
    "CoLA": dict(text_a=3, text_b=None, label=1, labels=BOOL, metrics=("mcc",), header=False),
    "SST-2": dict(text_a="sentence", text_b=None, label="label", labels=BOOL, metrics=("accuracy",)),
    "MRPC": dict(text_a="#1 String", text_b="#2 String", label="Quality", labels=BOOL, metrics=("f1", "accuracy")),
    "STS-B": dict(text_a="sentence1", text_b="sentence2", label="score", labels=None, metrics=("pearson", "spearman")),
    "QQP": dict(text_a="question1", text_b="question2", label="is_duplicate", labels=BOOL, metrics=("f1", "accuracy")),
    "MNLI": dict(text_a="sentence1", text_b="sentence2", label="gold_label",
                 labels=("entailment", "neutral", "contradiction"), metrics=("accuracy",)),
    "QNLI": dict(text_a="question", text_b="sentence", label="label", labels=ENTAILS, metrics=("accuracy",)),
    "RTE": dict(text_a="sentence1", text_b="sentence2", label="label", labels=ENTAILS, metrics=("accuracy",))}


def check_glue_task(name):
    if name not in GLUE_TASKS:
        raise UserError(f"unknown GLUE task {name!r}; expected one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def _glue_columns(path, task, spec, rows):
    """Where a task's columns are ({column: index}), how many a line has, and the rows after any header."""
    if not spec.get("header", True):  # CoLA: no header, columns by position
        if rows and len(rows[0][1]) == 2 and rows[0][1][0] == "index":
            raise UserError(f"{path}:{rows[0][0]}: this is CoLA's unlabelled test layout (index, sentence); "
                            "a labelled file has 4 columns and no header")
        return {c: c for c in (spec["text_a"], spec["label"])}, 4, rows  # source, label, original label, sentence
    if not rows:
        raise UserError(f"{path}:1: empty file, expected a header line")
    (lineno, header), rows = rows[0], rows[1:]
    check_column_names(path, lineno, header, header)
    wanted = [c for c in (spec["text_a"], spec["text_b"], spec["label"]) if c is not None]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise UserError(f"{path}:{lineno}: header has no column {', '.join(map(repr, missing))} "
                        f"(not the official {task} layout; header: {header})")
    return {c: header.index(c) for c in wanted}, len(header), rows


def _glue_label(raw, where, task, spec):
    """A label's class index, or STS-B's similarity score."""
    if spec["labels"] is not None:
        if raw not in spec["labels"]:
            raise UserError(f"{where}: label {raw!r} is not one of {task}'s labels {list(spec['labels'])}")
        return spec["labels"].index(raw)
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)", raw):  # float() also takes '4_0', 'nan', non-ASCII digits
        raise UserError(f"{where}: {task} score {raw!r} is not a number")
    y = float(raw)
    if not 0.0 <= y <= 5.0:  # STS-B's similarity scale
        raise UserError(f"{where}: {task} score {y} is outside [0, 5]")
    return y


def read_glue_split(path, task):
    """One split file of a GLUE task in its official layout -> {"text_a", "text_b", "y"}."""
    spec = check_glue_task(task)
    # non-blank lines (a no-break space is not blank) split on tabs with no quote handling, as GLUE's loaders
    lines = enumerate(io.StringIO(read_text(path), newline=""), 1)
    rows = [(lineno, line.rstrip("\r\n").split("\t")) for lineno, line in lines if line.strip(" \t\n\r\f\v")]
    col, n_cols, rows = _glue_columns(path, task, spec, rows)
    out = {"text_a": [], "text_b": [] if spec["text_b"] is not None else None, "y": []}
    for lineno, fields in rows:
        if len(fields) != n_cols:
            raise UserError(f"{path}:{lineno}: expected {n_cols} tab-separated columns for {task}, got {len(fields)}")
        out["y"].append(_glue_label(fields[col[spec["label"]]].strip(), f"{path}:{lineno}", task, spec))
        out["text_a"].append(fields[col[spec["text_a"]]])
        if spec["text_b"] is not None:
            out["text_b"].append(fields[col[spec["text_b"]]])
    if not out["y"]:
        raise UserError(f"{path}: no examples")
    return out


def _labelled(path, dev_path, spec):  # GLUE's own test.tsv is not: 'index' (QQP 'id') first, dev's columns less label
    first, dev = (next((ln for ln in io.StringIO(read_text(p), newline="") if ln.strip()), "").rstrip("\r\n")
                  .split("\t") for p in (path, dev_path if spec.get("header", True) else path))  # CoLA: no header
    return spec["label"] in first or first[0] not in ("index", "id") or not set(first) <= {"index", *dev}


def glue_task(name, folder, target=False):
    """A GLUE task from `folder` holding train.tsv, dev.tsv and optionally a labelled test.tsv (target: see below)."""
    spec = check_glue_task(name)
    splits, paths = {}, {}
    for split in ("train", "dev", "test"):
        path = paths[split] = os.path.join(folder, f"{split}.tsv")
        if split == "dev" and name == "MNLI" and not os.path.lexists(path):
            path = paths[split] = os.path.join(folder, "dev_matched.tsv")  # the official MNLI download's name
        if split == "test" and not (os.path.lexists(path) and _labelled(path, paths["dev"], spec)):
            continue  # no test split, or GLUE's own, unlabelled: the task reports on dev (a folder there: an error)
        splits[split] = read_glue_split(path, name)
    pairs = {s: set(zip(v["text_a"], v["text_b"] or v["text_a"])) for s, v in splits.items()}  # the examples' texts
    if target and "test" in splits and pairs["dev"] <= pairs["train"]:  # dev validates: not on train's examples
        raise UserError(f"{paths['dev']}: every example is also in {paths['train']}; validation needs its own")
    reported = "test" if "test" in splits else "dev"  # what a target reports on must be held out of the other splits
    if target and pairs.pop(reported) <= set().union(*pairs.values()):
        raise UserError(f"{paths[reported]}: every example is also in another split of {name}; it is not held out")
    return dict(name=name, kind="regression" if spec["labels"] is None else "classification",
                labels=spec["labels"], metrics=spec["metrics"], pair=spec["text_b"] is not None, **splits)


def load_glue(root, names, target=False):
    """{name: task} for the named tasks under `root` (root/<name>/train.tsv ...); target: see glue_task."""
    return {name: glue_task(name, os.path.join(root, name), target) for name in names}


def few_shot_folders(root, name):
    """The LM-BFF few-shot splits root/<name>/16-<seed>/ (sorted by seed), or [] when there are none."""
    folder = os.path.join(root, name)
    for path in (p for p in (root, folder) if os.path.lexists(p)):  # a file, a dead link, a folder one cannot read
        if not (os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)):
            raise UserError(f"{path}: not a folder one can read; {name}'s 16-shot splits go there (data.py few-shot)")
    names = [d for d in os.listdir(folder) if d.startswith("16-")] if os.path.isdir(folder) else []
    for d in (d for d in names if not (re.fullmatch(r"16-(0|[1-9][0-9]*)", d) and os.path.isdir(f"{folder}/{d}"))):
        raise UserError(f"{folder}/{d}: not a 16-shot folder (a folder 16-<seed>, the seed with no leading 0)")
    return [os.path.join(folder, d) for d in sorted(names, key=lambda d: int(d[3:]))]


# --- the built-in task family ----------------------------------------------------
#
# A made-up language: eight word *kinds* of twelve words each, and fillers. Every task asks about the kinds of a
# sentence's (or a pair's) words: all need to know which word is of which kind, in the encoder (what transfers),
# and differ in the question, in the head (what each task adapts). The targets ask new questions of those kinds.

FAMILY_KINDS, FAMILY_WORDS_PER_KIND, FAMILY_FILLERS = 8, 12, 24
FAMILY_SENTENCE_LEN = (5, 9)   # words per sentence
FAMILY_SEED = 1234             # the language itself (fixed; the run's --seed only changes sampling)
# name -> (rule, its arguments, examples: an aux task's train + dev, a target's train); the rules: family_example
FAMILY_AUX = {
    "has-0": ("has", (0,), 1200), "has-1": ("has", (1,), 400), "has-2": ("has", (2,), 800), "has-5": ("has", (5,), 300),
    "more-0-1": ("more", (0, 1), 1000), "more-3-4": ("more", (3, 4), 600), "most-1-2-4": ("most", (1, 2, 4), 1000),
    "count-3": ("count", (3,), 500), "count-5": ("count", (5,), 400), "share-0": ("share", (0,), 800),
    "share-4": ("share", (4,), 400), "same-2": ("same", (2,), 600)}
FAMILY_TARGETS = {"more-2-5": ("more", (2, 5), 1000), "share-3": ("share", (3,), 1000),
                  "count-4": ("count", (4,), 1000), "most-0-3-5": ("most", (0, 3, 5), 1000)}
FAMILY_DEV, FAMILY_TEST = 100, 300   # target tasks: validation and test examples (aux: 10% dev)


def family_vocabulary():
    """The made-up words: kinds[k] is the list of words of kind k; fillers a list of neutral words."""
    rng = random.Random(FAMILY_SEED)
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "n", "r", "s", "k"]
    words = set()
    while len(words) < FAMILY_KINDS * FAMILY_WORDS_PER_KIND + FAMILY_FILLERS:
        syllables = range(rng.choice((2, 2, 3)))
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in syllables))
    words, n = sorted(words), FAMILY_WORDS_PER_KIND
    rng.shuffle(words)
    return [words[k * n:(k + 1) * n] for k in range(FAMILY_KINDS)], words[FAMILY_KINDS * n:]


def family_sentence(rng, kinds, fillers, counts):
    """A sentence holding counts[k] words of each kind k, padded with fillers, shuffled."""
    words = [rng.choice(kinds[k]) for k, c in counts.items() for _ in range(c)]
    length = max(len(words), rng.randint(*FAMILY_SENTENCE_LEN))
    words += [rng.choice(fillers) for _ in range(length - len(words))]
    rng.shuffle(words)
    return " ".join(words)


def _family_pair(rng, rule, k, sentence):
    """A pair: share k (1 if both sentences hold a word of kind k), same k (1 if as many words of kind k)."""
    y = rng.randint(0, 1)
    if rule == "share":
        values = (1, 1) if y else rng.choice(((1, 0), (0, 1), (0, 0)))
    else:
        n1 = rng.randint(0, 3)
        values = (n1, n1 if y else rng.choice([n for n in range(4) if n != n1]))
    pair = []
    for v in values:
        counts = {j: rng.choice((0, 0, 0, 1)) for j in range(FAMILY_KINDS) if j != k}
        counts[k] = (rng.randint(1, 2) if v else 0) if rule == "share" else v
        pair.append(sentence(counts))
    return pair[0], pair[1], y


def family_example(rng, rule, args, kinds, fillers):
    """(text_a, text_b or None, y) for one example of a rule, the labels balanced by construction. Rules: has k (1
    if a word of kind k occurs), more a b (1 if kind a occurs more often than b), most a b c (which of the three
    occurs most: 3 classes), count k (how many words of kind k: regression), and the pair rules of _family_pair."""
    sentence = functools.partial(family_sentence, rng, kinds, fillers)
    if rule in ("share", "same"):
        return _family_pair(rng, rule, args[0], sentence)
    counts = {k: rng.choice((0, 0, 0, 1)) for k in range(FAMILY_KINDS) if k not in args}  # the other kinds
    if rule == "has":
        y = rng.randint(0, 1)
        counts[args[0]] = rng.randint(1, 2) if y else 0
    elif rule == "more":
        lo, hi = sorted(rng.sample(range(4), 2))
        y = rng.randint(0, 1)
        counts[args[0]], counts[args[1]] = (hi, lo) if y else (lo, hi)
    elif rule == "most":
        y, top = rng.randrange(3), rng.randint(2, 3)
        for i, k in enumerate(args):
            counts[k] = top if i == y else rng.randint(0, top - 1)
    else:  # count
        counts[args[0]] = rng.randint(0, 4)
        y = float(counts[args[0]])
    return sentence(counts), None, y


def family_task(name, rule, args, sizes):
    """A task of the family; sizes: {split: number of examples}. Deterministic in the task's name."""
    kinds, fillers = family_vocabulary()
    rng = random.Random(f"{FAMILY_SEED}:{name}")
    labels = None if rule == "count" else tuple(f"kind {k}" for k in args) if rule == "most" else ("no", "yes")
    metrics = ("pearson", "spearman") if rule == "count" else ("mcc", "accuracy") if len(args) < 3 else ("accuracy",)
    task = dict(name=name, kind="regression" if rule == "count" else "classification", labels=labels,
                metrics=metrics, pair=rule in ("share", "same"))
    for split, n in sizes.items():
        a, b, y = zip(*(family_example(rng, rule, args, kinds, fillers) for _ in range(n)))
        task[split] = {"text_a": list(a), "text_b": list(b) if task["pair"] else None, "y": list(y)}
    return task


def task_family():
    """(aux tasks, target tasks) of the built-in family, each {name: task}."""
    aux = {name: family_task(name, rule, args, {"train": n - n // 10, "dev": n // 10})
           for name, (rule, args, n) in FAMILY_AUX.items()}
    targets = {name: family_task(name, rule, args, {"train": n, "dev": FAMILY_DEV, "test": FAMILY_TEST})
               for name, (rule, args, n) in FAMILY_TARGETS.items()}
    return aux, targets


if __name__ == "__main__":  # the command line that fetches the real data lives in download.py
    import download
    download.main()
