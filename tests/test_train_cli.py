"""train.py's command line: typos and bad values fail at once with a message; --help explains every flag."""

import os
import subprocess
import sys

import pytest

import engine
import train


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        train.main(list(argv))
    return e.value.code, capsys.readouterr().err


def test_help_lists_every_flag(capsys):
    assert run_cli(capsys, "--help")[0] == 0
    text = train.build_parser().format_help()
    for action in train.build_parser()._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, f"{action.option_strings} has no help text"


@pytest.mark.parametrize("argv, message", [
    (["--task", "calrc"], "invalid choice: 'calrc'"),
    (["--task", "calrec", "--eval-interva", "3"], "unrecognized arguments: --eval-interva"),  # no abbreviations
    (["--task", "calrec", "--eval-interval", "0"], "setting eval_interval=0: expected int >= 1"),
    (["--task", "calrec", "--set", "eval_interval=0"], "setting eval_interval=0: expected int >= 1"),
    (["--task", "calrec", "--alpha", "-0.1"], "setting alpha=-0.1: expected float 0..1"),
    (["--task", "calrec", "--tau", "nan"], "setting tau=nan: expected float > 0"),
    (["--task", "calrec", "--set", "tau=0"], "setting tau=0.0: expected float > 0"),
    (["--task", "calrec", "--set", "batch_size=0"], "setting batch_size=0: expected int >= 1"),
    (["--task", "calrec", "--set", "n_head=3"], "setting n_embd=128: not divisible by n_head=3"),
    (["--task", "calrec", "--set", "softmax_over=keys"], "expected items or users"),
    (["--task", "calrec", "--set", "every_position=maybe"], "expected bool"),
    (["--task", "calrec", "--set", "nosuch=1"], "no setting 'nosuch'"),
    (["--task", "calrec", "--tau", "0.1", "--set", "tau=0.2"], "setting tau is given twice"),
    (["--task", "calrec", "--beams", "2", "--beams", "3"], "--beams is given twice"),
    (["--task", "calrec", "--data", "a", "--data", "b"], "--data is given twice"),
    (["--task", "calrec", "--task", "maml"], "--task is given twice"),
    (["--task", "maml", "--n-train", "10,x"], "n_train='10,x': expected comma-separated, each int > 0"),
    (["--task", "maml", "--n-train", "10,,20"], "n_train='10,,20': expected comma-separated"),  # not (10, 20)
    (["--task", "maml", "--n-train", "10,"], "n_train='10,': expected comma-separated"),
    (["--task", "calrec", "--alpha", "0_1"], "alpha='0_1': expected float 0..1"),  # float() reads it as 1.0
    (["--task", "calrec", "--set", "batch_size=\u0665"], "batch_size='\u0665': expected int"),  # int() reads 5
    (["--task", "calrec", "--seed", "\uff15"], "--seed: must be a whole number"),
    (["--task", "maml", "--data", "/no/such/glue"], "--data /no/such/glue: no such folder"),
    (["--task", "maml", "--init", "/no/such.pt"], "--init /no/such.pt: no such checkpoint"),
    (["--task", "maml", "--dtype", "bfloat16"], "--dtype applies to --task calrec only"),
    (["--task", "sinusoid", "--compile"], "--compile applies to --task calrec only"),
    (["--task", "calrec", "--inner-lr", "0.1"], "--inner-lr: --task calrec has no setting inner_lr"),
    (["--task", "maml", "--beams", "5"], "--beams: --task maml has no setting beams"),
    (["--task", "sinusoid", "--init", "."], "--init applies to --task calrec and maml only"),
    (["--task", "sinusoid", "--device", "cuda"], "--task sinusoid runs as one process on the CPU"),
])
def test_bad_command_lines_fail_with_a_message(capsys, tmp_path, argv, message):
    code, err = run_cli(capsys, *argv, "--out-dir", str(tmp_path))
    assert code == 2 and message in err


