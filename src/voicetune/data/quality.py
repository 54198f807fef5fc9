"""Per-clip quality control for `voicetune prepare`: measurements, and the reasons a clip is quarantined.

Measured per clip (cached by the source's content hash and the clip's span, see :mod:`.cache`):

| measure        | from                                                   | quarantined when (PrepareConfig) |
|----------------|--------------------------------------------------------|----------------------------------|
| clipping_ratio | samples at full scale or in flat runs of >= 3 equal    | > ``max_clipping_ratio``         |
|                | loud samples, in the source audio before any gain      |                                  |
| snr_db         | speech-frame power vs the noise floor of the nearest   | < ``min_snr_db``                 |
|                | non-speech frames (VAD prob. < 0.2, within 10 s; a     |                                  |
|                | low percentile, so speech tails do not count as noise) |                                  |
| silence_ratio  | share of the clip's VAD frames below the VAD threshold | > ``max_silence_ratio``          |
| mos            | DistillMOS (``voicetune.scoring.mos``), batched        | < ``min_mos``                    |
| embedding      | Resemblyzer d-vector (``voicetune.scoring.speaker``)   | cosine to the speaker's centroid |
|                |                                                        | < ``min_speaker_similarity``     |

Decided over the whole dataset, per speaker (:func:`dataset_reasons`): speaker similarity to a robust
centroid (the mean of the half of the clips closest to the plain mean, so a minority of other voices
does not drag it), and the speaking rate (spoken characters per second of VAD speech) as a robust
z-score against the speaker's median (``max_rate_z``). Transcript checks (:func:`transcript_reasons`)
quarantine empty, looping, implausible or unconfident transcripts.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voicetune.config import PrepareConfig
from voicetune.data.manifest import ClipRecord
from voicetune.data.transcribe import Transcript
from voicetune.scoring.text import spoken_chars, wer_cer

logger = logging.getLogger(__name__)

MAX_CHARS_PER_SECOND = 25.0  # faster than any human speech: the transcript is a hallucination
MAX_COMPRESSION_RATIO = 2.4  # Whisper's own threshold for repetitive (looping) output
NOISE_PROB = 0.2  # VAD frames below this probability are taken as background (noise floor)
NOISE_FRAMES = 48  # ~1.5 s of the nearest background frames estimate a clip's noise floor
NOISE_PERCENTILE = 30  # of their energies (dB): robust to speech tails the VAD calls background
MIN_RATE_CLIPS = 8  # speaking-rate outliers need at least this many clips of the speaker
MIN_CENTROID_CLIPS = 5  # speaker consistency needs at least this many clips of the speaker


@dataclass
class ClipMeasures:
    """What :func:`measure_clip` finds in one clip's audio (before loudness normalisation)."""

    clipping_ratio: float
    snr_db: float | None
    silence_ratio: float
    speech_seconds: float


# ------------------------------------------------------------------------------------------ transcripts


def compression_ratio(text: str) -> float:
    """zlib compression ratio of ``text``: high for looping, repeated ASR output."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


def transcript_reasons(tr: Transcript, duration: float, cfg: PrepareConfig) -> list[str]:
    """Why a transcribed clip should not be used for training (empty list: keep it)."""
    from voicetune.data.textnorm import clean_text

    reasons = []
    text = clean_text(tr.text)
    if not re.search(r"\w", text):
        reasons.append("empty transcript")
    if tr.no_speech_prob > cfg.max_no_speech_prob:
        reasons.append(
            f"no speech detected by ASR (no_speech_prob {tr.no_speech_prob:.2f} > {cfg.max_no_speech_prob:g})"
        )
    if tr.avg_logprob < cfg.min_avg_logprob:
        reasons.append(f"low ASR confidence (avg_logprob {tr.avg_logprob:.2f} < {cfg.min_avg_logprob:g})")
    if len(text) >= 40 and compression_ratio(text) > MAX_COMPRESSION_RATIO:
        reasons.append(f"repetitive transcript (compression ratio {compression_ratio(text):.1f})")
    if duration > 0 and len(text) / duration > MAX_CHARS_PER_SECOND:
        reasons.append(f"implausible transcript ({len(text) / duration:.0f} characters per second)")
    return reasons


def is_uncertain(tr: Transcript, duration: float, cfg: PrepareConfig) -> str:
    """Why a first-pass transcript deserves a second opinion ("" when it does not)."""
    if not tr.text.strip():
        return "no words recognised"
    if tr.avg_logprob < cfg.asr_recheck_logprob:
        return f"low ASR confidence (avg_logprob {tr.avg_logprob:.2f} < {cfg.asr_recheck_logprob:g})"
    if tr.no_speech_prob > cfg.max_no_speech_prob:
        return f"ASR unsure there is speech (no_speech_prob {tr.no_speech_prob:.2f})"
    text = tr.text.strip()
    if len(text) >= 40 and compression_ratio(text) > MAX_COMPRESSION_RATIO:
        return "repetitive transcript"
    if duration >= 2.0 and len(text) / duration < 3.0:
        return f"few words for the audio ({len(text) / duration:.1f} characters per second)"
    return ""


def transcript_disagreement(a: str, b: str, language: str = "en") -> float:
    """WER between two transcripts of the same audio after normalisation (0: identical words)."""
    if not a.strip() and not b.strip():
        return 0.0
    if not a.strip() or not b.strip():
        return 1.0
    return float(wer_cer(a, b, language)["wer"])


# ---------------------------------------------------------------------------------------- audio measures


def clipping_ratio(audio: np.ndarray) -> float:
    """Share of samples that are clipped: at (or beyond) full scale, or inside a run of three or more
    identical loud (> 0.3) samples, the flat top that clipping leaves even after the level was lowered."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return 0.0
    a = np.abs(x)
    clipped = a >= 0.999
    if x.size >= 3:
        same = (x[1:] == x[:-1]) & (a[1:] > 0.3)
        run = same[:-1] & same[1:]  # x[i-1] == x[i] == x[i+1]
        flat = np.zeros(x.size, bool)
        flat[1:-1] = run
        flat[:-2] |= run
        flat[2:] |= run
        clipped |= flat
    return float(clipped.mean())


