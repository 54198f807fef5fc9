import numpy as np
import pytest

from voicetune.audio.loudness import integrated_loudness, normalize_loudness, peak_limit, true_peak_envelope

SR = 22050


def _speechlike(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    """Noise bursts with a syllable-rate envelope: loudness-gated like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    return (level * env * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("level", [0.01, 0.1, 0.5])
def test_normalize_brings_clip_to_target_loudness(level):
    y, info = normalize_loudness(_speechlike(3.0, level), SR, target_lufs=-23.0)
    assert integrated_loudness(y, SR) == pytest.approx(-23.0, abs=0.5)
    assert info.input_lufs is not None and not info.limited
    assert y.dtype == np.float32


def test_loud_target_is_peak_limited_below_ceiling():
    x = _speechlike(3.0, 0.05)
    y, info = normalize_loudness(x, SR, target_lufs=-14.0, peak_dbfs=-1.0)
    assert info.limited
    assert true_peak_envelope(y, SR).max() <= 10 ** (-1.0 / 20) + 1e-3
    # limiting only touches the peaks: loudness stays near the target
    assert integrated_loudness(y, SR) == pytest.approx(-14.0, abs=1.5)


def test_peak_limit_leaves_quiet_audio_untouched():
    x = _speechlike(1.0, 0.05)
    assert np.array_equal(peak_limit(x, SR, -1.0), x)


def test_peak_limit_reduces_only_around_the_peak():
    x = (0.3 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)).astype(np.float32)
    x[SR // 2] = 1.0
    y = peak_limit(x, SR, -1.0)
    assert np.abs(y).max() <= 10 ** (-1 / 20) + 1e-3
    far = slice(0, SR // 4)
    np.testing.assert_allclose(y[far], x[far], atol=1e-6)


def test_silent_and_empty_audio_are_returned_unchanged():
    silent = np.zeros(SR, np.float32)
    y, info = normalize_loudness(silent, SR)
    assert info.input_lufs is None and info.gain_db == 0.0
    assert np.array_equal(y, silent)
    y, info = normalize_loudness(np.zeros(0, np.float32), SR)
    assert y.size == 0 and info.input_lufs is None


def test_very_short_clip_is_measured_and_normalised():
    short = _speechlike(0.12, 0.05)  # shorter than the 400 ms gating block
    y, info = normalize_loudness(short, SR, target_lufs=-20.0)
    assert info.input_lufs is not None and np.isfinite(info.gain_db)
    assert integrated_loudness(y, SR) == pytest.approx(-20.0, abs=1.0)
    assert np.abs(y).max() <= 10 ** (-1 / 20) + 1e-3


def test_gain_on_near_silence_is_capped():
    hiss = (1e-4 * np.random.default_rng(1).standard_normal(SR)).astype(np.float32)
    _, info = normalize_loudness(hiss, SR, target_lufs=-10.0, max_gain_db=20.0)
    assert info.gain_db <= 20.0
