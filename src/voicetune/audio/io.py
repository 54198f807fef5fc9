"""Decode any audio file to float32 mono, resample, and write wavs atomically.

soundfile (libsndfile) handles wav/flac/ogg and recent builds mp3; PyAV (FFmpeg inside the wheel) handles
the rest (m4a/aac, odd mp3s). torchaudio.load is never used: it needs a system FFmpeg via torchcodec.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from voicetune.utils.io import atomic_path
from voicetune.utils.paths import display_name

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
        resampler = av.AudioResampler(
            format="fltp", layout=stream.layout.name if stream.layout else None, rate=sr
        )
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
    errors: dict[str, BaseException] = {}
    data = None
    for decoder in (_decode_soundfile, _decode_av):
        try:
            data, file_sr = decoder(path)
            break
        except Exception as e:  # noqa: BLE001 - each decoder raises its own types; we report them all
            errors[decoder.__name__[8:]] = e
    if data is None:
        raise decode_failure(path, errors)
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


def decode_failure(path: Path, errors: dict[str, BaseException]) -> AudioDecodeError:
    """The error for a file no decoder could read, in words a user can act on (libsndfile says "File does not
    exist or is not a regular file (possibly a pipe?)" of any file it does not recognise; that is left
    out)."""
    details = []
    for name, e in errors.items():
        text = getattr(e, "strerror", None) if name == "av" else None
        text = str(text or e).replace(f": '{path}'", "").replace(f"'{path}'", "file")
        if "File does not exist or is not a regular file" in text or "Format not recognised" in text:
            continue
        details.append(f"{'FFmpeg' if name == 'av' else 'libsndfile'}: {text.strip()}")
    return AudioDecodeError(
        f"{path}: not a readable audio file: neither libsndfile nor FFmpeg recognise its contents"
        + (f" ({'; '.join(details)})" if details else "") + "; it may be damaged, or not audio at all"
    )


_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def truncation(path: Path | str) -> str | None:
    """How a WAV-family file is truncated (its header announces more audio than the file holds), or None.

    libsndfile reads what is there and notes the mismatch in its log ("data : N (should be M)").
    """
    try:
        with sf.SoundFile(str(path)) as f:
            m = _DATA_CHUNK.search(f.extra_info)
            if not m or int(m.group(1)) <= int(m.group(2)) or not f.frames:
                return None
            frame_bytes = max(1, int(m.group(2)) // f.frames)
            announced = int(m.group(1)) / frame_bytes / f.samplerate
            return (f"truncated: the header announces {announced:.2f} s of audio, the file holds "
                    f"{f.frames / f.samplerate:.2f} s; only that part is used")
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError, ZeroDivisionError):
        return None


def write_wav(path: Path | str, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write a wav atomically (temp file + rename); float input is clipped to [-1, 1].

    The wav is encoded in memory and written through Python, so a full disk raises OSError(ENOSPC) (libsndfile
    would only say "System error").
    """
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, audio.T if audio.ndim == 2 else audio, sr, subtype=subtype, format="WAV")
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buf.getvalue())


def find_audio_files(root: Path | str) -> list[Path]:
    """All audio files under ``root`` (recursively, sorted, hidden files skipped)."""
    return scan_audio_files(root)[0]


def scan_audio_files(root: Path | str) -> tuple[list[Path], dict[str, str]]:
    """(audio files under ``root``, sorted; {entry: why it is not used}) for every other entry.

    Folders are searched recursively (symlinked folders too, each once). Not used, each with its reason:
    hidden entries, files that are not audio by their extension, dangling or looping symlinks, pipes and
    devices, and folders that cannot be read. Entries are named relative to ``root`` (a folder's name ends
    with "/").
    """
    root = Path(root)
    if root.is_file():
        return [root], {}
    files: list[Path] = []
    skipped: dict[str, str] = {}
    seen: set[str] = set()

    def walk(folder: Path) -> None:
        real = os.path.realpath(folder)
        name = display_name(folder.relative_to(root)) + "/"
        if real in seen:
            skipped[name] = "a symlink to a folder that is already searched (a loop); not searched again"
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped[name] = f"cannot read this folder ({e.strerror}); nothing in it is used"
            return
        for entry in entries:
            path = Path(entry.path)
            why = _entry_problem(entry)
            if why == "folder":
                walk(path)
            elif why:
                skipped[display_name(path.relative_to(root))] = why
            else:
                files.append(path)

    walk(root)
    return sorted(files), skipped


def _entry_problem(entry: os.DirEntry) -> str | None:
    """Why a folder entry is not an audio file to read ("folder": search it), or None."""
    if entry.name.startswith("."):
        return "hidden entry; not used"
    if entry.is_symlink():
        try:
            os.stat(entry.path)
        except FileNotFoundError:
            return f"dangling symlink: its target {display_name(os.readlink(entry.path))} does not exist"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "symlink loop: it points (through other links) back to itself"
            return f"cannot follow this symlink ({e.strerror})"
    try:
        if entry.is_dir():
            return "folder"
        regular = entry.is_file()
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    suffix = Path(entry.name).suffix.lower()
    if suffix not in AUDIO_EXTENSIONS:
        known = ", ".join(AUDIO_EXTENSIONS)
        return f"not an audio file by its extension ({suffix or 'none'}; prepare reads {known})"
    if not regular:
        return "not a regular file (a pipe, socket or device); not read"
    return None
