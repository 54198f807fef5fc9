"""Which checkpoint is best, and when to stop: pure functions of evaluation scores (no I/O, no models).

The composite score of an evaluation is a weighted sum of its metric CHANGES against the baseline (the
base model, zero-shot, on the same probe set, same seeds), so the baseline scores exactly 0 and a
positive score means "better than where we started"::

    composite = w_sim  * (sim - sim_base) / max(sim_real - sim_base, 0.05)   # share of the gap to the
                                                                           # real recordings closed
              - w_wer  * (wer - wer_base)                                  # WER / CER: fractions
              - w_cer  * (cer - cer_base)
              + w_mos  * (mos - mos_base)                                  # predicted MOS points
              - w_fail * (failure_rate - failure_rate_base)                # share of sentences flagged

Default weights (:class:`ScoreWeights`) and why:

* ``similarity = 1.0``: the point of finetuning is the voice. The gain is normalised by the gap between
  the base model and the speaker's real recordings, so 1.0 means "as close to the speaker as a real
  recording" whatever the speaker encoder's scale (the floor of 0.05 keeps a tiny gap from exploding).
* ``wer = 2.0``: intelligibility is what overfitting destroys first (hallucination, mumbling, skipped
  words). A WER rise of 0.10 costs 0.20, a fifth of the whole similarity gap; a rise of 0.25 outweighs
  a typical similarity gain (closing about half the gap).
* ``cer = 0.0``: CER moves with WER for languages written with spaces; give it weight (and WER none) for
  languages without word boundaries (zh, ja), where WER is not meaningful.
* ``mos = 0.5``: DistillMOS is trained on natural and degraded speech, not on TTS of one speaker: a
  useful naturalness signal, but noisier, so a full MOS point counts as half the similarity gap.
* ``failures = 1.0``: per share of sentences flagged by the failure detectors (runaway, too short,
  near silence, repetition). One failing sentence out of 8 costs 0.125, on top of its WER.

A metric that is missing (NaN: e.g. every render silent) where the baseline has a value costs its
whole weight (-1 x weight), so a broken checkpoint never wins by having nothing to measure. An evaluation
in which every sentence failed to synthesize is a software error, not a measurement: its composite is NaN,
so it is never the best.

Noise (:mod:`.stats`): given the per-sentence scores of the baseline and of each evaluation (sentences x
seeds), every composite and every metric delta gets a 95 % paired cluster-bootstrap interval. Then:

* a checkpoint whose composite is worse than the base model's beyond noise (its interval lies below 0) is
  never the best;
* the similarity guard (``similarity_guard``, on by default): a checkpoint whose speaker similarity is
  significantly below the base model's (the paired interval of the change lies below 0) is never the best;
* the best moves to a later checkpoint only when the improvement beats the noise: the paired interval of
  (candidate - best) lies above 0 (and the gain exceeds ``min_delta``), or the candidate is better than the
  base model beyond noise while the best is not. Otherwise the decision says the two "cannot be told apart"
  and the earlier (less trained) checkpoint stays.

Without per-sentence scores, or with fewer than :data:`.stats.MIN_SENTENCES` sentences, there are no
intervals: the point scores decide as before (a gain above ``min_delta``), and the decision says so.

Early stopping (:class:`Selector`): the best must move within ``patience`` evaluations, else training
stops. The WER guard stops (or warns) when an evaluation's WER exceeds the baseline's by more than
``wer_margin``: the model is losing the text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from voicetune.evaluation.stats import (
    CONFIDENCE,
    MIN_SENTENCES,
    SentenceScores,
    bootstrap,
    check_paired,
    paired_deltas,
    significant,
)

SIMILARITY_GAP_FLOOR = 0.05
WER_GUARD_ACTIONS = ("stop", "warn", "off")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class ScoreWeights:
    """Weights of the composite score (see the module docstring for the defaults' reasons)."""

    similarity: float = 1.0
    wer: float = 2.0
    cer: float = 0.0
    mos: float = 0.5
    failures: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SelectionRules:
    """How the best checkpoint is chosen and when training stops."""

    weights: ScoreWeights = field(default_factory=ScoreWeights)
    patience: int = 3  # evaluations without improvement before stopping (0: never stop early)
    min_delta: float = 0.01  # an improvement must exceed this to count
    wer_guard: str = "stop"  # "stop" | "warn" | "off"
    wer_margin: float = 0.10  # WER above the baseline's by more than this trips the guard
    similarity_guard: bool = True  # similarity significantly below the baseline's: never the best

    def __post_init__(self) -> None:
        if self.wer_guard not in WER_GUARD_ACTIONS:
            raise ValueError(f"wer_guard must be one of {WER_GUARD_ACTIONS}, got {self.wer_guard!r}")
        if self.patience < 0 or self.min_delta < 0 or self.wer_margin < 0:
            raise ValueError("patience, min_delta and wer_margin must be >= 0")


def all_failed(metrics: Mapping[str, Any]) -> bool:
    """True when every sentence of an evaluation failed to synthesize (synthesis_errors == n_sentences)."""
    n, errors = metrics.get("n_sentences"), metrics.get("synthesis_errors")
    return _finite(n) and _finite(errors) and n > 0 and errors >= n


def composite_score(
    metrics: Mapping[str, Any],
    baseline: Mapping[str, Any],
    weights: ScoreWeights = ScoreWeights(),
    real_similarity: float | None = None,
) -> tuple[float, dict[str, float]]:
    """The composite score of ``metrics`` against ``baseline`` and its parts (one per weighted metric).

    ``metrics`` / ``baseline``: aggregates with ``speaker_similarity``, ``wer``, ``cer``, ``mos``,
    ``failure_rate`` (missing keys count as NaN). ``real_similarity``: the real recordings' own
    similarity (the ceiling); 1.0 when unknown. The baseline itself scores 0.
    """
    if all_failed(metrics):  # nothing was synthesized: a software error, never a score (nor the best)
        return math.nan, {name: math.nan for name in ("similarity", "wer", "cer", "mos", "failures")}
    as_array = {k: np.asarray(float(v) if _finite(v) else math.nan) for k, v in metrics.items()}
    base = {k: np.asarray(float(v) if _finite(v) else math.nan) for k, v in baseline.items()}
    parts = {k: float(v) + 0.0 for k, v in composite_parts(as_array, base, weights, real_similarity).items()}
    return sum(parts.values()), parts


TERMS = [  # (part name, metric key, sign: +1 higher is better)
    ("similarity", "speaker_similarity", +1.0),
    ("wer", "wer", -1.0),
    ("cer", "cer", -1.0),
    ("mos", "mos", +1.0),
    ("failures", "failure_rate", -1.0),
]


def composite_parts(
    metrics: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray], weights: ScoreWeights,
    real_similarity: float | None = None,
) -> dict[str, np.ndarray]:
    """The parts of the composite score, element-wise over arrays of aggregates (one value per bootstrap
    resample; 0-d arrays for one evaluation): the rules of :func:`composite_score`."""
    nan = np.asarray(math.nan)
    base_sim = np.asarray(baseline.get("speaker_similarity", nan), dtype=float)
    ceiling = real_similarity if _finite(real_similarity) else 1.0
    gap = np.where(np.isfinite(base_sim), np.maximum(ceiling - base_sim, SIMILARITY_GAP_FLOOR), 1.0)
    parts = {}
    for name, key, sign in TERMS:
        w = float(getattr(weights, name))
        value = np.asarray(metrics.get(key, nan), dtype=float)
        base = np.asarray(baseline.get(key, nan), dtype=float)
        scale = 1.0 / gap if name == "similarity" else 1.0
        with np.errstate(invalid="ignore"):
            change = w * sign * (value - base) * scale
        # no baseline value: nothing to compare with (0); a lost metric: the worst case (-w), not a free pass
        part = np.where(~np.isfinite(base), 0.0, np.where(~np.isfinite(value), -w, change))
        parts[name] = np.zeros_like(part) if w == 0.0 else part
    return parts


