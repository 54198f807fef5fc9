"""Shared, session-scoped test fixtures: real speech from the packaged Piper voice.

Helpers live in the library (voicetune.demo_audio); this file only caches their output per test session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PIPER_TEST_SENTENCES = [
    "The morning light crept slowly across the kitchen table.",
    "Could you tell me where the nearest train station is?",
    "The garden looks wonderful after a week of gentle rain.",
    "Please remember to close the window before you leave.",
    "The children laughed when the dog chased its own tail.",
    "I would like a cup of tea with a little lemon, please.",
]


@pytest.fixture(scope="session")
def piper_sentences(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """~6 single-sentence wavs (22.05 kHz mono, Piper voice) and their known text."""
    from voicetune.audio.io import write_wav
    from voicetune.demo_audio import speak

    folder = tmp_path_factory.mktemp("piper_sentences")
    out = []
    for i, text in enumerate(PIPER_TEST_SENTENCES):
        audio, sr = speak(text, sample_rate=22050, deterministic=True)
        path = folder / f"sentence_{i:02d}.wav"
        write_wav(path, audio, sr)
        out.append((path, text))
    return out


@pytest.fixture(scope="session")
def piper_recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 2 demo recordings (~45 s in all, different formats) plus ``transcripts.json``."""
    from voicetune.demo_audio import generate_recordings

    folder = tmp_path_factory.mktemp("piper_recordings")
    generate_recordings(folder, total_seconds=45, n_files=2, seed=0)
    return folder
