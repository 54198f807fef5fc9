import logging

import numpy as np
import pytest

from voicetune.data.split import eval_count, split_train_eval


def durations(n: int, seed: int = 0) -> list[float]:
    return list(np.random.default_rng(seed).uniform(1.0, 11.0, n))


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    d = durations(60)
    a = split_train_eval(d, 0.15, 2, seed=7)
    assert a == split_train_eval(d, 0.15, 2, seed=7)
    others = [split_train_eval(d, 0.15, 2, seed=s).eval for s in range(8, 14)]
    assert any(o != a.eval for o in others)


def test_split_is_a_partition_with_the_requested_size():
    d = durations(40)
    r = split_train_eval(d, 0.2, 2, seed=1)
    assert sorted(r.train + r.eval) == list(range(40))
    assert not set(r.train) & set(r.eval)
    assert len(r.eval) == 8


def test_min_eval_clips_applies_to_small_datasets():
    r = split_train_eval(durations(6), 0.1, 2, seed=0)
    assert len(r.eval) == 2 and len(r.train) == 4


def test_eval_never_takes_the_majority_or_the_only_clip():
    assert eval_count(1, 0.5, 2) == 0
    assert eval_count(3, 0.15, 2) == 1
    assert eval_count(100, 0.15, 2) == 15
    assert eval_count(10, 0.0, 2) == 0
    r = split_train_eval([5.0], 0.15, 2, seed=0)
    assert r.train == [0] and r.eval == []


def test_eval_is_stratified_by_duration():
    d = [float(i) for i in range(1, 31)]  # 1..30 s
    for seed in range(10):
        ev = split_train_eval(d, 0.1, 3, seed=seed).eval
        chosen = sorted(d[i] for i in ev)
        # one clip from each third of the duration range
        assert chosen[0] <= 10 and 10 < chosen[1] <= 20 and chosen[2] > 20, chosen


def test_warns_when_less_than_three_minutes_of_speech(caplog):
    with caplog.at_level(logging.WARNING):
        r = split_train_eval([5.0] * 20, 0.15, 2, seed=0)  # 100 s
    assert any("1.7 minutes" in w and "3 minutes" in w for w in r.warnings)
    assert "1.7 minutes" in caplog.text
    assert split_train_eval([10.0] * 20, 0.15, 2, seed=0).warnings == []


def test_invalid_fraction_is_rejected():
    with pytest.raises(ValueError):
        split_train_eval([1.0, 2.0], 1.0, 1, seed=0)
