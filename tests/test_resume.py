"""--resume after a SIGKILL reproduces the uninterrupted run: real training processes, killed (kill -9) at
several points of CALRec (stage 1, stage 2, SASRec, the final evaluation) and of MAML (meta-training of every
method, fine-tuning), each time resumed with the same command; the final results.json must equal the
uninterrupted run's, but for the wall time, the peak memory and the count of resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from test_calrec import write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(argv):
    return subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "train.py"), *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_to_the_end(argv):
    p = start(argv)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return p


def kill_at(argv, log_path, trigger):
    """Start the command and SIGKILL it as soon as its part of log.txt holds `trigger` (a state-saved line).
    Returns False when the run ended before the trigger came."""
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    p = start(argv)
    while p.poll() is None:
        if os.path.exists(log_path):
            with open(log_path, encoding="utf-8") as f:
                f.seek(offset)
                if trigger in f.read():
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    return True
        time.sleep(0.02)
    return False


def results_without_time(out_dir):
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
        res = json.load(f)
    return {k: v for k, v in res.items() if k not in ("wall_s", "peak_memory_mb", "resumed")}, res["resumed"]


def killed_and_resumed(argv, out_dir, triggers):
    """Kill the run at each trigger in turn, resuming after each kill; then resume to the end."""
    log_path = os.path.join(out_dir, "log.txt")
    killed = 0
    for i, trigger in enumerate(triggers):
        if kill_at(argv + (["--resume"] if killed else []), log_path, trigger):
            killed += 1
        else:
            pytest.fail(f"the run ended before {trigger!r} was logged")
    run_to_the_end(argv + ["--resume"])
    return killed


def ctrl_c_then_resumed(monkeypatch, module, name, argv, once, killed):
    """Run argv in this process with Ctrl-C pressed where module.name is first called, then with --resume: the
    results must equal those of `once`, the uninterrupted run's out-dir."""

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(module, name, ctrl_c)
        with pytest.raises(SystemExit):
            train.main(argv + ["--out-dir", str(killed)])
    train.main(argv + ["--out-dir", str(killed), "--resume"])
    assert results_without_time(killed)[0] == results_without_time(once)[0]


def test_calrec_resumed_after_kills_equals_the_uninterrupted_run(tmp_path):
    a, b = str(tmp_path / "Alpha"), str(tmp_path / "Beta")
    write_atomic(a, "Alpha")
    write_atomic(b, "Beta")
    common = ["--task", "calrec", "--data", a, b, "--set", "stage1_steps=6", "--set", "stage2_steps=6",
              "--set", "sasrec_steps=6", "--eval-interval", "2", "--beams", "2", "--set", "constrained_beams=2",
              "--set", "extra_negatives=3", "--set", "select_users=6", "--set", "bm25_valid_users=6",
              "--set", "eval_batch=4"]
    train.main(common + ["--out-dir", str(tmp_path / "once")])  # here: a process less to start
    triggers = ["state saved: stage1 step 2",       # stage 1, mid-way
                "state saved: stage1 step 6",       # stage 1, its last validation
                "state saved: stage2 step 4",       # stage 2
                "state saved: stage2\n",            # training done, evaluation not begun
                "state saved: sasrec step 2",       # the SASRec baseline, mid-way
                "state saved: results"]             # the final evaluation, one entry done
    killed = killed_and_resumed(common + ["--out-dir", str(tmp_path / "killed")], str(tmp_path / "killed"), triggers)
    once, resumed = results_without_time(tmp_path / "once"), results_without_time(tmp_path / "killed")
    assert resumed[0] == once[0]
    assert resumed[1] == killed == len(triggers)
    log = (tmp_path / "killed" / "log.txt").read_text()
    assert log.count("(resumed)") == len(triggers)  # the log was appended to, never rewritten


def test_calrec_from_init_interrupted_before_its_first_step_resumes_from_the_init_weights(tmp_path, monkeypatch):
    import calrec
    a = str(tmp_path / "Alpha")
    write_atomic(a, "Alpha")
    common = ["--task", "calrec", "--data", a, "--set", "stage1_steps=2", "--set", "stage2_steps=2", "--set",
              "baselines=false", "--eval-interval", "2", "--beams", "2", "--set", "constrained_beams=2"]
    train.main(common + ["--seed", "7", "--out-dir", str(tmp_path / "init")])  # weights no seed-0 run starts from
    common += ["--init", str(tmp_path / "init" / "ckpt.pt")]
    train.main(common + ["--out-dir", str(tmp_path / "once")])
    # Ctrl-C after the state's first save (the LM's config), before stage 1's first step
    ctrl_c_then_resumed(monkeypatch, calrec, "train_stage", common, tmp_path / "once", tmp_path / "killed")


