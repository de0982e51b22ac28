"""The machinery both tasks share, so that calrec.py and maml.py can hold their papers and little else. Top to bottom:
settings -> files written whole, the command line's types -> checkpoints and --init -> the training loop with model
selection -> the state a run resumes from -> more hardware -> the run's device, processes, seed, log and --out-dir."""

import argparse
import contextlib
import dataclasses
import datetime
import difflib
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sys
import time
import typing

try:
    import fcntl  # a lock the system drops when its process ends; Windows has none, and runs there unlocked
except ImportError:
    fcntl = None
import tokenizers
import torch
from tokenizers.pre_tokenizers import ByteLevel
from tqdm import tqdm

import data
from model import GPT, GPTConfig, UserError, check_weights, load_torch

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# settings: a task's config is a frozen dataclass; every field says once what it allows, and one check serves
# the presets, the flags and --set alike


def setting(default, allowed, help):
    """A config field: its default, the values it allows, and one line for --help and --show-config. allowed: a
    tuple of choices; a range written as text, '>= 0', '> 0' or '0..1' (ends included); or None (any value of the
    type, checked where it is used, e.g. a domain name against the data). A tuple field's values each allowed."""
    return dataclasses.field(default=default, metadata=dict(allowed=allowed, help=help))


def allows(allowed, value):
    if allowed is None:
        return True
    if isinstance(allowed, tuple):
        return value in allowed
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if ".." in allowed:
        low, high = (float(x) for x in allowed.split(".."))
        return low <= value <= high
    op, bound = allowed.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def describe(f):
    """What a field allows, in words."""
    allowed = f.metadata["allowed"]
    kind = typing.get_args(f.type)[0] if typing.get_origin(f.type) is tuple else f.type
    what = " or ".join(map(str, allowed)) if isinstance(allowed, tuple) else f"{kind.__name__} {allowed or ''}".strip()
    return f"comma-separated, each {what}, none twice" if typing.get_origin(f.type) is tuple else what


def parse_value(kind, text):
    """A setting's value from text, as the field's type: int, float, bool, str or a tuple of one; numbers in ASCII."""
    if typing.get_origin(kind) is tuple:
        return tuple(parse_value(typing.get_args(kind)[0], t.strip()) for t in text.split(","))
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError
        return text.lower() in ("true", "1", "yes")
    if kind is not str and not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?|[+-]?inf|nan", text, re.I | re.A):
        raise ValueError  # what float() takes besides: '0_1', other scripts' digits, '1,,2' (an empty one)
    return kind(text)


def apply_settings(cfg, pairs):
    """cfg with (name, text) pairs applied: (where, name, text), `where` the flag that gave it. Unknown names
    and values the field does not allow are errors naming the setting, the value and what is allowed."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for where, name, text in pairs:
        if name not in fields:
            near = "".join(f" (did you mean {n}?)" for n in difflib.get_close_matches(name, fields, 1, 0.8))
            raise UserError(f"{where}: no setting {name!r}{near}; --show-config lists them all")
        try:
            changes[name] = parse_value(fields[name].type, text)
        except ValueError:
            raise UserError(f"{where}: {name}={text!r}: expected {describe(fields[name])}") from None
    return check_settings(dataclasses.replace(cfg, **changes))


def check_settings(cfg):
    """Every field within what it allows, then the config's own relations (its check()); returns cfg."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if typing.get_origin(f.type) is tuple else (value,)
        if not values or len(set(values)) < len(values) or not all(allows(f.metadata["allowed"], v) for v in values):
            raise UserError(f"setting {f.name}={format_value(value)}: expected {describe(f)}")
    cfg.check()
    return cfg


def format_value(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def show_config(cfg):
    """Every field of cfg: name, value, what it allows, what it is (--show-config)."""
    rows = [(f.name, format_value(getattr(cfg, f.name)), describe(f), f.metadata["help"])
            for f in dataclasses.fields(cfg)]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c:<{width[2]}}  {d}" for a, b, c, d in rows)


