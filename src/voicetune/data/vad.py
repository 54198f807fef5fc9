"""Voice activity detection with Silero VAD (the `silero-vad` package; its model ships in the wheel).

The per-frame speech probabilities (32 ms frames at 16 kHz) are computed once per file and kept: the
segmenter uses them as the envelope in which it looks for the longest pause when it must split a long
segment. Speech spans come from silero's own state machine (``get_speech_timestamps_from_probs``) with
no padding: padding is applied by :mod:`voicetune.data.segment`, which knows the neighbouring clips.

The batched ONNX "sequence" model is used when the installed silero-vad has it (one ONNX call per
~16 s instead of one Python step per frame); otherwise the streaming ONNX model.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

VAD_SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # silero's window at 16 kHz
FRAME_SECONDS = FRAME_SAMPLES / VAD_SAMPLE_RATE


@dataclass
class VadResult:
    """Speech spans (seconds, unpadded) and the per-frame speech probability envelope of one file."""

    spans: list[tuple[float, float]]
    probs: np.ndarray  # float32, one value per FRAME_SECONDS frame
    frame_seconds: float
    duration: float

    @property
    def speech_seconds(self) -> float:
        return float(sum(e - s for s, e in self.spans))


@functools.lru_cache(maxsize=1)
def _load_model() -> tuple[str, Any]:
    """Load the packaged Silero model once per process: ("sequence", model) or ("stream", model)."""
    import torch

    # silero_vad.model calls torch.set_num_threads(1) at import; keep the process-wide setting intact
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # silero's use of importlib.resources.path
            import silero_vad

            try:
                return "sequence", silero_vad.load_silero_vad(sequence=True)
            except (TypeError, ImportError, FileNotFoundError, OSError) as e:
                logger.debug("silero sequence model unavailable (%s); using the streaming ONNX model", e)
                return "stream", silero_vad.load_silero_vad(onnx=True)
    finally:
        torch.set_num_threads(threads)


def speech_probabilities(audio_16k: np.ndarray) -> np.ndarray:
    """Per-frame (32 ms) speech probability of 16 kHz mono float audio."""
    audio = np.ascontiguousarray(audio_16k, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        return np.zeros(0, dtype=np.float32)
    kind, model = _load_model()
    if kind == "sequence":
        probs = model.audio_forward(audio, sampling_rate=VAD_SAMPLE_RATE)
    else:
        import torch

        with torch.no_grad():
            probs = model.audio_forward(torch.from_numpy(audio), VAD_SAMPLE_RATE).numpy()
    return np.asarray(probs, dtype=np.float32).reshape(-1)


def spans_from_probs(
    probs: np.ndarray,
    n_samples: int,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 300,
) -> list[tuple[float, float]]:
    """Speech spans in seconds (unpadded) from per-frame probabilities, by silero's state machine."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    stamps = get_speech_timestamps_from_probs(
        [float(p) for p in probs],
        sampling_rate=VAD_SAMPLE_RATE,
        threshold=threshold,
        min_speech_duration_ms=min_speech_ms,
        min_silence_duration_ms=min_silence_ms,
        speech_pad_ms=0,
        audio_length_samples=n_samples,
    )
    return [(s["start"] / VAD_SAMPLE_RATE, s["end"] / VAD_SAMPLE_RATE) for s in stamps]


def detect_speech(
    audio_16k: np.ndarray, threshold: float = 0.5, min_speech_ms: int = 250, min_silence_ms: int = 300
) -> VadResult:
    """Find speech in 16 kHz mono audio with Silero VAD.

    ``threshold``: speech probability above which a frame is speech; ``min_speech_ms``: shorter bursts are
    dropped; ``min_silence_ms``: shorter pauses do not end a segment. Spans are returned unpadded.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"VAD threshold must lie in (0, 1), got {threshold}")
    audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
    probs = speech_probabilities(audio)
    spans = (
        spans_from_probs(probs, audio.size, threshold, min_speech_ms, min_silence_ms) if probs.size else []
    )
    result = VadResult(spans, probs, FRAME_SECONDS, audio.size / VAD_SAMPLE_RATE)
    logger.debug(
        "VAD: %d speech spans, %.1f s of speech in %.1f s", len(spans), result.speech_seconds, result.duration
    )
    return result