def test_calrec_with_dropout_stopped_between_its_stages_resumes_exactly(tmp_path, monkeypatch):
    """Dropout draws torch's random numbers: stage 2 resumed in a new process, after stage 1 finished in another,
    must draw the masks the uninterrupted run drew (it drew from whatever state reading the data had left)."""
    import calrec
    a = str(tmp_path / "Alpha")
    write_atomic(a, "Alpha")
    common = ["--task", "calrec", "--data", a, "--set", "stage1_steps=4", "--set", "stage2_steps=4", "--set",
              "baselines=false", "--eval-interval", "2", "--beams", "2", "--set", "constrained_beams=2", "--set",
              "dropout=0.1"]
    train.main(common + ["--out-dir", str(tmp_path / "once")])
    first = calrec.train_stage

    def stopped_before_stage_2(exp, stage, validate):
        if stage == 2:
            raise KeyboardInterrupt
        first(exp, stage, validate)
    with monkeypatch.context() as m:
        m.setattr(calrec, "train_stage", stopped_before_stage_2)
        with pytest.raises(SystemExit):
            train.main(common + ["--out-dir", str(tmp_path / "killed")])
    train.main(common + ["--out-dir", str(tmp_path / "killed"), "--resume"])
    assert results_without_time(tmp_path / "killed")[0] == results_without_time(tmp_path / "once")[0]


def test_maml_resumed_after_kills_equals_the_uninterrupted_run(tmp_path):
    common = ["--task", "maml", "--set", "meta_steps=10", "--n-train", "8", "--inner-steps", "1", "--eval-interval", "1",
              "--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=1", "--set", "vocab_size=300",
              "--set", "max_len=32", "--set", "seeds=1", "--set", "ft_steps=2", "--set", "shot=4",
              "--set", "meta_batch=2"]
    train.main(common + ["--out-dir", str(tmp_path / "once")])  # here: a process less to start
    triggers = ["state saved: fine_tuned_none",     # fine-tuning from the random initialisation
                "state saved: meta_multitask step 3",
                "state saved: learned_multitask",   # between meta-training and fine-tuning
                "state saved: meta_maml step 5",
                "state saved: fine_tuned_maml",     # fine-tuning, some runs done
                "state saved: meta_fomaml step 2",
                "state saved: meta_reptile step 7"]
    killed = killed_and_resumed(common + ["--out-dir", str(tmp_path / "killed")], str(tmp_path / "killed"), triggers)
    once, resumed = results_without_time(tmp_path / "once"), results_without_time(tmp_path / "killed")
    assert resumed[0] == once[0]
    assert resumed[1] == killed == len(triggers)


def test_maml_interrupted_before_its_first_phase_resumes_and_a_resume_writes_a_deleted_init_again(tmp_path,
                                                                                                  monkeypatch):
    import maml
    common = ["--task", "maml", "--method", "maml", "--set", "meta_steps=4", "--n-train", "8", "--inner-steps", "1",
              "--eval-interval", "1", "--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=1", "--set",
              "vocab_size=300", "--set", "max_len=32", "--set", "seeds=1", "--set", "ft_steps=2", "--set", "shot=4",
              "--set", "meta_batch=2"]
    train.main(common + ["--out-dir", str(tmp_path / "once")])
    # Ctrl-C in the first fine-tuning of all, before any phase is finished
    ctrl_c_then_resumed(monkeypatch, maml, "fine_tune", common, tmp_path / "once", tmp_path / "killed")
    init = tmp_path / "killed" / "init_maml.pt"
    written = torch.load(init, weights_only=True)["model"]
    init.unlink()
    train.main(common + ["--out-dir", str(tmp_path / "killed"), "--resume"])  # every phase done: it writes again
    again = torch.load(init, weights_only=True)["model"]
    assert written.keys() == again.keys() and all(torch.equal(written[k], again[k]) for k in written)


def test_resume_refuses_other_settings_before_any_work(tmp_path):
    out = str(tmp_path / "out")
    common = ["--task", "maml", "--set", "meta_steps=2", "--n-train", "8", "--set", "n_layer=1", "--set", "n_embd=16",
              "--set", "n_head=1", "--set", "vocab_size=300", "--set", "max_len=32", "--set", "seeds=1",
              "--set", "ft_steps=1", "--out-dir", out]
    train.main(common)
    p = start(common + ["--resume", "--sampling", "uniform"])
    t0 = time.time()
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "state.pt: was saved by a run with other sampling;" in err  # the setting named
    assert time.time() - t0 < 30  # refused at once, not after meta-training
