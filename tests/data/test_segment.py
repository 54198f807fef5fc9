import itertools

import numpy as np
import pytest

from voicetune.data.segment import (
    Envelope,
    energy_envelope,
    find_cut,
    merge_short,
    pad_and_extend,
    plan_clips,
    split_long,
)

FS = 0.02  # envelope frame length


def envelope(
    duration: float, speech: list[tuple[float, float]], dips: list[tuple[float, float, float]] = ()
) -> Envelope:
    """Speech probability 0.9 inside ``speech``, 0.05 elsewhere; ``dips`` (start, end, value) lower it."""
    t = (np.arange(int(np.ceil(duration / FS))) + 0.5) * FS
    v = np.full(t.size, 0.05, np.float32)
    for s, e in speech:
        v[(t >= s) & (t < e)] = 0.9
    for s, e, val in dips:
        v[(t >= s) & (t < e)] = val
    return Envelope(v, FS)


def test_merges_a_short_span_with_its_neighbour_across_a_short_pause():
    spans = [(0.0, 0.4), (0.7, 1.0), (3.0, 6.0)]
    assert merge_short(spans, min_len=1.0, max_len=10.0, max_gap=0.7) == [(0.0, 1.0), (3.0, 6.0)]


def test_short_span_joins_the_neighbour_across_the_shorter_pause():
    spans = [(0.0, 2.0), (2.6, 3.0), (3.2, 5.0)]
    assert merge_short(spans, min_len=1.0, max_len=10.0, max_gap=0.7) == [(0.0, 2.0), (2.6, 5.0)]


def test_does_not_merge_across_long_pauses_or_past_max():
    assert merge_short([(0.0, 0.5), (2.0, 4.0)], 1.0, 10.0, max_gap=0.7) == [(0.0, 0.5), (2.0, 4.0)]
    assert merge_short([(0.0, 0.5), (0.7, 9.8)], 1.0, 9.5, max_gap=0.7) == [(0.0, 0.5), (0.7, 9.8)]


def test_long_enough_spans_are_not_merged():
    spans = [(0.0, 2.0), (2.2, 4.0), (4.1, 7.0)]
    assert merge_short(spans, 1.0, 11.6, max_gap=0.7) == spans


def test_splits_a_long_span_at_its_longest_pause():
    env = envelope(20.0, [(0.0, 20.0)], dips=[(5.0, 5.2, 0.1), (9.0, 9.6, 0.1), (14.0, 14.3, 0.1)])
    pieces = split_long([(0.0, 20.0)], env, max_len=11.0, min_len=1.0, threshold=0.35)
    assert pieces == [(0.0, pytest.approx(9.0)), (pytest.approx(9.6), 20.0)]


def test_splits_recursively_until_every_piece_fits():
    dips = [(t, t + 0.25, 0.1) for t in np.arange(2.0, 40.0, 2.5)]
    env = envelope(40.0, [(0.0, 40.0)], dips=dips)
    pieces = split_long([(0.0, 40.0)], env, max_len=8.0, min_len=1.0)
    assert len(pieces) >= 5
    assert all(e - s <= 8.0 + 1e-6 for s, e in pieces)
    assert all(e - s >= 1.0 for s, e in pieces)
    assert pieces == sorted(pieces)
    # every cut lies in a pause
    for (_, e), (s, _) in itertools.pairwise(pieces):
        assert any(d0 - 1e-6 <= e <= s <= d1 + 1e-6 for d0, d1, _ in dips)


def test_without_a_pause_the_cut_goes_to_the_quietest_frame_away_from_the_edges():
    env = envelope(12.0, [(0.0, 12.0)], dips=[(0.2, 0.3, 0.5), (7.0, 7.04, 0.6)])
    a, b = find_cut((0.0, 12.0), env, min_piece=1.0, threshold=0.35)
    assert a == b and 7.0 <= a <= 7.04 + FS  # the dip at 0.2 s is too close to the edge


def test_cut_without_envelope_is_the_middle():
    assert find_cut((2.0, 10.0), None, 1.0, 0.35) == (6.0, 6.0)


def test_padding_never_crosses_the_midpoint_between_neighbours():
    clips = pad_and_extend([(1.0, 3.0), (3.2, 5.0)], duration=10.0, pad=0.3, min_len=1.0, max_len=11.6)
    assert clips[0] == (pytest.approx(0.7), pytest.approx(3.1))
    assert clips[1] == (pytest.approx(3.1), pytest.approx(5.3))


def test_short_clip_is_extended_into_surrounding_silence():
    clips = pad_and_extend([(2.0, 2.4), (6.0, 8.0)], duration=10.0, pad=0.1, min_len=1.5, max_len=11.6)
    s, e = clips[0]
    assert e - s == pytest.approx(1.5)
    assert s <= 2.0 and e >= 2.4
    assert e <= clips[1][0]


def test_plan_flags_a_short_clip_that_cannot_be_extended():
    clips = plan_clips([(0.05, 0.45)], duration=0.5, min_seconds=1.0, max_seconds=11.6)
    assert len(clips) == 1 and not clips[0].ok and "shorter" in clips[0].reason


