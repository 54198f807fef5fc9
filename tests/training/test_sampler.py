"""The data stream: every clip once per epoch, seeded, length-bucketed, resumable, sharded by rank."""

from __future__ import annotations

import pytest

from voicetune.training.sampler import StepSampler, micro_batches, rank_share

LENGTHS = [5, 90, 12, 40, 41, 7, 88, 60, 3, 33, 70, 19, 25, 80, 11, 50, 64, 9, 45, 30]


@pytest.mark.parametrize("window", [0, 4])
def test_every_clip_is_seen_once_per_epoch_and_steps_are_full(window):
    s = StepSampler(LENGTHS, step_size=6, seed=3, bucket_window=window)
    # 60 clips = 3 epochs of 20, steps straddle epochs
    stream = [item for _ in range(10) for item in s.next_step()]
    for epoch in range(3):
        assert sorted(i for i, e in stream if e == epoch) == list(range(20))
    assert s.epoch == 3 and s.pos == 0


def test_same_seed_same_order_other_seed_other_order_and_epochs_differ():
    a, b, c = (StepSampler(LENGTHS, 4, seed) for seed in (1, 1, 2))
    assert a.order(0) == b.order(0) != c.order(0)
    assert a.order(0) != a.order(1)


def test_length_bucketing_cuts_padding_and_still_shuffles():
    s = StepSampler(LENGTHS, step_size=4, seed=0, bucket_window=5)
    bucketed, shuffled = s.padding_fraction(4, bucketed=True), s.padding_fraction(4, bucketed=False)
    assert bucketed < 0.6 * shuffled, (bucketed, shuffled)
    assert s.order(0) != s.order(1)  # the step contents change from epoch to epoch


def test_a_restored_position_continues_the_same_stream():
    a = StepSampler(LENGTHS, step_size=6, seed=7, bucket_window=2)
    for _ in range(5):
        a.next_step()
    b = StepSampler(LENGTHS, step_size=6, seed=7, bucket_window=2)
    b.load_state_dict(a.state_dict())
    assert [a.next_step() for _ in range(6)] == [b.next_step() for _ in range(6)]


def test_a_position_saved_for_another_batch_geometry_is_refused():
    a = StepSampler(LENGTHS, step_size=6, seed=7)
    with pytest.raises(ValueError, match="step_size"):
        StepSampler(LENGTHS, step_size=4, seed=7).load_state_dict(a.state_dict())


def test_ranks_split_a_step_like_accumulation_does_on_one_process():
    step = StepSampler(LENGTHS, step_size=8, seed=1).next_step()
    one_process = micro_batches(rank_share(step, 0, 1), 2)  # batch 2 x accumulation 4
    # 2 x 2 on each rank
    two_ranks = [mb for r in range(2) for mb in micro_batches(rank_share(step, r, 2), 2)]
    assert one_process == two_ranks
    assert sorted(i for mb in two_ranks for i, _ in mb) == sorted(i for i, _ in step)


def test_peeking_gives_the_next_step_without_advancing():
    s = StepSampler([5, 3, 8, 1, 9], step_size=2, seed=3, bucket_window=2)
    for _ in range(7):  # across epoch ends (5 clips, steps of 2)
        position = s.state_dict()
        ahead = s.peek_step()
        assert s.state_dict() == position
        assert s.next_step() == ahead
