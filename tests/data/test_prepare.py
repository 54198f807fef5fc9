import dataclasses
import json
import re
import shutil

import jiwer
import pytest
import soundfile as sf

from voicetune.config import PrepareConfig, load_yaml
from voicetune.data.manifest import Dataset, read_clips_jsonl
from voicetune.data.prepare import PrepareError, clean_text, prepare, quality_reasons, unique_stems
from voicetune.data.transcribe import Transcript
from voicetune.utils.io import file_sha256

CFG = PrepareConfig(min_seconds=1.0, max_seconds=11.6, seed=5)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z' ]", " ", text.lower())).strip()


def snapshot(folder):
    return {
        str(p.relative_to(folder)): (file_sha256(p), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def prepared(piper_recordings, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    src = root / "recordings"
    shutil.copytree(piper_recordings, src)
    (src / "broken.wav").write_text("this is not audio, just text renamed to .wav\n")
    before = snapshot(src)
    calls = []
    result = prepare(src, root / "dataset", CFG, progress=lambda d, t, w: calls.append((d, t, w)))
    return src, root / "dataset", result, before, calls


def test_unreadable_file_is_skipped_and_named_while_the_rest_is_processed(prepared):
    _, _, result, _, _ = prepared
    assert list(result.errors) == ["broken.wav"]
    assert "not a readable audio file" in result.errors["broken.wav"]  # the key names it, the value says why
    assert result.n_files == 3 and result.n_files_failed == 1
    assert result.n_kept > 0


def test_input_folder_is_untouched(prepared):
    src, _, _, before, _ = prepared
    assert snapshot(src) == before


def test_clip_count_matches_the_sentences_and_transcripts_cover_the_text(prepared, piper_recordings):
    _, out, result, _, _ = prepared
    truth = json.loads((piper_recordings / "transcripts.json").read_text())
    n_sentences = sum(len(v) for v in truth.values())
    assert n_sentences / 3 <= result.n_kept <= n_sentences + 2
    records = [r for r in read_clips_jsonl(out / "clips.jsonl") if r.status == "kept"]
    for name, sentences in truth.items():
        clips = sorted((r for r in records if r.source_file == name), key=lambda r: r.start)
        assert clips, name
        hyp = normalise(" ".join(r.text for r in clips))
        assert jiwer.wer(normalise(" ".join(sentences)), hyp) < 0.25, (sentences, hyp)


def test_every_clip_is_within_bounds_at_the_dataset_rate(prepared):
    _, out, _, _, _ = prepared
    ds = Dataset.load(out)
    assert ds.train and ds.eval
    for clip in ds.train + ds.eval:
        info = sf.info(str(clip.audio_path))
        assert info.samplerate == CFG.sample_rate and info.channels == 1
        assert CFG.min_seconds - 0.01 <= info.duration <= CFG.max_seconds + 0.01
        assert clip.text.strip() and "|" not in clip.text
        assert clip.speaker == CFG.speaker_name
    assert {c.audio_path.parent.name for c in ds.train + ds.eval} == {"wavs"}


def test_metadata_is_consistent_with_clips_jsonl_and_config(prepared):
    _, out, result, _, _ = prepared
    records = read_clips_jsonl(out / "clips.jsonl")
    kept = [r for r in records if r.status == "kept"]
    assert len(kept) == result.n_kept == result.n_train + result.n_eval
    assert {r.split for r in kept} == {"train", "eval"}
    assert all(not r.reasons and r.asr["model"] == result.asr_model for r in kept)
    assert all(
        r.audio_file == f"wavs/{r.id}.wav" and r.end - r.start == pytest.approx(r.duration, abs=1e-3)
        for r in kept
    )
    assert all(re.fullmatch(r"session_\d_\d{4}", r.id) for r in records)
    assert load_yaml(PrepareConfig, out / "prepare.yaml") == CFG
    summary = json.loads((out / "prepare_result.json").read_text())
    assert summary["n_kept"] == result.n_kept and summary["errors"] == result.errors
    assert "tiny.en" in result.asr_model or "large" in result.asr_model
    assert 0 < result.real_time_factor < 2.0 and (out / "report.html").is_file()
    text = result.summary()
    assert text.splitlines()[0].startswith(f"{result.n_kept} clip(s) kept")
    assert "broken.wav" in text and str(out.resolve()) in text and result.asr_model in text


def test_progress_counts_seconds_of_input_audio_as_clips_are_transcribed(prepared):
    src, _, _, _, calls = prepared
    audio = [p for p in src.iterdir() if p.suffix != ".json" and p.name != "broken.wav"]
    total = sum(sf.info(str(p)).duration for p in audio)
    assert calls[-1] == (pytest.approx(total), pytest.approx(total), "prepare: done")
    assert all(t == calls[-1][1] and 0 <= d <= t for d, t, _ in calls)
    done = [d for d, _, _ in calls]
    assert done == sorted(done)  # never goes back
    assert any("analysing broken.wav" in w for _, _, w in calls)
    # it advances DURING transcription (not only per file): intermediate counts while clips are transcribed
    transcribing = {round(d, 3) for d, _, w in calls if w.startswith("prepare: transcribing ")}
    assert len([d for d in transcribing if 0 < d < total]) >= 2, calls
    assert all(w.startswith("prepare: ") for _, _, w in calls)


def test_rerun_is_deterministic_reuses_transcripts_and_may_overwrite_its_own_output(prepared):
    src, out, result, _, _ = prepared
    eval_before = (out / "metadata_eval.csv").read_text()
    transcribed = [r for r in read_clips_jsonl(out / "clips.jsonl") if r.asr]
    again = prepare(src, out, CFG)
    assert (out / "metadata_eval.csv").read_text() == eval_before
    assert again.n_eval == result.n_eval > 0
    assert again.n_asr_cached == len(transcribed) > 0
    assert [r.text for r in read_clips_jsonl(out / "clips.jsonl") if r.asr] == [r.text for r in transcribed]


class Interrupt(Exception):
    pass


def test_interrupted_run_leaves_no_dataset_and_resumes_from_its_transcripts(piper_recordings, tmp_path):
    out = tmp_path / "dataset"
    calls = []

    def stop_after_three_clips(done, total, what):
        calls.append(what)
        if sum("clips" in w for w in calls) > 1:  # after the first batch of clips is done
            raise Interrupt

    small_batches = dataclasses.replace(CFG, asr_batch_size=1)  # 6 clips per batch
    with pytest.raises(Interrupt):
        prepare(piper_recordings, out, small_batches, progress=stop_after_three_clips)
    assert [p.name for p in out.iterdir()] == ["cache"]  # no half-written dataset, only the stage caches
    result = prepare(piper_recordings, out, small_batches)
    assert result.n_asr_cached == 6  # the batches finished before the interruption are not transcribed again
    assert result.n_files_decoded == 0  # both files' VAD analyses were cached before the interruption
    assert (out / "prepare.yaml").is_file() and result.n_kept > 3


def test_refuses_output_inside_or_equal_to_the_input(piper_recordings):
    for out in (piper_recordings, piper_recordings / "dataset"):
        with pytest.raises(PrepareError, match="inside the input folder"):
            prepare(piper_recordings, out, CFG)
    assert not (piper_recordings / "dataset").exists()


def test_refuses_a_foreign_non_empty_output_folder(piper_recordings, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(PrepareError, match="not written by `voicetune prepare`"):
        prepare(piper_recordings, tmp_path, CFG)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_refuses_an_input_inside_the_output_folder(piper_recordings, tmp_path):
    src = tmp_path / "out" / "raw"
    shutil.copytree(piper_recordings, src)
    with pytest.raises(PrepareError, match="inside the output folder"):
        prepare(src, tmp_path / "out", CFG)


def test_folder_without_decodable_audio_is_an_error(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.wav").write_bytes(b"RIFF....WAVE")
    with pytest.raises(PrepareError, match="a.wav"):
        prepare(src, tmp_path / "out", CFG)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PrepareError, match="no audio files"):
        prepare(empty, tmp_path / "out3", CFG)
    assert not (tmp_path / "out").exists()


def test_quality_rules_quarantine_unusable_transcripts():
    good = Transcript("Hello there, how are you?", "en", -0.3, 0.01, [])
    assert quality_reasons(good, 2.0, CFG) == []
    assert "empty transcript" in quality_reasons(Transcript(" ... ", "en", -0.3, 0.01, []), 2.0, CFG)
    assert any(
        "no speech" in r for r in quality_reasons(Transcript("Thank you.", "en", -0.3, 0.9, []), 2.0, CFG)
    )
    assert any(
        "confidence" in r for r in quality_reasons(Transcript("Mumble", "en", -1.6, 0.1, []), 2.0, CFG)
    )
    assert any(
        "implausible" in r for r in quality_reasons(Transcript("word " * 40, "en", -0.2, 0.0, []), 2.0, CFG)
    )
    looping = Transcript("and then we went home " * 8, "en", -0.2, 0.0, [])
    assert any("repetitive" in r for r in quality_reasons(looping, 11.0, CFG))
    natural = "The morning light crept slowly across the kitchen table, and nobody noticed the clock."
    assert quality_reasons(Transcript(natural, "en", -0.2, 0.0, []), 6.0, CFG) == []


def test_clip_name_prefixes_are_unique_and_filesystem_safe(tmp_path):
    files = [tmp_path / n for n in ("talk.mp3", "talk.wav", "talk_2.wav", "my talk (1).flac", "äö.wav")]
    stems = unique_stems(files)
    assert len(set(stems)) == len(stems)
    assert stems[:2] == ["talk", "talk_2"] and stems[3] == "my_talk_1"
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in stems)


def test_clean_text_removes_the_csv_delimiter_and_newlines():
    assert clean_text("  a | b\n c  ") == "a b c"


def test_overrides_are_validated():
    from voicetune.config import ConfigError

    with pytest.raises(ConfigError, match="min_seconds"):
        prepare("/nonexistent", "/tmp/x", CFG, min_seconds=20.0)
