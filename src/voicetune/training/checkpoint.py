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
from voicetune.run import best_checkpoint, checkpoints_dir, list_checkpoints, set_latest, trainable_path
from voicetune.utils.io import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when CUDA is in use) this process's current-GPU RNG states.

    Only the current GPU: ``get_rng_state_all`` would create a CUDA context on every visible GPU from every
    rank of a multi-GPU job.
    """
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if isinstance(state["cuda"], (list, tuple)):  # checkpoints of earlier versions: every GPU's state
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    backend: Backend,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    meta: dict[str, Any],
    data_state: dict[str, Any],
    keep_last: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoints/step_<step>`` atomically, mark it latest, prune older ones beyond ``keep_last``.

    ``extra`` (e.g. the GradScaler, every rank's RNG, the micro-batch plan: voicetune.training.resume) is stored in
    state.pt next to the optimizer, scheduler, RNG and data-order state.
    """
    final = checkpoints_dir(run_dir) / f"step_{step}"
    with atomic_dir(final) as tmp:
        backend.save(trainable_path(tmp))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "data": data_state,
                "step": step,
                **(extra or {}),
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
            # renamed first (atomic), so an interrupted deletion never leaves a half-deleted "complete" checkpoint
            doomed = old.with_name(f".{old.name}.deleting")
            try:
                old.rename(doomed)
            except OSError as e:
                logger.warning("could not prune %s: %s", old, e)
                continue
            shutil.rmtree(doomed, ignore_errors=True)
