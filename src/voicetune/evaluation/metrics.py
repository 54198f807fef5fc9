"""Quality metrics of synthesized speech, each with its range and direction.

| metric                | range              | better | what it measures                                   |
|-----------------------|--------------------|--------|----------------------------------------------------|
| speaker_similarity    | [0, 1] (cosine)    | higher | Resemblyzer d-vector cosine to the real speaker    |
| wer / cer             | [0, inf)           | lower  | ASR round trip: is the right text spoken?          |
| predicted_mos         | [1, 5]             | higher | DistillMOS naturalness/quality prediction          |
| mcd_dtw               | [0, inf) dB        | lower  | mel-cepstral distortion to the real recording      |
| pesq_wb               | [1.04, 4.64]       | higher | ITU-T P.862.2 wideband quality vs the recording    |
| stoi                  | about [0, 1]       | higher | short-time objective intelligibility vs recording  |
| duration_ratio        | (0, inf), ideal 1  | -      | audio length / length expected from speaking rate  |

MCD, PESQ and STOI are intrusive metrics: they compare with a real recording of the same sentence.
MCD aligns the two with DTW; PESQ and STOI only trim to the same length, so for synthetic speech
(never sample-aligned with the recording) they are rough and mostly useful as base-vs-finetuned deltas.

Every model (speaker encoder, MOS predictor, ASR) is loaded once per process and cached.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import load_audio, resample

logger = logging.getLogger(__name__)

AudioLike = np.ndarray | Path | str
"""A float32 mono waveform (at the ``sr`` passed alongside) or a path to an audio file."""

DIRECTIONS: dict[str, str] = {
    "speaker_similarity": "higher",
    "wer": "lower",
    "cer": "lower",
    "mos": "higher",
    "mcd": "lower",
    "pesq": "higher",
    "stoi": "higher",
    "failure_rate": "lower",
}
"""Which way is better for each aggregate metric the harness reports."""

_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()

# --------------------------------------------------------------------------------------------- audio


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


def _cached(key: tuple, build) -> Any:
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def _device_name(device: Any) -> str:
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


# ------------------------------------------------------------------------------- speaker similarity


def _voice_encoder(device: str):
    def build():
        from resemblyzer import VoiceEncoder

        return VoiceEncoder(device=device, verbose=False)

    return _cached(("resemblyzer", device), build)


def speaker_embedding(audio: AudioLike, sr: int | None = None, device: str = "cpu") -> np.ndarray | None:
    """L2-normalised 256-d Resemblyzer embedding; None for digital silence or clips under 0.1 s."""
    from resemblyzer import preprocess_wav

    wav = audio_at(audio, sr, 16000)
    if rms_dbfs(wav) < -80.0:  # digital silence: resemblyzer's volume normalisation would divide by zero
        return None
    trimmed = preprocess_wav(wav)  # 16 kHz already: only volume norm + silence trim
    if len(trimmed) < 1600:
        # Resemblyzer's VAD found (almost) no speech: embed the volume-normalised clip untrimmed, so that a
        # noise-like or mumbled rendering gets a (low) similarity instead of no score at all.
        from resemblyzer.audio import normalize_volume
        from resemblyzer.hparams import audio_norm_target_dBFS

        trimmed = normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)
        if len(trimmed) < 1600:  # < 0.1 s of audio: nothing to embed
            return None
    wav = trimmed
    emb = _voice_encoder(_device_name(device)).embed_utterance(wav)
    return emb if np.all(np.isfinite(emb)) else None


def speaker_centroid(
    references: Sequence[AudioLike], sr: int | None = None, device: str = "cpu"
) -> np.ndarray:
    """L2-normalised mean Resemblyzer embedding of a speaker's real clips (clips without speech skipped)."""
    if not references:
        raise ValueError("a speaker centroid needs at least one reference clip")
    embs = [e for e in (speaker_embedding(r, sr, device) for r in references) if e is not None]
    if not embs:
        raise ValueError("no reference clip contains detectable speech")
    centroid = np.mean(embs, axis=0)
    return centroid / np.linalg.norm(centroid)


