"""`voicetune dataset import`: LJSpeech and Coqui/AllTalk folders, duplicates, and transcripts the ASR
does not hear (real Piper speech, packaged tiny.en)."""

import shutil

import pytest

from voicetune.cli import main
from voicetune.data.importer import import_dataset, read_listing
from voicetune.data.manifest import Dataset, read_clips_jsonl
from voicetune.data.prepare import PrepareError

WRONG = "Seven purple elephants danced on the frozen lake."


@pytest.fixture(scope="module")
def ljspeech(piper_sentences, tmp_path_factory):
    src = tmp_path_factory.mktemp("ljspeech")
    (src / "wavs").mkdir()
    lines = []
    for i, (path, text) in enumerate(piper_sentences):
        shutil.copy(path, src / "wavs" / f"LJ001-{i:04d}.wav")
        lines.append(f"LJ001-{i:04d}|{text}|{text}")
    lines.append(f"LJ001-0000|{piper_sentences[0][1]}|{piper_sentences[0][1]}")  # same row twice
    lines.append(f"LJ001-0001|{WRONG}|{WRONG}")  # two different texts: the ASR decides
    lines[2] = f"LJ001-0002|{WRONG}|{WRONG}"  # a transcript nobody said
    lines.append("LJ001-0099|listed but missing|listed but missing")
    (src / "metadata.csv").write_text("\n".join(lines) + "\n")
    return src


@pytest.fixture(scope="module")
def imported(ljspeech, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "ds"
    return out, import_dataset(ljspeech, out, qa_mos="off", seed=3)


def test_ljspeech_rows_become_clips_with_qa_and_the_normalized_column(imported, piper_sentences):
    out, _ = imported
    records = {r.source_file: r for r in read_clips_jsonl(out / "clips.jsonl")}
    assert len(records) == len(piper_sentences)  # one clip per audio file, duplicates merged
    r0 = records["wavs/LJ001-0000.wav"]
    assert r0.status == "kept" and r0.text == piper_sentences[0][1] and r0.quality["snr_db"] is not None
    assert (out / r0.audio_file).is_file() and Dataset.load(out).train


def test_duplicate_rows_are_merged_or_resolved_by_the_asr_and_reported(imported, piper_sentences):
    out, result = imported
    records = {r.source_file: r for r in read_clips_jsonl(out / "clips.jsonl")}
    r1 = records["wavs/LJ001-0001.wav"]
    assert r1.raw_text == piper_sentences[1][1] and r1.status == "kept"  # the text the ASR hears won
    notes = "\n".join(result.duplicates)
    assert "LJ001-0000.wav: listed 2 times with the same transcript" in notes
    assert "LJ001-0001.wav: 2 different transcripts; kept the one the ASR hears" in notes
    assert "LJ001-0099" not in notes  # a missing file is not a duplicate: it is skipped, with its reason
    assert "does not exist" in result.errors["wavs/LJ001-0099.wav"]


def test_a_transcript_the_asr_does_not_hear_needs_review(imported):
    out, result = imported
    r2 = {r.source_file: r for r in read_clips_jsonl(out / "clips.jsonl")}["wavs/LJ001-0002.wav"]
    assert r2.status == "quarantined" and r2.needs_review
    assert any(x.startswith("needs review: given transcript differs from the ASR") for x in r2.reasons)
    assert result.n_needs_review >= 1


def test_coqui_layout_through_the_cli_keeps_speakers(imported, tmp_path):
    out, _ = imported
    src = tmp_path / "coqui"
    shutil.copytree(out / "wavs", src / "wavs")
    rows = [
        f"wavs/{p.name}|hello|{'ann' if i % 2 else 'ben'}"
        for i, p in enumerate(sorted((src / "wavs").iterdir()))
    ]
    (src / "metadata_train.csv").write_text("audio_file|text|speaker_name\n" + "\n".join(rows) + "\n")
    listing = read_listing(src, "speaker")
    assert {r[2] for rows_ in listing.values() for r in rows_} == {"ann", "ben"}
    # "hello" is not what any clip says: every clip needs review, so no clip is usable (exit 1), and the
    # dataset written says why, per clip and speaker
    assert main(["dataset", "import", str(src), "--out", str(tmp_path / "ds"), "--qa-mos", "off"]) == 1
    records = read_clips_jsonl(tmp_path / "ds" / "clips.jsonl")
    assert records and all(r.needs_review and r.status == "quarantined" for r in records)
    assert {r.speaker for r in records} == {"ann", "ben"}
    with pytest.raises(PrepareError, match="no metadata"):
        read_listing(tmp_path, "speaker")
