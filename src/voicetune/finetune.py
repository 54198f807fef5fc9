"""``voicetune.train`` and ``voicetune train``: the training loop with in-loop evaluation.

:func:`voicetune.training.loop.train` is the loop alone; it never imports the evaluation. This function, above
both, hands it the :class:`~voicetune.evaluation.in_loop.InLoopEvaluator` (baseline, evaluations, best
checkpoint, early stopping, report) whenever the config asks for in-loop evaluation, as it does by default
(``--eval-every-epochs 1``; ``--eval-every 0 --eval-every-epochs 0`` turns it off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicetune.backends.base import Progress
from voicetune.backends.registry import merge_options, resolve
from voicetune.config import TrainConfig
from voicetune.evaluation.in_loop import InLoopEvaluator
from voicetune.run import best_checkpoint
from voicetune.training import loop
from voicetune.training.loop import TrainCallback, TrainResult
from voicetune.training.resume import resume_config


def train(
    dataset_dir: Path | str | None = None,
    base: Path | str | None = None,
    out: Path | str | None = None,
    cfg: TrainConfig | None = None,
    *,
    config_file: Path | str | None = None,
    progress: Progress | None = None,
    callbacks: list[TrainCallback] | None = None,
    resume: Path | str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Finetune ``base`` on the dataset's train split, writing the run folder ``out``, with in-loop
    evaluation.

    The arguments are those of :func:`voicetune.training.loop.train` (settings: ``cfg``, ``config_file`` and
    keyword ``overrides`` by flat name, e.g. ``max_steps=50``, ``eval_every=10``; ``resume=RUN_DIR``), which
    this calls with an :class:`InLoopEvaluator` added to ``callbacks`` unless evaluation is off in the config
    (or the caller passes an evaluator of its own).
    """
    callbacks = list(callbacks or [])
    evaluates = _evaluates(cfg, config_file, resume, overrides)
    if evaluates and not any(isinstance(cb, InLoopEvaluator) for cb in callbacks):
        callbacks.append(InLoopEvaluator(progress=progress))
    result = loop.train(dataset_dir, base, out, cfg, config_file=config_file, progress=progress,
                        callbacks=callbacks, resume=resume, **overrides)
    if evaluates and not result.interrupted:
        _every_voice(result.run_dir, progress)
    return result


def _every_voice(run_dir: Path, progress: Progress | None) -> None:
    """A multi-speaker dataset: every voice judged on the chosen checkpoint (the in-loop evaluation scores
    the speaker with the most clips), and the verdict recorded again with what it found."""
    from voicetune.evaluation.report import record_verdict
    from voicetune.evaluation.rescore import score_speakers

    chosen = "best" if best_checkpoint(run_dir) is not None else "latest"
    if score_speakers(run_dir, chosen, progress=progress) is not None:
        record_verdict(run_dir)


def _evaluates(cfg: TrainConfig | None, config_file: Path | str | None, resume: Path | str | None,
               overrides: dict[str, Any]) -> bool:
    """Whether the run's config (as the loop will resolve it) asks for in-loop evaluation."""
    if resume is not None:
        return resume_config(Path(resume), overrides).eval.in_loop
    if cfg is not None:
        return merge_options(resolve(cfg), overrides).eval.in_loop
    return loop.resolve_config(config_file, overrides).eval.in_loop
