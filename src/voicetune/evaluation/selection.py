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

Early stopping (:class:`Selector`): the best score so far must improve by more than ``min_delta``
within ``patience`` evaluations, else training stops. The WER guard stops (or warns) when an
evaluation's WER exceeds the baseline's by more than ``wer_margin``: the model is losing the text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

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
    parts: dict[str, float] = {}
    if all_failed(metrics):  # nothing was synthesized: a software error, never a score (nor the best)
        return math.nan, {name: math.nan for name in ("similarity", "wer", "cer", "mos", "failures")}
    base_sim = baseline.get("speaker_similarity", math.nan)
    ceiling = real_similarity if _finite(real_similarity) else 1.0
    gap = max(ceiling - base_sim, SIMILARITY_GAP_FLOOR) if _finite(base_sim) else 1.0
    terms = [  # (part name, metric key, sign: +1 higher is better, scale)
        ("similarity", "speaker_similarity", +1.0, 1.0 / gap),
        ("wer", "wer", -1.0, 1.0),
        ("cer", "cer", -1.0, 1.0),
        ("mos", "mos", +1.0, 1.0),
        ("failures", "failure_rate", -1.0, 1.0),
    ]
    for name, key, sign, scale in terms:
        w = float(getattr(weights, name))
        if w == 0.0:
            parts[name] = 0.0
            continue
        value, base = metrics.get(key, math.nan), baseline.get(key, math.nan)
        if not _finite(base):
            parts[name] = 0.0  # nothing to compare with
        elif not _finite(value):
            parts[name] = -w  # lost the metric altogether: the worst case, not a free pass
        else:
            parts[name] = w * sign * (float(value) - float(base)) * scale + 0.0  # no -0.0
    return sum(parts.values()), parts


@dataclass
class Decision:
    """What one evaluation means for selection: its score, whether it is the new best, whether to stop."""

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Selector:
    """Tracks the best evaluation, early stopping and the WER guard over a sequence of evaluations.

    Pure bookkeeping: feed it each evaluation's aggregate metrics in step order with :meth:`update`.
    """

    def __init__(
        self,
        baseline: Mapping[str, Any],
        rules: SelectionRules | None = None,
        real_similarity: float | None = None,
    ):
        self.baseline = dict(baseline)
        self.rules = rules or SelectionRules()
        self.real_similarity = real_similarity
        self.best_step: int | None = None
        self.best_composite = -math.inf
        self.since_improvement = 0
        self.history: list[Decision] = []

    def score(self, metrics: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        return composite_score(metrics, self.baseline, self.rules.weights, self.real_similarity)

    def update(self, step: int, metrics: Mapping[str, Any]) -> Decision:
        """Score one evaluation; decide whether it is the new best and whether training should stop."""
        rules = self.rules
        composite, parts = self.score(metrics)
        improved = _finite(composite) and (
            self.best_step is None or composite > self.best_composite + rules.min_delta
        )
        if improved:
            self.best_step, self.best_composite, self.since_improvement = step, composite, 0
        else:
            self.since_improvement += 1
        decision = Decision(
            step=step, composite=composite, parts=parts, is_best=improved,
            best_step=self.best_step if self.best_step is not None else step,
            best_composite=self.best_composite, evals_without_improvement=self.since_improvement,
        )
        if rules.patience and self.since_improvement >= rules.patience:
            decision.stop = True
            decision.reason = (
                f"early stopping: the composite score did not improve by more than {rules.min_delta:g} "
                f"in {rules.patience} evaluations (best: step {decision.best_step}, "
                f"{decision.best_composite:+.3f})"
            )
        guard = self.wer_guard(metrics)
        if guard:
            if rules.wer_guard == "stop":
                decision.stop = True
                decision.reason = "; ".join(r for r in (decision.reason, guard) if r)
            else:
                decision.warnings.append(guard)
        self.history.append(decision)
        return decision

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


def replay(
    baseline: Mapping[str, Any],
    evaluations: Iterable[tuple[int, Mapping[str, Any]]],
    rules: SelectionRules | None = None,
    real_similarity: float | None = None,
) -> tuple[Selector, list[Decision]]:
    """Run a :class:`Selector` over recorded ``(step, metrics)`` pairs (in step order).

    Used to re-decide the best checkpoint after the fact (``voicetune evaluate --checkpoints all``)
    and by tests. Returns the selector (``best_step``) and every decision.
    """
    sel = Selector(baseline, rules, real_similarity)
    decisions = [sel.update(step, m) for step, m in sorted(evaluations, key=lambda e: e[0])]
    return sel, decisions


def best_of(
    decisions: Iterable[Decision], allowed_steps: set[int] | None = None, min_delta: float = 0.0
) -> Decision | None:
    """The best decision among ``allowed_steps`` (e.g. steps whose checkpoint still exists), by the
    rule the :class:`Selector` applies during training: in step order, a later evaluation replaces the
    best only when it scores more than ``min_delta`` higher (near-ties go to the earlier, less trained
    checkpoint). None when nothing is allowed.
    """
    best: Decision | None = None
    for d in sorted(decisions, key=lambda d: d.step):
        if not _finite(d.composite) or (allowed_steps is not None and d.step not in allowed_steps):
            continue
        if best is None or d.composite > best.composite + min_delta:
            best = d
    return best