def test_paths_are_checked_for_their_kind(capsys, tmp_path):
    afile = tmp_path / "results.json"
    afile.write_text("{}")
    code, err = run_cli(capsys, "--task", "calrec", "--data", str(afile), "--out-dir", str(tmp_path / "o"))
    assert code == 2 and f"--data {afile}: is a file, not a folder" in err
    code, err = run_cli(capsys, "--task", "calrec", "--out-dir", str(afile))
    assert code == 2 and "is a file, not a folder" in err
    code, err = run_cli(capsys, "--task", "calrec", "--out-dir", "")
    assert code == 2 and "--out-dir: an empty path" in err
    (tmp_path / "a\nb").write_text("")  # a newline in a path: shown escaped, the error still one line
    code, err = run_cli(capsys, "--task", "calrec", "--out-dir", str(tmp_path / "a\nb"))
    assert code == 2 and err.count("\n") == 1 and "a\\nb: is a file, not a folder" in err, err
    (tmp_path / "out" / "results.json").mkdir(parents=True)
    code, err = run_cli(capsys, "--task", "calrec", "--out-dir", str(tmp_path / "out"))
    assert code == 2 and "results.json: is a folder; a run writes a file there" in err


def test_show_config_prints_every_setting_of_the_preset(capsys):
    cfg = train.main(["--task", "calrec", "--data", ".", "--beams", "3", "--show-config"])
    out = capsys.readouterr().out
    assert cfg.beams == 3 and cfg.max_history == 1  # the real-data preset, then the flag
    assert "preset real data" in out and len(out.splitlines()) == 1 + len(train.dataclasses.fields(cfg))
    assert any(line.split()[:2] == ["beams", "3"] for line in out.splitlines())


def test_show_config_checks_the_paths_and_stops_quietly_when_its_reader_does(capsys, tmp_path):
    code, err = run_cli(capsys, "--task", "calrec", "--data", str(tmp_path / "none"), "--show-config")
    assert code == 2 and "none: no such folder" in err  # what the run would refuse, --show-config refuses
    read, write = os.pipe()
    os.close(read)  # `| head -0`: the reader has gone before the table is written
    run = subprocess.run([sys.executable, "train.py", "--task", "maml", "--show-config"], stdout=write,
                         stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.abspath(train.__file__)))
    os.close(write)
    assert (run.returncode, run.stderr) == (141, "")


def test_resume_needs_a_saved_state(capsys, tmp_path):
    code, err = run_cli(capsys, "--task", "calrec", "--resume", "--out-dir", str(tmp_path))
    assert code == 2 and "state.pt to resume from" in err
    code, err = run_cli(capsys, "--task", "maml", "--resume", "--out-dir", str(tmp_path))
    assert code == 2 and "state.pt to resume from" in err


