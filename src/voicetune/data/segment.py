"""Turn VAD speech spans into training clips whose length lies in [min_seconds, max_seconds].

Pure functions on (start, end) lists in seconds plus a frame-level envelope (speech probability or
normalised energy); no models, so every rule is unit-testable:

1. :func:`split_long` cuts spans longer than the maximum at their longest internal pause (frames of the
   envelope below a threshold), recursively, so each piece fits; with no pause at all it asks a
   ``word_splitter`` (prepare passes one built on faster-whisper word timestamps, see
   :func:`split_at_words`: cuts only between words, preferring punctuation and wide gaps) and, without
   one or without words, cuts at the quietest frame, away from the edges.
2. :func:`merge_short` joins a span shorter than the minimum with the neighbour across the shorter
   pause, when that pause is short and the result still fits.
3. :func:`pad_and_extend` adds padding (never past the midpoint between two clips' speech) and extends
   clips still too short into the free audio around them.

:func:`plan_clips` runs the three steps and flags what could not be brought into bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Span = tuple[float, float]
Word = tuple[str, float, float]  # (word, start_s, end_s), absolute times
WordSplitter = Callable[[Span, float, float], "list[Span] | None"]  # (span, max_len, min_len) -> pieces

_EPS = 1e-6


@dataclass(frozen=True)
class Envelope:
    """A frame-level activity envelope: ``values[i]`` covers [i * frame_seconds, (i + 1) * frame_seconds)."""

    values: np.ndarray
    frame_seconds: float

    def frames(self, start: float, end: float) -> tuple[int, int]:
        """Frame index range [i0, i1) covering [start, end)."""
        i0 = max(0, int(np.floor(start / self.frame_seconds + _EPS)))
        i1 = min(len(self.values), int(np.ceil(end / self.frame_seconds - _EPS)))
        return i0, max(i0, i1)


@dataclass(frozen=True)
class ClipSpan:
    """A planned clip: where it lies in the source, how many speech spans it holds, and whether it fits."""

    start: float
    end: float
    n_spans: int
    reason: str = ""  # empty when within bounds, else why not (e.g. "shorter than min_seconds")

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return not self.reason


def energy_envelope(audio: np.ndarray, sr: int, frame_seconds: float = 0.02) -> Envelope:
    """A [0, 1] activity envelope from frame RMS in dB (0 at 60 dB below the loudest frame, 1 at it).

    A model-free stand-in for VAD probabilities (used by tests and as a fallback).
    """
    hop = max(1, round(sr * frame_seconds))
    n = int(np.ceil(len(audio) / hop))
    padded = np.zeros(n * hop, dtype=np.float64)
    padded[: len(audio)] = audio
    rms = np.sqrt(np.mean(padded.reshape(n, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms / (rms.max() + 1e-12) + 1e-12)
    return Envelope(np.clip(1.0 + db / 60.0, 0.0, 1.0).astype(np.float32), hop / sr)


def _below_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where ``mask`` is True."""
    if not mask.any():
        return []
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def find_cut(span: Span, env: Envelope | None, min_piece: float, threshold: float) -> Span:
    """Where to cut ``span``: the longest pause (run of envelope frames below ``threshold``) leaving at least
    ``min_piece`` seconds on both sides, as (pause_start, pause_end); with no pause, the quietest frame
    (ties: nearest the middle) as a zero-length cut; with no envelope, the middle.
    """
    s, e = span
    lo, hi = s + min_piece, e - min_piece
    mid = (s + e) / 2
    if hi <= lo:
        return mid, mid
    if env is None or len(env.values) == 0:
        return mid, mid
    i0, i1 = env.frames(lo, hi)
    if i1 <= i0:
        return mid, mid
    vals = env.values[i0:i1]
    runs = _below_runs(vals < threshold)
    fs = env.frame_seconds
    if runs:

        def key(run: tuple[int, int]) -> tuple[int, float]:
            centre = (i0 + (run[0] + run[1]) / 2) * fs
            return run[1] - run[0], -abs(centre - mid)

        a, b = max(runs, key=key)
        return max(lo, (i0 + a) * fs), min(hi, (i0 + b) * fs)
    centres = (np.arange(i0, i1) + 0.5) * fs
    score = vals.astype(np.float64) + 1e-3 * np.abs(centres - mid) / max(e - s, _EPS)
    t = float(np.clip(centres[int(np.argmin(score))], lo, hi))
    return t, t