def speaker_similarity(
    generated: Sequence[AudioLike],
    references: Sequence[AudioLike],
    sr: int | None = None,
    device: str = "cpu",
    centroid: np.ndarray | None = None,
) -> dict[str, Any]:
    """Cosine similarity of each generated clip to the centroid of real (held-out) clips of the speaker.

    Embeddings are Resemblyzer d-vectors (GE2E LSTM, weights shipped in the package). Range [0, 1]
    in practice (the embeddings are non-negative), HIGHER is better: clips of the same voice score
    ~0.9+, another voice ~0.5 (Piper vs espeak-ng measurements). Clips with no speech that the VAD
    finds are embedded untrimmed (they score low); digital silence gets NaN. ``centroid`` (from
    :func:`speaker_centroid`) skips re-embedding the references.

    Returns ``{"mean": float, "per_clip": [float], "n_references": int}``.
    """
    if centroid is None:
        centroid = speaker_centroid(references, sr, device)
    per_clip = []
    for g in generated:
        emb = speaker_embedding(g, sr, device)
        per_clip.append(float(np.dot(emb, centroid)) if emb is not None else float("nan"))
    return {"mean": nanmean(per_clip), "per_clip": per_clip, "n_references": len(references)}


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not None/NaN; NaN when none is left."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


# ------------------------------------------------------------------------------------- text and WER

_APOSTROPHES = "'\u2019\u02bc\u2018`"
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _number_words(match: re.Match, language: str) -> str:
    """Spell out one number token: "1,000" (thousands separators), "3.5"/"3,5" (decimal), "42"."""
    from num2words import num2words

    token = match.group(0)
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", token):
        token = token.replace(",", "")
    elif re.fullmatch(r"\d+,\d+", token):
        token = token.replace(",", ".")
    parts = [token] if re.fullmatch(r"\d+(?:\.\d+)?", token) else re.split(r"[.,]", token)
    words = []
    for part in parts:
        try:
            words.append(num2words(float(part) if "." in part else int(part), lang=language))
        except (NotImplementedError, OverflowError, ValueError):
            words.append(part)
    return " " + " ".join(words) + " "