def test_a_run_that_ends_well_leaves_no_file_of_an_earlier_run_it_did_not_write_again(tmp_path):
    for name in ("init_reptile.pt", "state.pt", "ckpt.pt", "results.json", "log.txt"):  # an earlier run's, of any task
        (tmp_path / name).write_text("earlier\n")
    train.main(["--task", "sinusoid", "--set", "steps=2", "--set", "eval_tasks=2", "--out-dir", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["log.txt", "results.json"]
    assert (tmp_path / "log.txt").read_text().startswith("earlier\n")  # appended to
    assert (tmp_path / "results.json").read_text() != "earlier\n"


def test_an_interrupted_fresh_run_resumed_keeps_no_file_of_an_earlier_run(tmp_path):
    for name in ("init_reptile.pt", "state.pt", "log.txt"):  # an earlier run's
        (tmp_path / name).write_text("earlier")
    names = ("init_reptile.pt", "init_maml.pt", "state.pt", "log.txt")
    with pytest.raises(KeyboardInterrupt), engine.kept_if_refused(str(tmp_path), names, True):
        engine.atomic_write(str(tmp_path / "state.pt"), lambda f: f.write("mine"))
        raise KeyboardInterrupt  # Ctrl-C, after the state was saved
    with engine.kept_if_refused(str(tmp_path), names, False):  # --resume
        engine.atomic_write(str(tmp_path / "init_maml.pt"), lambda f: f.write("mine"))
    assert sorted(os.listdir(tmp_path)) == ["init_maml.pt", "log.txt", "state.pt"]
    assert (tmp_path / "state.pt").read_text() == "mine" and (tmp_path / "log.txt").read_text() == "earlier"


@pytest.mark.parametrize("fresh", [True, False])
def test_a_resumed_run_keeps_the_files_of_its_earlier_pieces(tmp_path, fresh):
    for name in ("a.pt", "b.pt", "log.txt"):
        (tmp_path / name).write_text("earlier")
    with engine.kept_if_refused(str(tmp_path), ("a.pt", "b.pt", "log.txt"), fresh):
        engine.atomic_write(str(tmp_path / "b.pt"), lambda f: f.write("new"))
    assert sorted(os.listdir(tmp_path)) == (["b.pt", "log.txt"] if fresh else ["a.pt", "b.pt", "log.txt"])
    assert (tmp_path / "b.pt").read_text() == "new" and (tmp_path / "log.txt").read_text() == "earlier"


def test_a_crash_part_way_keeps_its_state_for_resume_as_an_interrupt_does(tmp_path):
    for name in ("ckpt.pt", "results.json", "log.txt"):  # a finished run's
        (tmp_path / name).write_text("earlier\n")
    with pytest.raises(RuntimeError), engine.kept_if_refused(str(tmp_path), ("ckpt.pt", "results.json", "state.pt",
                                                                             "log.txt"), True):
        engine.atomic_write(str(tmp_path / "state.pt"), lambda f: f.write("mine"))
        raise RuntimeError("a bug, not the user's")  # README: --resume continues a run after a crash
    assert sorted(os.listdir(tmp_path)) == ["log.txt", "state.pt"] and (tmp_path / "state.pt").read_text() == "mine"


@pytest.mark.parametrize("out", ["new/./nested", "new/nested/"])
def test_a_refused_run_leaves_no_folder_it_made(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(engine.UserError), engine.kept_if_refused(out, ("log.txt",), True):
        raise engine.UserError("refused part-way")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(engine.fcntl is None, reason="no file locks on this system (Windows): runs are not held apart")
def test_a_second_run_into_the_same_out_dir_is_refused_while_the_first_writes(tmp_path):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "log.txt").write_text("the first run's\n")
    with engine.kept_if_refused(str(tmp_path), ("log.txt", "results.json"), True):  # the first run, at work
        (tmp_path / ".earlier1").mkdir()  # as a run killed outright leaves: only a run that holds the folder clears it
        second = subprocess.run([sys.executable, "train.py", "--task", "sinusoid", "--set", "steps=2", "--out-dir",
                                 str(tmp_path)], cwd=here, capture_output=True, text=True)
        assert (second.returncode, second.stderr) == (2, f"error: --out-dir {tmp_path}: a train.py or data.py writes "
                                                         "there now; wait till it ends\n")
        assert sorted(os.listdir(tmp_path)) == [".earlier1", f".earlier{os.getpid()}", "log.txt"]
    assert (tmp_path / "log.txt").read_text() == "the first run's\n"
    train.main(["--task", "sinusoid", "--set", "steps=2", "--set", "eval_tasks=2", "--out-dir", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["log.txt", "results.json"]  # once the first has ended


def test_device_choice(monkeypatch):
    assert train.pick_device("cpu") == "cpu"
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    with pytest.raises(train.UserError, match="no CUDA device"):
        train.pick_device("cuda")
    monkeypatch.setattr(train.torch.backends.mps, "is_available", lambda: True)
    assert train.pick_device("auto") == "mps"
    assert train.pick_device("auto", mps=False) == "cpu"  # maml: mps only when asked for
