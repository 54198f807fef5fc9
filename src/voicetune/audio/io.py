"""Decode any audio file to float32 mono, resample, and write wavs atomically.

soundfile (libsndfile) handles wav/flac/ogg and recent builds mp3; PyAV (FFmpeg inside the wheel) handles
the rest (m4a/aac, odd mp3s). torchaudio.load is never used: it needs a system FFmpeg via torchcodec.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from voicetune.utils.io import atomic_path

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".webm")


class AudioDecodeError(RuntimeError):
    """A file could not be decoded; the message names the file and the reason."""


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    return data.T, int(sr)


def _decode_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        sr = stream.codec_context.sample_rate or stream.rate
        channels = stream.codec_context.channels or 1
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name if stream.layout else None, rate=sr)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(channels, -1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(channels, -1))
    if not chunks:
        raise AudioDecodeError(f"{path}: decoded no samples")
    return np.concatenate(chunks, axis=1).astype(np.float32), int(sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling (soxr, VHQ) of a 1-D or (channels, frames) float array."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    import soxr

    if audio.ndim == 1:
        return soxr.resample(audio, sr_in, sr_out, quality="VHQ").astype(np.float32)
    return soxr.resample(audio.T, sr_in, sr_out, quality="VHQ").T.astype(np.float32)


def load_audio(path: Path | str, sr: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 in [-1, 1]; mono (averaged channels) as 1-D unless ``mono=False``.

    Raises :class:`AudioDecodeError` naming the file and the reason when it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: file is empty")
    errors = []
    data = None
    for decoder in (_decode_soundfile, _decode_av):
        try:
            data, file_sr = decoder(path)
            break
        except Exception as e:  # noqa: BLE001 - each decoder raises its own types; we report them all
            errors.append(f"{decoder.__name__[8:]}: {e}")
    if data is None:
        raise AudioDecodeError(f"{path}: cannot decode audio ({'; '.join(errors)})")
    if data.shape[-1] == 0:
        raise AudioDecodeError(f"{path}: contains no samples")
    if not np.all(np.isfinite(data)):
        raise AudioDecodeError(f"{path}: contains NaN or infinite samples")
    if mono:
        data = data.mean(axis=0)
    if sr is not None and sr != file_sr:
        data = resample(data, file_sr, sr)
        file_sr = sr
    return np.ascontiguousarray(data, dtype=np.float32), file_sr


def audio_duration(path: Path | str) -> float:
    """Duration in seconds, from the header when soundfile can read it, else by decoding."""
    try:
        info = sf.info(str(path))
        return float(info.frames) / float(info.samplerate)
    except Exception:  # noqa: BLE001 - fall back to a full decode for formats libsndfile lacks
        audio, sr = load_audio(path)
        return len(audio) / sr


def write_wav(path: Path | str, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write a wav atomically (temp file + rename); float input is clipped to [-1, 1]."""
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    with atomic_path(Path(path)) as tmp:
        sf.write(str(tmp), audio.T if audio.ndim == 2 else audio, sr, subtype=subtype, format="WAV")


def find_audio_files(root: Path | str) -> list[Path]:
    """All audio files under ``root`` (recursively, sorted, hidden files skipped)."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not any(s.startswith(".") for s in p.parts[-1:])
    )
