"""Where prepare finds recordings and whose voice they are (no models involved)."""

from pathlib import Path

import pytest

from voicetune.cli import main
from voicetune.config import ConfigError, PrepareConfig
from voicetune.data.prepare import PrepareError, discover_inputs


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_speaker_subfolders_name_the_speakers_and_loose_files_are_skipped(tmp_path):
    _touch(tmp_path / "alice" / "a1.wav")
    _touch(tmp_path / "alice" / "day2" / "a2.flac")
    _touch(tmp_path / "bob" / "b1.mp3")
    _touch(tmp_path / "stray.wav")
    found = discover_inputs(tmp_path, None, PrepareConfig(speaker_folders=True))
    assert sorted((f.name, spk) for f, _, spk in found) == [
        ("a1.wav", "alice"),
        ("a2.flac", "alice"),
        ("b1.mp3", "bob"),
    ]
    plain = discover_inputs(tmp_path, None, PrepareConfig(speaker_name="me"))
    assert {spk for _, _, spk in plain} == {"me"} and len(plain) == 4


def test_speaker_folders_from_the_command_line_are_added_and_checked(tmp_path):
    _touch(tmp_path / "x" / "one.wav")
    found = discover_inputs(None, {"carol": tmp_path / "x"}, PrepareConfig())
    assert [(f.name, spk) for f, _, spk in found] == [("one.wav", "carol")]
    with pytest.raises(PrepareError, match="does not exist"):
        discover_inputs(None, {"dan": tmp_path / "missing"}, PrepareConfig())
    with pytest.raises(PrepareError, match="speaker name"):
        discover_inputs(None, {"a|b": tmp_path / "x"}, PrepareConfig())
    assert main(["prepare", "--speaker", "nofolder", "--out", str(tmp_path / "o")]) == 1


def test_new_quality_thresholds_are_validated():
    for bad in (
        {"min_snr_db": 10, "max_silence_ratio": 0.0},
        {"qa_mos": "maybe"},
        {"min_mos": 7.0},
        {"max_seconds": 40.0},
        {"language": "English"},
    ):
        with pytest.raises(ConfigError):
            PrepareConfig(**bad)
    assert PrepareConfig(language="auto").language == "auto"