def _frames(start: float, end: float, frame_seconds: float, n: int) -> tuple[int, int]:
    i0 = max(0, math.floor(start / frame_seconds))
    i1 = min(n, math.ceil(end / frame_seconds))
    return i0, max(i0, i1)


def _power_db(values_db: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.power(10.0, values_db.astype(np.float64) / 10)) + 1e-12))


def snr_db(
    probs: np.ndarray, energy_db: np.ndarray, frame_seconds: float, start: float, end: float, threshold: float
) -> float | None:
    """Estimated SNR (dB) of the clip [start, end): power of its speech frames over the noise floor, the
    :data:`NOISE_PERCENTILE` th percentile of the energies of the :data:`NOISE_FRAMES` background frames
    nearest to it (within 10 s; else the file's background).
    None when the clip has no speech frame; 99 when the background is digital silence."""
    n = min(len(probs), len(energy_db))
    i0, i1 = _frames(start, end, frame_seconds, n)
    speech = energy_db[i0:i1][probs[i0:i1] >= threshold]
    if speech.size == 0:
        return None
    w0, w1 = _frames(start - 10.0, end + 10.0, frame_seconds, n)
    idx = np.arange(w0, w1)
    quiet = idx[probs[w0:w1] < NOISE_PROB]
    if quiet.size < NOISE_FRAMES // 3:
        quiet = np.flatnonzero(probs[:n] < NOISE_PROB)
    if quiet.size == 0:
        noise = float(np.percentile(energy_db[:n], 5))
    else:
        dist = np.where(quiet < i0, i0 - quiet, np.where(quiet >= i1, quiet - i1 + 1, 0))
        nearest = quiet[np.argsort(dist, kind="stable")[:NOISE_FRAMES]]
        noise = float(np.percentile(energy_db[nearest], NOISE_PERCENTILE))
    if noise <= -100.0:
        return 99.0
    signal = _power_db(speech)
    excess = 10 ** (signal / 10) - 10 ** (noise / 10)  # speech frames carry the noise too
    if excess <= 0:
        return 0.0
    return float(min(99.0, 10 * np.log10(excess) - noise))


def measure_clip(
    audio: np.ndarray,
    probs: np.ndarray,
    energy_db: np.ndarray,
    frame_seconds: float,
    start: float,
    end: float,
    threshold: float,
) -> ClipMeasures:
    """Clipping (on the source samples ``audio``), SNR, silence ratio and speech seconds of one clip."""
    i0, i1 = _frames(start, end, frame_seconds, len(probs))
    p = probs[i0:i1]
    speech_frames = int((p >= threshold).sum())
    silence = 1.0 - speech_frames / max(1, p.size)
    return ClipMeasures(
        clipping_ratio=clipping_ratio(audio),
        snr_db=snr_db(probs, energy_db, frame_seconds, start, end, threshold),
        silence_ratio=float(silence),
        speech_seconds=float(speech_frames * frame_seconds),
    )


def audio_reasons(q: dict, cfg: PrepareConfig) -> list[str]:
    """Reasons from the per-clip audio measures stored in ``ClipRecord.quality``."""
    reasons = []
    if q.get("clipping_ratio") is not None and q["clipping_ratio"] > cfg.max_clipping_ratio:
        reasons.append(
            f"clipping ({100 * q['clipping_ratio']:.2f}% of samples > {100 * cfg.max_clipping_ratio:g}%)"
        )
    if q.get("snr_db") is not None and q["snr_db"] < cfg.min_snr_db:
        reasons.append(f"low SNR ({q['snr_db']:.1f} dB < {cfg.min_snr_db:g} dB)")
    if q.get("silence_ratio") is not None and q["silence_ratio"] > cfg.max_silence_ratio:
        reasons.append(f"mostly silence ({100 * q['silence_ratio']:.0f}% > {100 * cfg.max_silence_ratio:g}%)")
    if q.get("mos") is not None and q["mos"] < cfg.min_mos:
        reasons.append(f"low predicted MOS ({q['mos']:.2f} < {cfg.min_mos:g})")
    return reasons


