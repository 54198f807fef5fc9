"""Fixtures of the Tortoise backend tests: a tiny random tortoise-v2 base and real (Piper) speech (synthetic
voiced tones on machines without Piper, as the XTTS tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from voicetune.data.manifest import Clip

from ..xtts._helpers import synthetic_speechlike


@pytest.fixture(scope="session")
def tortoise_speech(request, tmp_path_factory) -> list[tuple[Path, str]]:
    """(wav, transcript) pairs: the shared Piper sentences, or synthetic stand-ins without Piper."""
    from voicetune.demo_audio import DemoAudioError

    try:
        return list(request.getfixturevalue("piper_sentences"))
    except (pytest.skip.Exception, DemoAudioError):  # GPU boxes: no piper-tts
        folder = tmp_path_factory.mktemp("tortoise_synthetic")
        texts = ["The morning light crept slowly across the kitchen table.",
                 "Could you tell me where the nearest train station is?",
                 "The garden looks wonderful after a week of gentle rain.",
                 "Please remember to close the window before you leave."]
        return [(synthetic_speechlike(folder / f"s{i}.wav", 2.0 + 0.5 * i, 110.0 + 20 * i, seed=i), text)
                for i, text in enumerate(texts)]


@pytest.fixture(scope="session")
def tortoise_clips(tortoise_speech) -> list[Clip]:
    """The clips of two speakers (the first two and the rest)."""
    return [Clip(path, text, "a" if i < 2 else "b", "en") for i, (path, text) in enumerate(tortoise_speech)]


@pytest.fixture(scope="session")
def tortoise_base(tortoise_speech, tmp_path_factory) -> Path:
    """An untrained tiny Tortoise base whose mel_norms.pth comes from the clips (read-only)."""
    from voicetune.backends.tortoise.tiny import make_tiny_tortoise_base

    out = tmp_path_factory.mktemp("tortoise_base") / "base"
    return make_tiny_tortoise_base(out, stats_audio=[p for p, _ in tortoise_speech], seed=0)


@pytest.fixture
def tortoise_backend(tortoise_base):
    """A freshly loaded backend on CPU (tests may train it)."""
    from voicetune.backends.base import get_backend

    torch.manual_seed(0)
    b = get_backend("tortoise")
    b.load_base(tortoise_base, torch.device("cpu"))
    return b


@pytest.fixture(scope="session")
def tortoise_shared_backend(tortoise_base):
    """One loaded backend for tests that change neither its weights nor its mode (features, errors)."""
    from voicetune.backends.base import get_backend

    b = get_backend("tortoise")
    b.load_base(tortoise_base, torch.device("cpu"))
    return b
