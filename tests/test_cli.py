"""The CLI: every subcommand has --help built from the library's documented options."""

import subprocess
import sys

import pytest

from voicetune.cli import build_parser, main

SUBCOMMANDS = ["prepare", "dataset", "make-tiny-base", "train", "evaluate", "export", "synthesize", "doctor",
               "demo"]


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
    rc = main(["train", str(tmp_path), "--base", str(tmp_path), "--out", str(tmp_path / "r"),
               "--batch-size", "0"])
    assert rc == 1
    assert "--batch-size" in caplog.text


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "voicetune.cli", "--version"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0 and "voicetune" in out.stdout


def _train_help(*argv: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", *argv])
    return out.getvalue()


def test_train_help_is_short_with_the_basic_options_and_lists_the_advanced_ones():
    short, full = _train_help("--help"), _train_help("--help-all")
    assert len(short.splitlines()) < 120 < len(full.splitlines())
    assert "basic options" in short and "--batch-size BATCH_SIZE" in short
    assert "Clips per micro-batch" in short
    assert "advanced options (" in short and "--dropout" in short and "Dropout of the GPT-2" not in short
    assert "Dropout of the GPT-2" in full and "advanced: xtts backend" in full


def test_train_help_shows_the_options_of_the_chosen_backend():
    fake = _train_help("--backend", "fake", "--help-all")
    assert "--energy-weight" in fake and "advanced: fake backend" in fake and "--dropout" not in fake
    from voicetune.backends.registry import available_backends

    # --backend's choices are the registered backends
    assert "{" + ",".join(available_backends()) + "}" in fake


def test_an_unknown_flag_suggests_the_closest_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "data", "--batch-sise", "3"])
    assert e.value.code == 2
    assert "did you mean --batch-size?" in capsys.readouterr().err


def test_every_subcommand_and_argument_has_help_text():
    import argparse

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    assert sub.description or sub_name in {a.dest for a in action._choices_actions}, sub_name
                    walk(sub, f"{name} {sub_name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                assert action.help, f"{name}: {action.option_strings or action.dest} has no help"

    root = build_parser()
    for action in root._subparsers._group_actions:
        assert all(a.help for a in action._choices_actions)  # one line per subcommand in `voicetune --help`
    walk(root, "voicetune")


def _help(name: str) -> str:
    return build_parser()._subparsers._group_actions[0].choices[name].format_help()


def test_prepare_reads_its_options_from_yaml_and_flags_override_them(tmp_path):
    from voicetune.cli import _config_with_overrides
    from voicetune.config import ConfigError, PrepareConfig

    (tmp_path / "prepare.yaml").write_text("min_seconds: 2.0\nmax_seconds: 10.0\nlanguage: de\n")
    args = build_parser().parse_args(["prepare", "in", "--out", "o", "--config",
                                      str(tmp_path / "prepare.yaml"), "--max-seconds", "9"])
    cfg = _config_with_overrides(args, PrepareConfig)
    assert (cfg.min_seconds, cfg.max_seconds, cfg.language) == (2.0, 9.0, "de")
    (tmp_path / "bad.yaml").write_text("min_secnds: 2.0\n")
    with pytest.raises(ConfigError, match="min_secnds"):
        _config_with_overrides(build_parser().parse_args(["prepare", "in", "--out", "o", "--config",
                                                          str(tmp_path / "bad.yaml")]), PrepareConfig)


def test_help_claims_a_yaml_config_only_where_the_command_reads_one():
    for name in ("prepare", "train"):
        text = _help(name)
        assert "--config" in text and "YAML" in text
    evaluate = _help("evaluate")
    assert "YAML" not in evaluate and "--config" not in evaluate


def test_doctor_help_explains_the_stack_check():
    text = _help("doctor")
    assert "--skip-stack-check" in text and "synthesizes" in text


def test_synthesize_preset_names_what_the_backend_offers(tiny_dataset, tmp_path):
    from voicetune.backends.tiny import make_tiny_base
    from voicetune.synthesis import synthesize

    base = make_tiny_base("fake", tmp_path / "base", dataset=tiny_dataset)
    ref = next((tiny_dataset / "wavs").iterdir())
    with pytest.raises(ValueError, match="--preset fast: the fake backend offers no presets"):
        synthesize(base, "Hello.", tmp_path / "out.wav", reference=[ref], preset="fast")
    assert not (tmp_path / "out.wav").exists()
