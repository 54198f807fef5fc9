"""Read long recordings in blocks and cut spans out of them, without decoding a whole file into memory.

:func:`open_source` opens a file for block-wise decoding: with soundfile (libsndfile: wav, flac, ogg)
the file can also be read at any position later (:meth:`AudioSource.read`); mp3 (whose first frame after a
seek lacks its bit reservoir) and formats only PyAV decodes (m4a, aac, wma, webm) are streamed once and,
where spans must be read later, mirrored into a temporary mono wav (:meth:`AudioSource.spool_to`).
Blocks are mono float32 at the file's own rate.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from voicetune.audio.io import AudioDecodeError, decode_failure

logger = logging.getLogger(__name__)

BLOCK_SECONDS = 20.0


def header_duration(path: Path | str) -> float:
    """Duration in seconds from the file's header (never decoding it); 0.0 when the header says nothing."""
    try:
        info = sf.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return float(info.frames) / float(info.samplerate)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for "not my format"
        logger.debug("%s: no duration from soundfile (%s); asking PyAV", path, e)
    try:
        import av

        with av.open(str(path)) as container:
            if container.duration:
                return float(container.duration) / 1_000_000  # av.time_base: microseconds
            stream = container.streams.audio[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except Exception:  # noqa: BLE001 - unreadable or not audio: prepare reports it when it decodes the file
        return 0.0
    return 0.0


class AudioSource:
    """One recording opened for block-wise decoding (mono float32 at :attr:`sr`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sr = 0
        self.channels = 1
        self.seekable = False
        self._soundfile = False
        self._spool: Path | None = None
        if not self.path.is_file():
            raise AudioDecodeError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise AudioDecodeError(f"{self.path}: file is empty")
        errors: dict[str, BaseException] = {}
        try:
            with sf.SoundFile(str(self.path)) as f:
                self.sr, self.channels = int(f.samplerate), int(f.channels)
                # MPEG: libmpg123 decodes the first frame after a seek without its bit reservoir (and
                # says so on stderr); mp3s are read sequentially and spooled like PyAV formats instead
                self.seekable = bool(f.seekable()) and f.format != "MPEG"
                self._soundfile = True
                if f.frames == 0:
                    raise AudioDecodeError(f"{self.path}: contains no samples")
            return
        except AudioDecodeError:
            raise
        except OSError as e:
            if not isinstance(e, sf.LibsndfileError):  # permission denied, I/O error: not a format question
                raise AudioDecodeError(f"{self.path}: cannot read the file ({e.strerror or e})") from e
            errors["soundfile"] = e
        except Exception as e:  # noqa: BLE001 - libsndfile raises several types for "not my format"
            errors["soundfile"] = e
        try:
            import av

            with av.open(str(self.path)) as container:
                if not container.streams.audio:
                    raise AudioDecodeError(f"{self.path}: no audio stream (a video or data file without "
                                           "sound?)")
                ctx = container.streams.audio[0].codec_context
                if not ctx.channels or not ctx.sample_rate:
                    raise AudioDecodeError(f"{self.path}: the header says {ctx.channels} channel(s) at "
                                           f"{ctx.sample_rate} Hz: no audio to read (damaged header)")
                self.sr, self.channels = int(ctx.sample_rate), int(ctx.channels)
        except AudioDecodeError:
            raise
        except Exception as e:  # PyAV raises FFmpegError subclasses, ValueError, OSError
            errors["av"] = e
            raise decode_failure(self.path, errors) from e

    def blocks(self, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
        """Mono float32 blocks of about ``block_seconds`` each, in order. Raises AudioDecodeError."""
        n = max(1, int(block_seconds * self.sr))
        got = 0
        if self._soundfile:
            with sf.SoundFile(str(self.path)) as f:
                while True:
                    try:
                        data = f.read(n, dtype="float32", always_2d=True)
                    except (sf.LibsndfileError, RuntimeError) as e:
                        raise AudioDecodeError(f"{self.path}: damaged: decoding failed in the part after "
                                               f"{got / self.sr:.1f} s ({e})") from e
                    if not len(data):
                        break
                    got += len(data)
                    yield self._checked(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0])
        else:
            for block in self._av_blocks(n):
                got += len(block)
                yield self._checked(block)
        if got == 0:
            raise AudioDecodeError(f"{self.path}: contains no samples")

    def read(self, start: float, end: float) -> np.ndarray:
        """Mono samples of [start, end) seconds (soundfile sources, or after :meth:`spool_to`)."""
        src = self._spool or (self.path if self.seekable else None)
        if src is None:
            raise AudioDecodeError(f"{self.path}: not seekable; spool it first")
        with sf.SoundFile(str(src)) as f:
            a = max(0, round(start * f.samplerate))
            b = min(f.frames, round(end * f.samplerate))
            f.seek(a)
            data = f.read(max(0, b - a), dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], dtype=np.float32)

    def spool_to(self, path: Path) -> sf.SoundFile | None:
        """For a non-seekable source: an open float wav at ``path`` to which the caller writes the blocks it
        decodes; later :meth:`read` calls read from it. None when the source is seekable itself."""
        if self.seekable:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._spool = path
        return sf.SoundFile(str(path), "w", samplerate=self.sr, channels=1, subtype="FLOAT", format="WAV")

    def ensure_readable(self, scratch: Path, name: str) -> None:
        """Make :meth:`read` work: spool a non-seekable source into ``scratch/name`` (one decoding pass)."""
        if self.seekable or (self._spool is not None and self._spool.is_file()):
            return
        spool = self.spool_to(scratch / name)
        assert spool is not None
        try:
            for block in self.blocks():
                spool.write(block)
        finally:
            spool.close()

    def close(self) -> None:
        """Delete the spooled copy, if any."""
        if self._spool is not None and self._spool.exists():
            self._spool.unlink()
        self._spool = None

    def _checked(self, block: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(block)):
            raise AudioDecodeError(f"{self.path}: contains NaN or infinite samples")
        return np.ascontiguousarray(block, dtype=np.float32)

    def _av_blocks(self, n: int) -> Iterator[np.ndarray]:
        import av

        pending: list[np.ndarray] = []
        size = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.audio[0]
                layout = stream.layout.name if stream.layout else None
                resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.sr)
                frames = (out for fr in container.decode(stream) for out in resampler.resample(fr))
                for out in itertools.chain(frames, resampler.resample(None)):
                    arr = out.to_ndarray().reshape(self.channels, -1).mean(axis=0).astype(np.float32)
                    pending.append(arr)
                    size += arr.size
                    if size >= n:
                        yield np.concatenate(pending)
                        pending, size = [], 0
        except (av.FFmpegError, ValueError, OSError) as e:
            raise AudioDecodeError(f"{self.path}: cannot decode audio (FFmpeg: {e})") from e
        if pending:
            yield np.concatenate(pending)


def open_source(path: Path | str) -> AudioSource:
    """Open ``path`` for block-wise decoding; raises AudioDecodeError naming the file and the reason."""
    return AudioSource(Path(path))
