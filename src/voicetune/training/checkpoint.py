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
from voicetune.utils.disk import disk_full_guard, ensure_free_space, tree_bytes
from voicetune.utils.io import atomic_dir, atomic_torch_save, atomic_write_json

logger = logging.getLogger(__name__)


STATE_FORMAT = 2
"""state.pt holds tensors and plain Python values only (no pickled objects): it loads with weights_only=True.
Format 1 (voicetune before the reliability work) pickled NumPy's RNG state and is refused
(resume.load_state)."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when CUDA is in use) this process's current-GPU RNG states, as tensors
    and plain lists/numbers (so that a checkpoint loads with ``torch.load(weights_only=True)``).

    Only the current GPU: ``get_rng_state_all`` would create a CUDA context on every visible GPU from every
    rank of a multi-GPU job.
    """
    version, internal, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": {"bit_generator": str(kind), "key": [int(x) for x in key], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], np.asarray(n["key"], dtype=np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
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

    ``extra`` (e.g. the GradScaler, every rank's RNG, the micro-batch plan: voicetune.training.resume) is
    stored in state.pt next to the optimizer, scheduler, RNG and data-order state.
    """
    final = checkpoints_dir(run_dir) / f"step_{step}"
    need = checkpoint_bytes(run_dir, backend, optimizer)
    ensure_free_space(final.parent, need, f"checkpoint step_{step}")
    with disk_full_guard(final.parent, need, f"checkpoint step_{step}"):
        with atomic_dir(final) as tmp:
            backend.save(trainable_path(tmp))
            atomic_torch_save(
                {
                    "format": STATE_FORMAT,
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


def checkpoint_bytes(run_dir: Path, backend: Backend, optimizer: torch.optim.Optimizer) -> int:
    """Bytes the next checkpoint needs: the size of the latest one, else the trained tensors, their optimizer
    state and the trainable module's tensors (an upper estimate for the first one)."""
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        return tree_bytes(ckpts[-1]) + (1 << 20)
    module = _nbytes(backend.trainable().state_dict().values())
    state = _nbytes(v for st in optimizer.state.values() for v in st.values())
    if not state:  # before the first step: Adam-like optimizers keep two moments per trained weight
        state = 2 * _nbytes(p for g in optimizer.param_groups for p in g["params"])
    return int(1.05 * (module + state)) + (1 << 20)


def _nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _prune(run_dir: Path, keep_last: int, protect: set[str]) -> None:
    ckpts = list_checkpoints(run_dir)
    for old in ckpts[:-keep_last]:
        if old.name not in protect:
            # renamed first (atomic), so an interrupted deletion never leaves a half-deleted "complete"
            # checkpoint
            doomed = old.with_name(f".{old.name}.deleting")
            try:
                old.rename(doomed)
            except OSError as e:
                logger.warning("could not prune %s: %s", old, e)
                continue
            shutil.rmtree(doomed, ignore_errors=True)
