"""Surviving CUDA out-of-memory: free, halve the micro-batch, double the accumulation, go on.

The step that ran out of memory is thrown away (its partial gradients are zeroed) and redone on the same clips
cut into micro-batches half as large, so the effective batch, and the update, stay the same. Only when a
single clip does not fit does training stop, with advice.

Tests cannot run a GPU out of memory on a CPU machine, so :func:`simulate_limit` makes the loop raise a real
``torch.OutOfMemoryError`` for micro-batches above a size: the recovery path that runs is the production one.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

OOM_ADVICE = (
    "one clip per micro-batch does not fit in GPU memory: use --gradient-checkpointing, --finetune lora, "
    "--param-dtype bf16, a lower --max-audio-seconds, or a GPU with more memory"
)

_simulated_limit: int | None = None


def simulate_limit(max_items: int | None) -> None:
    """Testing aid: micro-batches of more than ``max_items`` clips raise OutOfMemoryError (None: off)."""
    global _simulated_limit
    _simulated_limit = max_items


def check_simulated(n_items: int) -> None:
    """Raise ``torch.OutOfMemoryError`` when a simulated memory limit is set and ``n_items`` exceeds it."""
    if _simulated_limit is not None and n_items > _simulated_limit:
        raise torch.OutOfMemoryError(
            f"simulated out of memory: micro-batch of {n_items} clips > simulated limit {_simulated_limit}"
        )


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error (CUDA's, or the allocator's message from other paths)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    """Drop garbage and hand cached blocks back after an OOM (the failed step's tensors are unreachable)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class MicroBatchPlan:
    """The micro-batch size in use; :meth:`shrink` halves it after an OOM (the accumulation doubles)."""

    per_rank: int  # clips per rank per optimizer step (batch_size x grad_accum)
    size: int  # clips per micro-batch (starts at batch_size)
    shrinks: int = 0

    @property
    def accumulation(self) -> int:
        return -(-self.per_rank // self.size)

    def shrink(self, step: int) -> None:
        """Halve the micro-batch after an OOM at ``step``; raise MemoryError when it is already one clip."""
        if self.size <= 1:
            raise MemoryError(OOM_ADVICE)
        old = self.size
        self.size = max(1, self.size // 2)
        self.shrinks += 1
        logger.warning(
            "out of memory at step %d with micro-batch %d: continuing with micro-batch %d x %d "
            "accumulation (same %d clips per step and rank)",
            step,
            old,
            self.size,
            self.accumulation,
            self.per_rank,
        )