def normalize_text(text: str, language: str = "en") -> str:
    """Normalise text for WER/CER so that formatting differences are not counted as errors.

    Steps, in order: Unicode NFKC; lowercase; ``%`` → " percent", ``&`` → " and " (English only);
    ordinals ("21st") and numbers ("1,000", "3.5", "42") spelled out with ``num2words`` in
    ``language`` (left as digits when num2words is missing or lacks the language); apostrophes
    dropped ("don't" → "dont"); every other punctuation or symbol character becomes a space
    (so "well-known" → "well known"); runs of whitespace collapse to one space; trimmed.
    Years are read as cardinals ("1999" → "one thousand nine hundred and ninety nine"), on both
    sides of the comparison, so they only cost errors when the ASR spells them differently.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    if language.startswith("en"):
        text = text.replace("%", " percent ").replace("&", " and ")
    try:
        from num2words import num2words

        def ordinal(m: re.Match) -> str:
            try:
                return " " + num2words(int(m.group(1)), to="ordinal", lang=language) + " "
            except (NotImplementedError, OverflowError, ValueError):
                return m.group(0)

        if language.startswith("en"):
            text = _ORDINAL.sub(ordinal, text)
        text = _NUMBER.sub(lambda m: _number_words(m, language), text)
    except ImportError:
        pass
    text = "".join("" if ch in _APOSTROPHES else ch for ch in text)
    text = "".join(" " if unicodedata.category(ch)[0] in "PSC" else ch for ch in text.lower())
    return " ".join(text.split())


def wer_cer(
    reference: str | Sequence[str], hypothesis: str | Sequence[str], language: str = "en"
) -> dict[str, Any]:
    """Word and character error rates (jiwer) after :func:`normalize_text` on both sides.

    Range [0, inf) (insertions can push it above 1), LOWER is better. With lists, the rates are
    corpus-level (total edits / total reference words), not a mean of per-sentence rates.
    A reference that normalises to nothing counts as 0 errors against an empty hypothesis and
    as 1.0 otherwise.

    Returns ``{"wer", "cer", "hits", "substitutions", "deletions", "insertions", "ref_words"}``.
    """
    import jiwer

    refs = [reference] if isinstance(reference, str) else list(reference)
    hyps = [hypothesis] if isinstance(hypothesis, str) else list(hypothesis)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_text(t, language) for t in refs]
    hyps = [normalize_text(t, language) for t in hyps]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    n_empty_bad = sum(1 for r, h in zip(refs, hyps, strict=True) if not r and h)
    if not pairs:
        rate = 1.0 if n_empty_bad else 0.0
        return {
            "wer": rate,
            "cer": rate,
            "hits": 0,
            "substitutions": 0,
            "deletions": 0,
            "insertions": n_empty_bad,
            "ref_words": 0,
        }
    words = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    chars = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs])
    ref_words = words.hits + words.substitutions + words.deletions
    ref_chars = chars.hits + chars.substitutions + chars.deletions
    insertions = words.insertions + n_empty_bad
    wer = (words.substitutions + words.deletions + insertions) / ref_words
    cer = (chars.substitutions + chars.deletions + chars.insertions + n_empty_bad) / ref_chars
    return {
        "wer": float(wer),
        "cer": float(cer),
        "hits": words.hits,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": insertions,
        "ref_words": ref_words,
    }


def get_asr(model: str = "auto", language: str = "en", device: str = "auto") -> Any:
    """The ASR of ``voicetune.data.transcribe`` (``load_asr``), loaded once per process and option set."""

    def build():
        from voicetune.data.transcribe import load_asr

        return load_asr(model=model, language=language, device=device)

    return _cached(("asr", model, language, str(device)), build)


def asr_round_trip(
    audios: Sequence[AudioLike],
    texts: Sequence[str],
    sr: int | None = None,
    asr: Any = "auto",
    language: str = "en",
    device: str = "auto",
) -> dict[str, Any]:
    """Transcribe each clip and score it against the text it should say (WER/CER, LOWER is better).

    ``asr`` is an ``Asr`` from ``voicetune.data.transcribe.load_asr`` or a model option for it
    (``"auto"``, a faster-whisper name or a local CTranslate2 folder; loaded once and cached).

    Returns ``{"wer", "cer"}`` (corpus level), ``"mean_wer"`` (mean of per-clip WERs),
    ``"asr_model"`` and ``"per_clip": [{"text", "hypothesis", "wer", "cer"}]``.
    """
    if len(audios) != len(texts):
        raise ValueError(f"{len(audios)} audios but {len(texts)} texts")
    if isinstance(asr, str):
        asr = get_asr(asr, language, device)
    hyps, per_clip = [], []
    for audio, text in zip(audios, texts, strict=True):
        hyp = transcribe_text(asr, audio_at(audio, sr, 16000), language)
        scores = wer_cer(text, hyp, language)
        hyps.append(hyp)
        per_clip.append({"text": text, "hypothesis": hyp, "wer": scores["wer"], "cer": scores["cer"]})
    total = wer_cer(list(texts), hyps, language) if texts else {"wer": float("nan"), "cer": float("nan")}
    return {
        "wer": total["wer"],
        "cer": total["cer"],
        "mean_wer": nanmean([c["wer"] for c in per_clip]),
        "asr_model": getattr(asr, "name", str(asr)),
        "per_clip": per_clip,
    }


def transcribe_text(asr: Any, audio_16k: np.ndarray, language: str | None = None) -> str:
    """The transcript text of a 16 kHz clip ("" for an empty or silent clip)."""
    if audio_16k.size < 1600:
        return ""
    return (asr.transcribe(audio_16k, language=language).text or "").strip()


# ---------------------------------------------------------------------------------------------- MOS


def _mos_model(device: str):
    def build():
        import contextlib
        import io

        from distillmos import ConvTransformerSQAModel

        with contextlib.redirect_stdout(io.StringIO()):  # it prints where it loaded its weights from
            model = ConvTransformerSQAModel()
        return model.eval().to(device)

    return _cached(("distillmos", device), build)


def predicted_mos(audio: AudioLike, sr: int | None = None, device: str = "cpu") -> float:
    """DistillMOS predicted mean opinion score of one clip: range [1, 5], HIGHER is better.

    The model (weights shipped in the ``distillmos`` package) runs on 16 kHz audio; it normalises
    the peak itself, so the level of the clip does not matter. NaN for an empty clip; digital
    silence gets 1.0, the floor of the scale.
    """
    import torch

    wav = audio_at(audio, sr, 16000)
    if wav.size == 0 or not np.any(wav):
        return float("nan") if wav.size == 0 else 1.0
    dev = _device_name(device)
    model = _mos_model(dev)
    with torch.inference_mode():
        score = model(torch.from_numpy(np.ascontiguousarray(wav))[None].to(dev))
    return float(score.reshape(-1)[0].item())


# ---------------------------------------------------------------------------- intrusive (vs. real)

MCD_SR = 22050
MCD_N_MELS = 80
MCD_ORDER = 24
MCD_FMAX = (
    8000.0  # the band every input shares (16 kHz recordings included), so bandwidth is not "distortion"
)


def mel_cepstrum(audio: np.ndarray, sr: int, order: int = MCD_ORDER) -> np.ndarray:
    """Mel-cepstral coefficients c1..c_order, shape (frames, order).

    The cepstrum of the natural-log 80-band mel amplitude spectrum (0-8 kHz, 1024-point FFT, hop 256):
    ``c_d = (1/N) * sum_k ln|M_k| * cos(pi * d * (k + 0.5) / N)``, i.e. a DCT-II scaled like the real
    cepstrum of the symmetric log spectrum, so values (and the MCD built on them) are on the scale
    of SPTK mel-cepstra. c0 (overall level) is dropped.
    """
    import librosa
    from scipy.fft import dct

    mel = librosa.feature.melspectrogram(
        y=audio, sr=sr, n_fft=1024, hop_length=256, n_mels=MCD_N_MELS, fmax=min(MCD_FMAX, sr / 2), power=1.0
    )
    log_mel = np.log(np.maximum(mel, 1e-5))
    cep = dct(log_mel, type=2, axis=0, norm=None) / (2.0 * MCD_N_MELS)  # scipy's DCT-II carries a factor 2
    return cep[1 : order + 1].T


def _trim(audio: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    import librosa

    if audio.size == 0 or not np.any(audio):
        return audio
    trimmed, _ = librosa.effects.trim(audio, top_db=top_db)
    return trimmed if trimmed.size else audio


def mcd_dtw(generated: AudioLike, reference: AudioLike, sr: int | None = None) -> float:
    """Mel-cepstral distortion in dB between a clip and a real recording: range [0, inf), LOWER is better.

    Both are resampled to 22.05 kHz, leading/trailing silence is trimmed (40 dB below peak), the
    mel-cepstra of :func:`mel_cepstrum` are aligned with DTW (librosa, Euclidean cost), and
    ``MCD = mean over the path of (10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d)^2)``.
    Measured on Piper speech: identical audio 0, a 7% time-stretched copy ~1.8 dB, white noise at
    30/10/0 dB SNR ~2.5/4.7/5.6 dB, another sentence ~4.7 dB, the same sentence by espeak-ng ~5.8 dB.
    NaN for silent input.
    """
    import librosa

    gen = _trim(audio_at(generated, sr, MCD_SR))
    ref = _trim(audio_at(reference, sr, MCD_SR))
    if gen.size < 1024 or ref.size < 1024 or not np.any(gen) or not np.any(ref):
        logger.info("MCD undefined: a clip is empty or silent")
        return float("nan")
    a, b = mel_cepstrum(gen, MCD_SR), mel_cepstrum(ref, MCD_SR)
    _, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    diff = a[path[:, 0]] - b[path[:, 1]]
    per_frame = (10.0 / math.log(10.0)) * np.sqrt(2.0 * np.sum(diff**2, axis=1))
    return float(np.mean(per_frame))


def _same_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad the shorter one so both have the same length (no time warping)."""
    n = max(len(a), len(b))
    return np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))


