"""Rendering and scoring the sentences of an evaluation: the pieces that :mod:`.suite` builds the probe-set
evaluation from (used by in-loop evaluation and by `voicetune evaluate`, :mod:`.rescore`).

* :func:`select_material`: the speaker (the one with the most training clips), its ``num_references`` longest
  TRAIN clips (they condition every synthesis) and up to ``max_sentences`` of its EVAL clips (their text, and
  their real recordings for the intrusive metrics).
* :func:`render`: synthesize texts with a backend in inference mode with a fixed seed; a sentence that fails
  to synthesize is recorded with its error, not fatal.
* :func:`score`: every metric of :mod:`voicetune.evaluation.metrics` per render (speaker similarity to the
  centroid of ALL held-out eval clips of the speaker, ASR round-trip WER/CER, predicted MOS, failure flags,
  and MCD/PESQ/STOI against the real recording of the same sentence), then :func:`aggregate`.
* :func:`summarize`: per metric, base vs finetuned (delta, direction, better) and the real recordings.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import audio_duration
from voicetune.backends.base import Backend, Progress, Waveform
from voicetune.data.manifest import Clip, Dataset
from voicetune.evaluation import metrics as M
from voicetune.utils.errors import one_line

logger = logging.getLogger(__name__)

MODELS = ("real", "base", "finetuned")
TABLE_METRICS: list[tuple[str, str, str]] = [
    # (aggregate key, label, format)
    ("speaker_similarity", "speaker similarity", "{:.3f}"),
    ("speaker_similarity_dv", "speaker similarity (d-vector)", "{:.3f}"),
    ("wer", "WER", "{:.3f}"),
    ("cer", "CER", "{:.3f}"),
    ("mos", "predicted MOS", "{:.2f}"),
    ("mcd", "MCD (dB)", "{:.2f}"),
    ("pesq", "PESQ-WB", "{:.2f}"),
    ("stoi", "STOI", "{:.3f}"),
    ("failure_rate", "failure rate", "{:.2f}"),
]
_BASE_CACHE_VERSION = 1


class EvalError(ValueError):
    """The run or its dataset cannot be evaluated; the message says what is missing."""


@dataclass
class EvalMaterial:
    """What every model is scored on: the speaker, its references and the held-out sentences."""

    speaker: str
    language: str
    references: list[Path]
    sentences: list[Clip]
    held_out: list[Path]  # all eval clips of the speaker (speaker-similarity centroid)
    chars_per_second: float


@dataclass
class Render:
    """One synthesized sentence (``audio`` is None when synthesis failed)."""

    audio: np.ndarray | None
    sample_rate: int
    meta: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""


# ----------------------------------------------------------------------------------------- selection


def select_material(dataset: Dataset, num_references: int, max_sentences: int,
                    speaker: str | None = None) -> EvalMaterial:
    """Pick the speaker (``speaker``, else the one with the most training clips), its ``num_references``
    longest train clips and up to ``max_sentences`` of its eval clips."""
    counts = collections.Counter(c.speaker for c in dataset.train)
    if speaker is None:
        speaker = min(counts, key=lambda s: (-counts[s], s))
        if len(counts) > 1:
            logger.info("dataset has %d speakers; evaluating %r (most training clips)", len(counts), speaker)
    elif speaker not in counts:
        raise EvalError(f"{dataset.root / 'metadata_train.csv'}: no training clips of speaker {speaker!r}; "
                        f"the dataset's speakers are {sorted(counts)}")
    train = [c for c in dataset.train if c.speaker == speaker]
    held_out = [c for c in dataset.eval if c.speaker == speaker and c.text.strip()]
    if not held_out:
        raise EvalError(
            f"{dataset.root / 'metadata_eval.csv'}: no eval clips of speaker {speaker!r}; "
            "re-run `voicetune prepare` with --eval-fraction > 0"
        )
    durations = {c.audio_path: audio_duration(c.audio_path) for c in train}
    longest = sorted(train, key=lambda c: (-durations[c.audio_path], str(c.audio_path)))
    rate = M.speaking_rate([(durations[c.audio_path], c.text) for c in train], dataset.language)
    return EvalMaterial(
        speaker=speaker,
        language=dataset.language,
        references=[c.audio_path for c in longest[:num_references]],
        sentences=held_out[:max_sentences],
        held_out=[c.audio_path for c in held_out],
        chars_per_second=rate,
    )


# ----------------------------------------------------------------------------------------- rendering


def render(
    backend: Backend,
    texts: Sequence[str],
    refs: Sequence[Path],
    language: str,
    seed: int | Sequence[int],
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
    what: str = "synthesize",
) -> list[Render]:
    """Synthesize every text (inference mode, fixed seed, or ``seed[i]`` for text i); a failing sentence is
    recorded, not fatal.

    Texts go to ``Backend.synthesize_batch`` ``Backend.synthesis_batch_size`` at a time (a batch's time is
    shared by its renders). Audio is clipped to [-1, 1] (as every writer does), so scores and the cache see
    what is written.
    """
    backend.set_train(False)
    out: list[Render] = []
    size = max(1, int(type(backend).synthesis_batch_size))
    seeds = [seed] * len(texts) if isinstance(seed, int) else [int(x) for x in seed]
    if len(seeds) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(seeds)} seeds")
    for start in range(0, len(texts), size):
        chunk = list(texts[start:start + size])
        t0 = time.perf_counter()
        try:
            results = backend.synthesize_batch(chunk, list(refs), language, seeds[start:start + size])
        except Exception as e:  # noqa: BLE001 - a backend error on the batch is a failure of its sentences
            results = [e] * len(chunk)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for i, wav in enumerate(results, start):
            out.append(_render(wav, seconds, what, i))
        if progress:
            progress(done + len(out), total or len(texts), what)
    errors = collections.Counter(r.error for r in out if r.error)
    if errors:  # one line, not one per sentence (the tracebacks are in the log file); when EVERY sentence
        # failed, the callers treat it as a software error (suite.synthesis_failure), not a quality result
        common, count = errors.most_common(1)[0]
        n_failed = sum(errors.values())
        others = "" if count == n_failed else f" ({count}x; {len(errors) - 1} other errors)"
        logger.warning("%s: %d of %d sentences failed to synthesize: %s%s", what, n_failed, len(out), common,
                       others)
    return out


def _render(wav: Waveform | Exception, seconds: float, what: str, i: int) -> Render:
    """A synthesis result as a :class:`Render`: clipped audio, or the error (e.g. NaN weights in a diverged
    checkpoint) as a measured failure of that sentence."""
    if not isinstance(wav, Exception):
        audio = np.asarray(wav.audio, dtype=np.float32).reshape(-1)
        if np.all(np.isfinite(audio)):  # clipped: the Waveform contract; scored exactly as it is written
            return Render(np.clip(audio, -1.0, 1.0), int(wav.sample_rate), dict(wav.meta or {}), seconds)
        wav = ValueError("synthesized audio contains NaN or infinite samples")
    error = one_line(wav)  # type, message and where it was raised
    logger.debug("%s: sentence %d failed to synthesize: %s", what, i, error, exc_info=wav)
    return Render(None, 0, {}, seconds, error)


# ------------------------------------------------------------------------------------------- scoring


def score(
    renders: Sequence[Render],
    material: EvalMaterial,
    asr: Any,
    centroid: np.ndarray,
    device: str,
    intrusive: bool = True,
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
    what: str = "",
) -> dict[str, Any]:
    """Every metric of every render, plus aggregates. ``intrusive``: also MCD/PESQ/STOI vs the real clip.

    The model-based metrics run in batches over all renders (ASR round trip, speaker similarity, predicted
    MOS: :func:`model_scores`); each render's numbers are those it gets scored alone."""
    lang, cps = material.language, material.chars_per_second
    batched = model_scores(renders, asr, centroid, device, lang)
    rows = []
    for i, (r, clip) in enumerate(zip(renders, material.sentences, strict=True)):
        row: dict[str, Any] = {
            "index": i,
            "text": clip.text,
            "hit_max_length": bool(r.meta.get("hit_max_length")),
            "synthesis_seconds": round(r.seconds, 3),
        }
        if r.audio is None or r.audio.size == 0:
            row.update(
                duration=0.0,
                speaker_similarity=math.nan,
                hypothesis="",
                wer=1.0,
                cer=1.0,
                mos=math.nan,
                mcd=math.nan,
                pesq=math.nan,
                stoi=math.nan,
                duration_ratio=0.0,
                flags=["synthesis_error" if r.error else "too_short"],
                error=r.error,
            )
            rows.append(row)
            if progress:
                progress(done + i + 1, total or len(renders), what)
            continue
        audio, sr = r.audio, r.sample_rate
        hyp, similarity, mos = batched[i]
        err = M.wer_cer(clip.text, hyp, lang)
        row.update(
            duration=round(len(audio) / sr, 3),
            duration_ratio=M.duration_ratio(len(audio) / sr, clip.text, cps, lang),
            speaker_similarity=similarity,
            hypothesis=hyp,
            wer=err["wer"],
            cer=err["cer"],
            mos=mos,
        )
        if intrusive:
            row.update(
                mcd=M.mcd_dtw(audio, clip.audio_path, sr),
                pesq=M.pesq_wb(audio, clip.audio_path, sr),
                stoi=M.stoi(audio, clip.audio_path, sr),
            )
        row["flags"] = M.detect_failures(
            audio, sr, clip.text, cps, row["hit_max_length"], transcript=hyp, language=lang
        )
        rows.append(row)
        if progress:
            progress(done + i + 1, total or len(renders), what)
    return {
        "aggregate": aggregate(rows, [c.text for c in material.sentences], lang, intrusive),
        "per_sentence": rows,
    }


