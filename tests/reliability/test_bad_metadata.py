"""Bad metadata: rows of an imported dataset, the metadata of a dataset given to `train`, a tampered
clips.jsonl.

Paths read from a file stay inside its folder (or are refused with the file, the line and the reason); one bad
row does not stop the import of the others.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from voicetune.data.manifest import read_clips_jsonl, write_metadata_csv

from .helpers import assert_nothing_partial, assert_reported, assert_unchanged, cli, digest, leftovers

OUTSIDE = "outside.wav"  # a real recording NEXT TO the dataset folder: no row may pull it in

# Rows of metadata_train.csv, each a kind of bad entry, and what the message must say (file:line and reason).
BAD_ROWS = {
    "parent_path": (
        "../outside.wav|Sneaking in from outside.|spk",
        r"metadata_train\.csv:\d+.*goes up out of",
    ),
    "absolute_path": ("{abs}|An absolute path.|spk", r"metadata_train\.csv:\d+.*absolute path"),
    "symlink_out": (
        "wavs/escape.wav|Through a symlink.|spk",
        r"metadata_train\.csv:\d+.*symlink that leads out",
    ),
    "missing_file": (
        "wavs/never_recorded.wav|Listed but missing.|spk",
        r"never_recorded\.wav.*does not exist",
    ),
    "one_column": ("wavs/no_text_here.wav", r"metadata_train\.csv:\d+.*two '\|'-separated columns"),
    "empty_path": ("|No file name at all.|spk", r"metadata_train\.csv:\d+.*empty file name"),
}


@pytest.fixture(scope="module")
def imported(piper_sentences, asr_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_import")
    src = root / "coqui"
    (src / "wavs").mkdir(parents=True)
    shutil.copyfile(piper_sentences[5][0], root / OUTSIDE)
    os.symlink(root / OUTSIDE, src / "wavs" / "escape.wav")
    rows = ["audio_file|text|speaker_name"]
    for i in range(3):
        shutil.copyfile(piper_sentences[i][0], src / "wavs" / f"good_{i}.wav")
        rows.append(f"wavs/good_{i}.wav|{piper_sentences[i][1]}|spk")
    rows += [row.format(abs=root / OUTSIDE) for row, _ in BAD_ROWS.values()]
    (src / "metadata_train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    # metadata_eval.csv saved by a Windows spreadsheet: Latin-1, "café" as one byte
    shutil.copyfile(piper_sentences[3][0], src / "wavs" / "cafe.wav")
    (src / "metadata_eval.csv").write_bytes(
        "audio_file|text|speaker_name\nwavs/cafe.wav|The morning café was quiet.|spk\n".encode("latin-1")
    )
    before = digest(root)
    out = root / "dataset"
    outcome = cli(
        "dataset",
        "import",
        src,
        "--out",
        out,
        "--asr-model",
        asr_model,
        "--qa-mos",
        "off",
        "--max-asr-disagreement",
        "1.0",
    )
    return SimpleNamespace(
        root=root,
        src=src,
        out=out,
        outcome=outcome,
        before=before,
        records=read_clips_jsonl(out / "clips.jsonl"),
    )


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_each_bad_metadata_row_is_refused_by_file_line_and_reason_and_the_rest_imported(imported, kind):
    r = imported
    assert r.outcome.rc == 0, r.outcome.text[-3000:]
    assert_reported(r.outcome, BAD_ROWS[kind][1])  # 1. named: file, line, reason
    sources = {rec.source_file for rec in r.records}
    assert {"wavs/good_0.wav", "wavs/good_1.wav", "wavs/good_2.wav"} <= sources  # 2. the rest was imported
    assert_unchanged(r.before, r.root / "coqui", r.root / OUTSIDE)  # 3. inputs byte-identical
    # 4. nothing of a refused row is in the dataset (no clip comes from outside the folder), no leftovers
    assert sources == {"wavs/good_0.wav", "wavs/good_1.wav", "wavs/good_2.wav", "wavs/cafe.wav"}
    assert len(list((r.out / "wavs").iterdir())) + len(list((r.out / "quarantine").glob("*"))) == len(
        r.records
    )
    assert not leftovers(r.out)


def test_a_missing_file_is_reported_as_skipped_not_as_a_duplicate(imported):
    dup = [
        line
        for line in imported.outcome.text.splitlines()
        if "duplicate" in line and "never_recorded" in line
    ]
    assert not dup, dup
    assert_reported(
        imported.outcome, r"skipped wavs/never_recorded\.wav: listed in the metadata .* does not exist"
    )


def test_latin1_metadata_is_read_with_a_warning_naming_the_line(imported):
    assert_reported(imported.outcome, r"metadata_eval\.csv:2: not UTF-8; read as cp1252")
    cafe = [rec for rec in imported.records if rec.source_file == "wavs/cafe.wav"]
    assert cafe and "café" in cafe[0].raw_text


def test_ljspeech_ids_that_climb_out_of_wavs_are_refused(piper_sentences, asr_model, tmp_path):
    src = tmp_path / "lj"
    (src / "wavs").mkdir(parents=True)
    shutil.copyfile(piper_sentences[0][0], src / "wavs" / "LJ001-0001.wav")
    shutil.copyfile(piper_sentences[1][0], tmp_path / "secret.wav")
    (src / "metadata.csv").write_text(f"LJ001-0001|{piper_sentences[0][1]}|\n../../secret|Climbing out.|\n")
    before = digest(tmp_path)
    out = tmp_path / "dataset"
    outcome = cli(
        "dataset",
        "import",
        src,
        "--out",
        out,
        "--asr-model",
        asr_model,
        "--qa-mos",
        "off",
        "--min-eval-clips",
        "0",
    )
    assert outcome.rc == 0, outcome.text[-3000:]
    assert_reported(outcome, r"metadata\.csv:2: '?wavs/\.\./\.\./secret\.wav'? goes up out of the folder")
    assert [rec.source_file for rec in read_clips_jsonl(out / "clips.jsonl")] == ["wavs/LJ001-0001.wav"]
    assert_unchanged(before, src, tmp_path / "secret.wav")


# ------------------------------------------------------------------ the metadata of a dataset given to
# `train`


def _dataset(piper_sentences, root: Path, rows: list[tuple[str, str, str]] | None = None) -> Path:
    (root / "wavs").mkdir(parents=True)
    good = []
    for i in range(4):
        shutil.copyfile(piper_sentences[i][0], root / "wavs" / f"s{i}.wav")
        good.append((f"wavs/s{i}.wav", piper_sentences[i][1], "spk"))
    write_metadata_csv(root / "metadata_train.csv", good + (rows or []))
    write_metadata_csv(root / "metadata_eval.csv", [])
    return root


TRAIN_METADATA = {
    "row_leaves_the_folder": (
        [("../../victim.wav", "Out.", "spk")],
        r"metadata_train\.csv:6: '\.\./\.\./victim\.wav' goes up out of the folder",
    ),
    "row_absolute": (
        [("/etc/hostname", "Abs.", "spk")],
        r"metadata_train\.csv:6: '/etc/hostname' is an absolute",
    ),
    "row_missing_wav": (
        [("wavs/gone.wav", "Gone.", "spk")],
        r"metadata_train\.csv:6: audio file wavs/gone\.wav does not exist",
    ),
    "no_training_rows": (None, r"metadata_train\.csv: no training clips"),
    "not_utf8": (None, r"metadata_train\.csv: not UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(TRAIN_METADATA))
def test_a_dataset_whose_metadata_is_bad_is_refused_naming_file_line_and_reason(
    kind, piper_sentences, tiny_base, tmp_path
):
    rows, expected = TRAIN_METADATA[kind]
    ds = _dataset(piper_sentences, tmp_path / "ds", rows)
    shutil.copyfile(piper_sentences[5][0], tmp_path / "victim.wav")
    if kind == "no_training_rows":
        write_metadata_csv(ds / "metadata_train.csv", [])
    elif kind == "not_utf8":
        (ds / "metadata_train.csv").write_bytes(
            "audio_file|text|speaker_name\nwavs/s0.wav|Caf\xe9.|spk\n".encode("latin-1")
        )
    before = digest(tmp_path)
    run = tmp_path / "run"
    outcome = cli(
        "train", ds, "--base", tiny_base, "--out", run, "--max-steps", "1", "--eval-every-epochs", "0"
    )
    assert outcome.rc == 1
    assert_reported(outcome, expected)  # 1. named
    assert_unchanged(
        before, tmp_path / "ds", tmp_path / "victim.wav"
    )  # 3. (2: nothing to go on with: refused)
    assert_nothing_partial(run, "run")  # 4.


def test_a_tampered_clips_jsonl_cannot_make_curation_delete_a_file_outside_the_dataset(
    piper_sentences, tmp_path
):
    ds = _dataset(piper_sentences, tmp_path / "ds")
    victim = tmp_path / "victim.txt"
    victim.write_text("a file of the user, outside the dataset\n")
    record = {
        "id": "c1",
        "audio_file": "../victim.txt",
        "source_file": "x.wav",
        "start": 0.0,
        "end": 1.0,
        "duration": 1.0,
        "text": "x",
        "language": "en",
        "status": "kept",
        "split": "train",
    }
    (ds / "clips.jsonl").write_text(json.dumps(record) + "\n")
    before = digest(victim)
    outcome = cli("dataset", "quarantine", ds, "c1")
    assert outcome.rc == 1
    assert_reported(outcome, r"clips\.jsonl \(clip c1\): '\.\./victim\.txt' goes up out of the folder")
    assert_unchanged(before, victim)
    assert not (ds / "quarantine" / "victim.txt").exists()