def pesq_wb(generated: AudioLike, reference: AudioLike, sr: int | None = None) -> float:
    """Wideband PESQ (ITU-T P.862.2, MOS-LQO) at 16 kHz: range [1.04, 4.64], HIGHER is better.

    The two clips are zero-padded to the same length (PESQ does its own coarse time alignment).
    Returns NaN, with the reason logged, when PESQ cannot score them (no utterance found,
    too short, ...).
    """
    from pesq import PesqError, pesq

    gen = audio_at(generated, sr, 16000)
    ref = audio_at(reference, sr, 16000)
    if min(len(gen), len(ref)) < 16000 // 4:
        logger.info("PESQ undefined: a clip is shorter than 0.25 s")
        return float("nan")
    ref, gen = _same_length(ref, gen)
    try:
        return float(pesq(16000, ref.astype(np.float64), gen.astype(np.float64), "wb"))
    except PesqError as e:
        logger.info("PESQ undefined: %s: %s", type(e).__name__, e)
        return float("nan")


def stoi(generated: AudioLike, reference: AudioLike, sr: int | None = None) -> float:
    """Short-time objective intelligibility (pystoi, classic STOI): about [0, 1], HIGHER is better.

    Computed at 16 kHz input (pystoi works at 10 kHz internally) after zero-padding to equal
    length, without time warping. NaN when a clip is shorter than STOI's 384 ms analysis window.
    """
    from pystoi import stoi as _stoi

    gen = audio_at(generated, sr, 16000)
    ref = audio_at(reference, sr, 16000)
    ref, gen = _same_length(ref, gen)
    if len(ref) < int(0.4 * 16000) or not np.any(ref):
        logger.info("STOI undefined: clip shorter than 0.4 s or silent reference")
        return float("nan")
    return float(_stoi(ref.astype(np.float64), gen.astype(np.float64), 16000, extended=False))


