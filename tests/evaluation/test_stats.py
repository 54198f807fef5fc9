"""The cluster-bootstrap intervals of evaluation scores, on synthetic scores with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voicetune.evaluation import metrics as M
from voicetune.evaluation.harness import aggregate
from voicetune.evaluation.stats import (
    MIN_SENTENCES,
    SentenceScores,
    bootstrap,
    expanded_alpha,
    paired_deltas,
    significant,
)

TEXTS = ["The cat sat on the mat.", "Could you call me back at noon?", "It rained all day long in the hills.",
         "Please close the window.", "Forty two people came to the party.", "Where is the station?",
         "The garden looks lovely today.", "She sold three red bikes."]


def rows_of(values: np.ndarray, key: str = "speaker_similarity", texts=None) -> list[dict]:
    """Rows of an evaluation: ``values[i, j]`` is sentence i's render with seed j (seed-major order)."""
    n, k = values.shape
    texts = texts or [f"sentence number {i}" for i in range(n)]
    return [{"sentence": i, "seed": j, "text": texts[i], key: float(values[i, j]), "flags": []}
            for j in range(k) for i in range(n)]


def sample(rng: np.random.Generator, n: int, k: int, mean: float, sentence_sd: float, seed_sd: float,
           effects: np.ndarray | None = None) -> np.ndarray:
    """A random-effects model: a sentence effect shared by its seeds, plus render noise."""
    effects = rng.normal(0, sentence_sd, n) if effects is None else effects
    return mean + effects[:, None] + rng.normal(0, seed_sd, (n, k))


def test_on_all_sentences_the_statistic_is_the_aggregate_the_report_shows():
    rng = np.random.default_rng(1)
    hyps = ["the cat sat on a mat", "could you call me back at noon", "it rained all day in the hills", "",
            "forty two people came to the party", "where is a station", "the garden looks lovely today",
            "she sold three red bikes"]
    rows = []
    for j in range(2):
        for i, (text, hyp) in enumerate(zip(TEXTS, hyps, strict=True)):
            err = M.wer_cer(text, hyp if j == 0 else hyp.replace("the", "a"), "en")
            rows.append({"sentence": i, "seed": j, "text": text, "hypothesis": hyp if j == 0 else
                         hyp.replace("the", "a"), "wer": err["wer"], "cer": err["cer"],
                         "speaker_similarity": math.nan if i == 3 else float(rng.uniform(0.5, 0.9)),
                         "mos": float(rng.uniform(2, 4)), "flags": ["too_short"] if i == 3 else [],
                         "duration_ratio": 1.0, "duration": 1.0, "synthesis_seconds": 0.1})
    agg = aggregate(rows, [r["text"] for r in rows], "en", intrusive=False)
    point = SentenceScores.from_rows(rows, "en").point()
    for key in ("speaker_similarity", "wer", "cer", "mos", "failure_rate"):
        assert point[key] == pytest.approx(agg[key], abs=1e-12), key


def test_the_expanded_percentile_widens_small_samples_and_vanishes_for_large_ones():
    # Hesterberg (2015): Phi^-1(1 - a'/2) = sqrt(n / (n - 1)) t_{n-1}(0.975); n = 8: 1.0690 x 2.3646 = 2.528
    assert expanded_alpha(8) == pytest.approx(0.01148, abs=2e-4)
    assert expanded_alpha(10_000) == pytest.approx(0.05, abs=1e-3)


def test_too_few_sentences_claim_no_interval():
    rng = np.random.default_rng(0)
    few = SentenceScores.from_rows(rows_of(sample(rng, MIN_SENTENCES - 1, 2, 0.7, 0.05, 0.02)))
    base = SentenceScores.from_rows(rows_of(sample(rng, MIN_SENTENCES - 1, 2, 0.7, 0.05, 0.02)))
    assert bootstrap(few.n, few.statistic) is None
    delta = paired_deltas(few, base)["speaker_similarity"]
    assert delta["low"] is None and delta["high"] is None and math.isfinite(delta["delta"])
    assert significant(delta["low"], delta["high"]) == 0


def test_the_seeds_of_a_sentence_are_resampled_together():
    # two identical renders per sentence carry no more information than one: the same interval as one seed
    rng = np.random.default_rng(3)
    one = sample(rng, 10, 1, 0.7, 0.05, 0.0)
    twice = np.repeat(one, 2, axis=1)
    a = bootstrap(10, SentenceScores.from_rows(rows_of(one)).statistic)["speaker_similarity"]
    b = bootstrap(10, SentenceScores.from_rows(rows_of(twice)).statistic)["speaker_similarity"]
    assert a == pytest.approx(b)


