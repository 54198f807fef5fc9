"""Every voice of a multi-speaker dataset, scored and judged separately: a layer above the single-speaker
evaluation of :mod:`.suite`.

The single-speaker evaluation (in-loop and `voicetune evaluate`) scores the speaker with the most training
clips. For a dataset of several speakers, :func:`evaluate_speakers` runs that same evaluation once per
speaker: the speaker's own probe set (``build_probe_set(..., speaker=S)``: its longest train clips condition
synthesis, its eval clips are the sentences and the similarity centroid), the base model's renders as that
speaker's baseline, then the checkpoint's renders, each scored and compared with the same composite score
and rules as the run's selection (:class:`voicetune.evaluation.selection.Selector`). Per speaker the result
says "improves", "degrades" or "no clear change" by the rules the run's verdict follows (:func:`judge`):
the 95 % paired interval of the speaker's composite score lies above 0, below 0 (or the similarity guard
finds its speaker similarity significantly below the base model's), or holds 0. With too few sentences for
an interval (fewer than ``stats.MIN_SENTENCES`` held-out clips of that speaker) the point composite beyond
``early_stop_min_delta`` decides, and the line says so. :func:`speaker_verdict` says it in words: a
finetune that improves one voice and degrades another says so. A single-speaker dataset is not touched
(None).

On disk (``EVAL_ROOT/speakers/``)::

    speakers.json              kind "speakers": checkpoint, step, per speaker summary/composite/judgement,
                               the verdict lines, speakers skipped and why
    NN_<name>/baseline/        that speaker's base renders and metrics.json (as eval/baseline)
    NN_<name>/<checkpoint>/    that speaker's renders of the checkpoint and metrics.json (as eval/step_N)
"""

from __future__ import annotations

import collections
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetune.backends.base import Backend, Progress
from voicetune.data.manifest import Dataset
from voicetune.evaluation.encoders import encoder_note
from voicetune.evaluation.harness import json_safe
from voicetune.evaluation.selection import Assessment, SelectionRules, Selector, no_interval_reason
from voicetune.evaluation.stats import significant
from voicetune.evaluation.suite import (
    BASELINE,
    ProbeSet,
    Protocol,
    Scorer,
    build_probe_set,
    load_doc,
    run_evaluation,
    sentence_scores,
    synthesis_failure,
    write_baseline,
    write_evaluation,
)
from voicetune.run import read_meta, trainable_path
from voicetune.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

FOLDER = "speakers"
IMPROVES, DEGRADES, NO_CHANGE = "improves", "degrades", "no clear change"


def dataset_speakers(dataset: Dataset) -> tuple[list[str], dict[str, str]]:
    """The speakers that can be evaluated (train clips to condition on and eval clips with text), most
    training clips first, and the others with the reason they cannot."""
    counts = collections.Counter(c.speaker for c in dataset.train)
    held_out = collections.Counter(c.speaker for c in dataset.eval if c.text.strip())
    ok, skipped = [], {}
    for s in sorted(set(counts) | set(held_out), key=lambda s: (-counts[s], s)):
        if not counts[s]:
            skipped[s] = "no training clips to condition synthesis on"
        elif not held_out[s]:
            skipped[s] = "no eval clips (re-run `voicetune prepare` with --eval-fraction > 0)"
        else:
            ok.append(s)
    return ok, skipped


def is_multi_speaker(dataset: Dataset) -> bool:
    ok, skipped = dataset_speakers(dataset)
    return len(ok) + len(skipped) > 1


