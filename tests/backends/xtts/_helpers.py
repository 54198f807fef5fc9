"""Helpers shared by the XTTS backend tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicetune.audio.io import write_wav


def synthetic_speechlike(path: Path, seconds: float, f0: float, seed: int = 0, sr: int = 22050) -> Path:
    """A voiced, amplitude-modulated harmonic tone with a little noise (not speech, but not silence)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    audio = 0.2 * voice * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t)) + 0.01 * rng.standard_normal(len(t))
    write_wav(path, audio, sr)
    return path


def linked_copy(base: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of a base folder made of symlinks (fast), leaving out ``skip``."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.name not in skip:
            (dest / f.name).symlink_to(f)
    return dest

