"""Did the finetune change the voice at all? The no-effect check.

The commonest complaint about LoRA finetuners is "the adapter had no effect": the output sounds exactly like
the base model. An evaluation renders the same sentences with the same seeds from the base model (the
baseline) and from every checkpoint, so the two can be compared render by render:

* **speaker-embedding distance**: ``1 - cosine`` between the Resemblyzer embeddings of the base's and the
  finetune's render of the same sentence (0: the same voice print);
* **spectral distance**: the mel-cepstral distortion (MCD, dB, DTW-aligned;
  :func:`voicetune.evaluation.metrics.mcd_dtw`) between the two renders (0: the same spectrum; a 7 %
  time-stretched copy measures ~1.8 dB, white noise at 30 dB SNR ~2.5 dB, another sentence ~4.7 dB).

The finetune is flagged as indistinguishable from the base model when the medians over the sentences are both
below :data:`SPEAKER_DISTANCE_MAX` and :data:`SPECTRAL_DISTANCE_MAX` (a distance that is undefined, e.g. for
silent renders, leaves the decision to the other; with neither, to bit-identical renders). Sampling makes
autoregressive models diverge at the first token whose probabilities the finetune moved, so any finetune
that acts on the model moves both distances far above these limits; only one that changes nothing (an adapter
that is zero, not loaded or not merged) stays under them. :func:`check_run` runs after training and in
``voicetune evaluate`` and writes ``EVAL_ROOT/change.json``; ``voicetune export`` reloads what it wrote and
compares the same way (voicetune.packaging).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import AudioDecodeError, load_audio
from voicetune.evaluation.harness import json_safe
from voicetune.evaluation.metrics import mcd_dtw
from voicetune.evaluation.suite import BASELINE, eval_docs, load_doc
from voicetune.run import best_checkpoint
from voicetune.scoring.common import audio_at
from voicetune.scoring.speaker import speaker_embeddings
from voicetune.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

CHANGE_FILE = "change.json"
SPEAKER_DISTANCE_MAX = 0.01  # 1 - cosine; the same speaker's different sentences measure ~0.1-0.3
SPECTRAL_DISTANCE_MAX = 0.5  # MCD dB; noise at 30 dB SNR measures ~2.5 dB
LIKELY_CAUSES = (
    "the adapter was not applied (not loaded, not merged, or its weights are still zero)",
    "the learning rate is too low for the steps taken (--lr)",
    "the LoRA targets miss the layers that matter (--lora-targets; or --finetune full)",
)
METHOD = (
    f"The base model and the finetune render the same sentences with the same seeds; each pair is compared "
    f"by the distance of their speaker embeddings (Resemblyzer, 1 − cosine) and their spectra (MCD, dB). "
    f"Both medians below {SPEAKER_DISTANCE_MAX} and {SPECTRAL_DISTANCE_MAX} dB mean the finetune did not "
    "change the output."
)

Clip = tuple[np.ndarray, int] | None
"""A render: (float32 mono audio, sample rate), or None when it failed."""


@dataclass
class Change:
    """How different the finetune's renders are from the base model's (module docstring)."""

    base: str
    finetuned: str
    pairs: int
    identical: int
    speaker_distance: float
    spectral_distance: float
    indistinguishable: bool
    message: str
    per_sentence: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "thresholds": {
                "speaker_distance": SPEAKER_DISTANCE_MAX,
                "spectral_distance": SPECTRAL_DISTANCE_MAX,
            },
            "likely_causes": list(LIKELY_CAUSES) if self.indistinguishable else [],
        }


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def _below(value: float, limit: float) -> bool | None:
    return None if not math.isfinite(value) else value < limit


def compare(
    base: Sequence[Clip],
    finetuned: Sequence[Clip],
    base_name: str = "base model",
    finetuned_name: str = "finetune",
    texts: Sequence[str] = (),
    device: str = "cpu",
) -> Change | None:
    """Compare renders of the same sentences and seeds, pairwise; None when no pair has both renders."""
    t0 = time.perf_counter()
    pairs = [
        (i, a, b)
        for i, (a, b) in enumerate(zip(base, finetuned, strict=True))
        if a is not None and b is not None and a[0].size and b[0].size
    ]
    if not pairs:
        logger.info(
            "no-effect check skipped: no sentence was rendered by both %s and %s", base_name, finetuned_name
        )
        return None
    embeddings = speaker_embeddings(
        [audio_at(c[0], c[1], 16000) for _, a, b in pairs for c in (a, b)], device
    )
    rows: list[dict[str, Any]] = []
    for k, (i, a, b) in enumerate(pairs):
        ea, eb = embeddings[2 * k], embeddings[2 * k + 1]
        cosine = (
            float(np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb)))
            if ea is not None and eb is not None
            else math.nan
        )
        same = a[1] == b[1] and a[0].shape == b[0].shape and bool(np.array_equal(a[0], b[0]))
        rows.append(
            {
                "index": i,
                "text": texts[i] if i < len(texts) else "",
                "identical": same,
                "speaker_distance": 0.0 if same else 1.0 - cosine,
                "spectral_distance": 0.0 if same else mcd_dtw(a[0], audio_at(b[0], b[1], a[1]), a[1]),
            }
        )
    speaker = _median([r["speaker_distance"] for r in rows])
    spectral = _median([r["spectral_distance"] for r in rows])
    identical = sum(r["identical"] for r in rows)
    votes = [
        v
        for v in (_below(speaker, SPEAKER_DISTANCE_MAX), _below(spectral, SPECTRAL_DISTANCE_MAX))
        if v is not None
    ]
    same_output = all(votes) if votes else identical == len(rows)
    return Change(
        base_name,
        finetuned_name,
        len(rows),
        identical,
        speaker,
        spectral,
        same_output,
        _message(same_output, finetuned_name, base_name, speaker, spectral, identical, len(rows)),
        rows,
        round(time.perf_counter() - t0, 3),
    )


def _message(
    same: bool, finetuned: str, base: str, speaker: float, spectral: float, identical: int, pairs: int
) -> str:
    numbers = (
        f"speaker-embedding distance {number(speaker, '.4f')}"
        + (" (no speech found by the speaker encoder)" if not math.isfinite(speaker) else "")
        + f", spectral distance {number(spectral, '.2f')} dB, "
        f"{identical} of {pairs} renders identical"
    )
    if same:
        return (
            f"The finetune output is indistinguishable from the base model: {finetuned} renders the same "
            f"sentences with the same seeds like {base} ({numbers}). Likely causes: "
            + "; ".join(LIKELY_CAUSES)
            + "."
        )
    return (f"The finetune changed the output: {finetuned} against {base}, same sentences and seeds "
            f"({numbers}).")


# ------------------------------------------------------------------------------- from evaluation folders


def _renders(folder: Path, model: dict[str, Any]) -> tuple[dict[tuple, Clip], dict[tuple, str]]:
    """(key -> render, key -> text) of a scored model's per-sentence rows; key: (text, seed, occurrence)."""
    clips: dict[tuple, Clip] = {}
    texts: dict[tuple, str] = {}
    seen: dict[tuple, int] = {}
    for row in model.get("per_sentence", []):
        base_key = (row.get("text"), row.get("seed"))
        seen[base_key] = seen.get(base_key, -1) + 1
        key = (*base_key, seen[base_key])
        texts[key] = str(row.get("text") or "")
        clip: Clip = None
        if row.get("audio_file"):
            try:
                clip = load_audio(folder / row["audio_file"])
            except AudioDecodeError as e:
                logger.warning("no-effect check: %s", e)
        clips[key] = clip
    return clips, texts


