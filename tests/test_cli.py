"""The CLI: every subcommand has --help built from the library's documented options."""

import subprocess
import sys

import pytest

from voicetune.cli import build_parser, main

SUBCOMMANDS = ["prepare", "dataset", "make-tiny-base", "train", "evaluate", "export", "synthesize", "doctor", "demo"]


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: voicetune " + name in capsys.readouterr().out


def test_train_help_shows_config_field_documentation():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--grad-accum" in text and "effective batch" in text


def test_invalid_option_value_is_reported_not_raised(tmp_path, caplog):
    rc = main(["train", str(tmp_path), "--base", str(tmp_path), "--out", str(tmp_path / "r"), "--batch-size", "0"])
    assert rc == 1
    assert "--batch-size" in caplog.text


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "voicetune.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "voicetune" in out.stdout