def split_long(
    spans: list[Span],
    env: Envelope | None,
    max_len: float,
    min_len: float,
    threshold: float = 0.35,
    word_splitter: WordSplitter | None = None,
) -> list[Span]:
    """Split every span longer than ``max_len`` at its longest internal pause, recursively.

    Pieces are kept at least ``min_len`` long where the span allows it (``min_len`` is capped at a third
    of the span so that a cut always exists). A span without any pause goes to ``word_splitter`` (when
    given), which returns pieces cut between words, or None to fall back to the quietest frame.
    """
    if max_len <= 0:
        raise ValueError("max_len must be > 0")
    out: list[Span] = []
    stack = sorted(spans, reverse=True)
    while stack:
        s, e = stack.pop()
        if e - s <= max_len + _EPS:
            out.append((s, e))
            continue
        a, b = find_cut((s, e), env, min(min_len, (e - s) / 3), threshold)
        if a == b and word_splitter is not None:
            pieces = word_splitter((s, e), max_len, min_len)
            if pieces and len(pieces) > 1:
                out.extend(sorted(pieces))
                continue
        # right piece pushed first so the left one is handled first (output stays sorted)
        stack.append((b, e))
        stack.append((s, a))
    return out


def _gap_cut(gap: Span, env: Envelope | None, search: float) -> Span:
    """The cut inside an inter-word gap: the gap itself when it is a real pause (>= 40 ms), else the
    quietest envelope frame within ``search`` seconds of it (word timestamps are only ~50 ms accurate)."""
    g0, g1 = gap
    if g1 - g0 >= 0.04 or env is None or len(env.values) == 0:
        return g0, g1
    i0, i1 = env.frames(g0 - search, g1 + search)
    if i1 <= i0:
        return g0, g1
    t = (i0 + int(np.argmin(env.values[i0:i1])) + 0.5) * env.frame_seconds
    return t, t


def split_at_words(
    span: Span,
    words: Sequence[Word],
    max_len: float,
    min_len: float,
    env: Envelope | None = None,
    search: float = 0.08,
) -> list[Span] | None:
    """Cut ``span`` into pieces of at most ``max_len`` seconds, only between words (never mid-word).

    ``words``: (word, start, end) in absolute seconds, e.g. faster-whisper word timestamps. Each cut is
    made in the gap between two consecutive words, chosen by (gap length + a bonus after punctuation,
    closeness to the middle), leaving at least ``min(min_len, span / 3)`` on both sides; recursively
    until every piece fits. A gap narrower than 40 ms is refined to the quietest ``env`` frame near it.
    Returns None when ``span`` has fewer than two words or no admissible gap.
    """
    ws = sorted((float(a), float(b), str(w)) for w, a, b in words if b > span[0] and a < span[1])

    def cut(s: float, e: float, ws: list[tuple[float, float, str]]) -> list[Span] | None:
        if e - s <= max_len + _EPS:
            return [(s, e)]
        min_piece = min(min_len, (e - s) / 3)
        best: tuple[float, int, float, float] | None = None
        for i in range(len(ws) - 1):
            g0, g1 = ws[i][1], ws[i + 1][0]
            if g1 < g0:
                g0 = g1 = (g0 + g1) / 2
            if g0 - s < min_piece or e - g1 < min_piece:
                continue
            punct = ws[i][2].rstrip()[-1:] in ".,;:!?"
            score = (g1 - g0) + (0.25 if punct else 0.0) - 0.2 * abs((g0 + g1) / 2 - (s + e) / 2) / (e - s)
            if best is None or score > best[0]:
                best = (score, i, g0, g1)
        if best is None:
            return None
        _, i, g0, g1 = best
        a, b = _gap_cut((g0, g1), env, search)
        left, right = cut(s, a, ws[: i + 1]), cut(b, e, ws[i + 1 :])
        if left is None or right is None:
            return None
        return left + right

    if len(ws) < 2:
        return None
    return cut(span[0], span[1], ws)


