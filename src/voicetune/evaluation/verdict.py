"""The verdict: one or two plain sentences, with numbers, saying whether the finetune beats its base model.

Pure wording (no I/O): :func:`verdict` reads what selection decided (the best checkpoint's composite score,
its 95 % interval and the paired changes of its metrics, as best.json records them; see
:mod:`.selection` and :mod:`.stats`) and says one of:

* ``improved``: the best checkpoint's composite score is above the base model's beyond noise (its interval
  lies above 0): "Finetuning raised speaker similarity from 0.71 to 0.83 (+0.12, 95 % CI +0.09 to +0.15)
  with no loss of intelligibility (WER 4 % → 4 %). Use step_1200.";
* ``no_improvement``: the best cannot be told apart from the base model (its interval holds 0), or there
  is no interval (too few sentences): "No measurable improvement over the base model: ...";
* ``worse``: no checkpoint could be the best (each was worse than the base model beyond noise or was
  excluded by a guard): "No checkpoint can be recommended over the base model: ...";
* ``not_evaluated``: nothing was evaluated.

A "Why:" sentence follows when the run measured a reason: a guard that decided, WER rising, wide
intervals from few sentences, and the ``notes`` other checks pass in (overfitting seen in the validation
loss, an adapter with no effect, too little data...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from voicetune.evaluation.stats import MIN_SENTENCES, significant


@dataclass
class Verdict:
    """The verdict's text, its kind (see the module docstring), the checkpoint it recommends (None: keep the
    base model) and the reasons it gives."""

    text: str
    kind: str
    checkpoint: str | None = None
    why: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _ci(low: Any, high: Any, fmt: str = "{:+.2f}") -> str:
    return f"95 % CI {fmt.format(low)} to {fmt.format(high)}"


def _pct(x: Any) -> str:
    return f"{100 * x:.0f} %" if _finite(x) else "n/a"


def _delta(best: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The paired change of ``key`` (best.json's ``deltas``; older files: from ``metrics``/``baseline``)."""
    d = dict((best.get("deltas") or {}).get(key) or {})
    if not d:
        value, base = (best.get("metrics") or {}).get(key), (best.get("baseline") or {}).get(key)
        both = _finite(value) and _finite(base)
        delta = float(value) - float(base) if both else None  # type: ignore[arg-type]
        d = {"value": value, "base": base, "delta": delta}
    return d


def _similarity(sim: Mapping[str, Any]) -> str:
    """"speaker similarity 0.71 → 0.83 (+0.12, 95 % CI +0.09 to +0.15)"."""
    if not (_finite(sim.get("value")) and _finite(sim.get("base"))):
        return "speaker similarity n/a"
    text = f"speaker similarity {sim['base']:.2f} → {sim['value']:.2f} ({sim['value'] - sim['base']:+.2f}"
    if _finite(sim.get("low")) and _finite(sim.get("high")):
        text += ", " + _ci(sim["low"], sim["high"])
    return text + ")"


def _intelligibility(wer: Mapping[str, Any]) -> str:
    """" with no loss of intelligibility (WER 4 % → 4 %)" or " but WER rose from 4 % to 9 % (...)"."""
    if not (_finite(wer.get("value")) and _finite(wer.get("base"))):
        return ""
    b, v = wer["base"], wer["value"]
    sign = significant(wer.get("low"), wer.get("high"))
    if sign > 0:
        return (f" but WER rose from {_pct(b)} to {_pct(v)} (+{100 * (v - b):.0f} points, "
                f"{_ci(100 * wer['low'], 100 * wer['high'], '{:+.0f}')})")
    if sign < 0:
        return f" and fewer recognition errors (WER {_pct(b)} → {_pct(v)})"
    return f" with no measurable loss of intelligibility (WER {_pct(b)} → {_pct(v)})"


GUARD_NAMES = {"similarity": "the similarity guard", "worse_than_base": "the noise rule (worse than the base "
               "model beyond noise)", "wer": "the WER guard", "wer_warn": "the WER guard"}
GUARD_VERBS = {"wer": "stopped training at", "wer_warn": "warned at"}


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _detail(message: str) -> str:
    """A guard's message without its label and ending ("similarity guard: X; never the best" -> "X")."""
    head, sep, rest = message.partition(": ")
    text = rest if sep and "guard" in head else message
    return text.removesuffix("; never the best")


