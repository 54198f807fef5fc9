"""Deterministic train/eval split, stratified by clip duration.

Clips are sorted by duration and every k-th one (from a seeded offset) goes to eval, so the eval split
covers short and long clips alike; the same durations and seed always give the same split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

MIN_RECOMMENDED_SECONDS = 180.0


@dataclass
class SplitResult:
    """Indices (into the input order) of the train and eval clips, and any warnings."""

    train: list[int]
    eval: list[int]
    warnings: list[str] = field(default_factory=list)


def eval_count(n: int, eval_fraction: float, min_eval_clips: int) -> int:
    """How many of ``n`` clips go to eval: ``round(n * eval_fraction)``, at least ``min_eval_clips``, and
    never so many that fewer than half the clips (and at least one) remain for training."""
    if n < 2 or eval_fraction <= 0:
        return 0
    want = max(round(n * eval_fraction), min_eval_clips, 1)
    return min(want, n // 2)


def split_train_eval(
    durations: Sequence[float], eval_fraction: float = 0.15, min_eval_clips: int = 2, seed: int = 1234
) -> SplitResult:
    """Split clips with the given ``durations`` (seconds) into train and eval index lists.

    Stratified by duration: clips sorted by length (ties by index), eval takes positions
    ``floor(offset + i * k)`` with ``k = n / n_eval`` and a seeded ``offset`` in [0, k). Deterministic for a
    given seed. Warns when the total is under three minutes of speech.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must lie in [0, 1), got {eval_fraction}")
    n = len(durations)
    warnings: list[str] = []
    total = float(sum(durations))
    if total < MIN_RECOMMENDED_SECONDS:
        warnings.append(
            f"only {total / 60:.1f} minutes ({total:.0f} s) of usable speech in {n} clips; at least 3 minutes"
            " are recommended for finetuning (10+ minutes give clearly better results)"
        )
    n_eval = eval_count(n, eval_fraction, min_eval_clips)
    if n_eval < min_eval_clips and eval_fraction > 0:
        warnings.append(
            f"only {n} clip(s): {n_eval} held out for evaluation (wanted at least {min_eval_clips})"
        )
    order = sorted(range(n), key=lambda i: (float(durations[i]), i))
    eval_idx: list[int] = []
    if n_eval:
        k = n / n_eval
        offset = float(np.random.default_rng(seed).uniform(0.0, k))
        positions = sorted({min(n - 1, math.floor(offset + i * k)) for i in range(n_eval)})
        eval_idx = sorted(order[p] for p in positions)
    chosen = set(eval_idx)
    train_idx = [i for i in range(n) if i not in chosen]
    for w in warnings:
        logger.warning("%s", w)
    return SplitResult(train_idx, eval_idx, warnings)
