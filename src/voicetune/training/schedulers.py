"""Learning-rate schedules: a linear warm-up (``--warmup-steps``) composed with the chosen decay.

Every schedule is a ``torch.optim.lr_scheduler`` built from a TrainConfig; warm-up and decay are joined with
``SequentialLR`` so the state dict (and so a resumed run) covers both. One scheduler step per optimizer
step.

============== ==========================================================================================
constant       the peak LR after warm-up (the Coqui XTTS recipe)
cosine         cosine from the peak down to ``lr x min_lr_ratio`` at the last step
cosine_restarts cosine with warm restarts every ``restart_steps`` steps (period x ``restart_mult`` each time)
linear         linear from the peak down to ``lr x min_lr_ratio`` at the last step
step           x ``lr_gamma`` every ``step_size`` steps
multistep      x ``lr_gamma`` at each of ``milestones`` (steps counted from the start of training, or epochs
of
               ``steps_per_epoch`` steps with ``milestone_unit`` epochs)
exponential    x ``lr_gamma`` every step
============== ==========================================================================================
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import lr_scheduler as S

SCHEDULERS = ("constant", "cosine", "cosine_restarts", "linear", "step", "multistep", "exponential")


def _decay(optimizer: torch.optim.Optimizer, cfg: Any, steps: int, warmup: int,
           steps_per_epoch: int = 1) -> S.LRScheduler:
    """The schedule after warm-up, over ``steps`` scheduler steps."""
    kind, steps = cfg.scheduler, max(1, steps)
    last = max(1, steps - 1)  # index of the last step: cosine and linear reach their floor there
    if kind == "constant":
        return S.LambdaLR(optimizer, lambda _: 1.0)
    if kind == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=last, eta_min=cfg.lr * cfg.min_lr_ratio)
    if kind == "cosine_restarts":
        period = cfg.restart_steps or max(1, steps // 4)
        return S.CosineAnnealingWarmRestarts(
            optimizer, T_0=period, T_mult=cfg.restart_mult, eta_min=cfg.lr * cfg.min_lr_ratio
        )
    if kind == "linear":
        return S.LinearLR(
            optimizer, start_factor=1.0, end_factor=max(cfg.min_lr_ratio, 1e-8), total_iters=last
        )
    if kind == "step":
        return S.StepLR(optimizer, step_size=cfg.step_size or max(1, steps // 3), gamma=cfg.lr_gamma)
    if kind == "multistep":
        per = max(1, int(steps_per_epoch)) if cfg.milestone_unit == "epochs" else 1
        milestones = sorted({max(1, int(m) * per - warmup) for m in cfg.milestones})
        return S.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.lr_gamma)
    if kind == "exponential":
        return S.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
    raise ValueError(f"unknown scheduler {kind!r}; choose one of {list(SCHEDULERS)} with --scheduler")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int,
                    steps_per_epoch: int = 1) -> S.LRScheduler:
    """Warm-up over ``cfg.warmup_steps`` (LR rising linearly to the peak), then ``cfg.scheduler``
    (``steps_per_epoch``: optimizer steps per epoch, for milestones counted in epochs)."""
    warmup = max(0, min(cfg.warmup_steps, max(0, total_steps - 1)))
    if not warmup:
        return _decay(optimizer, cfg, total_steps, 0, steps_per_epoch)
    # LambdaLR first: step k of the warm-up (k = 0 .. warmup-1) runs at (k + 1) / warmup of the peak.
    ramp = S.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / warmup))
    decay = _decay(optimizer, cfg, total_steps - warmup, warmup, steps_per_epoch)
    return S.SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
