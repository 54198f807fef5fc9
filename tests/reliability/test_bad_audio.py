"""`voicetune prepare` over one folder that holds every kind of bad audio input next to good recordings.

The command runs as users run it (a new process, the CLI) and without the power to read every file: as root
the test drops the DAC-override capabilities with ``setpriv``, so a file with mode 000 really cannot be read;
without setpriv, Python-level opens of the unreadable entries fail instead (``_deny.py``). Each kind is then
checked for the suite's four properties (helpers.py).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from voicetune.data.manifest import read_clips_jsonl, read_metadata_csv

from .corpus import AUDIO_KINDS, GOOD, AudioKind, restore_permissions, write_audio_corpus
from .helpers import SRC, Outcome, assert_reported, digest, leftovers, read_json

DROP_DAC = ["--bounding-set", "-dac_override,-dac_read_search"]


def unprivileged_prefix() -> list[str] | None:
    """A command prefix under which permissions apply to this user ([] when not root); None: cannot drop
    them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if (
        setpriv
        and subprocess.run([setpriv, *DROP_DAC, "true"], capture_output=True, check=False).returncode == 0
    ):
        return [setpriv, *DROP_DAC]
    return None


def _run_prepare(src: Path, out: Path, asr_model: str) -> tuple[Outcome, str]:
    args = ["prepare", str(src), "--out", str(out), "--asr-model", asr_model, "--qa-mos", "off"]
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    prefix = unprivileged_prefix()
    if prefix is None:  # simulate the permission errors at Python's open/scandir
        how = "simulated (Python-level EACCES: setpriv is not available)"
        env["VOICETUNE_TEST_DENY"] = os.pathsep.join(
            str(src / n) for n in ("unreadable.wav", "locked_folder")
        )
        cmd = [sys.executable, str(Path(__file__).with_name("_deny.py")), *args]
    else:
        how = "real (setpriv: no DAC override)" if prefix else "real (not root)"
        cmd = [*prefix, sys.executable, "-m", "voicetune.cli", *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=600, errors="backslashreplace", check=False
    )
    return Outcome(proc.returncode, proc.stdout + proc.stderr), how


@pytest.fixture(scope="module")
def audio_run(piper_sentences, asr_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_corpus")
    src, out = root / "recordings", root / "dataset"
    write_audio_corpus(src, [p for p, _ in piper_sentences])
    before = digest(src)
    outcome, how = _run_prepare(src, out, asr_model)
    after = digest(src)
    restore_permissions(src)
    print(f"permission errors: {how}")
    result = read_json(out / "prepare_result.json") if (out / "prepare_result.json").is_file() else {}
    report = html.unescape((out / "report.html").read_text()) if (out / "report.html").is_file() else ""
    yield SimpleNamespace(
        src=src,
        out=out,
        outcome=outcome,
        before=before,
        after=after,
        result=result,
        report=report,
        records=read_clips_jsonl(out / "clips.jsonl"),
    )
    restore_permissions(src)


def _where(result: dict, kind: AudioKind) -> dict[str, str]:
    return {
        "skipped": result.get("errors", {}),
        "no_speech": result.get("no_speech", {}),
        "not_used": result.get("skipped_inputs", {}),
    }.get(kind.outcome, {})


@pytest.mark.parametrize("kind", AUDIO_KINDS, ids=lambda k: k.name)
def test_bad_audio_is_named_with_its_reason_and_the_rest_is_used(audio_run, kind):
    r = audio_run
    assert r.outcome.rc == 0, r.outcome.text[-4000:]
    # 1. one clear message: the entry and its reason on one line of the output, and in the report
    if kind.outcome in ("skipped", "no_speech", "not_used"):
        lines = [line for line in r.outcome.text.splitlines() if kind.name in line]
        assert any(re.search(kind.reason, line, re.IGNORECASE) for line in lines), (
            kind.name,
            lines,
            r.outcome.text[-3000:],
        )
        assert re.search(kind.reason, _where(r.result, kind).get(kind.name, ""), re.IGNORECASE)
        assert kind.name in r.report
    elif kind.outcome == "duplicate":
        assert_reported(r.outcome, rf"{kind.name}: {kind.reason}")
    elif kind.reason:  # used, with a warning
        assert_reported(r.outcome, rf"{kind.name}: {kind.reason}")
        assert kind.name in r.report
    assert "Traceback (most recent call last)" not in r.outcome.text
    # 2. the run went on: the good recordings (and the usable awkward ones) became kept clips
    kept = {rec.source_file for rec in r.records if rec.status == "kept"}
    assert set(GOOD) <= kept, kept
    if kind.outcome == "used":
        assert kind.name in kept, (kind.name, kept)
    # 3. the input is byte-identical (and the unreadable entries still unreadable to others)
    assert r.before == r.after
    # 4. no partial output looks complete: nothing from a skipped entry in the dataset, no temporary leftovers
    if kind.outcome != "used":
        assert kind.name not in {rec.source_file for rec in r.records}
    listed = {
        row[0]
        for row in read_metadata_csv(r.out / "metadata_train.csv")
        + read_metadata_csv(r.out / "metadata_eval.csv")
    }
    assert all((r.out / a).is_file() for a in listed) and not leftovers(r.out)


def test_the_summary_counts_files_without_speech_and_unreadable_ones(audio_run):
    result = audio_run.result
    n_skipped = sum(k.outcome == "skipped" for k in AUDIO_KINDS)
    n_silent = sum(k.outcome == "no_speech" for k in AUDIO_KINDS)
    assert len(result["errors"]) == n_skipped and len(result["no_speech"]) == n_silent
    used = result["n_files"] - result["n_files_failed"] - len(result["no_speech"])
    assert_reported(
        audio_run.outcome,
        rf"{used}/{result['n_files']} audio file\(s\) used \({n_silent} without "
        rf"speech, {n_skipped} skipped\)",
    )


def test_the_clip_cut_off_by_a_truncated_file_is_quarantined_and_the_rest_of_it_kept(audio_run):
    clips = sorted(
        (rec for rec in audio_run.records if rec.source_file == "truncated.wav"), key=lambda c: c.start
    )
    assert [c.status for c in clips] == ["kept", "quarantined"], [(c.status, c.reasons) for c in clips]
    assert "cut off by the end of a truncated file" in clips[-1].reasons
