"""train.py's command line: typos and bad values fail at once with a message; --help explains every flag."""

import pytest

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
    (["--task", "calrec", "--max-step", "3"], "unrecognized arguments: --max-step"),  # no abbreviations
    (["--task", "calrec", "--max-steps", "0"], "must be a positive integer"),
    (["--task", "calrec", "--alpha", "-0.1"], "must be a number >= 0"),
    (["--task", "calrec", "--tau", "nan"], "must be a number > 0"),
    (["--task", "maml", "--n-train", "10,x"], "expected comma-separated positive integers"),
    (["--task", "maml", "--data", "/no/such/glue"], "--data /no/such/glue: no such folder"),
    (["--task", "maml", "--init", "/no/such.pt"], "--init /no/such.pt: no such checkpoint"),
    (["--task", "maml", "--dtype", "bfloat16"], "--dtype applies to --task calrec only"),
    (["--task", "sinusoid", "--compile"], "--compile applies to --task calrec only"),
    (["--task", "calrec", "--inner-lr", "0.1"], "--inner-lr applies to --task maml only, not to --task calrec"),
    (["--task", "maml", "--beams", "5"], "--beams applies to --task calrec only"),
    (["--task", "sinusoid", "--init", "."], "--init applies to --task calrec and maml only"),
    (["--task", "sinusoid", "--device", "cuda"], "--task sinusoid runs on the CPU"),
])
def test_bad_command_lines_fail_with_a_message(capsys, tmp_path, argv, message):
    code, err = run_cli(capsys, *argv, "--out-dir", str(tmp_path))
    assert code == 2 and message in err


def test_resume_needs_a_saved_state(capsys, tmp_path):
    code, err = run_cli(capsys, "--task", "calrec", "--resume", "--out-dir", str(tmp_path))
    assert code == 2 and "state.pt to resume from" in err
    code, err = run_cli(capsys, "--task", "maml", "--resume", "--out-dir", str(tmp_path))
    assert code == 2 and "state.pt to resume from" in err


def test_device_choice(monkeypatch):
    assert train.pick_device("cpu") == "cpu"
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    with pytest.raises(train.UserError, match="no CUDA device"):
        train.pick_device("cuda")
    monkeypatch.setattr(train.torch.backends.mps, "is_available", lambda: True)
    assert train.pick_device("auto") == "mps"
    assert train.pick_device("auto", mps=False) == "cpu"  # maml: mps only when asked for