def merge_short(
    spans: list[Span], min_len: float, max_len: float, max_gap: float, pad: float = 0.0
) -> list[Span]:
    """Merge spans shorter than ``min_len`` (counting ``pad`` on both sides) with a neighbour.

    The shortest span is merged first, with the neighbour across the shorter pause, provided that pause is
    at most ``max_gap`` and the merged span (plus padding) is at most ``max_len``. Repeats until no short
    span can be merged. Spans already long enough are only merged into when a short neighbour needs it.
    """
    groups = [[s, e, False] for s, e in sorted(spans)]  # [start, end, cannot-merge]

    def length(g: list) -> float:
        return g[1] - g[0] + 2 * pad

    while True:
        short = [i for i, g in enumerate(groups) if length(g) < min_len - _EPS and not g[2]]
        if not short:
            break
        i = min(short, key=lambda k: length(groups[k]))
        g = groups[i]
        options = []
        for j in (i - 1, i + 1):
            if 0 <= j < len(groups):
                other = groups[j]
                gap = max(other[0], g[0]) - min(other[1], g[1])
                merged = [min(g[0], other[0]), max(g[1], other[1]), False]
                if gap <= max_gap + _EPS and length(merged) <= max_len + _EPS:
                    options.append((gap, j, merged))
        if not options:
            g[2] = True  # neighbours only grow, so this span can never be merged later either
            continue
        _, j, merged = min(options, key=lambda o: (o[0], o[1]))
        lo = min(i, j)
        groups[lo : lo + 2] = [merged]
    return [(g[0], g[1]) for g in groups]


def pad_and_extend(
    spans: list[Span], duration: float, pad: float, min_len: float, max_len: float
) -> list[Span]:
    """Pad each span by ``pad`` (never past the midpoint of the pause to its neighbour nor the audio
    bounds), then extend spans still shorter than ``min_len`` into the free audio around them, evenly on
    both sides where possible, without overlapping a neighbour or growing past ``max_len``.
    """
    spans = sorted(spans)
    n = len(spans)
    out: list[list[float]] = []
    for k, (s, e) in enumerate(spans):
        left = 0.0 if k == 0 else (spans[k - 1][1] + s) / 2
        right = duration if k == n - 1 else (e + spans[k + 1][0]) / 2
        out.append([max(left, s - pad), min(right, e + pad)])
    for k, c in enumerate(out):
        need = min(min_len, max_len) - (c[1] - c[0])
        if need <= _EPS:
            continue
        room_left = c[0] - (out[k - 1][1] if k > 0 else 0.0)
        room_right = (out[k + 1][0] if k < n - 1 else duration) - c[1]
        take_left = min(room_left, need / 2)
        take_right = min(room_right, need - take_left)
        take_left = min(room_left, need - take_right)
        c[0] -= max(0.0, take_left)
        c[1] += max(0.0, take_right)
    return [(max(0.0, c[0]), min(duration, c[1])) for c in out]


def plan_clips(
    speech: list[Span],
    duration: float,
    env: Envelope | None = None,
    *,
    min_seconds: float = 1.0,
    max_seconds: float = 11.6,
    pad_seconds: float = 0.15,
    max_merge_gap: float = 0.7,
    pause_threshold: float = 0.35,
    word_splitter: WordSplitter | None = None,
) -> list[ClipSpan]:
    """Clips from VAD speech spans: split long ones, merge short neighbours, pad, extend short ones.

    ``speech``: unpadded speech spans in seconds; ``duration``: length of the audio; ``env``: frame
    envelope in which pauses are frames below ``pause_threshold``; ``word_splitter``: see
    :func:`split_long` (used for long stretches of speech without any pause). Every clip lies within [0,
    duration] and clips never overlap. A clip that cannot be brought within [min_seconds, max_seconds] (an
    isolated short utterance with no room around it) carries a ``reason``.
    """
    if not 0 < min_seconds < max_seconds:
        raise ValueError(f"need 0 < min_seconds ({min_seconds}) < max_seconds ({max_seconds})")
    spans = sorted((max(0.0, s), min(duration, e)) for s, e in speech if min(duration, e) > max(0.0, s))
    inner_max = max(max_seconds - 2 * pad_seconds, max_seconds / 2)
    spans = split_long(spans, env, inner_max, min_seconds, pause_threshold, word_splitter)
    spans = merge_short(spans, min_seconds, max_seconds, max_merge_gap, pad_seconds)
    clips = pad_and_extend(spans, duration, pad_seconds, min_seconds, max_seconds)
    out = []
    for (s, e), (cs, ce) in zip(spans, clips):
        n_spans = sum(1 for a, b in speech if a < e - _EPS and b > s + _EPS) or 1
        reason = ""
        if ce - cs < min_seconds - 1e-3:
            reason = f"shorter than min_seconds ({ce - cs:.2f} s < {min_seconds:g} s)"
        elif ce - cs > max_seconds + 1e-3:
            reason = f"longer than max_seconds ({ce - cs:.2f} s > {max_seconds:g} s)"
        out.append(ClipSpan(round(cs, 4), round(ce, 4), n_spans, reason))
    return out
