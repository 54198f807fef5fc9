"""The stack check (voicetune.stackcheck, run by `voicetune doctor`): passes on the locked stack, and fails,
naming the component, the cause and the transformers version, on the combination that broke in 2026-12
(transformers 5.24 with coqui-tts 0.28: XTTS inference got ``past_key_values=None``; the fixture
``like_transformers_5_24`` in conftest.py reproduces it)."""

from __future__ import annotations

import importlib.metadata as md
import re

import pytest

from voicetune.stackcheck import VERSION_PACKAGES, check_stack


def test_the_locked_stack_works_end_to_end():
    report = check_stack()
    assert report.ok, report.text()
    assert [r.component for r in report.results] == ["model", "synthesis", "batched synthesis", "ASR",
                                                     "speaker encoder", "MOS"]
    assert set(report.versions) == set(VERSION_PACKAGES)
    assert report.versions["transformers"] == md.version("transformers")
    by_name = {r.component: r for r in report.results}
    assert "s of audio" in by_name["synthesis"].detail
    if report.reference != "synthetic tone (no Piper voice, no espeak-ng)":  # real speech: words checked
        assert "WER 0.0" in by_name["ASR"].detail
    assert "synthesized clip" in by_name["MOS"].detail and "synthesized" in by_name["speaker encoder"].detail
    assert report.seconds == pytest.approx(sum(r.seconds for r in report.results), abs=3.0)


def test_doctor_fails_on_the_transformers_5_24_breakage_naming_synthesis_and_the_version(
        like_transformers_5_24, capsys, tmp_path):
    from voicetune.cli import main

    log = tmp_path / "doctor.log"
    code = main(["--log-file", str(log), "doctor"])
    out = capsys.readouterr().out
    assert code == 1
    fails = [line for line in out.splitlines() if line.startswith("[FAIL]")]
    synthesis = next(line for line in fails if "stack: synthesis" in line)
    assert "coqui-tts XTTS inference" in synthesis
    assert "AttributeError: 'NoneType' object has no attribute 'get_seq_length'" in synthesis
    assert "gpt_inference.py:62" in synthesis
    assert f"transformers {md.version('transformers')}" in synthesis
    assert "Traceback" not in out  # one line per failure on the console
    # the other components still ran (on the reference clip) and passed; the summary names what failed
    for component in ("model", "ASR", "speaker encoder", "MOS"):
        assert re.search(rf"^\[PASS\] stack: {component} ", out, re.MULTILINE), out
    assert re.search(r"^\[FAIL\] stack check .* in \d+\.\d s .*FAILED: synthesis$", out, re.MULTILINE), out
    # the traceback went to the log file
    text = log.read_text()
    assert "Traceback" in text and "gpt_inference.py" in text and "get_seq_length" in text
    assert f"tracebacks of the failed components: {log}" in out


def test_doctor_can_skip_the_stack_check(capsys):
    from voicetune.cli import main

    main(["doctor", "--skip-stack-check"])
    assert "stack" not in capsys.readouterr().out
