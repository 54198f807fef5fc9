"""The order in which training sees its clips: seeded, length-bucketed, resumable, sharded by rank.

The data is a stream of epochs; each epoch is a seeded permutation of the clips. Every optimizer step takes
the next ``step_size`` clips of the stream (``batch_size x grad_accum x world size``), crossing into the next
epoch when one ends, so every step is full and every clip is seen once per epoch. Rank ``r`` of ``W`` takes
the ``r``-th contiguous share of the step's clips, and cuts its share into micro-batches. So one process with
``grad_accum = k`` and ``k`` processes with ``grad_accum = 1`` see exactly the same clips in the same step.

Length bucketing (``bucket_window`` > 1): each epoch's permutation is cut into windows of ``bucket_window``
steps; inside a window the clips are sorted by length (ties keep their random order), cut into steps, and the
steps shuffled. Clips of similar length then share a micro-batch, so less of each batch is padding, while the
content of a step still changes from epoch to epoch.

The position in the stream (epoch, index) is the whole state: a resumed run continues with the same clips.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


class StepSampler:
    """Yields, for every optimizer step, the step's clips as ``(index, epoch)`` pairs (all ranks' clips)."""

    def __init__(self, lengths: Sequence[int], step_size: int, seed: int, bucket_window: int = 0):
        if not lengths:
            raise ValueError("no clips to sample from")
        self.lengths = [int(x) for x in lengths]
        self.n, self.step_size, self.seed = len(self.lengths), int(step_size), int(seed)
        self.bucket_window = int(bucket_window)
        self.epoch, self.pos = 0, 0
        self._cache: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ orders
    def order(self, epoch: int) -> list[int]:
        """The clip order of ``epoch`` (deterministic in (seed, epoch))."""
        if epoch not in self._cache:
            self._cache = {e: o for e, o in self._cache.items() if e >= epoch - 1}
            self._cache[epoch] = self._build_order(epoch, self.bucket_window)
        return self._cache[epoch]

    def _build_order(self, epoch: int, window_steps: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        if window_steps <= 1:
            return perm
        out: list[int] = []
        window = window_steps * self.step_size
        for start in range(0, self.n, window):
            chunk = sorted(perm[start : start + window], key=lambda i: self.lengths[i])  # stable: random ties
            steps = [chunk[k : k + self.step_size] for k in range(0, len(chunk), self.step_size)]
            for k in torch.randperm(len(steps), generator=g).tolist():
                out.extend(steps[k])
        return out

    # ------------------------------------------------------------------ stream
    def next_step(self) -> list[tuple[int, int]]:
        """The next ``step_size`` clips of the stream, as (index, epoch) pairs; advances the position."""
        items: list[tuple[int, int]] = []
        while len(items) < self.step_size:
            order = self.order(self.epoch)
            take = min(self.step_size - len(items), self.n - self.pos)
            items.extend((i, self.epoch) for i in order[self.pos : self.pos + take])
            self.pos += take
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return items

    def peek_step(self) -> list[tuple[int, int]]:
        """What :meth:`next_step` will return, without advancing the position."""
        epoch, pos = self.epoch, self.pos
        try:
            return self.next_step()
        finally:
            self.epoch, self.pos = epoch, pos

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            yield self.next_step()

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n / self.step_size))

    @property
    def progress_epochs(self) -> float:
        """Epochs completed so far, fractional."""
        return self.epoch + self.pos / self.n

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "seed": self.seed,
            "n": self.n,
            "step_size": self.step_size,
            "bucket_window": self.bucket_window,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; the data and batch geometry must be the ones it was saved with."""
        for key in ("seed", "n", "step_size", "bucket_window"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"the saved data order has {key}={state[key]}, this run {getattr(self, key)}: "
                    "the dataset or the batch geometry changed since the checkpoint"
                )
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    # ------------------------------------------------------------------ reporting
    def padding_fraction(self, micro_batch: int, epoch: int = 0, bucketed: bool | None = None) -> float:
        """Share of padded positions (by length) over the micro-batches of one epoch's order."""
        window = self.bucket_window if (bucketed is None or bucketed) else 0
        order = self._build_order(epoch, window) if bucketed is not None else self.order(epoch)
        padded = real = 0
        for start in range(0, len(order), micro_batch):
            lens = [self.lengths[i] for i in order[start : start + micro_batch]]
            padded += max(lens) * len(lens)
            real += sum(lens)
        return 1.0 - real / padded if padded else 0.0


def rank_share(step_items: Sequence[tuple[int, int]], rank: int, world: int) -> list[tuple[int, int]]:
    """Rank ``rank``'s contiguous share of a step's clips (equal shares: step_size is a multiple of world)."""
    per = len(step_items) // world
    return list(step_items[rank * per : (rank + 1) * per])


def micro_batches(items: Sequence[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    """Cut a rank's share into micro-batches of at most ``size`` clips."""
    return [list(items[k : k + size]) for k in range(0, len(items), max(1, size))]
