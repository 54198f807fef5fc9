"""Demo recordings from the packaged Piper voice: formats, pauses, noise and matching transcripts."""

import itertools
import json
import re

import numpy as np
import soundfile as sf

from voicetune import demo_audio
from voicetune.audio.io import load_audio
from voicetune.data.vad import detect_speech


def test_demo_sentences_are_varied_natural_text():
    s = demo_audio.DEMO_SENTENCES
    assert len(s) >= 50 and len(set(s)) == len(s)
    assert not any(re.search(r"\d", x) for x in s)
    assert all(4 <= len(x.split()) <= 16 and x[-1] in ".?!" for x in s)


def test_voice_model_is_found_with_its_config():
    path = demo_audio.piper_voice_path()
    assert path.suffix == ".onnx" and path.is_file()
    assert path.with_name(path.name + ".json").is_file()


def test_speak_renders_audible_speech_at_the_requested_rate():
    audio, sr = demo_audio.speak("Please remember to close the window before you leave.")
    assert sr == 22050 and audio.dtype == np.float32
    assert 1.5 < len(audio) / sr < 6.0
    assert 0.3 < np.abs(audio).max() <= 1.0
    audio16, sr16 = demo_audio.speak("Hello there.", sample_rate=16000)
    assert sr16 == 16000 and len(audio16) > 0.3 * sr16


def test_generated_recordings_differ_in_format_and_match_their_transcripts(tmp_path):
    paths = demo_audio.generate_recordings(tmp_path, total_seconds=24, n_files=3, seed=3)
    assert [p.suffix for p in paths] == [".flac", ".mp3", ".wav"]
    expected = {".flac": (44100, 2), ".mp3": (48000, 1), ".wav": (22050, 1)}
    truth = json.loads((tmp_path / "transcripts.json").read_text())
    assert set(truth) == {p.name for p in paths}
    for p in paths:
        audio, sr = load_audio(p, mono=False)
        assert (sr, audio.shape[0]) == expected[p.suffix]
        assert all(t in demo_audio.DEMO_SENTENCES for t in truth[p.name])
        mono, _ = load_audio(p, sr=16000)
        spans = detect_speech(mono).spans
        # one speech segment per sentence, separated by pauses of at least ~0.4 s
        assert abs(len(spans) - len(truth[p.name])) <= 1
        assert all(b[0] - a[1] >= 0.3 for a, b in itertools.pairwise(spans))
        # room noise: the pauses are not digital silence, but far below the speech
        noise = np.abs(mono[: int(0.3 * 16000)])
        assert 0 < noise.max() < 0.05 * np.abs(mono).max()
    total = sum(sf.info(str(p)).duration for p in paths)
    assert 15 < total < 40


def test_generation_is_reproducible_in_content_for_a_seed(tmp_path):
    a = demo_audio.generate_recordings(tmp_path / "a", total_seconds=8, n_files=1, seed=11)
    b = demo_audio.generate_recordings(tmp_path / "b", total_seconds=8, n_files=1, seed=11)
    assert (a[0].parent / "transcripts.json").read_text() == (b[0].parent / "transcripts.json").read_text()