def compare_evaluation(eval_root: Path, name: str, device: str = "cpu") -> Change | None:
    """Compare evaluation ``name`` (eval_root/NAME) with the baseline's renders (same sentences and seeds)."""
    base_doc = load_doc(eval_root / BASELINE / "metrics.json")
    doc = load_doc(eval_root / name / "metrics.json")
    if not base_doc or not doc or base_doc.get("error") or doc.get("error"):
        return None
    if base_doc.get("protocol", {}).get("key") != doc.get("protocol", {}).get("key"):
        logger.info(
            "no-effect check skipped: %s was rendered with another protocol than the baseline", name
        )
        return None
    base, texts = _renders(eval_root / BASELINE, base_doc.get("base") or {})
    tuned, _ = _renders(eval_root / name, doc.get("finetuned") or {})
    keys = [k for k in base if k in tuned]
    return compare(
        [base[k] for k in keys],
        [tuned[k] for k in keys],
        "the base model",
        name,
        [texts[k] for k in keys],
        device,
    )


def _checked_evaluation(run_dir: Path, eval_root: Path) -> str | None:
    """The evaluation the check compares: the best checkpoint's when the run marked one, else the latest."""
    docs = [d for d in eval_docs(eval_root) if not d.get("error")]
    names = [str(d.get("name") or f"step_{d['step']}") for d in docs]
    main = eval_root.resolve() == (run_dir / "eval").resolve()
    best = best_checkpoint(run_dir) if main else None
    best_name = (
        best.name if best is not None else (load_doc(eval_root / "best.json") or {}).get("checkpoint")
    )
    if best_name in names:
        return str(best_name)
    return names[-1] if names else None


def check_run(
    run_dir: Path | str, eval_root: Path | str | None = None, device: str = "cpu"
) -> Change | None:
    """Run the no-effect check on a run's evaluations (best, else latest, against the baseline), write
    ``EVAL_ROOT/change.json`` and warn when the finetune is indistinguishable; None when nothing to
    compare."""
    run_dir = Path(run_dir)
    root = Path(eval_root) if eval_root else run_dir / "eval"
    name = _checked_evaluation(run_dir, root)
    result = compare_evaluation(root, name, device) if name else None
    if result is None:
        return None
    atomic_write_json(root / CHANGE_FILE, json_safe(result.as_dict()))
    (logger.warning if result.indistinguishable else logger.info)("%s", result.message)
    return result


def load(eval_root: Path | str) -> dict[str, Any] | None:
    """``EVAL_ROOT/change.json`` (None when the check has not run there)."""
    return load_doc(Path(eval_root) / CHANGE_FILE)


def warnings(doc: dict[str, Any] | None) -> list[str]:
    """The report's warning: the message when the finetune is indistinguishable, else nothing."""
    return [doc["message"]] if doc and doc.get("indistinguishable") else []


def number(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, "n/a" when it is missing or not finite (change.json holds null)."""
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def notes(doc: dict[str, Any] | None) -> list[str]:
    """The verdict's "why" notes (``verdict(..., notes=...)``): ``["the finetune had no effect: ..."]``
    or []."""
    if not doc or not doc.get("indistinguishable"):
        return []
    return [
        (
            f"the finetune had no effect: {doc.get('finetuned')} renders like the base model ("
            "speaker-embedding "
            f"distance {number(doc.get('speaker_distance'), '.4f')}, spectral distance "
            f"{number(doc.get('spectral_distance'), '.2f')} dB); likely {LIKELY_CAUSES[0]}, a learning rate "
            "too low, or LoRA targets that miss the layers that matter"
        )
    ]
