"""`voicetune train --resume RUN_DIR`: continue a run exactly where its latest checkpoint left it.

A checkpoint holds everything the next step depends on: the trained weights (``trainable.pt``), the optimizer,
the LR schedule, the fp16 GradScaler, every rank's RNG states (dropout), the position in the data stream
(:class:`~voicetune.training.sampler.StepSampler`; the conditioning crops are keyed by (seed, epoch, clip)), and
the micro-batch size after any out-of-memory shrink. Restored in that order, with the RNG last, a resumed run
computes the same losses as one that never stopped (tested to 1e-6 on CPU).

Settings that shape the model, the optimizer or the data order cannot change on resume (the error names the
option); the length of the run, checkpointing, logging and evaluation settings can.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from voicetune.backends.registry import load_train_config, merge_options
from voicetune.config import TrainConfig, flatten, resumable_options
from voicetune.run import RunInfo, checkpoints_dir, latest_checkpoint, read_meta, trainable_path
from voicetune.training.checkpoint import restore_rng_state, rng_state
from voicetune.training.errors import TrainError
from voicetune.utils.io import atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

def resume_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The run's saved TrainConfig with the allowed ``overrides`` (flat names); a forbidden change is a
    TrainError.

    Which options may change is declared with the options (``resumable`` in :func:`voicetune.config.opt`): the
    length of the run, checkpointing, logging, evaluation and speed settings that keep the same losses. A
    config.yaml of an earlier version (flat layout) loads too.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise TrainError(f"{path}: missing; is {run_dir} a run folder written by `voicetune train`?")
    saved = load_train_config(path)
    cfg = merge_options(saved, overrides)
    before, after = flatten(saved), flatten(cfg)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    allowed = resumable_options(saved)
    forbidden = [k for k in changed if k not in allowed]
    if forbidden:
        flags = ", ".join(f"--{k.replace('_', '-')} ({before.get(k)!r} -> {after.get(k)!r})" for k in forbidden)
        raise TrainError(
            f"cannot resume {run_dir} with {flags}: these change the model, the optimizer or the data "
            "order of the run; resume without them, or start a new run (--out) from this one's export"
        )
    planned = (
        saved.scheduler in ("cosine", "linear")
        or (saved.scheduler == "step" and not saved.step_size)
        or (saved.scheduler == "cosine_restarts" and not saved.restart_steps)
    )
    if planned and {"max_steps", "epochs"} & set(changed):
        raise TrainError(
            f"--scheduler {saved.scheduler} of {run_dir} was planned for the run's original length; a "
            "resumed run cannot change --max-steps/--epochs (start a new run from this one's export, "
            "or use a schedule that does not depend on the length)"
        )
    if changed:
        logger.info("resuming with changed options: %s", ", ".join(f"{k}={after[k]!r}" for k in changed))
    return cfg


def resume_point(run_dir: Path) -> Path:
    """The checkpoint to continue from (the latest complete one)."""
    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        raise TrainError(
            f"{run_dir}: no complete checkpoint to resume from (it stopped before its first save); "
            "start it again with a new --out"
        )
    return ckpt


def resume_sources(run_dir: Path, dataset: Path | str | None, base: Path | str | None) -> tuple[Path, Path]:
    """Dataset and base folders of the run (from run.json unless given); a different one is logged."""
    info = RunInfo.load(Path(run_dir))
    out = []
    for given, saved, what in ((dataset, info.dataset, "dataset"), (base, info.base, "base")):
        if given is not None and Path(given).resolve() != Path(saved).resolve():
            logger.warning(
                "resuming with %s %s instead of the run's %s; it must hold the same data/weights for "
                "the run to continue exactly",
                what,
                given,
                saved,
            )
            out.append(Path(given))
        else:
            out.append(Path(saved))
    return out[0], out[1]


def clean_leftovers(run_dir: Path) -> None:
    """Remove temporary folders of checkpoints that an interrupted save or prune left behind."""
    d = checkpoints_dir(Path(run_dir))
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.name.startswith(".") and p.is_dir() and p.name.endswith((".tmp", ".deleting", ".old")):
            logger.info("removing leftover %s", p)
            shutil.rmtree(p, ignore_errors=True)


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop metrics.jsonl records after ``step`` (they are logged again); returns how many were dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    records = read_jsonl(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) != len(records) or len(path.read_text(encoding="utf-8").splitlines()) != len(records):
        import json

        atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in kept))
    return len(records) - len(kept)


def extra_state(engine: Any, dist: Any) -> dict[str, Any]:
    """What state.pt holds beyond optimizer/scheduler/RNG/data; call on EVERY rank (it gathers RNG states)."""
    rngs = dist.gather(rng_state())
    return {
        "rng_ranks": rngs,
        "world_size": dist.world,
        "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,
        "micro_batch": engine.plan.size,
        "skipped_total": engine.skipped_total,
    }


def load_state(ckpt: Path) -> dict[str, Any]:
    """state.pt of a checkpoint (voicetune's own file, with numpy RNG states: hence weights_only=False)."""
    path = Path(ckpt) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise TrainError(
            f"{path}: unreadable ({e}); resume from an earlier checkpoint by deleting this one"
        ) from e


def restore(
    ckpt: Path,
    state: dict[str, Any],
    *,
    backend: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    engine: Any,
    sampler: Any,
    dist: Any,
) -> int:
    """Load everything a checkpoint holds into the freshly built objects; returns the step to continue after.

    Call last, right before the first step: the RNG states are restored here.
    """
    saved_world = int(state.get("world_size", 1))
    if saved_world != dist.world:
        raise TrainError(
            f"{ckpt} was written by {saved_world} processes, this run has {dist.world}; resume with "
            f"--gpus {saved_world}"
        )
    backend.load_trained(trainable_path(ckpt))
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise TrainError(f"{ckpt}: the optimizer state does not fit this run's parameters ({e})") from e
    scheduler.load_state_dict(state["scheduler"])
    if engine.scaler is not None and state.get("scaler"):
        engine.scaler.load_state_dict(state["scaler"])
    engine.plan.size = int(state.get("micro_batch", engine.plan.size))
    engine.skipped_total = int(state.get("skipped_total", 0))
    try:
        sampler.load_state_dict(state["data"])
    except ValueError as e:
        raise TrainError(f"{ckpt}: {e}") from e
    rngs = state.get("rng_ranks") or [state["rng"]]
    restore_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else state["rng"])
    step = int(state["step"])
    logger.info(
        "resumed from %s (step %d, epoch %.2f, %s)",
        ckpt,
        step,
        sampler.progress_epochs,
        read_meta(Path(ckpt)).get("loss", "?"),
    )
    return step
