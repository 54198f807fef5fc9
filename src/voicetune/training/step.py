"""One optimizer step: micro-batches → autocast forward → scaled backward → all-reduce → unscale → clip →
step.

* Precision: bf16 or fp16 autocast, or fp32. fp16 scales the loss with ``torch.amp.GradScaler``: gradients
  are unscaled before clipping, and a step whose gradients overflowed is skipped (the scale is lowered).
* The rank's clips of the step are cut into micro-batches (:class:`~voicetune.training.oom.MicroBatchPlan`);
  each micro-batch's loss is weighted by its share of the clips, so the gradient is the mean over the step
  whatever the micro-batch size.
* Out of memory: every rank learns about it (an all-reduced flag), the partial gradients are dropped, the
  micro-batch is halved and the same step is redone on the same clips.
* A non-finite loss or gradient norm never reaches the weights: the step is skipped with a warning; several in
  a row stop training with advice.
* Reading the loss waits for the device. Before that wait, the first micro-batch of the next step
  (``upcoming``) is read and collated, so the host's data work overlaps the device's step instead of leaving
  the device idle between steps (on an H200, 9 of 28 ms a step before).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from voicetune.backends.base import Backend, FeatureStore
from voicetune.training import oom
from voicetune.training.distributed import Dist, all_reduce_gradients
from voicetune.training.errors import TrainError
from voicetune.training.sampler import micro_batches
from voicetune.utils.device import autocast

logger = logging.getLogger(__name__)

MAX_SKIPPED_IN_A_ROW = 5


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 training, None otherwise (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


@dataclass
class StepEngine:
    """Runs optimizer steps; holds what persists between them (micro-batch plan, skip streak)."""

    backend: Backend
    store: FeatureStore
    optimizer: torch.optim.Optimizer
    cfg: Any
    device: torch.device
    precision: str
    dist: Dist
    plan: oom.MicroBatchPlan
    scaler: torch.amp.GradScaler | None = None
    params: list[torch.nn.Parameter] = field(default_factory=list)
    skipped_in_a_row: int = 0
    skipped_total: int = 0
    graphs: Any = None  # voicetune.training.graphs.GraphedMicroBatches, or None (eager micro-batches)
    ahead: tuple[tuple[tuple[int, int], ...], dict[str, Any]] | None = None  # (items, collated batch)

    def __post_init__(self) -> None:
        from voicetune.training import graphs

        if not self.params:
            self.params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        self.graphs = graphs.build(self.backend, self.optimizer, self.cfg, self.device, self.precision)

    # ------------------------------------------------------------------ micro-batches
    def _load(self, items: list[tuple[int, int]]) -> dict[str, Any]:
        if self.ahead is not None and self.ahead[0] == tuple(items):
            batch, self.ahead = self.ahead[1], None
            return batch
        loaded = []
        for idx, epoch in items:
            # random crops follow (seed, epoch, clip): resumable, the same on any number of processes, and
            # when a step is redone (FeatureStore.set_epoch / forget; no-ops for a store without them)
            self.store.set_epoch(epoch)
            self.store.forget([idx])
            loaded.append(self.store[idx])
        return self.backend.collate(loaded)

    def _accumulate(self, share: list[tuple[int, int]],
                    upcoming: list[tuple[int, int]] | None = None) -> tuple[dict[str, float], str]:
        """Forward/backward over the rank's share; returns (weighted loss parts + counts, problem). Loads the
        first micro-batch of ``upcoming`` (the next step's share) while the device works.

        The loss parts stay on the device until every micro-batch is done, then are read in one transfer: no
        host-device synchronisation between forward and backward, so the host queues the backward while the
        GPU still runs the forward. A non-finite loss is found then; its step is skipped before any update.
        """
        sums: dict[str, torch.Tensor] = {}
        counts = {"samples": float(len(share)), "audio_seconds": 0.0, "tokens": 0.0}
        try:
            for n, chunk in enumerate(micro_batches(share, self.plan.size)):
                batch = self._load(chunk)
                stats = self.backend.batch_stats(batch)
                counts["audio_seconds"] += stats.get("audio_seconds", 0.0)
                counts["tokens"] += stats.get("tokens", 0.0)
                oom.check_simulated(len(chunk))
                weight = len(chunk) / len(share)
                # each step starts with zero gradients
                out = self._graphed(batch, weight, grads_are_zero=n == 0)
                if out is None:
                    out = self._eager(batch, weight)
                for k, v in out.items():
                    part = v.detach().float() * weight
                    sums[k] = sums[k] + part if k in sums else part
                del batch, out
            if upcoming:
                first = micro_batches(upcoming, self.plan.size)[0]
                self.ahead = (tuple(first), self._load(first))
        except torch.OutOfMemoryError:
            return self._out_of_memory()
        except RuntimeError as e:  # some kernels report CUDA OOM as a plain RuntimeError
            if not oom.is_oom(e):
                raise
            return self._out_of_memory()
        values = dict(zip(sums, torch.stack(list(sums.values())).tolist())) if sums else {}
        if not math.isfinite(values.get("loss", 0.0)):
            return values, f"loss became {values['loss']}"
        return {**values, **counts}, ""

    def _eager(self, batch: dict[str, Any], weight: float) -> dict[str, torch.Tensor]:
        batch = to_device(batch, self.device)
        with autocast(self.device, self.precision):
            out = self.backend.loss(batch, self.cfg)
        scaled = out["loss"] * weight
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return out

    def _graphed(
        self, batch: dict[str, Any], weight: float, grads_are_zero: bool
    ) -> dict[str, torch.Tensor] | None:
        inputs = self.backend.graph_inputs(batch) if self.graphs is not None else None
        return None if inputs is None else self.graphs.run(inputs, weight, grads_are_zero)

    def _out_of_memory(self) -> tuple[dict[str, float], str]:
        if self.graphs is not None:  # graphs hold memory pools; a capture cut short is not reusable
            logger.warning("out of memory with CUDA graphs: continuing without them (--cuda-graphs off)")
            self.graphs = None
        return {}, "oom"

    # ------------------------------------------------------------------ one step
    def run(self, step: int, share: list[tuple[int, int]],
            upcoming: list[tuple[int, int]] | None = None) -> dict[str, float]:
        """One optimizer step over ``share`` (this rank's clips); returns its logged values. ``upcoming``: the
        next step's share, loaded ahead (see the module docstring)."""
        while True:
            parts, problem = self._accumulate(share, upcoming)
            oom_anywhere, problem_anywhere = self.dist.any_of((problem == "oom", bool(problem)), self.device)
            if oom_anywhere:
                self.optimizer.zero_grad(set_to_none=True)
                oom.free_memory(self.device)
                try:
                    self.plan.shrink(step)
                except MemoryError as e:
                    raise TrainError(str(e)) from None
                continue
            if problem_anywhere:
                return self._skip(step, problem or "another rank's loss was not finite")
            return self._update(step, parts)

    def _skip(self, step: int, why: str) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_in_a_row += 1
        self.skipped_total += 1
        logger.warning("step %d skipped: %s (%d in a row)", step, why, self.skipped_in_a_row)
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise TrainError(
                f"{self.skipped_in_a_row} steps in a row had a non-finite loss or gradient ({why}); "
                "lower --lr, raise --warmup-steps, or use --precision bf16/fp32"
            )
        return {"loss": float("nan"), "skipped": 1.0, "micro_batch": float(self.plan.size)}

    def _update(self, step: int, parts: dict[str, float]) -> dict[str, float]:
        all_reduce_gradients(self.params, self.dist)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        clip = getattr(self.optimizer, "clip_gradients", None)  # FlatAdamW: clipping folded into its update
        norm = float(
            clip(max_norm) if clip is not None else torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        )
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped by the scaler when the gradients overflowed
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
            parts["loss_scale"] = scale
        else:
            skipped = not math.isfinite(norm)
            if skipped:
                self.optimizer.zero_grad(set_to_none=True)
                return self._skip(step, f"gradient norm {norm}")
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            logger.warning(
                "step %d: fp16 gradients overflowed; the step was skipped and the loss scale lowered to %g",
                step,
                self.scaler.get_scale() if self.scaler else 0,
            )
        else:
            self.skipped_in_a_row = 0
        parts.update(grad_norm=norm, micro_batch=float(self.plan.size), skipped=float(skipped))
        return parts
