"""`voicetune train --resume RUN_DIR`: continue a run exactly where its latest checkpoint left it.

A checkpoint holds everything the next step depends on: the trained weights (``trainable.pt``), the optimizer,
the LR schedule, the fp16 GradScaler, every rank's RNG states (dropout), the position in the data stream
(:class:`~voicetune.training.sampler.StepSampler`; the conditioning crops are keyed by (seed, epoch, clip)),
and the micro-batch size after any out-of-memory shrink. Restored in that order, with the RNG last, a resumed
run computes the same losses as one that never stopped (tested to 1e-6 on CPU).

Settings that shape the model, the optimizer or the data order cannot change on resume (the error names the
option); the length of the run, checkpointing, logging and evaluation settings can.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from voicetune.backends.registry import load_train_config, merge_options
from voicetune.config import TrainConfig, flatten, resumable_options
from voicetune.run import (
    RunError,
    RunInfo,
    checkpoints_dir,
    is_run_folder,
    latest_checkpoint,
    read_meta,
    run_sources,
    trainable_path,
)
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
        resume_point(Path(run_dir))  # says why: not a run, or stopped before its first checkpoint
        raise TrainError(f"{path}: missing; the run folder {run_dir} is incomplete (config.yaml deleted?)")
    saved = load_train_config(path)
    cfg = merge_options(saved, overrides)
    before, after = flatten(saved), flatten(cfg)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    allowed = resumable_options(saved)
    forbidden = [k for k in changed if k not in allowed]
    if forbidden:
        flags = ", ".join(
            f"--{k.replace('_', '-')} ({before.get(k)!r} -> {after.get(k)!r})" for k in forbidden
        )
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
    """The checkpoint to continue from (the latest complete one); a clear TrainError when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainError(f"--resume {run_dir}: no such folder")
    try:
        ckpt = latest_checkpoint(run_dir)
    except RunError as e:
        raise TrainError(str(e)) from None
    if ckpt is not None:
        return ckpt
    if not is_run_folder(run_dir) and not (run_dir / "features").is_dir():
        raise TrainError(f"--resume {run_dir}: not a run folder written by `voicetune train` (no run.json, "
                         "config.yaml or checkpoints/)")
    src = run_sources(run_dir)
    command = (f"voicetune train {src.get('dataset', 'DATASET')} --base {src.get('base', 'BASE')} "
               f"--out {run_dir}" + (f" --config {src['config']}" if src.get("config") else ""))
    raise TrainError(
        f"{run_dir}: no checkpoint exists yet (no complete checkpoint: the run stopped before its first "
        f"save), so there is nothing to resume. Start it again with the same command: {command} (and the "
        "same options; its cached features are reused)"
    )


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
    """Remove what an interrupted run left half-written: temporary checkpoint folders of a save or prune, and
    temporary files of atomic writes (``.NAME.XXXX.tmp``) in the run folder and its checkpoints folder."""
    for d in (Path(run_dir), checkpoints_dir(Path(run_dir))):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if not p.name.startswith(".") or p.is_symlink():
                continue
            if p.is_dir() and d != Path(run_dir) and p.name.endswith((".tmp", ".deleting", ".old")):
                logger.info("removing leftover %s", p)
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_file() and p.name.endswith(".tmp"):
                logger.info("removing leftover %s", p)
                p.unlink()


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
    """state.pt of a checkpoint, loaded with ``weights_only=True``: tensors and plain values, nothing
    unpickled.

    A state.pt of an older voicetune (it pickled NumPy's RNG state) is refused, not unpickled: a pickle can
    run code, and a run folder may come from anywhere. The message says how to continue from its weights.
    """
    path = Path(ckpt) / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        run = Path(ckpt).parent.parent
        raise TrainError(
            f"{path} holds Python objects that voicetune does not unpickle (a pickle can run code). It "
            "was written by an older voicetune (or it is not a voicetune checkpoint), so this run cannot be "
            f"resumed exactly. Its trained weights load safely: `voicetune export {run} --out PACKAGE`, then "
            "start a new run from them with `voicetune train DATASET --base PACKAGE --out NEW_RUN` (the "
            "optimizer state and the position in the data are not carried over). Details: "
            f"{str(e).splitlines()[-1][:200]}"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise TrainError(
            f"{path}: unreadable ({e}); resume from an earlier checkpoint by deleting this one"
        ) from e
    if not isinstance(state, dict) or "step" not in state or "optimizer" not in state:
        raise TrainError(f"{path}: not a voicetune training state (no step/optimizer); delete this "
                         "checkpoint to resume from an earlier one")
    return state


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
