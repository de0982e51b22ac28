"""engine.py: settings that check themselves, checkpoints that know their tokenizer, the training loop's
selection and its stop on a diverged loss, files written whole, peak memory."""

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import pickletools
import re
import shutil
import sys
import typing
import zipfile

import numpy as np
import pytest
import torch

import calrec
import data
import engine
import evaluation
import maml
import model
from model import UserError, load_torch
from test_model import tiny

CONFIGS = [calrec.BUILT_IN, calrec.REAL_DATA, maml.FAMILY, maml.GLUE, maml.SINE]


# -----------------------------------------------------------------------------
# settings

def test_allows_and_parse_by_hand():
    assert engine.allows(">= 0", 0) and not engine.allows(">= 0", -1)
    assert engine.allows("> 0", 1e-9) and not engine.allows("> 0", 0)
    assert engine.allows("0..1", 0) and engine.allows("0..1", 1) and not engine.allows("0..1", 1.01)
    assert not engine.allows("> 0", float("nan")) and not engine.allows(">= 0", float("inf"))
    assert not engine.allows(">= 0", True)  # a bool is no number here
    assert engine.allows(("a", "b"), "b") and not engine.allows(("a", "b"), "c")
    assert engine.parse_value(tuple[float, ...], "0, 0.5,1") == (0.0, 0.5, 1.0)
    assert engine.parse_value(bool, "No") is False and engine.parse_value(int, "7") == 7
    with pytest.raises(ValueError):
        engine.parse_value(bool, "maybe")


def bad_value(f):
    """A value outside what the field allows, as text: derived from the declaration, by kind of declaration."""
    allowed = f.metadata["allowed"]
    if isinstance(allowed, tuple):
        return "no-such-choice"
    if allowed is None:
        return None  # any value of the type: nothing to refuse here
    if ".." in allowed:
        return str(2 * float(allowed.split("..")[1]) + 1)  # past the top, however large (1e30 + 1 is 1e30)
    return str(float(allowed.split()[1]) - (0 if allowed.startswith(">") and not allowed.startswith(">=") else 1))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_field_refuses_a_value_it_does_not_allow(cfg):
    checked = 0
    for f in dataclasses.fields(cfg):
        text = bad_value(f)
        if text is None:
            continue
        kind = typing.get_args(f.type)[0] if typing.get_origin(f.type) is tuple else f.type
        if kind is int and text.endswith(".0"):
            text = text[:-2]
        with pytest.raises(UserError, match=f.name):
            engine.apply_settings(cfg, [("--set", f.name, text)])
        checked += 1
    assert checked >= len(dataclasses.fields(cfg)) // 2
    engine.check_settings(cfg)  # the presets themselves are allowed


def test_a_tuple_setting_must_not_be_empty_and_an_unknown_name_is_refused():
    with pytest.raises(UserError, match="prior_weights"):
        engine.apply_settings(calrec.BUILT_IN, [("--set", "prior_weights", "")])
    with pytest.raises(UserError, match=r"no setting 'alhpa' \(did you mean alpha\?\); --show-config lists them all"):
        engine.apply_settings(calrec.BUILT_IN, [("--set", "alhpa", "0.1")])
    with pytest.raises(UserError, match=r"no setting 'nosuch'; --show-config"):  # nothing near: no guess
        engine.apply_settings(calrec.BUILT_IN, [("--set", "nosuch", "0.1")])
    with pytest.raises(UserError, match="alpha \\+ beta"):
        engine.apply_settings(calrec.BUILT_IN, [("--alpha", "alpha", "0.7"), ("--beta", "beta", "0.7")])
    with pytest.raises(UserError, match="n_embd=128: not divisible by n_head=3"):
        engine.apply_settings(calrec.BUILT_IN, [("--set", "n_head", "3")])
    cfg = engine.apply_settings(calrec.BUILT_IN, [("--set", "recent_weights", "0"), ("--tau", "tau", "0.1")])
    assert cfg.recent_weights == (0.0,) and cfg.tau == 0.1


def test_show_config_lists_every_field_with_what_it_allows():
    text = engine.show_config(calrec.BUILT_IN)
    assert len(text.splitlines()) == len(dataclasses.fields(calrec.BUILT_IN))
    assert any(line.startswith("tau ") and "float > 0" in line for line in text.splitlines())
    assert any(line.startswith("softmax_over ") and "items or users" in line for line in text.splitlines())


