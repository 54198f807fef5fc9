"""Loudness normalisation (EBU R128 integrated loudness, pyloudnorm) and a look-ahead peak limiter.

Every clip of a dataset is brought to the same integrated loudness so that the model does not learn
level differences between recording sessions. Gain can push peaks over full scale, so a limiter with a
(4x oversampled, "true-ish") peak ceiling follows. Very short clips (shorter than the 400 ms gating block)
are measured on a looped copy; silent clips are returned unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_BLOCK_SECONDS = 0.4  # EBU R128 gating block
_SILENCE_LUFS = -70.0  # absolute gate of BS.1770: anything quieter counts as silence


@dataclass
class LoudnessInfo:
    """What :func:`normalize_loudness` did to a clip."""

    input_lufs: float | None  # None: silent (no gain applied)
    gain_db: float
    output_peak_dbfs: float
    limited: bool  # True when the limiter reduced gain somewhere


def integrated_loudness(audio: np.ndarray, sr: int) -> float | None:
    """EBU R128 integrated loudness in LUFS of mono ``audio``, or None when it is (near) silent.

    Clips shorter than the 400 ms gating block are measured on a looped copy of themselves.
    """
    import pyloudnorm

    audio = np.asarray(audio, dtype=np.float64)
    if audio.size == 0 or not np.any(audio):
        return None
    min_len = int(np.ceil(_BLOCK_SECONDS * sr)) + 1
    if audio.size < min_len:
        audio = np.tile(audio, int(np.ceil(min_len / audio.size)))
    with np.errstate(divide="ignore"):
        lufs = float(pyloudnorm.Meter(sr).integrated_loudness(audio))
    if not np.isfinite(lufs) or lufs < _SILENCE_LUFS:
        return None
    return lufs


def true_peak_envelope(audio: np.ndarray, sr: int, oversample: int = 4) -> np.ndarray:
    """Per-sample absolute peak of ``audio`` after ``oversample``-times upsampling (inter-sample peaks)."""
    from voicetune.audio.io import resample

    x = np.asarray(audio, dtype=np.float32)
    if x.size < 16 or oversample <= 1:
        return np.abs(x)
    up = resample(x, sr, sr * oversample)
    n = x.size * oversample
    if up.size < n:
        up = np.pad(up, (0, n - up.size))
    env = np.abs(up[:n]).reshape(x.size, oversample).max(axis=1)
    return np.maximum(env, np.abs(x))


def _sliding_min(x: np.ndarray, half: int) -> np.ndarray:
    """Minimum of ``x`` over the window [i - half, i + half] (edges padded with 1.0)."""
    if half <= 0:
        return x.copy()
    padded = np.pad(x, half, constant_values=1.0)
    return np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1).min(axis=1)


def _moving_average(x: np.ndarray, half: int) -> np.ndarray:
    """Mean of ``x`` over the window [i - half, i + half] (edges padded with 1.0)."""
    if half <= 0:
        return x.copy()
    padded = np.pad(x.astype(np.float64), half, constant_values=1.0)
    c = np.concatenate([[0.0], np.cumsum(padded)])
    w = 2 * half + 1
    return ((c[w:] - c[:-w]) / w)[: x.size]


def peak_limit(
    audio: np.ndarray, sr: int, ceiling_dbfs: float = -1.0, lookahead_ms: float = 5.0
) -> np.ndarray:
    """Limit (oversampled) peaks of mono ``audio`` to ``ceiling_dbfs`` with smooth gain ramps.

    The required gain at each peak is spread over +-``lookahead_ms`` (a sliding minimum) and then smoothed
    by a moving average of the same half-width, so the gain never exceeds what a peak needs and changes
    without clicks. Audio already under the ceiling is returned unchanged.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    ceiling = 10 ** (ceiling_dbfs / 20)
    env = true_peak_envelope(x, sr)
    if float(env.max()) <= ceiling:
        return x.copy()
    need = np.minimum(1.0, ceiling / np.maximum(env, 1e-12))
    half = max(1, int(sr * lookahead_ms / 1000))
    gain = _moving_average(_sliding_min(need, half), half)
    y = (x * gain).astype(np.float32)
    # the smoothed gain meets every sample peak; a last global trim covers inter-sample overshoot
    peak = float(true_peak_envelope(y, sr).max())
    if peak > ceiling:
        y *= ceiling / peak
    return y


def normalize_loudness(
    audio: np.ndarray, sr: int, target_lufs: float = -23.0, peak_dbfs: float = -1.0, max_gain_db: float = 40.0
) -> tuple[np.ndarray, LoudnessInfo]:
    """Bring mono ``audio`` to ``target_lufs`` (EBU R128) and limit peaks to ``peak_dbfs``.

    Silent audio is returned unchanged; the gain is capped at ``max_gain_db`` so that a clip of near
    silence is not blown up into loud noise. Returns the new audio (float32) and what was done.
    """
    x = np.asarray(audio, dtype=np.float32)
    lufs = integrated_loudness(x, sr)
    if lufs is None:
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        return x.copy(), LoudnessInfo(None, 0.0, _db(peak), False)
    gain_db = float(np.clip(target_lufs - lufs, -max_gain_db, max_gain_db))
    if gain_db == max_gain_db:
        logger.debug("loudness %.1f LUFS is very low; gain capped at +%.0f dB", lufs, max_gain_db)
    y = x * np.float32(10 ** (gain_db / 20))
    limited = peak_limit(y, sr, ceiling_dbfs=peak_dbfs)
    was_limited = not np.array_equal(limited, y)
    return limited, LoudnessInfo(lufs, gain_db, _db(float(np.max(np.abs(limited)))), was_limited)


def _db(amplitude: float) -> float:
    """Level in dBFS, floored at -120 (so it stays a finite, JSON-friendly number)."""
    return float(20 * np.log10(max(amplitude, 1e-6)))