@dataclass
class Decision:
    """What one evaluation means for selection: its score, whether it is the new best, whether to stop.

    ``interval``: the 95 % interval of the composite (a change against the baseline); ``deltas``: per metric
    the value, the base model's, the change and its paired interval (:func:`.stats.paired_deltas`);
    ``versus_best``: the paired comparison with the best at the time (``step``, ``delta``, ``low``,
    ``high``); ``blocked``: why this evaluation may not be the best (a guard, or worse than the base model
    beyond noise); ``note``: how the decision was made when that is not obvious ("cannot be told apart",
    no interval). ``n_sentences`` x ``seeds`` renders were scored.
    """

    step: int
    composite: float
    parts: dict[str, float]
    is_best: bool
    best_step: int
    best_composite: float
    evals_without_improvement: int
    stop: bool = False
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    interval: list[float] | None = None
    deltas: dict[str, dict[str, float | None]] = field(default_factory=dict)
    versus_best: dict[str, Any] | None = None
    blocked: str = ""
    guard: str = ""  # "similarity" / "worse_than_base" when ``blocked``; "wer" when the WER guard stopped
    note: str = ""
    n_sentences: int = 0
    seeds: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Assessment:
    """One evaluation against the baseline: the composite, its parts and (with per-sentence scores) the
    intervals; no state."""

    composite: float
    parts: dict[str, float]
    interval: list[float] | None = None
    deltas: dict[str, dict[str, float | None]] = field(default_factory=dict)
    scores: SentenceScores | None = None


