"""Best-checkpoint selection, early stopping and the WER guard, driven by recorded score sequences."""

from __future__ import annotations

import math

import pytest

from voicetune.evaluation.selection import (
    ScoreWeights,
    SelectionRules,
    Selector,
    best_of,
    composite_score,
    replay,
)

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
    sel, decisions = replay(BASE, [(10, m(sim=0.80)), (20, m(sim=0.808)), (30, m(sim=0.806))], rules, REAL_SIM)
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