@dataclass
class SpeakerResult:
    """One speaker's evaluation of a checkpoint against its own baseline."""

    speaker: str
    folder: str  # relative to EVAL_ROOT/speakers
    summary: dict[str, dict[str, Any]]  # harness.summarize: per metric base, finetuned, delta, better
    composite: float
    parts: dict[str, float]
    judgement: str  # IMPROVES, DEGRADES or NO_CHANGE
    encoders: str = ""  # encoder_note: the two speaker encoders disagree (or why the second is absent)
    error: str = ""
    interval: list[float] | None = None  # 95 % paired interval of the composite (None: too few sentences)
    deltas: dict[str, dict[str, Any]] = field(default_factory=dict)  # per metric: paired change + interval
    reason: str = ""  # how the judgement was reached when it is not the composite's interval alone

    def line(self) -> str:
        """"alice: improves (speaker similarity 0.712 → 0.803, +0.091, 95 % CI +0.05 to +0.13; WER 0.10 →
        0.05; composite +0.150, 95 % CI +0.08 to +0.22)"."""
        sim, wer = self.summary.get("speaker_similarity", {}), self.summary.get("wer", {})
        if self.error:
            return f"{self.speaker}: not judged ({self.error})"
        composite = _f(self.composite, signed=True) + (_ci(self.interval) if self.interval else "")
        sim_ci = self.deltas.get("speaker_similarity") or {}
        sim_ci_text = _ci([sim_ci.get("low"), sim_ci.get("high")])
        why = f"; {self.reason}" if self.reason else ""
        return (f"{self.speaker}: {self.judgement} (speaker similarity {_f(sim.get('base'))} → "
                f"{_f(sim.get('finetuned'))}, {_f(sim.get('delta'), signed=True)}{sim_ci_text}; WER "
                f"{_f(wer.get('base'), '{:.2f}')} → {_f(wer.get('finetuned'), '{:.2f}')}; "
                f"composite {composite}{why})")


def _ci(lo_hi: list[Any] | None) -> str:
    """", 95 % CI +0.05 to +0.13" ("" without both ends)."""
    lo, hi = lo_hi or [None, None]
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi)):
        return ""
    return f", 95 % CI {lo:+.3f} to {hi:+.3f}"


def _f(v: Any, fmt: str = "{:.3f}", signed: bool = False) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return ("{:+" + fmt[2:]).format(v) if signed else fmt.format(v)


def judge(a: Assessment, guard_message: str, min_delta: float) -> tuple[str, str]:
    """(judgement, reason): improves / degrades / no clear change of one speaker's assessment.

    With an interval: above 0 improves, below 0 degrades, holding 0 is no clear change; a guard that
    blocks the checkpoint for this voice (``guard_message``: speaker similarity significantly below the
    base model's) degrades it whatever the composite. Without one (too few sentences): the point composite
    beyond ``min_delta`` (selection's threshold) either way, and the reason says no interval backs it.
    """
    if guard_message:
        return DEGRADES, guard_message
    if a.interval:
        side = significant(*a.interval)
        return (IMPROVES if side > 0 else DEGRADES if side < 0 else NO_CHANGE), ""
    reason = no_interval_reason(a)
    if not math.isfinite(a.composite) or abs(a.composite) <= min_delta:
        return NO_CHANGE, reason
    return (IMPROVES if a.composite > 0 else DEGRADES), reason


def speaker_verdict(results: list[SpeakerResult]) -> str:
    """One sentence over the speakers, naming the voices the finetune improves and the ones it degrades."""
    by = {j: [r.speaker for r in results if r.judgement == j and not r.error] for j in (IMPROVES, DEGRADES,
                                                                                          NO_CHANGE)}
    names = {j: ", ".join(v) for j, v in by.items()}
    if by[IMPROVES] and by[DEGRADES]:
        return (f"The finetune improves {names[IMPROVES]} but degrades {names[DEGRADES]}: do not use it for "
                f"{names[DEGRADES]} without listening to its samples.")
    if by[DEGRADES]:
        rest = f"; no clear change for {names[NO_CHANGE]}" if by[NO_CHANGE] else ""
        return f"The finetune degrades {names[DEGRADES]}{rest}."
    if by[IMPROVES]:
        if not by[NO_CHANGE] and len(by[IMPROVES]) > 1:
            return f"The finetune improves every voice ({names[IMPROVES]})."
        rest = f"; no clear change for {names[NO_CHANGE]}" if by[NO_CHANGE] else ""
        return f"The finetune improves {names[IMPROVES]}{rest}."
    return f"No clear change for any voice ({names[NO_CHANGE] or 'none could be judged'})."


def _folder(i: int, speaker: str) -> str:
    """"01_alice": a folder name for any speaker label (its order keeps two similar labels apart)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", speaker).strip("._") or "speaker"
    return f"{i + 1:02d}_{slug[:40]}"


def _baseline(root: Path, ps: ProbeSet, scorer: Scorer, backend: Backend, info: dict[str, Any],
              progress: Progress | None) -> dict[str, Any]:
    """The speaker's baseline: reused when its folder holds one of the same protocol key, else rendered."""
    doc = load_doc(root / BASELINE / "metrics.json")
    if doc and doc.get("protocol", {}).get("key") == ps.key() and not doc.get("error"):
        return doc
    ev = run_evaluation(backend, ps, scorer, BASELINE, 0, progress)
    error = synthesis_failure(ev, backend.name)
    return write_baseline(root / BASELINE, ps, ev, scorer.score_real(), {**info, **({"error": error} if error
                                                                                  else {})})