@pytest.mark.parametrize("n", [8, 20])
def test_intervals_cover_the_true_mean_at_about_95_percent(n):
    rng = np.random.default_rng(n)
    truth, reps = 0.70, 400
    covered = 0
    for _ in range(reps):
        scores = SentenceScores.from_rows(rows_of(sample(rng, n, 2, truth, 0.06, 0.03)))
        low, high = bootstrap(n, scores.statistic, n_resamples=2000, seed=int(rng.integers(1 << 30)))[
            "speaker_similarity"]
        covered += low <= truth <= high
    assert 0.91 <= covered / reps <= 0.985, covered / reps


def test_paired_delta_intervals_cover_the_true_change_and_cancel_sentence_difficulty():
    rng = np.random.default_rng(11)
    n, change, reps = 8, 0.03, 300
    covered, widths, unpaired = 0, [], []
    for _ in range(reps):
        difficulty = rng.normal(0, 0.08, n)  # shared by both models: a paired interval is not widened by it
        base = SentenceScores.from_rows(rows_of(sample(rng, n, 2, 0.70, 0, 0.02, difficulty)))
        model = SentenceScores.from_rows(rows_of(sample(rng, n, 2, 0.70 + change, 0, 0.02, difficulty)))
        d = paired_deltas(model, base, metrics=("speaker_similarity",))["speaker_similarity"]
        covered += d["low"] <= change <= d["high"]
        widths.append(d["high"] - d["low"])
        lo, hi = bootstrap(n, model.statistic)["speaker_similarity"]
        unpaired.append(hi - lo)
    assert 0.91 <= covered / reps <= 0.985, covered / reps
    assert np.median(widths) < 0.5 * np.median(unpaired)  # the difficulty cancels in the pair


def test_a_real_change_is_significant_and_no_change_mostly_is_not():
    rng = np.random.default_rng(5)
    values = sample(rng, 8, 2, 0.70, 0.05, 0.01)
    base = SentenceScores.from_rows(rows_of(values))
    better = SentenceScores.from_rows(rows_of(values + 0.10 + rng.normal(0, 0.01, values.shape)))
    d = paired_deltas(better, base, metrics=("speaker_similarity",))["speaker_similarity"]
    assert d["delta"] == pytest.approx(0.10, abs=0.02) and significant(d["low"], d["high"]) == 1
    false_alarms = 0
    for _ in range(100):
        same = SentenceScores.from_rows(rows_of(values + rng.normal(0, 0.01, values.shape)))
        d = paired_deltas(same, base, metrics=("speaker_similarity",))["speaker_similarity"]
        false_alarms += significant(d["low"], d["high"]) != 0
    assert false_alarms <= 12  # about 5 % expected


def test_the_corpus_wer_interval_covers_the_true_error_rate():
    # each sentence has its own difficulty (error probability around 10 %) and length; WER is total errors
    # over total reference words, as the aggregate computes it
    rng = np.random.default_rng(7)
    n, truth, reps, covered = 12, 0.10, 300, 0
    for _ in range(reps):
        lengths = rng.integers(4, 16, n)
        p = rng.beta(2, 18, n)  # mean 0.10
        rows = [{"sentence": i, "seed": j, "text": " ".join(["word"] * int(lengths[i])),
                 "wer": rng.binomial(lengths[i], p[i]) / lengths[i], "flags": []}
                for j in range(2) for i in range(n)]
        scores = SentenceScores.from_rows(rows)
        low, high = bootstrap(n, scores.statistic, n_resamples=2000, seed=int(rng.integers(1 << 30)))["wer"]
        covered += low <= truth <= high
    assert 0.90 <= covered / reps <= 0.985, covered / reps


def test_each_value_gets_its_own_interval_beside_the_paired_one_of_its_change():
    rng = np.random.default_rng(2)
    values = sample(rng, 10, 2, 0.70, 0.05, 0.01)
    base = SentenceScores.from_rows(rows_of(values))
    model = SentenceScores.from_rows(rows_of(values + 0.05))
    d = paired_deltas(model, base, metrics=("speaker_similarity",))["speaker_similarity"]
    alone = bootstrap(10, model.statistic)["speaker_similarity"]
    assert (d["value_low"], d["value_high"]) == pytest.approx(alone)  # the same draws: the same interval
    assert d["value_low"] < d["value"] < d["value_high"] and d["base_low"] < d["base"] < d["base_high"]
    assert d["high"] - d["low"] < 0.2 * (d["value_high"] - d["value_low"])  # the pair cancels the sentences
