"""Validation losses and the overfitting warning.

At every in-loop evaluation (the baseline included) the backend's training loss parts are computed
teacher-forced on the dataset's EVAL split, in inference mode and without gradients, through the contract's
:meth:`voicetune.backends.base.Backend.validation_loss` (no generation: a forward pass per batch). They are
recorded as ``val_<part>`` (``val_loss`` for the weighted total) in the eval record of metrics.jsonl, as
``val/<part>`` TensorBoard scalars and in the report's loss plot, on the same axes as the training losses.

Overfitting (:func:`overfitting`): over the last ``N`` evaluations (``--eval-overfit-evals``), each one's
validation loss rose above the previous evaluation's while the training loss (the mean of the logged step
losses since the previous evaluation) fell. Both numbers are noisy on small eval splits, so one rise is not
enough: with independent noise, N consecutive rises-with-falls happen by chance with probability about
``4 ** -N`` (1/64 at the default N = 3).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from voicetune.backends.base import Backend, FeatureStore
from voicetune.config import EvalOptions, TrainConfig
from voicetune.data.manifest import Clip
from voicetune.training.step import to_device
from voicetune.utils.device import autocast, resolve_precision
from voicetune.utils.io import read_jsonl

logger = logging.getLogger(__name__)

PREFIX = "val_"
DEFAULT_OVERFIT_EVALS: int = EvalOptions.__dataclass_fields__["overfit_evals"].default  # type: ignore


@dataclass
class ValidationSet:
    """The eval split's cached features and how to batch them."""

    store: FeatureStore
    batch_size: int
    precision: str

    def __len__(self) -> int:
        return len(self.store)


def build_validation_set(
    backend: Backend, clips: Sequence[Clip], cache: Path, cfg: TrainConfig
) -> ValidationSet | None:
    """Features of the eval-split ``clips`` (cached like the training features); None when none is usable."""
    if not clips:
        logger.info("validation losses are off: the dataset has no eval split")
        return None
    store = backend.build_features(list(clips), cache, None)
    if len(store) == 0:
        logger.warning(
            "validation losses are off: every eval-split clip was dropped (%s)",
            store.drop_summary() or "no usable clip",
        )
        return None
    return ValidationSet(store, cfg.batch_size, resolve_precision(cfg.precision, backend.device))


def validation_losses(backend: Backend, vs: ValidationSet, cfg: TrainConfig) -> dict[str, float]:
    """``{"val_loss": ..., "val_<part>": ...}``: each part averaged over the eval-split clips (batches
    weighted
    by their size). The backend is left in inference mode (the training loop switches it back)."""
    backend.set_train(False)
    vs.store.set_epoch(0)  # random crops, if any, are the same at every evaluation (as a redone step's)
    sums: dict[str, torch.Tensor] = {}
    n = len(vs.store)
    for start in range(0, n, vs.batch_size):
        indices = list(range(start, min(n, start + vs.batch_size)))
        vs.store.forget(indices)
        items = [vs.store[i] for i in indices]
        batch = to_device(backend.collate(items), backend.device)
        with torch.no_grad(), autocast(backend.device, vs.precision):
            out = backend.validation_loss(batch, cfg)
        for k, v in out.items():
            part = v.detach().float() * len(items)
            sums[k] = sums[k] + part if k in sums else part
    if not sums:
        return {}
    values = torch.stack(list(sums.values())).cpu().tolist()
    return {PREFIX + k: v / n for k, v in zip(sums, values, strict=True)}


def tensorboard_layout(parts: Sequence[str]) -> dict[str, Any]:
    """A TensorBoard custom-scalars layout: one chart per loss part with ``train/<part>`` and
    ``val/<part>``."""
    return {
        "loss: training vs. validation": {
            part: ["Multiline", [f"train/{part}", f"val/{part}"]] for part in ("loss", *parts)
        }
    }


# ----------------------------------------------------------------------------------------- overfitting


@dataclass(frozen=True)
class Point:
    """One evaluation: its step, the mean training loss since the previous one, its validation loss."""

    step: int
    train: float
    val: float


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def points(records: Sequence[dict[str, Any]]) -> list[Point]:
    """Evaluation points from metrics.jsonl records (training steps and ``"kind": "eval"`` records, in any
    order): the train loss of an evaluation is the mean logged loss of the steps after the previous one."""
    train = sorted(
        (int(r["step"]), float(r["loss"]))
        for r in records
        if "kind" not in r and _finite(r.get("loss")) and "step" in r
    )
    evals = sorted(
        (int(r["step"]), float(r[PREFIX + "loss"]))
        for r in records
        if r.get("kind") == "eval" and _finite(r.get(PREFIX + "loss"))
    )
    out, prev = [], -1
    for step, val in evals:
        window = [loss for s, loss in train if prev < s <= step]
        if window:
            out.append(Point(step, sum(window) / len(window), val))
        prev = step
    return out


def overfitting(pts: Sequence[Point], n: int) -> tuple[Point, Point] | None:
    """(start, end) of the latest run of ``n`` or more consecutive evaluations at which the validation loss
    rose
    while the training loss fell; None when there is none (or ``n`` is 0: the check is off)."""
    if n <= 0 or len(pts) < n + 1:
        return None
    found, streak = None, 0
    for i in range(1, len(pts)):
        rising = pts[i].val > pts[i - 1].val and pts[i].train < pts[i - 1].train
        streak = streak + 1 if rising else 0
        if streak >= n:
            found = (pts[i - streak], pts[i])
    return found


def overfit_text(span: tuple[Point, Point]) -> str:
    """The warning in the report's words."""
    a, b = span
    return (
        f"overfitting: from step {a.step} to step {b.step} the training loss kept falling "
        f"({a.train:.3f} → {b.train:.3f}) while the validation loss on the eval split kept rising "
        f"({a.val:.3f} → {b.val:.3f}); a checkpoint from step {a.step} or earlier may be the better voice, "
        "and more data, fewer steps or a lower learning rate would help"
    )


def notes(records: Sequence[dict[str, Any]], n: int) -> list[str]:
    """The "why" notes for the verdict: ``["overfitting seen in the validation loss: ..."]`` or ``[]``."""
    span = overfitting(points(records), n)
    if span is None:
        return []
    a, b = span
    return [
        (
            f"overfitting seen in the validation loss (it rose {a.val:.3f} → {b.val:.3f} "
            f"from step {a.step} to "
            f"step {b.step} while the training loss fell {a.train:.3f} → {b.train:.3f})"
        )
    ]


def run_notes(run_dir: Path | str) -> list[str]:
    """:func:`notes` of a run folder (its metrics.jsonl, with the run's --eval-overfit-evals from
    eval/in_loop.json): what the verdict takes as ``notes``."""
    import json

    run_dir = Path(run_dir)
    try:
        n = json.loads((run_dir / "eval" / "in_loop.json").read_text()).get(
            "overfit_evals", DEFAULT_OVERFIT_EVALS
        )
    except (OSError, json.JSONDecodeError):
        n = DEFAULT_OVERFIT_EVALS
    return notes(read_jsonl(run_dir / "metrics.jsonl"), int(n))