def test_plan_produces_clips_in_bounds_for_realistic_speech():
    speech = [(0.5, 0.9), (1.2, 3.5), (4.4, 19.0), (20.5, 20.9), (22.0, 25.0)]
    env = envelope(26.0, speech, dips=[(9.0, 9.5, 0.1), (14.0, 14.2, 0.2)])
    clips = plan_clips(speech, 26.0, env, min_seconds=1.0, max_seconds=11.6, pad_seconds=0.15)
    assert all(c.ok for c in clips), clips
    assert all(1.0 - 1e-3 <= c.duration <= 11.6 + 1e-3 for c in clips)
    assert clips[0].n_spans == 2  # the 0.4 s span joined its neighbour
    assert any(
        c.start <= 9.5 + 0.2 and c.end >= 9.0 - 0.2 and c.end < 10 for c in clips
    )  # split at the pause


@pytest.mark.parametrize("seed", range(20))
def test_plan_invariants_on_random_speech(seed):
    rng = np.random.default_rng(seed)
    t, speech = rng.uniform(0, 2), []
    while t < 120:
        length = rng.choice([rng.uniform(0.2, 0.9), rng.uniform(1, 6), rng.uniform(8, 30)])
        speech.append((t, t + length))
        t += length + rng.uniform(0.1, 2.5)
    duration = t + rng.uniform(0, 1)
    dips = [
        (s + f * (e - s), s + f * (e - s) + 0.2, 0.1) for s, e in speech for f in rng.uniform(0.1, 0.9, 2)
    ]
    env = envelope(duration, speech, dips)
    clips = plan_clips(speech, duration, env, min_seconds=1.0, max_seconds=11.6, pad_seconds=0.15)
    for c in clips:
        assert 0.0 <= c.start < c.end <= duration
        assert c.duration <= 11.6 + 1e-3
        assert c.ok == (c.duration >= 1.0 - 1e-3)
    for a, b in itertools.pairwise(clips):
        assert a.end <= b.start + 1e-6
    # all speech is covered by some clip (except zero-length cut points)
    for s, e in speech:
        for x in np.linspace(s + 0.01, e - 0.01, 25):
            assert any(c.start - 1e-3 <= x <= c.end + 1e-3 for c in clips), (s, e, x)
    # only isolated short utterances may stay out of bounds
    assert sum(not c.ok for c in clips) <= sum(1 for s, e in speech if e - s < 1.0)


def test_energy_envelope_marks_silence_low_and_sound_high():
    sr = 16000
    audio = np.zeros(sr * 2, np.float32)
    audio[sr // 2 : sr] = 0.3 * np.sin(np.arange(sr // 2) * 0.3)
    env = energy_envelope(audio, sr)
    i0, i1 = env.frames(0.6, 0.9)
    assert env.values[i0:i1].min() > 0.9
    j0, j1 = env.frames(1.3, 1.9)
    assert env.values[j0:j1].max() < 0.1


# ------------------------------------------------------------------ cutting between words (no pause at all)

from voicetune.data.segment import split_at_words


def _words(n, start=0.0, dur=0.4, gap=0.02, punct_at=()):
    out, t = [], start
    for i in range(n):
        out.append((f"w{i}{'.' if i in punct_at else ''}", t, t + dur))
        t += dur + gap
    return out


def test_split_at_words_cuts_only_in_gaps_between_words_and_fits_max():
    words = _words(40)  # 40 words of 0.4 s, 20 ms apart: 16.8 s without any pause
    pieces = split_at_words((0.0, 16.8), words, max_len=6.0, min_len=1.0)
    assert pieces and all(b - a <= 6.0 + 1e-6 for a, b in pieces)
    for (_, b), (c, _) in itertools.pairwise(pieces):
        assert not any(s + 1e-6 < b < e - 1e-6 or s + 1e-6 < c < e - 1e-6 for _, s, e in words), (b, c)


def test_split_at_words_prefers_punctuation_and_wide_gaps_near_the_middle():
    words = _words(20, punct_at=(8,))  # a sentence ends after word 8 (at ~3.8 s of 8.4 s)
    pieces = split_at_words((0.0, 8.4), words, max_len=6.0, min_len=1.0)
    assert len(pieces) == 2 and abs(pieces[0][1] - words[8][2]) < 0.05


def test_split_at_words_refines_a_tight_gap_on_the_envelope():
    words = [("one", 0.0, 3.0), ("two", 3.0, 6.0), ("three", 6.0, 9.0)]
    env = envelope(9.0, [(0.0, 9.0)], dips=[(3.06, 3.1, 0.2)])  # the real boundary is 60 ms later
    pieces = split_at_words((0.0, 9.0), words, max_len=6.5, min_len=1.0, env=env)
    assert pieces[0][1] == pytest.approx(3.07, abs=0.021)


def test_split_at_words_gives_up_without_words():
    assert split_at_words((0.0, 20.0), [("one", 1.0, 2.0)], 6.0, 1.0) is None


def test_plan_clips_asks_the_word_splitter_only_for_pause_less_speech():
    env = envelope(30.0, [(1.0, 14.0), (16.0, 27.0)], dips=[(21.0, 21.5, 0.05)])
    asked = []

    def splitter(span, max_len, min_len):
        asked.append(span)
        return split_at_words(span, _words(30, start=span[0]), max_len, min_len)

    clips = plan_clips(
        [(1.0, 14.0), (16.0, 27.0)], 30.0, env, min_seconds=1.0, max_seconds=8.0, word_splitter=splitter
    )
    assert all(c.ok for c in clips)
    assert asked == [(1.0, 14.0)]  # the second span had a pause to cut at instead
