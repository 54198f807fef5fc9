"""Best-checkpoint selection, early stopping and the WER guard, driven by recorded score sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voicetune.evaluation.selection import (
    ScoreWeights,
    SelectionRules,
    Selector,
    best_of,
    composite_score,
    replay,
)
from voicetune.evaluation.stats import SentenceScores

BASE = {"speaker_similarity": 0.70, "wer": 0.05, "cer": 0.02, "mos": 3.0, "failure_rate": 0.0}
REAL_SIM = 0.90  # the real recordings' similarity: the gap to close is 0.20


def m(sim=0.70, wer=0.05, cer=0.02, mos=3.0, fail=0.0):
    return {"speaker_similarity": sim, "wer": wer, "cer": cer, "mos": mos, "failure_rate": fail}


def test_the_baseline_scores_zero_and_closing_the_similarity_gap_scores_its_weight():
    assert composite_score(BASE, BASE, real_similarity=REAL_SIM)[0] == 0.0
    score, parts = composite_score(m(sim=0.90), BASE, real_similarity=REAL_SIM)
    assert score == pytest.approx(1.0) and parts["similarity"] == pytest.approx(1.0)
    half, _ = composite_score(m(sim=0.80), BASE, real_similarity=REAL_SIM)
    assert half == pytest.approx(0.5)
    # without a known ceiling the gap is to 1.0; a base at the ceiling is floored at 0.05
    assert composite_score(m(sim=0.85), BASE)[0] == pytest.approx(0.15 / 0.30)
    assert composite_score(m(sim=0.95), BASE, real_similarity=0.70)[0] == pytest.approx(0.25 / 0.05)


def test_each_metric_moves_the_score_in_its_better_direction_by_its_weight():
    w = ScoreWeights()
    assert composite_score(m(wer=0.15), BASE, w, REAL_SIM)[0] == pytest.approx(-0.10 * w.wer)
    assert composite_score(m(mos=3.4), BASE, w, REAL_SIM)[0] == pytest.approx(0.4 * w.mos)
    assert composite_score(m(fail=0.25), BASE, w, REAL_SIM)[0] == pytest.approx(-0.25 * w.failures)
    assert composite_score(m(cer=0.50), BASE, w, REAL_SIM)[0] == 0.0  # CER carries no weight by default
    cer_only = ScoreWeights(similarity=0, wer=0, cer=1, mos=0, failures=0)
    assert composite_score(m(cer=0.12), BASE, cer_only)[0] == pytest.approx(-0.10)


def test_a_lost_metric_costs_its_whole_weight_and_an_unknown_baseline_costs_nothing():
    score, parts = composite_score(m(sim=math.nan), BASE, real_similarity=REAL_SIM)
    assert parts["similarity"] == -1.0 and score == -1.0
    no_base_mos = {**BASE, "mos": math.nan}
    assert composite_score(m(mos=4.5), no_base_mos)[1]["mos"] == 0.0


def test_similarity_gain_that_costs_intelligibility_does_not_win():
    # step 20 closes half the similarity gap; step 40 a little more but WER rises by 0.30 (hallucination)
    sel, decisions = replay(BASE, [(20, m(sim=0.80)), (40, m(sim=0.83, wer=0.35))],
                            SelectionRules(wer_guard="off"), REAL_SIM)
    assert sel.best_step == 20
    assert decisions[1].composite < decisions[0].composite
    assert decisions[0].is_best and not decisions[1].is_best


def test_best_is_the_highest_composite_of_a_recorded_sequence():
    scores = [(10, m(sim=0.72)), (20, m(sim=0.78)), (30, m(sim=0.84, mos=3.2)), (40, m(sim=0.83)),
              (50, m(sim=0.80))]
    sel, decisions = replay(BASE, scores, SelectionRules(patience=0), REAL_SIM)
    assert sel.best_step == 30
    assert [d.step for d in decisions if d.is_best] == [10, 20, 30]
    assert all(d.best_step == 30 for d in decisions[2:])
    assert not any(d.stop for d in decisions)  # patience 0: never stops


def test_early_stopping_triggers_after_patience_evaluations_without_improvement():
    rules = SelectionRules(patience=2, min_delta=0.01)
    sel = Selector(BASE, rules, REAL_SIM)
    sequence = [0.74, 0.80, 0.79, 0.805]  # composites 0.20, 0.50, 0.45, 0.525
    decisions = [sel.update(10 * (i + 1), m(sim=s)) for i, s in enumerate(sequence[:3])]
    assert [d.stop for d in decisions] == [False, False, False]  # step 30 is the first miss
    d4 = sel.update(40, m(sim=sequence[3]))  # +0.025 composite over 0.50: improvement > min_delta
    assert d4.is_best and not d4.stop and d4.evals_without_improvement == 0
    d5 = sel.update(50, m(sim=0.70))
    assert not d5.stop and d5.evals_without_improvement == 1
    d6 = sel.update(60, m(sim=0.75))
    assert d6.stop and "did not improve" in d6.reason and "step 40" in d6.reason


def test_improvements_within_min_delta_do_not_count_and_near_ties_go_to_the_earlier_step():
    rules = SelectionRules(patience=2, min_delta=0.05)
    # composites: 0.50, 0.54 (+0.04: within min_delta), 0.53
    sel, decisions = replay(
        BASE, [(10, m(sim=0.80)), (20, m(sim=0.808)), (30, m(sim=0.806))], rules, REAL_SIM
    )
    assert sel.best_step == 10
    assert decisions[-1].stop  # two evaluations without a real improvement
    assert best_of(decisions, min_delta=0.05).step == 10
    assert best_of(decisions).step == 20  # with no tolerance the strictly highest wins


def test_best_of_only_considers_checkpoints_that_still_exist():
    _, decisions = replay(BASE, [(10, m(sim=0.76)), (20, m(sim=0.85)), (30, m(sim=0.80))],
                          SelectionRules(patience=0), REAL_SIM)
    assert best_of(decisions).step == 20
    assert best_of(decisions, allowed_steps={10, 30}).step == 30
    assert best_of(decisions, allowed_steps=set()) is None


@pytest.mark.parametrize("action", ["stop", "warn", "off"])
def test_wer_guard_stops_warns_or_stays_quiet(action):
    rules = SelectionRules(patience=0, wer_guard=action, wer_margin=0.10)
    sel = Selector(BASE, rules, REAL_SIM)
    ok = sel.update(10, m(sim=0.85, wer=0.14))  # +0.09: inside the margin
    assert not ok.stop and not ok.warnings
    bad = sel.update(20, m(sim=0.88, wer=0.20))  # +0.15: beyond it
    assert bad.stop == (action == "stop")
    if action == "stop":
        assert "WER guard" in bad.reason
    assert bool(bad.warnings) == (action == "warn")


def test_online_selection_and_replay_agree():
    seq = [(5, m(sim=0.71)), (10, m(sim=0.79, wer=0.06)), (15, m(sim=0.82, fail=0.125)), (20, m(sim=0.81))]
    rules = SelectionRules(patience=5)
    online = Selector(BASE, rules, REAL_SIM)
    live = [online.update(s, x) for s, x in seq]
    sel, replayed = replay(BASE, list(reversed(seq)), rules, REAL_SIM)  # replay sorts by step
    assert [d.composite for d in live] == [d.composite for d in replayed]
    assert online.best_step == sel.best_step


def test_invalid_rules_are_rejected():
    with pytest.raises(ValueError, match="wer_guard"):
        SelectionRules(wer_guard="panic")
    with pytest.raises(ValueError, match=">= 0"):
        SelectionRules(patience=-1)


# ------------------------------------------------------------------------ with per-sentence scores (noise)

N_SENT, N_SEEDS = 8, 2


def scored(sim, wer, rng, noise=0.01):
    """Per-sentence rows of an evaluation (8 sentences x 2 seeds) around ``sim`` (per sentence, or per
    sentence and seed) and ``wer`` (per sentence), and their aggregate."""
    sim = np.broadcast_to(np.asarray(sim).reshape(N_SENT, -1), (N_SENT, N_SEEDS))
    rows = [{"sentence": i, "seed": j, "text": "one two three four five six seven eight nine ten",
             "speaker_similarity": float(sim[i, j] + rng.normal(0, noise)), "wer": float(max(0.0, wer[i])),
             "cer": float(max(0.0, wer[i]) / 2), "mos": 3.0, "flags": []}
            for j in range(N_SEEDS) for i in range(N_SENT)]
    scores = SentenceScores.from_rows(rows)
    return scores.point(), scores


@pytest.fixture
def sentences():
    rng = np.random.default_rng(0)
    return rng, 0.70 + rng.normal(0, 0.05, N_SENT), np.full(N_SENT, 0.05)


def test_a_checkpoint_worse_than_the_baseline_beyond_noise_is_never_best(sentences):
    rng, sim, wer = sentences
    base, base_scores = scored(sim, wer, rng)
    sel = Selector(base, SelectionRules(similarity_guard=False), REAL_SIM, base_scores)
    worse = sel.update(10, *scored(sim - 0.06, wer + 0.10, rng))  # similarity and WER both worse
    assert worse.interval[1] < 0 and worse.guard == "worse_than_base" and not worse.is_best
    assert sel.best_step is None
    # a checkpoint that is merely not better (within the noise) may still be the best so far
    same = sel.update(20, *scored(sim, wer, rng))
    assert same.interval[0] < 0 < same.interval[1] and same.is_best and sel.best_step == 20
    assert best_of([worse]) is None


def test_the_similarity_guard_keeps_a_voice_that_drifted_from_the_speaker_out(sentences):
    rng, sim, wer = sentences
    base, base_scores = scored(sim, wer + 0.30, rng)
    drifted = scored(sim - 0.03, wer, rng)  # WER 30 points better, similarity 0.03 lower: composite > 0
    sel = Selector(base, SelectionRules(), REAL_SIM, base_scores)
    d = sel.update(10, *drifted)
    assert d.composite > 0 and d.deltas["speaker_similarity"]["high"] < 0
    assert not d.is_best and d.guard == "similarity" and "similarity guard" in d.blocked
    off = Selector(base, SelectionRules(similarity_guard=False), REAL_SIM, base_scores)
    assert off.update(10, *drifted).is_best  # configurable


def test_best_moves_only_when_the_gain_beats_the_noise(sentences):
    rng, sim, wer = sentences
    base, base_scores = scored(sim, wer, rng)
    sel = Selector(base, SelectionRules(patience=0), REAL_SIM, base_scores)
    renders = sim[:, None] + 0.08 + rng.normal(0, 0.02, (N_SENT, N_SEEDS))
    first = sel.update(10, *scored(renders, wer, rng, noise=0.0))
    assert first.is_best and first.interval[0] > 0
    one_sentence = renders.copy()
    one_sentence[0] += 0.10  # better on one sentence of 8: a higher mean, but not beyond the noise
    close = sel.update(20, *scored(one_sentence, wer, rng, noise=0.0))
    assert close.composite > first.composite + 0.01 and not close.is_best and sel.best_step == 10
    assert close.versus_best["low"] <= 0 < close.versus_best["high"]
    assert "cannot be told apart from step 10" in close.note
    clear = sel.update(30, *scored(renders + 0.06, wer, rng, noise=0.0))
    assert clear.is_best and clear.versus_best["low"] > 0 and sel.best_step == 30


def test_without_per_sentence_scores_the_point_scores_decide_and_the_decision_says_so():
    sel = Selector(BASE, SelectionRules(), REAL_SIM)
    d = sel.update(10, m(sim=0.75))
    assert d.is_best and d.interval is None and "no interval" in d.note
