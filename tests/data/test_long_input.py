"""Long recordings: pause-less speech is cut between words, and a 20-minute file is processed with
bounded memory (decoded block by block, never whole)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from voicetune.audio.io import load_audio, write_wav
from voicetune.config import PrepareConfig
from voicetune.data.manifest import read_clips_jsonl
from voicetune.data.prepare import prepare


def test_speech_without_pauses_is_cut_between_words(piper_sentences, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    parts, texts = [np.zeros(8000, np.float32)], []
    for path, text in piper_sentences:
        audio, _ = load_audio(path, sr=22050)
        nz = np.flatnonzero(np.abs(audio) > 0.01)
        parts.append(audio[nz[0] : nz[-1] + 1])  # back to back: no pause between the sentences
        texts.append(text)
    parts.append(np.zeros(8000, np.float32))
    write_wav(src / "run_on.wav", np.concatenate(parts), 22050)
    cfg = PrepareConfig(max_seconds=6.0, min_silence_ms=2000, qa_mos="off", qa_speaker=False)
    prepare(src, tmp_path / "out", cfg)
    clips = sorted(read_clips_jsonl(tmp_path / "out" / "clips.jsonl"), key=lambda r: r.start)
    assert len(clips) >= 3 and all(r.duration <= 6.0 + 1e-3 for r in clips)
    vocab = set(re.findall(r"[a-z']+", " ".join(texts).lower()))
    for r in clips:  # a cut inside a word would leave fragments that are not words of the sentences
        heard = re.findall(r"[a-z']+", r.raw_text.lower())
        assert heard and sum(w in vocab for w in heard) >= 0.85 * len(heard), r.raw_text


MEMORY_SCRIPT = """  # a 4-minute file first (every model loaded, full batches), then a 20-minute one
import json, resource, sys, tracemalloc
from pathlib import Path
from voicetune.data.prepare import prepare
kw = dict(qa_mos="off", asr_verify="off")
out = {}
for name, src, dst in (("short", sys.argv[1], sys.argv[3]), ("long", sys.argv[2], sys.argv[4])):
    tracemalloc.start()
    prepare(Path(src), Path(dst), **kw)
    out[name + "_traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out[name + "_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


@pytest.mark.slow
def test_twenty_minute_file_is_processed_with_bounded_memory(piper_sentences, tmp_path):
    """The long file is 48 kHz stereo: decoding it whole would take ~460 MB (+77 MB at 16 kHz). What prepare
    holds (Python objects and numpy arrays, traced by tracemalloc) peaks at the batch of clips in flight,
    not at the length of the file. (Process RSS also grows by a few hundred MB from the native libraries'
    own caches -- ctranslate2, onnxruntime, torch -- and is printed, not asserted.)"""
    import soundfile as sf

    sentences = [load_audio(p, sr=48000)[0] for p, _ in piper_sentences]
    short, long_ = tmp_path / "short", tmp_path / "long"
    for folder, minutes in ((short, 4), (long_, 20)):
        folder.mkdir()
        rng = np.random.default_rng(0)
        with sf.SoundFile(str(folder / "talk.flac"), "w", 48000, 2, subtype="PCM_16") as f:
            seconds = 0.0
            while seconds < minutes * 60:
                audio = sentences[int(rng.integers(len(sentences)))]
                block = np.concatenate(
                    [audio, 0.001 * rng.standard_normal(int(0.8 * 48000)).astype(np.float32)]
                )
                f.write(np.stack([block, 0.9 * block], axis=1))
                seconds += len(block) / 48000
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_SCRIPT,
            str(short),
            str(long_),
            str(tmp_path / "o1"),
            str(tmp_path / "o2"),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    print("memory:", {k: round(v) for k, v in mem.items()})
    assert mem["long_traced_mb"] < 150, mem  # a whole-file decode alone would be ~540 MB
    assert mem["long_traced_mb"] < 1.5 * mem["short_traced_mb"] + 30, mem  # 5x the audio, ~the same peak
