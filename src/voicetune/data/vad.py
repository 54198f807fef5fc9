"""Voice activity detection with Silero VAD (the `silero-vad` package; its model ships in the wheel).

The per-frame speech probabilities (32 ms frames at 16 kHz) are computed once per file and kept: the
segmenter uses them as the envelope in which it looks for the longest pause when it must split a long
segment. Speech spans come from silero's own state machine (``get_speech_timestamps_from_probs``) with
no padding: padding is applied by :mod:`voicetune.data.segment`, which knows the neighbouring clips.

The batched ONNX "sequence" model is used when the installed silero-vad has it (one ONNX call per
~16 s instead of one Python step per frame); otherwise the streaming ONNX model. :class:`VadStream` takes
audio block by block (long recordings are never held in memory whole) and gives the same probabilities as
one pass over the whole signal.
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
_CONTEXT_SAMPLES = 64  # samples of the previous frame the model sees before each frame
_MAX_FRAMES = 512  # frames per ONNX call (~16 s)


@dataclass
class VadResult:
    """Speech spans (seconds, unpadded) and the per-frame speech probability envelope of one file."""

    spans: list[tuple[float, float]]
    probs: np.ndarray  # float32, one value per FRAME_SECONDS frame
    frame_seconds: float
    duration: float
    energy_db: np.ndarray | None = None  # float32 frame energy (mean square, dB re full scale), if known

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


class VadStream:
    """Silero VAD over audio that arrives in blocks (16 kHz mono float), with constant memory.

    The model's recurrent state and 64-sample context are carried from block to block, so the per-frame
    probabilities are the same as for the whole signal at once (bit-exact with the sequence model's
    ``audio_forward``). Alongside each probability it keeps the frame's energy (mean square, in dB),
    which the quality checks use to estimate the noise floor. Call :meth:`feed` with blocks of any size,
    then :meth:`finish` once; :attr:`probs` / :attr:`energy_db` then hold one value per frame.
    """

    def __init__(self) -> None:
        self._kind, self._model = _load_model()
        self._pending = np.zeros(0, np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, np.float32)
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self._probs: list[np.ndarray] = []
        self._energy: list[np.ndarray] = []
        self.n_samples = 0
        if self._kind == "stream":
            self._model.reset_states()

    def feed(self, audio_16k: np.ndarray) -> None:
        """Add the next block of 16 kHz mono audio."""
        x = np.ascontiguousarray(audio_16k, dtype=np.float32).reshape(-1)
        self.n_samples += x.size
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n_full = buf.size // FRAME_SAMPLES
        if n_full:
            self._run(buf[: n_full * FRAME_SAMPLES].reshape(n_full, FRAME_SAMPLES))
        self._pending = buf[n_full * FRAME_SAMPLES :].copy()

    def finish(self) -> None:
        """Process the last partial frame (zero-padded, as silero does)."""
        if self._pending.size:
            frame = np.zeros((1, FRAME_SAMPLES), np.float32)
            frame[0, : self._pending.size] = self._pending
            self._run(frame)
            self._pending = np.zeros(0, np.float32)

    @property
    def probs(self) -> np.ndarray:
        return np.concatenate(self._probs).astype(np.float32) if self._probs else np.zeros(0, np.float32)

    @property
    def energy_db(self) -> np.ndarray:
        return np.concatenate(self._energy).astype(np.float32) if self._energy else np.zeros(0, np.float32)

    def _run(self, frames: np.ndarray) -> None:
        power = np.mean(np.square(frames, dtype=np.float64), axis=1)
        self._energy.append((10.0 * np.log10(power + 1e-12)).astype(np.float32))
        for i in range(0, len(frames), _MAX_FRAMES):
            block = frames[i : i + _MAX_FRAMES]
            contexts = np.empty((len(block), _CONTEXT_SAMPLES), np.float32)
            contexts[0] = self._context
            contexts[1:] = block[:-1, -_CONTEXT_SAMPLES:]
            self._context = block[-1, -_CONTEXT_SAMPLES:].copy()
            if self._kind == "sequence":
                values, h, c = self._model.session.run(
                    ["speech_probs", "hn", "cn"],
                    {
                        "input": np.concatenate([contexts, block], axis=1),
                        "h": self._state[0],
                        "c": self._state[1],
                    },
                )
                self._state = (h, c)
                self._probs.append(np.asarray(values, np.float32).reshape(-1))
            else:
                import torch

                with torch.no_grad():
                    out = [float(self._model(torch.from_numpy(f.copy()), VAD_SAMPLE_RATE)) for f in block]
                self._probs.append(np.asarray(out, np.float32))


def speech_probabilities(audio_16k: np.ndarray) -> np.ndarray:
    """Per-frame (32 ms) speech probability of 16 kHz mono float audio."""
    audio = np.ascontiguousarray(audio_16k, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        return np.zeros(0, dtype=np.float32)
    stream = VadStream()
    stream.feed(audio)
    stream.finish()
    return stream.probs


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
    audio = np.ascontiguousarray(audio_16k, dtype=np.float32).reshape(-1)
    stream = VadStream()
    stream.feed(audio)
    stream.finish()
    result = vad_result(stream.probs, audio.size, threshold, min_speech_ms, min_silence_ms, stream.energy_db)
    return result


def vad_result(
    probs: np.ndarray,
    n_samples: int,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 300,
    energy_db: np.ndarray | None = None,
) -> VadResult:
    """Speech spans from already computed frame probabilities (e.g. a :class:`VadStream` or a cache)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"VAD threshold must lie in (0, 1), got {threshold}")
    spans = spans_from_probs(probs, n_samples, threshold, min_speech_ms, min_silence_ms) if probs.size else []
    result = VadResult(spans, probs, FRAME_SECONDS, n_samples / VAD_SAMPLE_RATE, energy_db)
    logger.debug(
        "VAD: %d speech spans, %.1f s of speech in %.1f s", len(spans), result.speech_seconds, result.duration
    )
    return result