def evaluate_speakers(
    backend: Backend, dataset: Dataset, protocol: Protocol, base: Path, checkpoint: Path, eval_root: Path,
    rules: SelectionRules, devices: tuple[Any, str, str], info: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any] | None:
    """Score ``checkpoint`` against the base model for every speaker of ``dataset``; None for one speaker.

    ``devices``: (torch device of the backend, speaker-encoder/MOS device, ASR device), as rescore picks
    them. Loads the base model into ``backend`` (for the baselines) and then the checkpoint's weights.
    Writes ``EVAL_ROOT/speakers/`` (see the module doc) and returns speakers.json's document.
    """
    speakers, skipped = dataset_speakers(dataset)
    if len(speakers) + len(skipped) < 2:
        return None
    dev, metric_device, asr_device = devices
    root = Path(eval_root) / FOLDER
    sets = {s: build_probe_set(dataset, protocol, s) for s in speakers}
    scorers = {s: Scorer(ps, metric_device, asr_device) for s, ps in sets.items()}
    folders = {s: _folder(i, s) for i, s in enumerate(speakers)}
    info = dict(info or {})
    backend.load_base(Path(base), dev)
    baselines = {s: _baseline(root / folders[s], sets[s], scorers[s], backend, info, progress)
                 for s in speakers}
    backend.load_trained(trainable_path(checkpoint))
    step = int(read_meta(checkpoint).get("step") or 0)
    results = []
    for s in speakers:
        results.append(_evaluate_one(backend, s, folders[s], sets[s], scorers[s], baselines[s], checkpoint,
                                     step, root, rules, info, progress))
    doc = {
        "kind": "speakers", "checkpoint": checkpoint.name, "step": step,
        "speakers": [{"speaker": r.speaker, "folder": r.folder, "judgement": r.judgement,
                      "composite": r.composite, "composite_parts": r.parts, "summary": r.summary,
                      "interval": r.interval, "deltas": r.deltas, "reason": r.reason,
                      "line": r.line(), "speaker_encoders": r.encoders, "error": r.error} for r in results],
        "skipped": skipped,
        "verdict": speaker_verdict(results),
        "threshold": rules.min_delta,
    }
    atomic_write_json(root / "speakers.json", json_safe(doc))
    logger.info("per-speaker evaluation of %s: %s", checkpoint.name, doc["verdict"])
    return doc


def _evaluate_one(backend: Backend, speaker: str, folder: str, ps: ProbeSet, scorer: Scorer,
                  baseline: dict[str, Any], checkpoint: Path, step: int, root: Path, rules: SelectionRules,
                  info: dict[str, Any], progress: Progress | None) -> SpeakerResult:
    """One speaker: render and score the checkpoint, compare with the speaker's baseline, judge."""
    if baseline.get("error"):
        return SpeakerResult(speaker, folder, {}, math.nan, {}, NO_CHANGE, error=baseline["error"])
    real_sim = (baseline.get("real") or {}).get("aggregate", {}).get("speaker_similarity")
    lang = ps.material.language
    base_scores = sentence_scores(baseline["base"], lang)
    selector = Selector(baseline["base"]["aggregate"], rules, real_sim, base_scores)
    ev = run_evaluation(backend, ps, scorer, checkpoint.name, step, progress)
    a = selector.assess(ev.aggregate, sentence_scores(ev.scores, lang))
    guard, blocked = selector.blocked(a)
    error = synthesis_failure(ev, backend.name)
    judgement, reason = (NO_CHANGE, "") if error else judge(a, blocked if guard == "similarity" else "",
                                                              rules.min_delta)
    selection = {"decided_by": "speakers", "interval": a.interval, "deltas": a.deltas, "guard": guard,
                 "blocked": blocked, "n_sentences": a.scores.n if a.scores else 0, "judgement": judgement,
                 "reason": reason}
    doc = write_evaluation(
        root / folder / checkpoint.name, ps, ev, baseline,
        selection={"composite": a.composite, "composite_parts": a.parts, "selection": selection},
        info={**info, "checkpoint": checkpoint.name, **({"error": error} if error else {})})
    return SpeakerResult(speaker, folder, doc["summary"], a.composite, a.parts, judgement,
                         encoder_note(doc["summary"]), error, a.interval, a.deltas, reason)