# -------------------------------------------------------------------------------- failure detectors

RUNAWAY_RATIO = 2.5
TOO_SHORT_RATIO = 0.4
SILENCE_DBFS = -50.0
MIN_VOICED_FRACTION = 0.10
REPETITION_SIMILARITY = 0.85


def spoken_chars(text: str, language: str = "en") -> int:
    """Letters and digits of the normalised text (numbers spelled out): what speaking takes time for."""
    return sum(ch.isalnum() for ch in normalize_text(text, language))


def speaking_rate(clips: Sequence[tuple[float, str]], language: str = "en") -> float:
    """Characters per second of a speaker's real clips, ``[(seconds, text), ...]``, pooled.

    Characters are :func:`spoken_chars` (letters/digits after normalisation); typical read
    English is 12-16 chars/s. Raises ValueError when there is no speech to measure.
    """
    seconds = sum(float(s) for s, _ in clips)
    chars = sum(spoken_chars(t, language) for _, t in clips)
    if seconds <= 0 or chars == 0:
        raise ValueError("speaking_rate needs clips with a positive duration and non-empty text")
    return chars / seconds


def duration_ratio(audio_seconds: float, text: str, chars_per_second: float, language: str = "en") -> float:
    """Audio duration / duration expected for ``text`` at the speaker's rate; 1.0 is ideal.

    Above 2.5 signals a runaway generation (babble, long silences), below 0.4 a clip cut short.
    NaN when the text has no speakable characters.
    """
    if chars_per_second <= 0:
        raise ValueError("chars_per_second must be positive")
    n = spoken_chars(text, language)
    if n == 0:
        return float("nan")
    return float(audio_seconds) / (n / chars_per_second)


def voiced_fraction(audio: np.ndarray, sr: int, aggressiveness: int = 2) -> float:
    """Fraction of 30 ms frames that WebRTC VAD marks as speech (at 16 kHz, 16-bit PCM)."""
    import webrtcvad

    wav = audio_at(audio, sr, 16000)
    frame = 480
    n = len(wav) // frame
    if n == 0:
        return 0.0
    pcm = (np.clip(wav[: n * frame], -1, 1) * 32767).astype("<i2")
    vad = webrtcvad.Vad(aggressiveness)
    voiced = sum(vad.is_speech(pcm[i * frame : (i + 1) * frame].tobytes(), 16000) for i in range(n))
    return voiced / n