def model_scores(renders: Sequence[Render], asr: Any, centroid: np.ndarray, device: str,
                 language: str) -> dict[int, tuple[str, float, float]]:
    """(ASR transcript, speaker similarity, predicted MOS) of every render with audio, by index: the three
    models each run once over all of them, in batches (on a GPU, one pass instead of one per sentence)."""
    index = [i for i, r in enumerate(renders) if r.audio is not None and r.audio.size]
    clips = [M.audio_at(renders[i].audio, renders[i].sample_rate, 16000) for i in index]
    if not clips:
        return {}
    hyps = M.transcribe_texts(asr, clips, language)
    similarity = M.speaker_similarities(clips, device, centroid)
    mos = M.predicted_mos_batch(clips, device)
    return {i: (h, s, m) for i, h, s, m in zip(index, hyps, similarity, mos, strict=True)}


def aggregate(
    rows: list[dict[str, Any]], texts: list[str], language: str, intrusive: bool = True
) -> dict[str, Any]:
    """Means over sentences (NaN-aware); WER/CER are corpus-level over all sentences."""
    corpus = M.wer_cer(texts, [r["hypothesis"] for r in rows], language)
    flags = collections.Counter(f for r in rows for f in r["flags"])
    agg: dict[str, Any] = {
        "speaker_similarity": M.nanmean([r["speaker_similarity"] for r in rows]),
        "wer": corpus["wer"],
        "cer": corpus["cer"],
        "mos": M.nanmean([r["mos"] for r in rows]),
    }
    if intrusive:
        agg.update({k: M.nanmean([r[k] for r in rows]) for k in ("mcd", "pesq", "stoi")})
    errors = collections.Counter(r["error"] for r in rows if r.get("error"))
    agg.update(
        {
            "failure_rate": sum(1 for r in rows if r["flags"]) / max(1, len(rows)),
            "failures": dict(flags),
            "duration_ratio": M.nanmean([r["duration_ratio"] for r in rows]),
            "n_sentences": len(rows),
            # sentences that could not be synthesized at all, and why (error -> count)
            "synthesis_errors": sum(errors.values()),
            "errors": dict(errors),
        }
    )
    audio_s = sum(r["duration"] for r in rows)
    synth_s = sum(r["synthesis_seconds"] for r in rows)
    if synth_s > 0 and audio_s > 0:
        agg["real_time_factor"] = synth_s / audio_s
    return agg


def summarize(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per table metric: base, finetuned, delta (finetuned - base), direction, better, real."""
    out = {}
    for key, _, _ in TABLE_METRICS:
        b = models["base"]["aggregate"].get(key, math.nan)
        f = models["finetuned"]["aggregate"].get(key, math.nan)
        r = models.get("real", {}).get("aggregate", {}).get(key, math.nan)
        delta = f - b if _finite(b) and _finite(f) else math.nan
        direction = M.DIRECTIONS[key]
        better = None if not _finite(delta) or delta == 0 else (delta > 0) == (direction == "higher")
        out[key] = {
            "base": b,
            "finetuned": f,
            "delta": delta,
            "direction": direction,
            "better": better,
            "real": r,
        }
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def json_safe(obj: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python: metrics.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


