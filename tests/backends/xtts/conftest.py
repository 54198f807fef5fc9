"""Fixtures of the XTTS backend tests: a tiny random XTTS-v2 base built from real (Piper) speech.

Without the Piper voice (piper-tts is a demo extra) the clips are synthetic voiced tones instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from voicetune.data.manifest import Clip

from ._helpers import synthetic_speechlike

SYNTHETIC_TEXTS = [
    "The morning light crept slowly across the kitchen table.",
    "Could you tell me where the nearest train station is?",
    "The garden looks wonderful after a week of gentle rain.",
    "Please remember to close the window before you leave.",
]


@pytest.fixture(scope="session")
def xtts_speech(request, tmp_path_factory) -> list[tuple[Path, str]]:
    """(wav, transcript) pairs: the shared Piper sentences, or synthetic stand-ins without Piper."""
    from voicetune.demo_audio import DemoAudioError

    try:
        return list(request.getfixturevalue("piper_sentences"))
    except (pytest.skip.Exception, DemoAudioError):  # GPU boxes: no piper-tts
        folder = tmp_path_factory.mktemp("xtts_synthetic")
        return [
            (synthetic_speechlike(folder / f"s{i}.wav", 2.0 + 0.5 * i, 110.0 + 20 * i, seed=i), text)
            for i, text in enumerate(SYNTHETIC_TEXTS)
        ]


@pytest.fixture(scope="session")
def xtts_clips(xtts_speech) -> list[Clip]:
    return [Clip(path, text, "speaker", "en") for path, text in xtts_speech]


@pytest.fixture(scope="session")
def xtts_base(xtts_speech, tmp_path_factory) -> Path:
    """An untrained tiny XTTS-v2 base: vocab from the transcripts, mel stats from the clips."""
    from voicetune.backends.xtts.tiny import make_tiny_xtts_base

    out = tmp_path_factory.mktemp("xtts_base") / "base"
    return make_tiny_xtts_base(out, corpus_texts=[t for _, t in xtts_speech],
                               stats_audio=[p for p, _ in xtts_speech], seed=0)


@pytest.fixture
def xtts_backend(xtts_base):
    """A freshly loaded backend on CPU (tests may train it)."""
    from voicetune.backends.base import get_backend

    torch.manual_seed(0)
    b = get_backend("xtts")
    b.load_base(xtts_base, torch.device("cpu"))
    return b


@pytest.fixture(scope="session")
def xtts_shared_backend(xtts_base):
    """One loaded backend for tests that do not change its weights or mode (features, errors)."""
    from voicetune.backends.base import get_backend

    b = get_backend("xtts")
    b.load_base(xtts_base, torch.device("cpu"))
    return b
