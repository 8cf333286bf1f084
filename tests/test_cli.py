"""What the ``hardneg`` command does with a user's mistake and with a bug."""

from __future__ import annotations

import pytest

from hardneg import cli
from hardneg.errors import UserError, one_line, user_errors


def test_a_bad_config_key_is_one_line_and_exit_2(capsys):
    code = cli.main(["train", "--set", "optim.lrr=1e-3", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hardneg: error: ") and err.count("\n") == 1
    assert "optim.lr" in err  # the close match is suggested


def test_an_internal_error_keeps_its_traceback(monkeypatch):
    import hardneg.train.run as run

    def broken(*args, **kwargs):
        raise ValueError("internal: shapes (3, 4) and (5, 6) do not align")

    monkeypatch.setattr(run, "train_and_evaluate", broken)
    with pytest.raises(ValueError, match="internal"):  # not turned into exit 2
        cli.main(["train", "--steps", "1", "--set", "progress=false"])


def test_repeated_set_options_accumulate_and_the_last_wins_per_key():
    args = cli.build_parser().parse_args(
        ["train", "--set", "batch_size=8", "--set", "optim.lr=0.0001", "batch_size=16"]
    )
    values = cli._train_values(args)
    assert values["batch_size"] == 16 and values["optim"]["lr"] == 1e-4


def test_user_errors_turns_input_errors_into_one_line_user_errors():
    with pytest.raises(UserError, match=r"^no column 'caption' in a\.csv$"):
        with user_errors():
            raise KeyError("no column 'caption'\n in a.csv")
    with pytest.raises(UserError, match=r"No such file or directory: .*missing\.yaml"):
        with user_errors():
            open("/nonexistent-dir/missing.yaml")
    with pytest.raises(RuntimeError):  # not an input error: passes through unchanged
        with user_errors():
            raise RuntimeError("bug")


def test_one_line_keeps_the_file_name_of_an_os_error():
    err = PermissionError(13, "Permission denied", "/ro/run")
    assert one_line(err) == "Permission denied: /ro/run"


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("hardneg 0.")
