"""How sure is a score? 95 % cluster-bootstrap intervals over sentences and seeds (no I/O, no models).

An evaluation renders each of its n sentences with K sampling seeds (``--eval-seeds``). Its scores vary for
two reasons: WHICH sentences were chosen (some are harder for every model) and the sampling of each render.
The intervals here account for both:

* **Clusters.** A bootstrap resample draws n sentences with replacement and keeps ALL K renders of each
  drawn sentence together (a cluster bootstrap, sentences as clusters, seeds inside). The K renders of one
  sentence are not independent (they share the text), so resampling renders one by one would understate the
  noise.
* **The statistic is the aggregate itself**, recomputed on each resample: a mean over renders for speaker
  similarity, MOS, MCD, PESQ, STOI and the failure rate (renders without a value are left out, as the
  aggregate does), and a ratio for WER/CER (total errors / total reference words or characters: the
  corpus-level rate the aggregate reports). On the full sample it equals the aggregate.
* **Paired deltas.** The baseline and a checkpoint are rendered on the same sentences, so a delta's interval
  resamples the SAME sentences for both (one index draw, applied to both models): the sentence difficulty,
  shared by both, cancels. Comparing two checkpoints works the same way (three models, one draw). The
  composite score of :mod:`.selection` is recomputed on each resample from the resampled aggregates.
* **The interval** is the expanded percentile interval (Hesterberg, "What teachers should know about the
  bootstrap", The American Statistician 69(4), 2015): the plain percentile interval is too narrow for small
  samples (it acts as if the bootstrap's variance, which divides by n, were the truth, and as if n were
  large); it is widened by taking the percentiles at alpha' / 2 and 1 - alpha' / 2, where
  ``Phi^-1(1 - alpha'/2) = sqrt(n / (n - 1)) * t_{n-1}(1 - alpha/2)``. With 8 sentences, the 95 % interval
  takes the 0.6 % and 99.4 % percentiles of the resampled statistic. ``tests/evaluation/test_stats.py``
  checks that it covers the true value about 95 % of the time on synthetic scores with a known answer.
* **Too few sentences.** Below :data:`MIN_SENTENCES` sentences no interval is claimed (None): with so few
  clusters even the expanded interval says little. The report and the verdict say so, and selection falls
  back to the point scores.

Limits: the intervals describe the noise of THIS protocol's sentences and seeds as a sample of sentences; the
seeds are the same for every sentence (``--eval-seed``, ``+1``, ...), so an effect of a seed common to all
sentences is not resampled (with K = 2 there is too little to estimate it), and the speaker's reference
clips are fixed. They say whether two checkpoints can be told apart on this probe set, not how a listener
would rank them.

Resampling is done by :func:`scipy.stats.bootstrap` (the resampled sentence indices, ``vectorized``) with a
fixed seed, so the same scores always give the same interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voicetune.scoring.text import normalize_text

CONFIDENCE = 0.95
MIN_SENTENCES = 5  # fewer sentences than this: no interval is claimed
N_RESAMPLES = 4000
SEED = 0
MEAN_METRICS = ("speaker_similarity", "speaker_similarity_dv", "mos", "mcd", "pesq", "stoi", "failure_rate")
RATIO_METRICS = ("wer", "cer")  # total errors / total reference words (characters)


def _num(x: Any) -> float:
    number = isinstance(x, (int, float)) and not isinstance(x, bool)
    return float(x) if number and math.isfinite(x) else math.nan


@dataclass(frozen=True)
class SentenceScores:
    """One model's scores grouped by sentence: per sentence (cluster), the sum over its renders of each
    metric (for WER/CER: of the errors) and the number of renders with a value (for WER/CER: of reference
    words/characters). Build it with :meth:`from_rows`."""

    sentences: tuple[int, ...]  # the sentence indices (the clusters), sorted
    sums: Mapping[str, np.ndarray]
    counts: Mapping[str, np.ndarray]
    renders: int  # renders in all (sentences x seeds)

    @property
    def n(self) -> int:
        return len(self.sentences)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], language: str = "en") -> SentenceScores:
        """From an evaluation's ``per_sentence`` rows (each with ``sentence``, or ``index`` in evaluations
        made before seeds, ``text``, the metrics and ``flags``)."""
        rows = list(rows)
        ids = sorted({int(r.get("sentence", r.get("index", 0))) for r in rows})
        where = {s: i for i, s in enumerate(ids)}
        metrics = MEAN_METRICS + RATIO_METRICS
        sums = {k: np.zeros(len(ids)) for k in metrics}
        counts = {k: np.zeros(len(ids)) for k in metrics}
        for r in rows:
            i = where[int(r.get("sentence", r.get("index", 0)))]
            values = {k: _num(r.get(k)) for k in MEAN_METRICS}
            values["failure_rate"] = 1.0 if r.get("flags") else 0.0
            for k, v in values.items():
                if math.isfinite(v):
                    sums[k][i] += v
                    counts[k][i] += 1
            text = normalize_text(str(r.get("text") or ""), language)
            for k, size in (("wer", len(text.split())), ("cer", len(text))):
                rate = _num(r.get(k))
                if size and math.isfinite(rate):
                    sums[k][i] += rate * size
                    counts[k][i] += size
        return cls(tuple(ids), sums, counts, len(rows))

    def statistic(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric's aggregate over the sentences ``idx`` (shape ``(..., n)``, positions in
        :attr:`sentences`): an array of shape ``idx.shape[:-1]`` per metric (NaN where no render of the drawn
        sentences has a value)."""
        out = {}
        for k, sums in self.sums.items():
            total, count = sums[idx].sum(axis=-1), self.counts[k][idx].sum(axis=-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[k] = np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
        return out

    def point(self) -> dict[str, float]:
        """The aggregates on all sentences."""
        return {k: float(v) for k, v in self.statistic(np.arange(self.n)).items()}


def expanded_alpha(n: int, confidence: float = CONFIDENCE) -> float:
    """The tail probability (both tails) of Hesterberg's expanded percentile interval for n clusters."""
    from scipy import stats

    alpha = 1.0 - confidence
    z = math.sqrt(n / (n - 1)) * stats.t.ppf(1.0 - alpha / 2, n - 1)
    return float(2.0 * stats.norm.sf(z))


def bootstrap(
    n: int,
    statistic: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, tuple[float, float]] | None:
    """The ``confidence`` interval of every value ``statistic`` returns, over n sentences (clusters).

    ``statistic(idx)``: the values for the sentences ``idx`` (shape ``(..., n)``), one array of shape
    ``idx.shape[:-1]`` per name; it sees every model through the same ``idx`` (paired). Returns
    ``{name: (low, high)}`` (NaN bounds where the resamples have no value), or None when ``n`` is below
    :data:`MIN_SENTENCES`.
    """
    if n < MIN_SENTENCES:
        return None
    from scipy import stats

    names: list[str] = []

    def stacked(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        values = statistic(np.asarray(idx, dtype=np.intp))
        names[:] = list(values)
        return np.stack([np.asarray(values[k], dtype=float) for k in names])

    with warnings.catch_warnings():  # a metric without values (NaN) is handled below, not warned about
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((np.arange(n),), stacked, vectorized=True, n_resamples=n_resamples,
                                 method="percentile", rng=np.random.default_rng(seed))
    tail = 50.0 * expanded_alpha(n, confidence)
    dist = np.asarray(result.bootstrap_distribution).reshape(len(names), -1)
    out = {}
    for name, row in zip(names, dist, strict=True):
        finite = row[np.isfinite(row)]
        if finite.size < 0.5 * row.size:  # most resamples have no value: no interval
            out[name] = (math.nan, math.nan)
            continue
        low, high = np.percentile(finite, [tail, 100.0 - tail])
        out[name] = (float(low), float(high))
    return out


def paired_deltas(
    model: SentenceScores, base: SentenceScores, metrics: Sequence[str] = MEAN_METRICS + RATIO_METRICS,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float | None]]:
    """Per metric: ``value``, ``base``, ``delta`` (value - base), the paired interval of the delta (``low``,
    ``high``) and the intervals of the value and of the base's value themselves (``value_low``,
    ``value_high``, ``base_low``, ``base_high``); None without an interval. The two must hold the same
    sentences."""
    check_paired(model, base)
    values, bases = model.point(), base.point()
    metrics = [k for k in metrics if math.isfinite(values[k]) and math.isfinite(bases[k])]

    def stat(idx: np.ndarray) -> dict[str, np.ndarray]:
        m, b = model.statistic(idx), base.statistic(idx)
        out = {k: m[k] - b[k] for k in metrics}
        out.update({f"value:{k}": m[k] for k in metrics})
        out.update({f"base:{k}": b[k] for k in metrics})
        return out

    ci = bootstrap(model.n, stat, confidence) or {}
    nan = (math.nan, math.nan)

    def bound(x: float) -> float | None:
        return x if math.isfinite(x) else None

    out: dict[str, dict[str, float | None]] = {}
    for k in metrics:
        (low, high), (v_low, v_high), (b_low, b_high) = (ci.get(k, nan), ci.get(f"value:{k}", nan),
                                                         ci.get(f"base:{k}", nan))
        out[k] = {"value": values[k], "base": bases[k], "delta": values[k] - bases[k],
                  "low": bound(low), "high": bound(high), "value_low": bound(v_low),
                  "value_high": bound(v_high), "base_low": bound(b_low), "base_high": bound(b_high)}
    return out


def check_paired(*scores: SentenceScores) -> None:
    """Raise ValueError unless every model was scored on the same sentences."""
    if len({s.sentences for s in scores}) > 1:
        raise ValueError("paired intervals need the same sentences in every evaluation (another protocol?)")


def significant(low: float | None, high: float | None) -> int:
    """+1 when an interval lies above 0, -1 below 0, 0 when it holds 0 (or there is none)."""
    if low is None or high is None:
        return 0
    return 1 if low > 0 else -1 if high < 0 else 0
