"""What every scorer shares: audio at the scorer's rate, a per-process model cache, the device, levels."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import load_audio, resample

logger = logging.getLogger(__name__)

AudioLike = np.ndarray | Path | str
"""A float32 mono waveform (at the ``sr`` passed alongside) or a path to an audio file."""

_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()

def audio_at(x: AudioLike, sr: int | None, target_sr: int) -> np.ndarray:
    """``x`` as float32 mono at ``target_sr``: a path is decoded, an array is resampled from ``sr``."""
    if isinstance(x, (str, Path)):
        audio, _ = load_audio(x, sr=target_sr)
        return audio
    audio = np.asarray(x, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {audio.shape}")
    if sr is None:
        raise ValueError("a waveform array needs its sample rate (sr)")
    return resample(audio, int(sr), target_sr)


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()``, made once per process for ``key`` (models: loaded once, shared by data QA and
    evaluation)."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def device_name(device: Any) -> str:
    """'cuda…' only when explicitly requested (and available); everything else runs on CPU."""
    name = str(device or "cpu")
    if name.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return name
        logger.warning("CUDA requested for a metric model but no GPU is visible; using CPU")
    return "cpu"


def rms_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level in dBFS (full scale sine = -3 dB); -inf for digital silence."""
    if audio.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not None/NaN; NaN when none is left."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