def acoustic_self_similarity(
    audio: np.ndarray, sr: int, min_lag_s: float = 1.0, window_s: float = 1.2, tolerance_s: float = 0.04
) -> float:
    """How strongly some stretch of the clip repeats later: ~1 for a loop, <= ~0.75 for ordinary speech.

    Frames: 13 MFCCs (c1..c13, mean-normalised over the clip) every 20 ms of 16 kHz audio; only frames
    within 35 dB of the loudest count. For every lag >= ``min_lag_s``, frame t is compared with the
    best-matching frame within +-``tolerance_s`` of t + lag (cosine similarity; the tolerance absorbs
    tempo drift between repeats), and the similarity is averaged over every ``window_s`` stretch of
    loud frames. The result, in [-1, 1], is the best such stretch over all lags: a repeated
    phrase of ``window_s`` or more scores close to 1 wherever it lies in the clip.
    0.0 when the clip is too short to hold a repeat.
    """
    import librosa
    from scipy.ndimage import maximum_filter1d

    wav = audio_at(audio, sr, 16000)
    hop = 320
    min_lag, win = int(min_lag_s * 16000 / hop), max(2, int(window_s * 16000 / hop))
    tol = max(1, int(round(tolerance_s * 16000 / hop)))
    if len(wav) < (min_lag + win) * hop or not np.any(wav):
        return 0.0
    mf = librosa.feature.mfcc(y=wav, sr=16000, n_mfcc=14, n_fft=640, hop_length=hop)[1:]
    rms = librosa.feature.rms(y=wav, frame_length=640, hop_length=hop)[0][: mf.shape[1]]
    loud = 20 * np.log10(np.maximum(rms, 1e-10)) > 20 * np.log10(max(float(rms.max()), 1e-10)) - 35
    if loud.sum() < win:
        return 0.0
    mf = mf - mf[:, loud].mean(axis=1, keepdims=True)
    unit = (mf / np.maximum(np.linalg.norm(mf, axis=0, keepdims=True), 1e-9)).T  # frames x 13
    # best match within +-tol frames of t + lag, for every (t, lag): a running max along each row
    sim = maximum_filter1d(unit @ unit.T, size=2 * tol + 1, axis=1, mode="nearest")
    n = len(unit)
    kernel = np.ones(win)
    best = 0.0
    for lag in range(min_lag, n - win + 1):
        both = (loud[: n - lag] & loud[lag:]).astype(np.float64)
        count = np.convolve(both, kernel, mode="valid")
        total = np.convolve(np.diagonal(sim, offset=lag) * both, kernel, mode="valid")
        full = count >= 0.6 * win  # windows that are mostly speech on both sides
        if full.any():
            best = max(best, float((total[full] / count[full]).max()))
    return best


def repeated_ngrams(transcript: str, text: str, n: int = 3, language: str = "en") -> list[str]:
    """Word n-grams said more often in ``transcript`` than in ``text`` and at least twice."""

    def grams(s: str) -> Counter:
        w = normalize_text(s, language).split()
        return Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))

    said, expected = grams(transcript), grams(text)
    return [" ".join(g) for g, c in said.items() if c >= 2 and c > expected.get(g, 0)]


def detect_failures(
    audio: np.ndarray,
    sr: int,
    text: str,
    chars_per_second: float,
    hit_max_length: bool = False,
    transcript: str | None = None,
    language: str = "en",
) -> list[str]:
    """Flags of obvious synthesis failures (an empty list means none was detected):

    - ``"runaway"``: generation hit the model's max length, or duration ratio > 2.5;
    - ``"too_short"``: duration ratio < 0.4;
    - ``"near_silence"``: RMS below -50 dBFS, or fewer than 10% of 30 ms frames voiced (WebRTC VAD);
    - ``"repetition"``: :func:`acoustic_self_similarity` >= 0.85 (a stretch of >= 1.2 s of audio repeats
      at a lag of at least 1 s; clean read sentences score <= ~0.75, loops >= ~0.9), or, when an ASR
      ``transcript`` is given, a word 3-gram said more often than the text has it (at least twice).
    """
    flags: list[str] = []
    audio = np.asarray(audio, dtype=np.float32)
    ratio = duration_ratio(len(audio) / float(sr), text, chars_per_second, language)
    if hit_max_length or (not math.isnan(ratio) and ratio > RUNAWAY_RATIO):
        flags.append("runaway")
    if not math.isnan(ratio) and ratio < TOO_SHORT_RATIO:
        flags.append("too_short")
    silent = rms_dbfs(audio) < SILENCE_DBFS or voiced_fraction(audio, sr) < MIN_VOICED_FRACTION
    if silent:
        flags.append("near_silence")
    else:
        repeated = acoustic_self_similarity(audio, sr) >= REPETITION_SIMILARITY
        if not repeated and transcript:
            repeated = bool(repeated_ngrams(transcript, text, language=language))
        if repeated:
            flags.append("repetition")
    return flags