def guard_text(guards: Sequence[Mapping[str, Any]]) -> str:
    """What the guards decided, in one clause per guard: "the similarity guard excluded step_100 and
    step_200 (step_100: speaker similarity 0.344 is significantly below ...)"."""
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for g in guards:
        by_kind.setdefault(str(g.get("guard") or ""), []).append(g)
    parts = []
    for kind, found in by_kind.items():
        names = [str(g.get("checkpoint")) for g in found]
        where = f"{names[0]}: " if len(names) > 1 else ""
        said = GUARD_NAMES.get(kind, "a guard") + " " + GUARD_VERBS.get(kind, "excluded")
        parts.append(f"{said} {_names(names)} ({where}{_detail(str(found[0].get('message') or ''))})")
    return "; ".join(parts)


def verdict(
    best: Mapping[str, Any] | None,
    evaluated: int,
    guards: Sequence[Mapping[str, Any]] = (),
    notes: Sequence[str] = (),
) -> Verdict:
    """The verdict of a run (or an evaluation's protocol).

    ``best``: the best checkpoint as best.json describes it (``checkpoint``, ``composite``,
    ``composite_interval``, ``deltas`` per metric with ``value``/``base``/``low``/``high``, ``n_sentences``,
    ``seeds``), None when no checkpoint qualified. ``evaluated``: how many checkpoints were scored.
    ``guards``: what the guards decided, one per evaluation (``checkpoint``, ``guard``: "similarity",
    "worse_than_base", "wer" (stopped training), "wer_warn"; ``message``: the decision's words). ``notes``:
    the "why" of other checks (overfitting, no effect, too little data), said as they are.
    """
    decided = guard_text(guards)
    why = [decided, *notes] if decided else list(notes)
    if evaluated <= 0:
        text = "No checkpoint was evaluated: nothing to judge yet."
        return Verdict(text, "not_evaluated", None, list(notes))
    if best is None:
        decided = decided or f"none of the {evaluated} evaluated qualified"
        text = f"No checkpoint can be recommended over the base model: {decided}. Keep the base model."
        return _with_why(Verdict(text, "worse", None, list(notes)))
    name = str(best.get("checkpoint") or f"step_{best.get('step')}")
    composite, interval = best.get("composite"), best.get("composite_interval") or [None, None]
    sim, wer = _delta(best, "speaker_similarity"), _delta(best, "wer")
    n, seeds = best.get("n_sentences") or 0, best.get("seeds") or 0
    sign = significant(*interval)
    if sign > 0:
        if significant(sim.get("low"), sim.get("high")) > 0:
            lead = (f"Finetuning raised speaker similarity from {sim['base']:.2f} to {sim['value']:.2f} "
                    f"({sim['value'] - sim['base']:+.2f}, {_ci(sim['low'], sim['high'])})")
        else:
            lead = (f"Finetuning raised the composite score to {composite:+.2f} ({_ci(*interval)}; "
                    f"{_similarity(sim)})")
        return _with_why(Verdict(f"{lead}{_intelligibility(wer)}. Use {name}.", "improved", name, why))
    if sign == 0 and interval[0] is not None:
        text = (f"No measurable improvement over the base model: the best checkpoint, {name}, scores "
                f"{composite:+.2f} ({_ci(*interval)}), which cannot be told apart from the base model's 0 "
                f"({_similarity(sim)}; WER {_pct(wer.get('base'))} → {_pct(wer.get('value'))}).")
        if n and n < 20:
            why.append(f"with {n} sentences x {seeds} seeds the intervals are wide: more eval sentences "
                       "(--eval-max-sentences, --eval-probes) or seeds (--eval-seeds) narrow them")
        return _with_why(Verdict(text, "no_improvement", name, why))
    text = (f"No measurable improvement over the base model can be claimed: the best checkpoint, {name}, "
            f"scores {composite:+.2f} ({_similarity(sim)}; WER {_pct(wer.get('base'))} → "
            f"{_pct(wer.get('value'))}) but has no interval.")
    why.append(f"only {n} sentences were scored, too few for an interval (at least {MIN_SENTENCES}: raise "
               "--eval-max-sentences or --eval-probes)" if n else
               "no per-sentence scores to measure the noise")
    return _with_why(Verdict(text, "no_improvement", name, why))


def _with_why(v: Verdict) -> Verdict:
    if v.why:
        v.text += " Why: " + "; ".join(w.rstrip(".") for w in v.why) + "."
    return v
