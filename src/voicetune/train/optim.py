"""Optimizer and learning-rate schedule built from a TrainConfig."""

from __future__ import annotations

from typing import Any

import torch

from voicetune.config import TrainConfig


def build_optimizer(param_groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the backend's parameter groups; the fused kernel on CUDA."""
    groups = [g for g in param_groups if any(p.requires_grad for p in g["params"])]
    if not groups:
        raise ValueError("the backend exposes no trainable parameters")
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``cfg.warmup_steps``, then constant (the Coqui XTTS recipe's shape)."""
    warmup = max(0, cfg.warmup_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