# -----------------------------------------------------------------------------
# checkpoints

def tokenizer(tmp_path, words="a b c d e f g"):
    tok = data.train_tokenizer([words] * 5, vocab_size=270)
    engine.save_tokenizer(str(tmp_path), tok)
    return data.load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("sizes", [(256, 2048, 2, 4, 128), (1024, 50257, 12, 12, 768), (48, 512, 1, 2, 64)])
def test_training_floats_counts_at_most_the_parameters_four_times(sizes):
    """Weights, gradients and AdamW's two moments: 4 values a parameter, counted on the model itself."""
    c = model.GPTConfig(*sizes)
    with torch.device("meta"):  # the real parameters, without their memory
        n = sum(p.numel() for p in model.GPT(c).parameters())
    assert 0.98 * 4 * n <= engine.training_floats(c, 0, 0) <= 4 * n  # only biases and LayerNorms left out


@pytest.mark.parametrize("written_out", [False, True])
def test_training_floats_counts_at_most_what_backward_keeps(written_out):
    """The activations and logits of a step: never more than autograd saves for backward (its saved tensors, counted
    by storage), and the logits' gradient; with the fused kernels, and inside second_order_ops (MAML's)."""
    torch.manual_seed(0)
    c = model.GPTConfig(block_size=16, vocab_size=300, n_layer=2, n_head=2, n_embd=32)
    gpt, idx = model.GPT(c), torch.randint(0, 300, (3, 16))
    params = {p.untyped_storage().data_ptr() for p in gpt.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // 4
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            model.second_order_ops(gpt) if written_out else contextlib.nullcontext():
        gpt(idx, targets=idx)
    held = sum(saved.values()) + idx.numel() * c.vocab_size  # and the logits' gradient, made by backward
    estimate = engine.training_floats(c, idx.numel(), idx.numel()) - engine.training_floats(c, 0, 0)
    assert estimate <= held, f"training_floats counts {estimate} values of activations and logits; backward keeps {held}"


@pytest.mark.skipif(not os.path.isfile("/proc/meminfo"), reason="reads Linux's /proc/meminfo")
def test_check_memory_refuses_only_what_the_machine_cannot_hold(monkeypatch):
    with open("/proc/meminfo") as f:  # MemTotal in kB, read here apart from the code under test
        have = 1024 * int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
    engine.check_memory("cpu", {"a": have // 4, "b": 1})  # 4 bytes a value: all of it; phases one after another
    with pytest.raises(UserError, match=r"settings too large: b needs at least [\d,.]+ GB, and this cpu has"):
        engine.check_memory("cpu", {"a": have // 8, "b": have // 4 + 1})  # just over
    monkeypatch.setattr(engine.os, "sysconf_names", {})  # Windows: nothing to compare with, nothing refused
    engine.check_memory("cpu", {"a": 10 ** 15})


def test_checkpoint_round_trip(tmp_path):
    m, tok = tiny(vocab_size=300), tokenizer(tmp_path)
    path = str(tmp_path / "ckpt.pt")
    engine.save_checkpoint(path, m, tok, step=2, metrics={"valid_loss": 1.5})
    m2, ck = engine.gpt_from_checkpoint(path)
    assert ck["step"] == 2 and ck["metrics"] == {"valid_loss": 1.5} and ck["tokenizer"] == tok.fingerprint
    idx = torch.randint(0, 300, (2, 7))
    assert torch.equal(m(idx)[0], m2.eval()(idx)[0])
    m3, tok3 = engine.load_init(path)
    assert tok3.fingerprint == tok.fingerprint and torch.equal(m3.eval()(idx)[0], m(idx)[0])
    m4, _ = engine.load_init(path, dropout=0.3)  # the run's dropout, as results.json records it
    assert m4.config.dropout == 0.3 and all(d.p == 0.3 for d in m4.modules() if isinstance(d, torch.nn.Dropout))


def test_init_refuses_a_checkpoint_beside_another_tokenizer(tmp_path):
    m, tok = tiny(vocab_size=300), tokenizer(tmp_path)
    path = str(tmp_path / "ckpt.pt")
    engine.save_checkpoint(path, m, tok, step=0, metrics={})
    tokenizer(tmp_path, "other words entirely here")  # another run's tokenizer.json, written over
    with pytest.raises(UserError, match="ckpt.pt: was trained with another tokenizer than .*tokenizer.json"):
        engine.load_init(path)


def test_crash_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    m, tok = tiny(), tokenizer(tmp_path)
    path = str(tmp_path / "ckpt.pt")
    engine.save_checkpoint(path, m, tok, step=1, metrics={})

    def dying_save(obj, f):
        f.write(b"half a checkp")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        engine.save_checkpoint(path, m, tok, step=2, metrics={})
    monkeypatch.undo()
    assert load_torch(path)["step"] == 1 and not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_a_checkpoint_the_system_will_not_let_us_read_is_said_so_not_called_damaged(tmp_path, monkeypatch):
    """As a user without read permission meets it (the suite may run as root, whom no permission stops: the refusal
    of open() is made here): the one line is the system's reason, as train.py prints every OSError naming a file."""
    path = str(tmp_path / "ckpt.pt")
    engine.save_checkpoint(path, tiny(), tokenizer(tmp_path), step=0, metrics={})

    def refused(f, *args, **kwargs):
        raise PermissionError(13, "Permission denied", f)
    monkeypatch.setattr(torch, "load", refused)
    with pytest.raises(PermissionError) as e:
        load_torch(path)
    assert engine.refusal(e.value) == f"{path}: Permission denied"


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="nope.pt: no such file"):
        engine.gpt_from_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match="bad.pt: cannot be read"):
        engine.gpt_from_checkpoint(str(bad))
    m = tiny()
    path = str(tmp_path / "ckpt.pt")
    engine.save_checkpoint(path, m, tokenizer(tmp_path), step=0, metrics={})
    ck = torch.load(path, weights_only=True)
    ck["config"]["n_embd"] = 32  # the config no longer matches the weights
    torch.save(ck, path)
    with pytest.raises(UserError, match=r"ckpt.pt: transformer.wte.weight has shape \(11, 16\)"):
        engine.gpt_from_checkpoint(path)


def resave(path, change):
    """A file torch.save wrote, rewritten after change(obj) edits what it holds in place: a damaged checkpoint or
    run state. Returns path."""
    obj = torch.load(path, weights_only=True)
    change(obj)
    torch.save(obj, path)
    return path


class RunsCode:
    """What a malicious checkpoint holds: unpickling it calls os.system (here: it would only touch a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    m = tiny()
    witness = tmp_path / "code-ran"
    path = str(tmp_path / "evil.pt")
    torch.save(dict(model=m.state_dict(), config={}, step=0, metrics={}, payload=RunsCode(witness)), path)
    with pytest.raises(UserError, match="evil.pt: refused"):
        engine.gpt_from_checkpoint(path)
    with pytest.raises(UserError, match="evil.pt: refused"):
        engine.load_init(path)
    assert not witness.exists()
    # the oracle: the pickle inside the file really asks for os.system (read with pickletools, never executed)
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    strings = [arg for op, arg, _ in pickletools.genops(pkl) if isinstance(arg, str)]
    assert any(s.endswith(" system") for s in strings) and f"touch {witness}" in strings


@pytest.mark.parametrize("change", [dict(dropout="high"), dict(dropout=2.0), dict(dropout=math.nan), dict(bias="no"),
                                    dict(n_layer=True), dict(vocab_size=0), dict(block_size=2.5), dict(n_embd=15),
                                    dict(width=3)])
def test_a_checkpoint_config_that_is_no_gpt_is_refused_before_any_allocation(tmp_path, change):
    path = str(tmp_path / "ckpt.pt")
    engine.save_checkpoint(path, tiny(), tokenizer(tmp_path), step=0, metrics={})
    resave(path, lambda ck: ck["config"].update(change))
    with pytest.raises(UserError, match="ckpt.pt: its config does not describe a GPT"):
        engine.gpt_from_checkpoint(path)


@pytest.mark.parametrize("change", [dict(block_size=10 ** 12), dict(vocab_size=10 ** 11), dict(n_layer=10 ** 12)])
def test_a_checkpoint_config_far_larger_than_its_weights_is_refused_without_allocating(tmp_path, change):
    path = str(tmp_path / "ckpt.pt")
    engine.save_checkpoint(path, tiny(), tokenizer(tmp_path), step=0, metrics={})
    resave(path, lambda ck: ck["config"].update(change))
    with pytest.raises(UserError, match="ckpt.pt: "):
        engine.gpt_from_checkpoint(path)


def test_a_run_state_edited_anywhere_is_refused_as_one_message(tmp_path):
    path, key = str(tmp_path / "state.pt"), dict(task="t", seed=0)
    state = engine.RunState(path, key, resume=False)
    state.finish("stage", dict(weights={"w": torch.arange(6.0).reshape(2, 3)}, history=[0.5, (1, "a")], flag=True))
    resumed = engine.RunState(path, key, resume=True)  # the good state reads back
    assert torch.equal(resumed.done["stage"]["weights"]["w"], torch.arange(6.0).reshape(2, 3))
    assert resumed.done["stage"]["history"] == [0.5, (1, "a")] and resumed.resumes == 1
    edits = [lambda s: s.pop("done"), lambda s: s.update(elapsed=math.nan), lambda s: s.update(resumes=2),
             lambda s: s["done"]["stage"]["weights"]["w"].view(-1)[5].add_(1e-6),  # one weight, by a few ulps
             lambda s: s["done"]["stage"]["weights"].update(w=torch.arange(6.0)),  # the same values, another shape
             lambda s: s["done"]["stage"]["weights"].update(w=torch.arange(6.0).reshape(2, 3).double()),  # dtype
             lambda s: s["done"]["stage"].update(history=[0.5, [1, "a"]]),  # a tuple become a list
             lambda s: s["done"]["stage"].update(flag=1)]
    for edit in edits:
        shutil.copy(path, path + ".good")
        resave(path, lambda saved: edit(saved["state"]))
        with pytest.raises(UserError, match="state.pt: damaged or edited since the run wrote it"):
            engine.RunState(path, key, resume=True)
        shutil.move(path + ".good", path)
    resave(path, lambda saved: saved.update(saved.pop("state")))  # a state without its fingerprint
    with pytest.raises(UserError, match="state.pt: not the state of a run of this project"):
        engine.RunState(path, key, resume=True)


# -----------------------------------------------------------------------------
# the training loop

def test_train_and_select_keeps_the_best_weights_and_stops_on_a_diverged_loss():
    net = torch.nn.Linear(1, 1, bias=False)
    scores = iter([0.1, 0.5, 0.3])  # validations at steps 0, 2, 4: the best is step 2's weights

    def step(s):
        with torch.no_grad():
            net.weight.fill_(s + 1.0)  # after step s the weight is s + 1
        return 0.0

    score, best_step, _ = engine.train_and_select(net, step, 4, 2, lambda: next(scores), label=None)
    assert (score, best_step, net.weight.item()) == (0.5, 2, 2.0)
    with pytest.raises(UserError, match="diverged: the loss is nan at step 1"):
        engine.train_and_select(net, lambda s: [0.0, math.nan][s], 3, 10, label=None)


def test_ctrl_c_during_any_validation_stops_the_loop_with_a_state_to_resume_from():
    import signal
    net, saved = torch.nn.Linear(1, 1, bias=False), []
    for last in (2, 4):  # Ctrl-C while validating at step 2 (then step 2 runs) or at the last step, 4

        def validate():
            if len(saved) == 1 + last // 2:  # the validation of step `last`
                os.kill(os.getpid(), signal.SIGINT)
            return 0.0
        saved.clear()
        with pytest.raises(KeyboardInterrupt):
            engine.train_and_select(net, lambda s: 0.0, 4, 2, validate, label=None,
                                    save_state=lambda step, best: saved.append(step))
        assert saved == ([0, 2, 3] if last == 2 else [0, 2, 4])  # the last: resumed at 4 and validated again


def test_weights_that_are_not_finite_never_win_and_stop_a_loop_without_validation():
    # a step that returns no loss (Reptile's, fine-tuning's): after step s the weight is s + 1, or nan from step 2 on;
    # a scorer that gives nan weights a high finite score (argmax of nan logits picks class 0, which can score well)
    net = torch.nn.Linear(1, 1, bias=False)

    def step(s):
        with torch.no_grad():
            net.weight.fill_(math.nan if s >= 2 else s + 1.0)

    def validate():
        return 0.9 if math.isnan(net.weight.item()) else 0.1 * net.weight.item()
    score, best_step, _ = engine.train_and_select(net, step, 4, 1, validate, label=None)
    assert (best_step, net.weight.item()) == (2, 2.0) and score == pytest.approx(0.2), (score, best_step)
    with pytest.raises(UserError, match="diverged: the weights are not finite at step 3"):
        engine.train_and_select(net, step, 4, 1, label=None)


def test_results_json_is_strict_json_a_value_that_is_not_finite_null(tmp_path):
    engine.save_json(str(tmp_path / "r.json"), {"pearson": math.nan, "mse": [1.5, math.inf, -math.inf]})
    text = (tmp_path / "r.json").read_text()

    def refuse(constant):
        raise ValueError(f"{constant} is no JSON")
    assert json.loads(text, parse_constant=refuse) == {"pearson": None, "mse": [1.5, None, None]}


def test_lr_at_by_hand():
    assert engine.lr_at(0, 1.0, 4, 10) == 0.25 and engine.lr_at(3, 1.0, 4, 10) == 1.0
    assert engine.lr_at(4, 1.0, 4, 10) == 1.0 and abs(engine.lr_at(10, 1.0, 4, 10) - 0.1) < 1e-12
    assert abs(engine.lr_at(7, 1.0, 4, 10) - (0.1 + 0.9 * 0.5)) < 1e-12  # half way: the cosine at pi/2


def test_peak_memory_counts_a_large_allocation():
    if evaluation.peak_memory_mb() is None:
        pytest.skip("this platform does not report peak memory")
    before = evaluation.peak_memory_mb()
    block = np.ones((before + 200) * 2**20 // 8)  # more than the peak so far, every page touched
    assert evaluation.peak_memory_mb() >= before + 200
    del block


def test_environment_names_the_versions():
    env = evaluation.environment("cpu")
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads() and env["cpu"]


@pytest.mark.parametrize("error, why", [(OSError(28, "No space left on device"), "(No space left on device)"),
                                        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"),
                                         "(is the disk full? [enforce fail")])
def test_a_write_that_fails_is_one_line_and_leaves_the_previous_file(tmp_path, error, why):
    """A full disk, as open/write report it (OSError) and as torch.save does (RuntimeError): the previous file stays,
    no temporary one is left, and the message names the file."""
    path = tmp_path / "state.pt"
    path.write_bytes(b"the previous state")

    def write(f):
        f.write("half")
        raise error
    with pytest.raises(UserError) as e:
        engine.atomic_write(str(path), write)
    assert f"state.pt: cannot be written {why}" in str(e.value)
    assert path.read_bytes() == b"the previous state" and os.listdir(tmp_path) == ["state.pt"]


def test_a_console_that_cannot_show_a_character_gets_a_question_mark(monkeypatch):
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # PYTHONIOENCODING=ascii, an old terminal
    monkeypatch.setattr(sys, "stdout", stream)
    engine.ConsoleHandler().handle(logging.makeLogRecord(dict(msg="0.5 ± 0.1 ≈", levelno=logging.INFO)))
    stream.flush()
    assert stream.buffer.getvalue() == b"0.5 ? 0.1 ?\n"


def test_a_temporary_file_that_a_killed_write_left_is_written_over(tmp_path):
    """A run killed mid-write leaves .NAME.tmp beside NAME; the next write of NAME takes it over, none piles up."""
    (tmp_path / ".results.json.tmp").write_text("half a file")
    engine.save_json(str(tmp_path / "results.json"), {"a": 1})
    assert os.listdir(tmp_path) == ["results.json"]
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}


def test_log_txt_opens_with_the_runs_header_and_what_reading_its_inputs_warned_of(tmp_path):
    engine.setup_logging(0)
    logging.getLogger("data").warning("X.test.inter: 1 of 1 targets are in their user's history")  # before the log
    handler = engine.open_log_file(str(tmp_path), ["--task", "calrec"], resume=False)
    try:
        logging.getLogger("calrec").info("stage 1")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    lines = (tmp_path / "log.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "" and lines[1].startswith("=== ") and lines[1].endswith(" python train.py --task calrec")
    assert lines[2] == "X.test.inter: 1 of 1 targets are in their user's history"
    assert re.fullmatch(r"\[ *\d+\.\ds\] stage 1", lines[3]) and len(lines) == 4
