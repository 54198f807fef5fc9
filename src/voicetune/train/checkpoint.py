"""Checkpoints: written atomically (a temporary folder renamed into place), newest N kept.

A checkpoint folder ``checkpoints/step_N/`` holds the trainable state only (``trainable.pt``, written by
the backend), the optimizer/scheduler/RNG/data-position state (``state.pt``) and ``meta.json``. The
``latest`` marker is updated only after the folder is complete, so an interrupted save never leaves a
corrupt or half-written "latest".
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicetune.backends.base import Backend
from voicetune.run import best_checkpoint, checkpoints_dir, list_checkpoints, set_latest
from voicetune.utils.io import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    backend: Backend,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    meta: dict[str, Any],
    data_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``checkpoints/step_<step>`` atomically, mark it latest, prune older ones beyond ``keep_last``."""
    final = checkpoints_dir(run_dir) / f"step_{step}"
    with atomic_dir(final) as tmp:
        backend.save(tmp / "trainable.pt")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "data": data_state,
                "step": step,
            },
            tmp / "state.pt",
        )
        atomic_write_json(tmp / "meta.json", {"step": step, **meta})
    set_latest(run_dir, final)
    best = best_checkpoint(run_dir)  # the evaluation harness's pick survives any keep_last
    _prune(run_dir, keep_last, protect={final.name} | ({best.name} if best else set()))
    logger.info("checkpoint written: %s", final)
    return final


def _prune(run_dir: Path, keep_last: int, protect: set[str]) -> None:
    ckpts = list_checkpoints(run_dir)
    for old in ckpts[:-keep_last]:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