def refusal(error):
    """The one line for an error that is no bug, or None: the user's (a UserError), a file the system refuses (an
    OSError naming it), or an allocation the machine cannot hold (a setting too large for it)."""
    if isinstance(error, UserError) or isinstance(error, OSError) and error.filename:
        return str(error) if isinstance(error, UserError) else f"{error.filename}: {error.strerror}"
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error):
        size = re.search(r"allocate ([\d.]+ \w+|\d+ bytes)", str(error))
        return (f"out of memory{f' (allocating {size.group(1)})' if size else ''}: a setting asks for more than this "
                "machine holds; lower it (--show-config lists them)")
    return None


def check_memory(device, needs):
    """Refuse, before any work, settings whose run cannot fit in the device's memory. needs: {a phase of the run and
    the settings it grows with: a lower bound of the float32 values it holds at once}: a refusal is never a guess."""
    kind = torch.device(device).type
    if kind == "cuda":
        have = torch.cuda.get_device_properties(torch.device(device)).total_memory
    elif kind == "mps":
        have = torch.mps.recommended_max_memory()
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:  # not on Windows
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        return
    what = max(needs, key=needs.get)
    if 4 * needs[what] > have:
        raise UserError(f"settings too large: {what} needs at least {4 * needs[what] / 2**30:,.1f} GB, and this "
                        f"{kind} has {have / 2**30:,.1f} GB (--show-config lists the settings)")


def training_floats(c, tokens, predicted):
    """A lower bound of the float32 values one AdamW step of a GPT of config c holds: weights, gradients and two moments
    (biases and LayerNorms left out); for each token in every layer, the ten values a unit of width backward keeps (two
    LayerNorms' outputs, q, k, v, attention's output, the MLP's 4 C); the predicted tokens' logits and gradients."""
    weights = (c.vocab_size + c.block_size) * c.n_embd + 12 * c.n_layer * c.n_embd ** 2
    return 4 * weights + tokens * 10 * c.n_layer * c.n_embd + predicted * 2 * c.vocab_size


def beam_floats(c, prompts, beams, new_tokens):
    """A lower bound of what model.GPT.beam_search holds on top of the weights, in float32 values: the KV cache of
    the beams' new tokens, and their (bool) mask of visible slots."""
    return prompts * beams * new_tokens * (2 * c.n_layer * c.n_embd + beams / 4)


# -----------------------------------------------------------------------------
# files, written whole: a temporary file next to the target, then a rename; and the command line's types


