"""Block-wise decoding and streaming VAD: the same numbers as decoding the whole file at once."""

import numpy as np
import pytest

from voicetune.audio.io import load_audio
from voicetune.audio.stream import open_source
from voicetune.data.vad import VadStream, _load_model, speech_probabilities


@pytest.fixture(scope="module")
def speech(piper_sentences):
    return np.concatenate([load_audio(p, sr=22050)[0] for p, _ in piper_sentences[:3]])


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".m4a"])
def test_blocks_and_span_reads_match_a_full_decode(speech, tmp_path, ext):
    from voicetune.demo_audio import _write_any

    path = tmp_path / f"talk{ext}"
    _write_any(path, np.stack([speech, 0.5 * speech]), 22050)  # stereo: blocks are the channel mean
    full, sr = load_audio(path)
    src = open_source(path)
    blocks = list(src.blocks(block_seconds=1.5))
    assert len(blocks) > 3 and src.sr == sr
    streamed = np.concatenate(blocks)
    n = min(len(full), len(streamed))
    assert abs(len(full) - len(streamed)) < sr * 0.05
    if ext in (".wav", ".flac", ".m4a"):
        assert np.abs(full[:n] - streamed[:n]).max() < 1e-5
    else:  # libsndfile's mp3 decoding differs by a few LSB around read-call boundaries
        assert np.corrcoef(full[:n], streamed[:n])[0, 1] > 0.9999
    if not src.seekable:  # PyAV-only formats are spooled to a temporary wav as they are decoded
        spool = src.spool_to(tmp_path / "spool.wav")
        for b in src.blocks():
            spool.write(b)
        spool.close()
    part = src.read(2.0, 3.0)
    ref = full[int(2.0 * sr) : int(3.0 * sr)]
    assert len(part) == len(ref) and np.corrcoef(part, ref)[0, 1] > 0.999
    src.close()


def test_streaming_vad_equals_one_pass_over_the_whole_signal(speech):
    from voicetune.audio.io import resample

    audio = resample(speech, 22050, 16000)
    stream = VadStream()
    for i in range(0, len(audio), 7777):  # block sizes unrelated to the 512-sample frame
        stream.feed(audio[i : i + 7777])
    stream.finish()
    kind, model = _load_model()
    whole = (
        model.audio_forward(audio, sampling_rate=16000) if kind == "sequence" else speech_probabilities(audio)
    )
    assert stream.probs.shape == whole.shape and np.array_equal(stream.probs, whole)
    assert stream.energy_db.shape == whole.shape and stream.energy_db.max() > -40
