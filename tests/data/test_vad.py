import subprocess
import sys

import numpy as np
import pytest

from voicetune.audio.io import load_audio
from voicetune.data.vad import FRAME_SAMPLES, VAD_SAMPLE_RATE, detect_speech, speech_probabilities

SR = VAD_SAMPLE_RATE


@pytest.fixture(scope="module")
def spoken_file(piper_sentences):
    """Four Piper sentences separated by known pauses, with faint noise; returns audio and true spans."""
    rng = np.random.default_rng(0)
    pauses = [0.8, 1.3, 0.6]
    parts, spans, pos = [np.zeros(int(0.7 * SR), np.float32)], [], int(0.7 * SR)
    for i, (path, _) in enumerate(piper_sentences[:4]):
        audio, _ = load_audio(path, sr=SR)
        nz = np.flatnonzero(np.abs(audio) > 0.01)
        audio = audio[nz[0] : nz[-1] + 1]  # trim Piper's own leading/trailing silence
        parts.append(audio)
        spans.append((pos / SR, (pos + len(audio)) / SR))
        pos += len(audio)
        gap = np.zeros(int((pauses[i] if i < len(pauses) else 0.7) * SR), np.float32)
        parts.append(gap)
        pos += len(gap)
    audio = np.concatenate(parts)
    audio += 0.002 * rng.standard_normal(audio.size).astype(np.float32)
    return audio, spans


def test_finds_one_segment_per_sentence(spoken_file):
    audio, truth = spoken_file
    result = detect_speech(audio, threshold=0.5, min_speech_ms=250, min_silence_ms=300)
    assert abs(len(result.spans) - len(truth)) <= 1
    # every true sentence overlaps a detected span, and detected spans lie on speech
    for s, e in truth:
        assert any(min(e, b) - max(s, a) > 0.5 * (e - s) for a, b in result.spans), (s, e, result.spans)
    for a, b in result.spans:
        assert any(min(e, b) - max(s, a) > 0.5 * (b - a) for s, e in truth)


def test_pauses_shorter_than_min_silence_do_not_split(spoken_file):
    audio, _ = spoken_file
    result = detect_speech(audio, min_silence_ms=1500)  # longer than every pause
    assert len(result.spans) == 1


def test_silence_and_noise_have_no_speech():
    rng = np.random.default_rng(1)
    assert detect_speech(np.zeros(SR * 3, np.float32)).spans == []
    assert detect_speech((0.003 * rng.standard_normal(SR * 3)).astype(np.float32)).spans == []


def test_probabilities_have_one_value_per_frame(spoken_file):
    audio, _ = spoken_file
    probs = speech_probabilities(audio)
    assert probs.shape == (int(np.ceil(audio.size / FRAME_SAMPLES)),)
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert speech_probabilities(np.zeros(0, np.float32)).size == 0


def test_loading_vad_keeps_the_torch_thread_setting():
    """silero_vad sets torch threads to 1 on first import; a fresh process shows we restore them."""
    code = (
        "import numpy as np, torch; torch.set_num_threads(2)\n"
        "from voicetune.data.vad import detect_speech\n"
        "detect_speech(np.zeros(16000, np.float32))\n"
        "print(torch.get_num_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "2"


def test_invalid_threshold_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        detect_speech(np.zeros(SR, np.float32), threshold=1.5)