def atomic_write(path, write, mode="w"):
    """Write a file through write(f) into a temporary file next to it, then rename it over `path`: a crash
    mid-write leaves the previous file (or none) intact, never half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")  # one a killed run left is written over
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except (OSError, RuntimeError) as e:  # a full disk, which torch.save reports as a RuntimeError, ...
        why = e.strerror if isinstance(e, OSError) else f"is the disk full? {str(e).splitlines()[0]}"
        raise UserError(f"{path}: cannot be written ({why})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(path, obj):  # strict JSON: a float that is not finite (a nan metric) is written as null
    strict = json.loads(json.dumps(obj), parse_constant=lambda c: None)
    atomic_write(path, lambda f: json.dump(strict, f, indent=2))


def save_tokenizer(out_dir, tokenizer):
    """out_dir/tokenizer.json, beside the run's checkpoints (they can be --init with it), as tokenizers' save does."""
    atomic_write(os.path.join(out_dir, "tokenizer.json"), lambda f: f.write(tokenizer.tok.to_str(pretty=True)))


def save_torch(path, obj):  # torch.save, atomically; tensors and plain values only, which load_torch reads safely
    atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


SEED_MAX = 2 ** 32 - 1  # numpy's seeds are 32-bit


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (`error: ...`, exit status 2), like every other mistake; so is a
    flag given twice (argparse would keep the last one silently: a typo must fail)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, Once)  # every flag that stores a value, a subcommand's too

    def parse_known_args(self, args=None, namespace=None):
        self.given = set()  # the flags Once has stored
        return super().parse_known_args(args, namespace)

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog.split()[0]} --help)")


def positive_int(text):  # an argparse type: a whole number above 0
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


class Once(argparse.Action):  # Parser's way to store a value: a flag given twice is refused
    def __call__(self, parser, namespace, values, option_string=None):
        if option_string and self.dest in parser.given:
            parser.error(f"{option_string} is given twice")
        parser.given.add(self.dest)
        setattr(namespace, self.dest, values)


def seed_number(text):
    if not (text.isascii() and text.isdigit()) or int(text) > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {SEED_MAX}, got {text!r}")
    return int(text)


def thread_count(text):
    n, cpus = positive_int(text), os.cpu_count() or 1
    if n > cpus:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {cpus}, the CPUs here, got {text!r}")
    return n


def name_value(text):
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def check_out_dir(path, flag, outputs=()):
    """A folder we can write to, or a path where one can be made, where each of `outputs` that exists is a file."""
    if not path.strip():
        raise UserError(f"{flag}: an empty path; give a folder")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UserError(f"{flag} {path}: is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: this folder is not writable")
        for out in (os.path.join(path, m) for n in outputs for m in (n, f".{n}.tmp")):  # atomic_write's tmp too
            if os.path.islink(out) or os.path.lexists(out) and not os.path.isfile(out):  # a link (written through),
                raise UserError(f"{out}: is {'a folder' if os.path.isdir(out) else 'not a regular file'}; a run "
                                "writes a file there")  # ... a folder, a device
        return
    parent = os.path.abspath(path)
    while not os.path.lexists(parent):  # a link to nowhere (or a loop of links) stops here: it is no folder
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot be created ({parent} is not a writable folder)")


# -----------------------------------------------------------------------------
# checkpoints: the GPT's config and weights, and the fingerprint of the tokenizer it was trained with


def save_checkpoint(path, model, tokenizer, step, metrics, **extra):
    """Write {model, config, tokenizer, step, metrics, ...} atomically; its tokenizer.json goes beside it (the
    caller writes it once per run). A project checkpoint is what --init accepts."""
    save_torch(path, dict(model=model.state_dict(), config=dataclasses.asdict(model.config),
                          tokenizer=tokenizer.fingerprint, step=step, metrics=dict(metrics), **extra))


def gpt_from_checkpoint(path, dropout=None):
    """A GPT with the config and weights of a project checkpoint (and `dropout`, unless None: the checkpoint's);
    returns (model, checkpoint dict)."""
    ckpt = load_torch(path)
    missing = {"model", "config", "tokenizer", "step", "metrics"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise UserError(f"{path}: not a checkpoint of this project (missing {sorted(missing)})")
    try:  # its config: sizes whole numbers above 0, n_embd a multiple of n_head, dropout in [0, 1), bias true or false
        c = GPTConfig(**ckpt["config"])
    except TypeError as e:  # not a dict, or other names than GPTConfig's
        raise UserError(f"{path}: its config does not describe a GPT ({e})") from None
    sizes = (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd)
    if not (all(type(n) is int and n > 0 for n in sizes) and c.n_embd % c.n_head == 0 and type(c.bias) is bool
            and type(c.dropout) in (int, float) and 0 <= c.dropout < 1):
        raise UserError(f"{path}: its config does not describe a GPT ({c})")
    weights = ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise UserError(f"{path}: the weights are not a dict of tensors by name")
    check_weights(weights, c, path, "its config")
    model = GPT(c if dropout is None else dataclasses.replace(c, dropout=dropout))
    model.load_state_dict(weights)
    return model, ckpt


def load_init(path, dropout=0.0):
    """What --init names -> (GPT with this dropout, its tokenizer): a project checkpoint (.pt, with the tokenizer.json
    its run wrote beside it) or a Hugging Face GPT-2 folder (config.json, weights, tokenizer.json)."""
    if os.path.isdir(path):
        gpt, tokenizer = GPT.from_pretrained(path, dropout=dropout), data.load_tokenizer(path)
        with open(os.path.join(path, "config.json"), encoding="utf-8-sig") as f:  # read, checked by from_pretrained
            eos = json.load(f).get("eos_token_id")  # GPT-2's: 50256, its <|endoftext|>
        if eos is not None and not any(type(i) is int and i == tokenizer.eot_id for i in (
                eos if isinstance(eos, list) else [eos])):
            raise UserError(f"{tokenizer.path}: {data.EOT} is id {tokenizer.eot_id}, but {path}'s config.json says "
                            f"eos_token_id {eos!r}: not the tokenizer these weights were trained with")
        tok = tokenizer.tok
        if not (isinstance(tok.model, tokenizers.models.BPE) and isinstance(tok.pre_tokenizer, ByteLevel)):
            raise UserError(f"{tokenizer.path}: a {type(tok.model).__name__} tokenizer; GPT-2's is a byte-level BPE")
        text = "Title: Kite, Brand: Duncan"  # GPT-2's writes any text back as it was, with nothing added or cut
        ids = tok.encode(text).ids
        if tok.truncation or tok.padding or ids != tok.encode(text, add_special_tokens=False).ids \
                or tokenizer.decode(ids) != text:
            raise UserError(f"{tokenizer.path}: does not encode text as GPT-2's tokenizer does ({text!r} -> {ids} -> "
                            f"{tokenizer.decode(ids)!r}; truncation {tok.truncation}, padding {tok.padding})")
    else:
        try:
            gpt, ckpt = gpt_from_checkpoint(path, dropout)
        except UserError as e:
            raise UserError(f"{e}; --init takes a checkpoint written by this project or a Hugging Face GPT-2 "
                            "folder") from None
        tokenizer = data.load_tokenizer(os.path.dirname(os.path.abspath(path)))
        if ckpt["tokenizer"] != tokenizer.fingerprint:
            raise UserError(f"{path}: was trained with another tokenizer than {tokenizer.path} (fingerprints "
                            f"{ckpt['tokenizer']} and {tokenizer.fingerprint}); keep a checkpoint with its run's "
                            "tokenizer.json")
    check_fits(tokenizer, gpt.config.vocab_size)
    return gpt, tokenizer


def check_fits(tokenizer, vocab_size):
    """Every id of the tokenizer indexes a row of the model's embedding (an added token may have any id)."""
    ids = tokenizer.tok.get_vocab(with_added_tokens=True)
    token = max(ids, key=ids.get)
    if ids[token] >= vocab_size:
        raise UserError(f"{tokenizer.path or 'tokenizer'}: token {token!r} has id {ids[token]}, beyond a model with "
                        f"vocab_size={vocab_size} (ids 0..{vocab_size - 1})")


# -----------------------------------------------------------------------------
# training with model selection: the one loop behind CALRec's stages, SASRec, MAML's meta-training and
# fine-tuning


def lr_at(step, lr, warmup, steps):
    """Linear warmup to lr, then cosine decay to a tenth of it at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def copy_weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def deferred_interrupt():
    """Within the block, Ctrl-C only sets a flag (a second Ctrl-C stops at once): the training loop finishes its
    step, saves a state it can resume from, then stops. Yields a function telling whether Ctrl-C came."""
    pressed = []
    def on_ctrl_c(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)
    try:
        previous = signal.signal(signal.SIGINT, on_ctrl_c)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        yield lambda: False
        return
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:  # it came after the block's last look (in the last validation): stop now all the same
        raise KeyboardInterrupt


def train_and_select(model, train_step, steps, eval_every, validate=None, start=0, best=None, save_state=None,
                     label="step"):
    """Train for `steps` steps, keeping the weights that score best on validation (never on test). Validation runs at
    step 0, every eval_every steps and after the last; train_step(step) takes a step between and returns its loss or
    None: a loss that is not finite stops the run with an error (so do weights that are not finite, without validate).
    validate() scores the weights (higher is better, nan never wins); without it the model keeps its last weights.
    save_state(step, best), when given, runs before each validation and after the step Ctrl-C came in: a resumed run
    passes that `start` and `best` back and continues exactly. Returns best, (score, step, weights), loaded."""
    best = best or (-math.inf, None, None)
    with deferred_interrupt() as interrupted:
        for step in range(start, steps + 1):
            if step % eval_every == 0 or step == steps:
                if save_state is not None:
                    save_state(step, best)
                finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
                if not finite and validate is None:  # a step that returns no loss (Reptile's) shows it here
                    raise UserError(f"training diverged: the weights are not finite at {label or 'step'} {step}; a "
                                    "smaller learning rate trains stably")
                if validate is not None:
                    score = validate() if finite else math.nan  # weights that are not finite never win
                    if score > best[0]:
                        best = (score, step, copy_weights(model))
                    mark = "  (best)" if best[1] == step else ""
                    log.log(logging.INFO if label else logging.DEBUG,  # label=None: into log.txt only
                            f"  {label or 'step'} {step:5d}  valid {score:.4f}{mark}")
            if step == steps:
                break
            loss = train_step(step)
            if loss is not None and not math.isfinite(loss):
                raise UserError(f"training diverged: the loss is {loss} at {label or 'step'} {step}; a smaller "
                                "learning rate (CALRec: or weight_decay, or a tau further from 0) trains stably")
            if interrupted():
                if save_state is not None:
                    save_state(step + 1, best)
                raise KeyboardInterrupt
    if best[2] is not None:
        model.load_state_dict(best[2])
    return best


# -----------------------------------------------------------------------------
# the state a run resumes from, and the fingerprints that check it


def fingerprint(obj):
    """A SHA-256 of a value made of dicts, lists, tuples, tensors and plain values, a tensor by its bytes (its repr
    elides them): --resume compares the data's, and RunState checks that a state is the one written."""
    sha = hashlib.sha256()

    def add(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous()
            sha.update(f"tensor {x.dtype} {tuple(x.shape)};".encode())
            sha.update(x.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, (list, tuple)) and all(type(v) in (int, float, str) for v in x):
            sha.update(f"{x!r};".encode())  # a fast path for the lists that make up data sets
        elif isinstance(x, (dict, list, tuple)):
            sha.update(f"{type(x).__name__} {len(x)};".encode())
            for v in x.items() if isinstance(x, dict) else x:
                add(v)
        else:
            sha.update(f"{x!r};".encode())
    add(obj)
    return sha.hexdigest()


class RunState:
    """What --resume continues from, in out_dir/state.pt (tensors and plain values, written atomically by process 0):
    the run's key (settings, data, tokenizer, threads), the results of its finished phases (finish()), the loop of the
    phase in progress as saved at its last validation point (loop_saver, restore_loop), and the time spent so far.
    Stored with its fingerprint: one damaged or edited since, or of another key, is refused whole, before any work."""

    def __init__(self, path, key, resume):
        self.path, self.key, self.started = path, dict(key, threads=torch.get_num_threads()), time.time()
        self.done, self.current, self.elapsed, self.resumes = {}, None, 0.0, 0
        if resume:
            saved = load_torch(path, "the state of a run")
            other = f"{path}: not the state of a run of this project (or of an earlier version of it)"
            if not (isinstance(saved, dict) and saved.keys() == {"state", "fingerprint"}):
                raise UserError(other)
            try:
                same = fingerprint(saved["state"]) == saved["fingerprint"]
            except RuntimeError:  # a tensor that has no bytes to hash (sparse, ...)
                same = False
            if not same:
                raise UserError(f"{path}: damaged or edited since the run wrote it (its fingerprint differs); "
                                "start the run again without --resume, or in another --out-dir")
            saved, layout = saved["state"], dict(key=dict, done=dict, current=(dict, type(None)), elapsed=float,
                                                 resumes=int)
            if not (isinstance(saved, dict) and saved.keys() == layout.keys()
                    and all(isinstance(saved[k], kind) for k, kind in layout.items())):
                raise UserError(other)  # as another version of the project would write it
            changed = sorted(k for k in set(self.key) | set(saved["key"]) if self.key.get(k) != saved["key"].get(k))
            if "task" in changed:
                raise UserError(f"{path}: is the state of a --task {saved['key']['task']} run; resume it with that "
                                "task, or use another --out-dir")
            if "tokenizer" in changed and "init" not in changed:  # (--init brings its own tokenizer)
                raise UserError(f"{path}: was saved with another tokenizer than "
                                f"{os.path.join(os.path.dirname(path), 'tokenizer.json')} (a file replaced since?)")
            if changed:
                raise UserError(f"{path}: was saved by a run with other {', '.join(changed)}; resume with the "
                                "flags and files of that run, or use another --out-dir")
            self.done, self.current = saved["done"], saved["current"]
            self.elapsed, self.resumes = saved["elapsed"], saved["resumes"] + 1

    def seconds(self):
        """Time spent by the run: every earlier piece until its last save, and this one until now."""
        return self.elapsed + time.time() - self.started

    def save(self, what="progress"):
        if rank_and_world()[0] == 0:
            state = dict(key=self.key, done=self.done, current=self.current, elapsed=self.seconds(),
                         resumes=self.resumes)
            save_torch(self.path, dict(state=state, fingerprint=fingerprint(state)))
            log.debug(f"state saved: {what}")

    def finish(self, phase, result):
        self.done[phase], self.current = result, None
        self.save(phase)

    def loop_saver(self, phase, net, optimizer, rng, more=dict):
        """save_state for train_and_select: what the loop needs to continue exactly (more(): anything else it
        keeps, such as a loss curve)."""
        def save(step, best):
            self.current = dict(phase=phase, step=step, best=best, weights=net.state_dict(),
                                optimizer=optimizer.state_dict(), rng=rng.bit_generator.state,
                                torch_rng=torch.get_rng_state(), more=more())
            self.save(f"{phase} step {step}")
        return save

    def restore_loop(self, phase, net, optimizer, rng):
        """Put back the saved loop of `phase`: returns (start step, best, more) for train_and_select, or
        (0, None, {}) for a fresh start."""
        saved = self.current
        if not saved or saved["phase"] != phase:
            return 0, None, {}
        net.load_state_dict(saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        return saved["step"], saved["best"], saved["more"]


# -----------------------------------------------------------------------------
# more hardware: mixed precision and several processes (train.py's --dtype and torchrun)


def autocast(device, dtype):
    """Mixed precision on a GPU: matrix products in bfloat16 or float16, reductions kept in float32.
    On the CPU, and for float32, it does nothing (CPU autocast is slower than float32 on most CPUs)."""
    kind = torch.device(device).type
    if dtype == "float32" or kind == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, dtype=getattr(torch, dtype))


def grad_scaler(device, dtype):
    """Scales the loss up before backward so that float16's small gradients do not round to 0 (others: a no-op)."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=dtype == "float16" and kind != "cpu")


def rank_and_world():
    """(this process's rank, number of processes): (0, 1) unless started by torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def my_share(n):
    """This process's contiguous share of n things that every process holds whole: a slice."""
    rank, world = rank_and_world()
    return slice(rank * n // world, (rank + 1) * n // world)


def all_reduce_sum(x):
    """Sum of a tensor over processes (no gradient): e.g. the global number of target tokens."""
    _, world = rank_and_world()
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
    return x


class GatherRows(torch.autograd.Function):
    """All-gather of rows with a backward: each process gets the gradient of its own rows, summed over the losses
    of every process (each process's loss reads every row). Processes may hold different numbers of rows."""

    @staticmethod
    def forward(ctx, x):
        rank, world = rank_and_world()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        torch.distributed.all_gather(sizes, torch.tensor([x.size(0)], device=x.device))
        sizes = [int(n) for n in sizes]
        padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[:x.size(0)] = x  # all_gather wants equal shapes
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded)
        ctx.start, ctx.rows = sum(sizes[:rank]), x.size(0)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)  # (sum of the sizes, ...)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad.contiguous())[ctx.start:ctx.start + ctx.rows]  # this process's rows, summed


def gather_rows(x):
    """Every process's rows of x, concatenated in rank order, with gradients flowing back to the process that
    owns each row. What contrastive losses need so that negatives span the global batch."""
    _, world = rank_and_world()
    return x if world == 1 else GatherRows.apply(x)  # for tensors without gradients (item ids) just the gather


def average_gradients(params):
    """Average .grad over processes in place: what DistributedDataParallel does, for code (MAML) that runs
    the model through torch.func and so never calls a wrapped module's forward."""
    _, world = rank_and_world()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


# -----------------------------------------------------------------------------
# the run's device, processes, seed and log, and its --out-dir: held, and put back if refused (train.py sets them up)


def pick_device(name, mps=True):
    """auto: cuda, else mps (only when `mps` is true: calrec; MAML's second-order torch.func path is unchecked
    on mps, so it runs there only when asked), else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps and torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but this torch has no MPS device")
    return name


def setup_distributed(device):
    """Under torchrun (RANK and WORLD_SIZE in the environment), join the process group: NCCL on GPUs, gloo on
    CPUs. Returns (rank, device) with each GPU process on its own card."""
    if "RANK" not in os.environ or re.fullmatch("0*1", os.environ.get("WORLD_SIZE", "")):  # one process: no group
        return 0, device
    env = {k: os.environ.get(k, "") for k in ("RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")}
    env["LOCAL_RANK"] = os.environ.get("LOCAL_RANK", "0")
    number = {k: int(v) if re.fullmatch("[0-9]{1,9}", v) else -1 for k, v in env.items()}
    if not (0 <= number["RANK"] < number["WORLD_SIZE"] and 0 < number["MASTER_PORT"] < 65536
            and number["LOCAL_RANK"] >= 0 and env["MASTER_ADDR"].strip()):
        raise UserError("RANK is set, but not with WORLD_SIZE, MASTER_ADDR and MASTER_PORT as torchrun sets them "
                        f"({', '.join(f'{k}={v!r}' for k, v in env.items())}; RANK below WORLD_SIZE, a port from 1 to "
                        "65535): start several processes with torchrun, or one without RANK")
    if device == "cuda":
        device = f"cuda:{number['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    try:
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    except (RuntimeError, ValueError) as e:  # the port taken, the address unknown, ...
        raise UserError(f"torchrun: cannot join the process group at {env['MASTER_ADDR']}:{env['MASTER_PORT']} "
                        f"({str(e).splitlines()[0]})") from None
    return torch.distributed.get_rank(), device


class ConsoleHandler(logging.Handler):
    """Log lines through tqdm.write, so that they do not break a progress bar; a character the console cannot show
    (± on an ASCII terminal) becomes '?'."""

    def emit(self, record):
        if getattr(record, "said", False):
            return  # said already: a file read twice (a GLUE task's dev.tsv is) warns once
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        try:
            tqdm.write(self.format(record).encode(encoding, "replace").decode(encoding))
        except OSError:  # the console is gone (its pipe closed, `| head`): the run goes on, log.txt has every line
            logging.getLogger().removeHandler(self)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what stdout holds goes nowhere


class Warnings(logging.Handler):
    """Keeps each warning a run logs, once, in .messages (for results.json); marks one said before for the rest."""

    def emit(self, record):
        record.said = record.getMessage() in self.messages
        self.messages += [] if record.said else [record.getMessage()]


WARNINGS = Warnings(logging.WARNING)
WARNINGS.messages = []


def setup_logging(rank):
    """One logger for the whole project: the console gets the progress (process 0's), log.txt everything, and
    WARNINGS every warning (results.json lists them)."""
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger().handlers[:] = [WARNINGS, ConsoleHandler(logging.INFO if rank == 0 else logging.WARNING)]
    WARNINGS.messages.clear()


@contextlib.contextmanager
def held(folder, flag):
    """`folder` for this process alone while the block runs: a second train.py or data.py writing there, whose files
    would mix with this one's, is refused. The folders made for it go again if they are left empty."""
    made = [os.path.normpath(folder)]  # the folders made for it, deepest first ('a/./b': a/b, a)
    while not os.path.isdir(made[-1]) and made[-1] != os.path.dirname(made[-1]):
        made.append(os.path.dirname(made[-1]))
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY) if fcntl else None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                made = []  # the other run's, even if this one made them a moment before
                raise UserError(f"{flag} {folder}: a train.py or data.py writes there now; wait till it ends") from None
        yield
    finally:
        if fd is not None:
            os.close(fd)
        for path in made[:-1]:  # a refused run leaves nothing
            with contextlib.suppress(OSError):  # one that is not empty (another run's now) stays
                os.rmdir(path)


def set_aside(out_dir, names, aside):
    """{name: size} of out_dir's files `names`, each hard-linked (or copied) into the folder `aside`, but log.txt, which
    only grows: its size is enough to cut it back. The folders a run killed outright left aside go first."""
    for stale in [n for n in os.listdir(out_dir) if re.fullmatch(r"\.earlier\d+", n)]:
        shutil.rmtree(os.path.join(out_dir, stale), ignore_errors=True)
    sizes = {n: os.path.getsize(os.path.join(out_dir, n)) for n in names if os.path.isfile(os.path.join(out_dir, n))}
    os.makedirs(aside, exist_ok=True)
    for n in sizes.keys() - {"log.txt"}:
        try:
            os.link(os.path.join(out_dir, n), os.path.join(aside, n))
        except OSError:  # a file system without hard links
            shutil.copy2(os.path.join(out_dir, n), os.path.join(aside, n))
    return sizes


@contextlib.contextmanager
def kept_if_refused(out_dir, names, fresh):
    """A run refused part-way (an error that is no bug: a diverged loss, a full disk, ...) leaves out_dir's files
    `names` as it found them: each is hard-linked aside first (a write replaces a file whole) and put back, log.txt cut
    back to its length, new files removed. A `fresh` run (not resumed) starts without the earlier run's files but
    log.txt, so that they never mix with its own, even if it is interrupted or crashes (its state is what --resume
    reads). A second train.py there is refused."""
    aside = os.path.join(out_dir, f".earlier{os.getpid()}")
    with held(out_dir, "--out-dir"):
        try:
            sizes = set_aside(out_dir, names, aside)
        except OSError as e:  # a full disk (no room for a folder, or out of inodes), before anything was written
            shutil.rmtree(aside, ignore_errors=True)
            raise UserError(f"--out-dir {out_dir}: cannot set the earlier run's files aside ({e.strerror})") from None
        for n in sizes.keys() - {"log.txt"} if fresh else ():  # a refused run puts back its copy aside
            with contextlib.suppress(OSError):  # one that cannot be removed stays
                os.remove(os.path.join(out_dir, n))
        try:
            yield
        except Exception as e:
            refused, failed = refusal(e), []  # main's one line, or None (a bug)
            for n, path in ((n, os.path.join(out_dir, n)) for n in names if refused):  # a bug's state is --resume's
                try:
                    if n in sizes:
                        os.truncate(path, sizes[n]) if n == "log.txt" else os.replace(os.path.join(aside, n), path)
                    elif os.path.lexists(path):
                        os.remove(path)
                except OSError as why:  # a file that cannot be replaced (made immutable, ...): its earlier copy is kept
                    failed.append(f"{n} ({why.strerror})")
            if failed:
                os.replace(aside, kept := os.path.join(out_dir, f"earlier-files-{os.getpid()}"))
                raise UserError(f"{refused}; and {', '.join(failed)} could not be put back: the earlier run's files "
                                f"are in {kept}") from None
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)


class LogFile(logging.FileHandler):
    """out_dir/log.txt, appended to. A line it cannot write (a full disk) ends the run with one line naming the file,
    as any file a run writes (kept_if_refused then cuts log.txt back); logging's own would print a traceback a line."""

    def handleError(self, record):
        why = sys.exc_info()[1]
        if not isinstance(why, OSError):  # a message that cannot be formatted, a bug: logging's own report
            return super().handleError(record)
        logging.getLogger().removeHandler(self)
        if self.stream is not None:  # closed under its buffer: the line it holds never lands after the cut
            self.stream.buffer.raw.close()
            self.stream = None
        raise UserError(f"{self.baseFilename}: cannot be written ({why.strerror})") from None


def open_log_file(out_dir, argv, resume):
    """Append to out_dir/log.txt, starting with a header line for this run: its command line, the time, and
    whether it resumes. Called after every input has been checked, just before the first write."""
    t0 = time.time()
    handler = LogFile(os.path.join(out_dir, "log.txt"), mode="a", encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
    when = datetime.datetime.now().isoformat(timespec="seconds")
    header = f"\n=== {when} python train.py {shlex.join(argv)}{'  (resumed)' if resume else ''}"
    for line in (header, *WARNINGS.messages):  # and what reading the inputs warned of, before there was a log.txt
        handler.emit(logging.makeLogRecord(dict(msg=line)))  # emit: past the filter that stamps the time
    handler.addFilter(lambda r: setattr(r, "msg", f"[{time.time() - t0:7.1f}s] {r.msg}") or not getattr(r, "said", 0))
    return handler
