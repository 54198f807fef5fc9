"""The training loop: one function you can read in one sitting.

    features (cached once) → seeded epoch batches → autocast forward → loss / grad_accum → backward
    → clip → AdamW step → LR schedule → log (console, metrics.jsonl, TensorBoard) → atomic checkpoint

Everything model-specific goes through the :class:`~voicetune.backends.base.Backend` interface.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from voicetune.backends.base import Backend, Progress, get_backend
from voicetune.config import TrainConfig, load_yaml, merge, save_yaml
from voicetune.data.manifest import Dataset
from voicetune.run import RunInfo, latest_checkpoint, software_versions
from voicetune.train.checkpoint import save_checkpoint
from voicetune.train.optim import build_optimizer, build_scheduler
from voicetune.utils.device import autocast, pick_device, resolve_precision
from voicetune.utils.io import append_jsonl

logger = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """Training cannot start or continue; the message says why and what to change."""


@dataclass
class LoopState:
    """What callbacks see (and may change: ``should_stop``) after every optimizer step."""

    run_dir: Path
    backend: Backend
    cfg: TrainConfig
    total_steps: int
    step: int = 0
    last: dict[str, float] = field(default_factory=dict)
    should_stop: bool = False
    stop_reason: str = ""
    checkpoint: Path | None = None
    steps_per_epoch: int = 1
    save_requested: bool = False  # a callback asks for a checkpoint of this step (e.g. a new best evaluation)


class TrainCallback(Protocol):
    """Hooks into the loop (e.g. the in-loop evaluation harness). All methods are optional no-ops."""

    def on_train_start(self, state: LoopState) -> None: ...

    def on_step_end(self, state: LoopState) -> None: ...

    def on_checkpoint(self, state: LoopState) -> None: ...

    def on_train_end(self, state: LoopState) -> None: ...


def _call(callbacks: list[Any], hook: str, state: LoopState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_checkpoint: Path
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    clips: int = 0


class EpochBatches:
    """Seeded shuffled batches of indices, epoch after epoch; its position is part of a checkpoint."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = 0, 0

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            order = self._order()
            while self.pos < self.n:
                batch = order[self.pos : self.pos + self.batch_size]
                self.pos += self.batch_size
                yield batch
            self.epoch, self.pos = self.epoch + 1, 0

    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_config(config_file: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    cfg = load_yaml(TrainConfig, Path(config_file)) if config_file else TrainConfig()
    return merge(cfg, overrides)


def _prepare_run_dir(run_dir: Path) -> None:
    if latest_checkpoint(run_dir) is not None:
        raise TrainError(
            f"{run_dir} already holds checkpoints from an earlier run; choose a new --out folder "
            "(voicetune never overwrites a finished run)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _optimizer_step(
    backend: Backend, store: Any, batches: Iterator[list[int]], cfg: TrainConfig,
    optimizer: torch.optim.Optimizer, device: torch.device, precision: str,
) -> dict[str, float]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss parts."""
    sums: dict[str, float] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for _ in range(cfg.grad_accum):
        idx = next(batches)
        batch = _to_device(backend.collate([store[i] for i in idx]), device)
        with autocast(device, precision):
            out = backend.loss(batch, cfg)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise TrainError(
                f"loss became {loss.item()} (not finite); lower --lr or use --precision fp32"
            )
        (loss / cfg.grad_accum).backward()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
    if cfg.grad_clip > 0:
        sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums


def train(
    dataset_dir: Path | str,
    base: Path | str,
    out: Path | str,
    cfg: TrainConfig | None = None,
    *,
    config_file: Path | str | None = None,
    progress: Progress | None = None,
    callbacks: list[Any] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Finetune ``base`` on the dataset's train split, writing the run folder ``out``.

    ``cfg`` (or ``config_file``, a YAML TrainConfig) gives the settings; keyword ``overrides``
    (e.g. ``max_steps=50``) are applied on top and validated.
    """
    cfg = merge(cfg, overrides) if cfg else resolve_config(Path(config_file) if config_file else None, overrides)
    run_dir, t0 = Path(out), time.time()
    _prepare_run_dir(run_dir)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)

    dataset = Dataset.load(dataset_dir)
    backend = get_backend(cfg.backend)
    backend.load_base(Path(base), device)
    store = backend.build_features(dataset.train, run_dir / "features", progress)
    if len(store) == 0:
        raise TrainError(f"no usable training clips in {dataset_dir} (all were dropped; see the warnings above)")

    save_yaml(cfg, run_dir / "config.yaml")
    RunInfo(cfg.backend, str(Path(base).resolve()), str(Path(dataset_dir).resolve()), cfg.seed,
            software_versions()).save(run_dir)

    sampler = EpochBatches(len(store), min(cfg.batch_size, len(store)), cfg.seed)
    steps_per_epoch = max(1, sampler.batches_per_epoch() // cfg.grad_accum)
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    if hasattr(backend, "configure_training"):  # speed/memory options (bf16 weights etc.) before the optimizer
        backend.configure_training(cfg)
    optimizer = build_optimizer(backend.param_groups(cfg), cfg, device)
    scheduler = build_scheduler(optimizer, cfg, total)
    writer = _tensorboard(run_dir)
    logger.info(
        "training %s on %s (%s): %d clips, batch %d x accum %d, %d steps (%.1f epochs)",
        cfg.backend, device, precision, len(store), cfg.batch_size, cfg.grad_accum, total,
        total / steps_per_epoch,
    )

    callbacks = list(callbacks or [])
    if cfg.eval_every or cfg.eval_every_epochs:  # in-loop evaluation: baseline, best checkpoint, early stop
        from voicetune.evaluate.in_loop import InLoopEvaluator

        if not any(isinstance(cb, InLoopEvaluator) for cb in callbacks):
            callbacks.append(InLoopEvaluator(progress=progress))
    state = LoopState(run_dir, backend, cfg, total, steps_per_epoch=steps_per_epoch)
    _call(callbacks, "on_train_start", state)
    backend.set_train(True)
    batches, history = iter(sampler), []
    for step in range(1, total + 1):
        t_step = time.time()
        parts = _optimizer_step(backend, store, batches, cfg, optimizer, device, precision)
        scheduler.step()
        parts.update(lr=scheduler.get_last_lr()[0], step_seconds=time.time() - t_step, epoch=sampler.epoch)
        history.append(parts)
        state.step, state.last = step, parts
        if step % cfg.log_every == 0 or step == total:
            _log_step(run_dir, writer, step, total, parts)
        if progress:
            progress(step, total, f"loss {parts['loss']:.4f}")
        _call(callbacks, "on_step_end", state)
        backend.set_train(True)  # a callback may have switched the model to inference mode
        last_step = step == total or state.should_stop
        if (cfg.save_every and step % cfg.save_every == 0) or last_step or state.save_requested:
            state.save_requested = False
            state.checkpoint = save_checkpoint(
                run_dir, step, backend, optimizer, scheduler, {"epoch": sampler.epoch, "loss": parts["loss"]},
                sampler.state(), cfg.keep_last)
            _call(callbacks, "on_checkpoint", state)
        if state.should_stop:
            logger.info("stopping at step %d: %s", step, state.stop_reason)
            break
    _call(callbacks, "on_train_end", state)
    if writer:
        writer.close()
    assert state.checkpoint is not None
    return TrainResult(run_dir, state.step, state.checkpoint, history, time.time() - t0, len(store))


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a broken install should not stop training
        logger.warning("tensorboard is not importable; TensorBoard events are not written")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _log_step(run_dir: Path, writer: Any, step: int, total: int, parts: dict[str, float]) -> None:
    record = {"step": step, "time": time.time(), **{k: round(v, 6) for k, v in parts.items()}}
    append_jsonl(run_dir / "metrics.jsonl", record)
    if writer:
        for k, v in parts.items():
            if k not in ("epoch",):
                writer.add_scalar(f"train/{k}", v, step)
    shown = " ".join(f"{k}={parts[k]:.4f}" for k in ("loss", "text_ce", "mel_ce") if k in parts)
    logger.info("step %d/%d %s lr=%.2e", step, total, shown, parts["lr"])