# ------------------------------------------------------------------------------------ dataset-level checks


def robust_z(values: Sequence[float]) -> np.ndarray:
    """0.6745 * (x - median) / MAD (MAD floored at 5% of |median| so identical values do not explode)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    mad = max(mad, 0.05 * abs(med), 1e-9)
    return 0.6745 * (x - med) / mad


def robust_centroid(embeddings: np.ndarray) -> np.ndarray:
    """Unit mean of the half of the (unit) embeddings closest to their plain mean."""
    c = embeddings.mean(axis=0)
    c /= np.linalg.norm(c) + 1e-12
    sims = embeddings @ c
    keep = sims >= np.median(sims)
    c = embeddings[keep].mean(axis=0)
    return c / (np.linalg.norm(c) + 1e-12)


def speaking_rates(
    texts: Sequence[str], seconds: Sequence[float], language: str = "en"
) -> list[float | None]:
    """Spoken characters (letters/digits after normalisation) per second of speech, per clip."""
    out: list[float | None] = []
    for text, sec in zip(texts, seconds):
        n = spoken_chars(text, language) if text.strip() else 0
        out.append(n / sec if sec > 0.2 and n > 0 else None)
    return out


def dataset_reasons(
    records: Sequence[ClipRecord], embeddings: dict[str, np.ndarray | None], cfg: PrepareConfig
) -> list[str]:
    """Add the per-speaker checks to each record's ``quality`` and ``reasons``; returns warnings.

    Speaker consistency: cosine of each clip's embedding to the robust centroid of the speaker's clips
    that passed every other check (``quality["speaker_similarity"]``). Speaking rate: characters per
    second of speech (``quality["chars_per_second"]``) as a robust z-score (``quality["rate_z"]``)
    against those same clips.
    """
    warnings: list[str] = []
    by_speaker: dict[str, list[ClipRecord]] = {}
    for r in records:
        if r.text:
            by_speaker.setdefault(r.speaker, []).append(r)
    for speaker, recs in sorted(by_speaker.items()):
        clean = [r for r in recs if not r.reasons]
        if cfg.qa_speaker:
            _speaker_check(speaker, recs, clean, embeddings, cfg, warnings)
        _rate_check(speaker, recs, clean, cfg, warnings)
    return warnings


def _speaker_check(
    speaker: str,
    recs: list[ClipRecord],
    clean: list[ClipRecord],
    embeddings: dict[str, np.ndarray | None],
    cfg: PrepareConfig,
    warnings: list[str],
) -> None:
    base = [embeddings.get(r.id) for r in clean if embeddings.get(r.id) is not None]
    if len(base) < MIN_CENTROID_CLIPS:
        warnings.append(
            f"speaker {speaker!r}: only {len(base)} clean clip(s); speaker consistency needs "
            f"{MIN_CENTROID_CLIPS} and was not checked"
        )
        return
    centroid = robust_centroid(np.stack(base).astype(np.float64))
    for r in recs:
        e = embeddings.get(r.id)
        if e is None:
            continue
        sim = float(np.dot(e.astype(np.float64), centroid))
        r.quality["speaker_similarity"] = round(sim, 4)
        if sim < cfg.min_speaker_similarity:
            r.reasons.append(
                f"different voice (speaker similarity {sim:.2f} < {cfg.min_speaker_similarity:g} to "
                f"{speaker!r})"
            )


def _rate_check(
    speaker: str, recs: list[ClipRecord], clean: list[ClipRecord], cfg: PrepareConfig, warnings: list[str]
) -> None:
    rates = {r.id: r.quality.get("chars_per_second") for r in recs}
    base = [rates[r.id] for r in clean if rates.get(r.id)]
    if len(base) < MIN_RATE_CLIPS:
        return
    med = float(np.median(base))
    mad = max(float(np.median(np.abs(np.asarray(base) - med))), 0.05 * med, 1e-9)
    for r in recs:
        rate = rates.get(r.id)
        if not rate:
            continue
        z = 0.6745 * (rate - med) / mad
        r.quality["rate_z"] = round(z, 2)
        if abs(z) > cfg.max_rate_z:
            kind = "fast" if z > 0 else "slow"
            r.reasons.append(
                f"speaking-rate outlier ({rate:.1f} chars/s, {kind}: robust z {z:+.1f}, "
                f"speaker median {med:.1f}; transcript or audio likely wrong)"
            )
