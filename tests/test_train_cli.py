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
    (["--task", "maml", "--dtype", "bfloat16"], "apply to --task calrec only"),
    (["--task", "sinusoid", "--compile"], "apply to --task calrec only"),
])
def test_bad_command_lines_fail_with_a_message(capsys, tmp_path, argv, message):
    code, err = run_cli(capsys, *argv, "--out-dir", str(tmp_path))
    assert code == 2 and message in err


def test_resume_needs_a_checkpoint(capsys, tmp_path):
    code, err = run_cli(capsys, "--task", "calrec", "--resume", "--out-dir", str(tmp_path))
    assert code == 2 and "ckpt.pt to resume from" in err


def test_device_choice():
    assert train.pick_device("cpu") == "cpu"
    assert train.pick_device("auto") in ("cpu", "cuda", "mps")