class Selector:
    """Tracks the best evaluation, early stopping and the guards over a sequence of evaluations.

    Pure bookkeeping: feed it each evaluation's aggregate metrics in step order with :meth:`update`, with its
    per-sentence scores (:class:`.stats.SentenceScores`) when known; ``baseline_scores``: the baseline's.
    """

    def __init__(
        self,
        baseline: Mapping[str, Any],
        rules: SelectionRules | None = None,
        real_similarity: float | None = None,
        baseline_scores: SentenceScores | None = None,
    ):
        self.baseline = dict(baseline)
        self.rules = rules or SelectionRules()
        self.real_similarity = real_similarity
        self.baseline_scores = baseline_scores
        self.best_step: int | None = None
        self.best_composite = -math.inf
        self.best_assessment: Assessment | None = None
        self.since_improvement = 0
        self.history: list[Decision] = []

    def score(self, metrics: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        return composite_score(metrics, self.baseline, self.rules.weights, self.real_similarity)

    def _paired(self, scores: SentenceScores | None) -> bool:
        if scores is None or self.baseline_scores is None:
            return False
        try:
            check_paired(scores, self.baseline_scores)
        except ValueError:
            return False
        return scores.n >= MIN_SENTENCES

    def _composite(self, scores: SentenceScores, idx: np.ndarray) -> np.ndarray:
        assert self.baseline_scores is not None
        parts = composite_parts(scores.statistic(idx), self.baseline_scores.statistic(idx),
                                self.rules.weights, self.real_similarity)
        return sum(parts.values())  # type: ignore[return-value]

    def assess(self, metrics: Mapping[str, Any], scores: SentenceScores | None = None) -> Assessment:
        """The composite of ``metrics`` and, with per-sentence ``scores`` paired with the baseline's, the
        interval of the composite and of every metric's change."""
        composite, parts = self.score(metrics)
        out = Assessment(composite, parts, scores=scores)
        if not _finite(composite) or not self._paired(scores):
            return out
        assert scores is not None and self.baseline_scores is not None
        out.deltas = paired_deltas(scores, self.baseline_scores, confidence=CONFIDENCE)
        ci = bootstrap(scores.n, lambda idx: {"composite": self._composite(scores, idx)})
        if ci is not None and all(math.isfinite(x) for x in ci["composite"]):
            out.interval = list(ci["composite"])
        return out

    def compare(self, a: Assessment, b: Assessment) -> dict[str, Any] | None:
        """The paired interval of composite(a) - composite(b) (both against the baseline), or None."""
        if a.scores is None or b.scores is None or not self._paired(a.scores) or not self._paired(b.scores):
            return None
        sa, sb = a.scores, b.scores
        ci = bootstrap(sa.n, lambda idx: {"d": self._composite(sa, idx) - self._composite(sb, idx)})
        if ci is None or not all(math.isfinite(x) for x in ci["d"]):
            return None
        return {"delta": a.composite - b.composite, "low": ci["d"][0], "high": ci["d"][1]}

    def blocked(self, a: Assessment) -> tuple[str, str]:
        """(guard, message) when ``a`` may not be the best; ("", "") otherwise."""
        lo_hi = a.interval or [None, None]
        if significant(*lo_hi) < 0:
            return "worse_than_base", (
                f"worse than the base model beyond noise: composite {a.composite:+.3f} "
                f"({_ci(lo_hi)}); never the best")
        sim = a.deltas.get("speaker_similarity") or {}
        if self.rules.similarity_guard and significant(sim.get("low"), sim.get("high")) < 0:
            return "similarity", (
                f"similarity guard: speaker similarity {sim['value']:.3f} is significantly below the base "
                f"model's {sim['base']:.3f} ({sim['delta']:+.3f}, {_ci([sim['low'], sim['high']])}); "
                "never the best")
        return "", ""

    def update(self, step: int, metrics: Mapping[str, Any], scores: SentenceScores | None = None) -> Decision:
        """Score one evaluation; decide whether it is the new best and whether training should stop."""
        rules = self.rules
        a = self.assess(metrics, scores)
        guard, blocked = self.blocked(a) if _finite(a.composite) else ("", "")
        improved, versus, note = self._improves(a, blocked)
        if improved:
            self.best_step, self.best_composite, self.since_improvement = step, a.composite, 0
            self.best_assessment = a
        else:
            self.since_improvement += 1
        decision = Decision(
            step=step, composite=a.composite, parts=a.parts, is_best=improved,
            best_step=self.best_step if self.best_step is not None else step,
            best_composite=self.best_composite, evals_without_improvement=self.since_improvement,
            interval=a.interval, deltas=a.deltas, versus_best=versus, blocked=blocked, guard=guard, note=note,
            n_sentences=scores.n if scores else 0,
            seeds=round(scores.renders / max(1, scores.n)) if scores else 0,
        )
        if rules.patience and self.since_improvement >= rules.patience:
            decision.stop = True
            decision.reason = (
                f"early stopping: the composite score did not improve (beyond noise and by more than "
                f"{rules.min_delta:g}) in {rules.patience} evaluations (best: step {self.best_step}, "
                f"{self.best_composite:+.3f})" if self.best_step is not None else
                f"early stopping: no evaluation could be the best in {rules.patience} evaluations")
        wer = self.wer_guard(metrics)
        if wer:
            if rules.wer_guard == "stop":
                decision.stop, decision.guard = True, decision.guard or "wer"
                decision.reason = "; ".join(r for r in (decision.reason, wer) if r)
            else:
                decision.warnings.append(wer)
        self.history.append(decision)
        return decision

    def _improves(self, a: Assessment, blocked: str) -> tuple[bool, dict[str, Any] | None, str]:
        """(is the new best, the comparison with the best, a note) for an evaluation (see the module doc)."""
        min_delta = self.rules.min_delta
        if not _finite(a.composite) or blocked:
            return False, None, ""
        if self.best_assessment is None:
            return True, None, "" if a.interval else no_interval_reason(a)
        best = self.best_assessment
        versus = self.compare(a, best)
        gain = a.composite - best.composite
        if versus is None:  # no intervals: the point scores decide
            return gain > min_delta, None, no_interval_reason(a)
        versus["step"] = self.best_step
        beyond_base = significant(*(a.interval or [None, None])) > 0
        best_beyond_base = significant(*(best.interval or [None, None])) > 0
        if gain > min_delta and (versus["low"] > 0 or (beyond_base and not best_beyond_base)):
            return True, versus, ""
        if gain > min_delta:
            return False, versus, (
                f"cannot be told apart from step {self.best_step}: composite {a.composite:+.3f} vs "
                f"{best.composite:+.3f}, difference {gain:+.3f} ({_ci([versus['low'], versus['high']])}) is "
                f"within the noise; the best stays step {self.best_step}")
        return False, versus, ""

    def wer_guard(self, metrics: Mapping[str, Any]) -> str:
        """A message when WER exceeds the baseline's by more than the margin (guard on), else ""."""
        if self.rules.wer_guard == "off":
            return ""
        wer, base = metrics.get("wer", math.nan), self.baseline.get("wer", math.nan)
        if _finite(wer) and _finite(base) and wer > base + self.rules.wer_margin:
            return (
                f"WER guard: WER {wer:.3f} exceeds the base model's {base:.3f} by more than "
                f"{self.rules.wer_margin:g} (overfitting or hallucination)"
            )
        return ""


def _ci(lo_hi: Sequence[float | None]) -> str:
    lo, hi = lo_hi
    return f"95% CI {lo:+.3f} to {hi:+.3f}" if lo is not None and hi is not None else "no interval"


def no_interval_reason(a: Assessment) -> str:
    """Why ``a`` has no interval (too few sentences, no per-sentence scores): the point scores decide."""
    if a.scores is None:
        return "no per-sentence scores: no interval, the point scores decide"
    if a.scores.n < MIN_SENTENCES:
        return (f"only {a.scores.n} sentences: too few for an interval (at least {MIN_SENTENCES}); the point "
                "scores decide")
    return ("no interval (the baseline has no per-sentence scores of the same sentences); the point scores "
            "decide")


def intervals_of(d: Decision) -> dict[str, Any]:
    """What an evaluation's metrics.json records of a decision's intervals and guards ("selection")."""
    return {"interval": d.interval, "deltas": d.deltas, "versus_best": d.versus_best, "blocked": d.blocked,
            "guard": d.guard, "note": d.note, "n_sentences": d.n_sentences, "seeds": d.seeds,
            "confidence": CONFIDENCE}


Evaluated = tuple[int, Mapping[str, Any]] | tuple[int, Mapping[str, Any], SentenceScores | None]


def replay(
    baseline: Mapping[str, Any],
    evaluations: Iterable[Evaluated],
    rules: SelectionRules | None = None,
    real_similarity: float | None = None,
    baseline_scores: SentenceScores | None = None,
) -> tuple[Selector, list[Decision]]:
    """Run a :class:`Selector` over recorded ``(step, metrics[, scores])`` (in step order).

    Used to re-decide the best checkpoint after the fact (``voicetune evaluate --checkpoints all``)
    and by tests. Returns the selector (``best_step``) and every decision.
    """
    sel = Selector(baseline, rules, real_similarity, baseline_scores)
    decisions = [sel.update(*e) for e in sorted(evaluations, key=lambda e: e[0])]
    return sel, decisions


def best_of(
    decisions: Iterable[Decision], allowed_steps: set[int] | None = None, min_delta: float = 0.0
) -> Decision | None:
    """The best decision among ``allowed_steps`` (e.g. steps whose checkpoint still exists), by the
    rule the :class:`Selector` applies during training: in step order, a later evaluation replaces the
    best only when it scores more than ``min_delta`` higher (near-ties go to the earlier, less trained
    checkpoint). Never one that is ``blocked`` (a guard; worse than the base model beyond noise). None when
    nothing is allowed. Point scores only: :func:`replay` over the allowed evaluations applies the noise rule.
    """
    best: Decision | None = None
    for d in sorted(decisions, key=lambda d: d.step):
        allowed = allowed_steps is None or d.step in allowed_steps
        if not _finite(d.composite) or d.blocked or not allowed:
            continue
        if best is None or d.composite > best.composite + min_delta:
            best = d
    return best
