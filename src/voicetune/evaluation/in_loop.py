"""Evaluation inside the training loop: the best checkpoint and early stopping follow voice quality.

:class:`InLoopEvaluator` is a training callback (:class:`voicetune.training.loop.TrainCallback`) that
:func:`voicetune.finetune.train` hands to the loop when ``--eval-every`` or ``--eval-every-epochs`` is set
(the default cadence is once per epoch; the settings are ``TrainConfig.eval``,
:class:`voicetune.config.EvalOptions`):

1. ``on_train_start``: the base model, zero-shot (conditioned on the speaker's reference clips), is
   rendered and scored on the probe set (:mod:`voicetune.evaluation.suite`): the baseline, written to
   ``eval/baseline/``. Every later score is reported with its delta against it.
2. ``on_step_end`` at the cadence: the probe set is rendered with the weights of that very step and
   scored; ``eval/step_N/`` (wavs + metrics.json), a ``"kind": "eval"`` record in metrics.jsonl and
   ``eval/<metric>`` TensorBoard scalars (plus a few audio samples) are written. Every evaluation (the
   baseline too) also computes the validation losses on the eval split
   (:mod:`voicetune.evaluation.validation`: ``val_<part>`` in the record, ``val/<part>`` scalars) and warns of
   overfitting (``--eval-overfit-evals``). The composite score
   (:mod:`voicetune.evaluation.selection`) decides whether this is the new best: if so the loop is asked
   for a checkpoint of this step, which ``on_checkpoint`` marks as ``checkpoints/best`` (pruning never
   removes it) and describes in ``best.json``. Early stopping (patience in evaluations) and the WER
   guard may stop training.
3. ``on_train_end``: ``eval/in_loop.json`` (what evaluation cost) and ``report.html``.

Evaluations do not disturb training: the Python/NumPy/torch (and CUDA) RNG states are saved before and
restored after each one, so a run with evaluation takes exactly the training steps of a run without.
Their cost is capped: a scheduled evaluation is skipped when it would push the time spent evaluating
above ``--eval-max-overhead`` of the wall time (the last step is always evaluated).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from voicetune.backends.base import Progress
from voicetune.data.manifest import DatasetError
from voicetune.evaluation import change, validation
from voicetune.evaluation.harness import EvalError, json_safe
from voicetune.evaluation.selection import Decision, Selector, intervals_of
from voicetune.evaluation.suite import (
    BASELINE,
    LOGGED_METRICS,
    Evaluation,
    Protocol,
    Scorer,
    build_probe_set,
    eval_docs,
    load_doc,
    partial_errors,
    run_evaluation,
    selection_rules,
    sentence_scores,
    synthesis_failure,
    warm_up,
    write_baseline,
    write_best_json,
    write_evaluation,
)
from voicetune.run import RunError, RunInfo, best_checkpoint, set_best
from voicetune.training.checkpoint import restore_rng_state, rng_state
from voicetune.training.loop import LoopState, TrainCallback
from voicetune.utils.io import append_jsonl, atomic_write_json, read_jsonl

logger = logging.getLogger(__name__)

TB_AUDIO_SAMPLES = 2  # renders per evaluation sent to TensorBoard (first eval sentence, first probe)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the Python, NumPy, torch and CUDA RNG states on exit (evaluation must not shift training)."""
    state = rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt_delta(value: Any, base: Any, fmt: str) -> str:
    if not _finite(value):
        return "n/a"
    out = fmt.format(value)
    if _finite(base):
        out += " (" + ("+" if value - base >= 0 else "") + fmt.format(value - base) + ")"
    return out


def describe(aggregate: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """One line: similarity, WER, MOS and failures, with deltas against ``baseline`` when given."""
    b = baseline or {}
    n = aggregate.get("n_sentences") or 0
    failed = round((aggregate.get("failure_rate") or 0) * n)
    errors = aggregate.get("synthesis_errors") or 0
    return (
        "similarity "
        f"{_fmt_delta(aggregate.get('speaker_similarity'), b.get('speaker_similarity'), '{:.3f}')}  "
        f"WER {_fmt_delta(aggregate.get('wer'), b.get('wer'), '{:.3f}')}  "
        f"MOS {_fmt_delta(aggregate.get('mos'), b.get('mos'), '{:.2f}')}  flagged {failed}/{n}"
        + (f"  NOT SYNTHESIZED {errors}/{n}" if errors else "")
    )


class InLoopEvaluator(TrainCallback):
    """The training callback of in-loop evaluation (see the module docstring).

    ``progress`` receives ``(done, total, "eval <name>")`` while an evaluation renders and scores.
    """

    def __init__(self, progress: Progress | None = None):
        self.progress = progress
        self.enabled = False
        self.selector: Selector | None = None
        self.baseline_doc: dict[str, Any] = {}
        self.pending_best: Decision | None = None
        self.best: Decision | None = None
        self.evaluations: list[dict[str, Any]] = []  # {"step", "seconds", "composite"} per evaluation
        self.skipped: list[int] = []
        self.stop_reason = ""
        self.error = ""  # a software error that stopped the run (every sentence failed to synthesize)
        self.warnings: list[str] = []
        self._writer: Any = None
        self._t_train = 0.0
        self._eval_seconds = 0.0
        self._estimate = 0.0
        self._baseline_seconds = 0.0
        self._aggregates: dict[int, dict[str, Any]] = {}  # step -> aggregate metrics (for best.json)
        self._timed: list[float] = []  # seconds of each evaluation made by this process
        self.validation: validation.ValidationSet | None = None  # eval-split features (validation losses)
        self._losses: list[dict[str, Any]] = []  # {"step", "loss"} per step, and the eval records
        self._overfit_warned = -1  # the step whose overfitting span was last warned about

    # ------------------------------------------------------------------------------ callback hooks

    def on_train_start(self, state: LoopState) -> None:
        """Build the probe set, load the metric models and score the base model (the baseline)."""
        t0 = time.perf_counter()
        cfg, run_dir = state.cfg, Path(state.run_dir)
        try:
            info = RunInfo.load(run_dir)
            from voicetune.data.manifest import Dataset

            dataset = Dataset.load(info.dataset)
            self.probe_set = build_probe_set(dataset, Protocol.of(cfg.eval))
        except (EvalError, DatasetError, RunError) as e:
            logger.warning("in-loop evaluation is off for this run: %s", e)
            return
        self.enabled, self.cfg, self.run_dir = True, cfg, run_dir
        self.info = {"backend": info.backend, "base_model": info.base, "dataset": info.dataset}
        device = state.backend.device
        metric_device = "cuda" if device.type == "cuda" else "cpu"
        from voicetune.data.transcribe import AsrError

        with preserved_rng():
            try:
                self.scorer = Scorer(
                    self.probe_set, metric_device, str(device) if device.type == "cuda" else "cpu"
                )
            except (AsrError, ValueError) as e:  # no ASR model for the language; no speech in held-out clips
                logger.warning("in-loop evaluation is off for this run: %s", e)
                self.enabled = False
                return
            self.info["asr_model"] = self.scorer.asr_name
            self.validation = validation.build_validation_set(state.backend, dataset.eval,
                                                              run_dir / "features", cfg)
            if self.validation is not None and self._tensorboard() is not None:  # train/X, val/X: one chart
                self._writer.add_custom_scalars(validation.tensorboard_layout(type(state.backend).loss_parts))
            resumed_from = state.resumed_from  # the step a resumed run continues after (0: a new run)
            reused = self._reusable_baseline() if resumed_from else None
            if reused is None:
                warm_up(
                    state.backend, self.probe_set, self.scorer
                )  # so the baseline's time is the steady cost
                val, val_seconds = self._validate(state)
                ev = run_evaluation(state.backend, self.probe_set, self.scorer, BASELINE, 0, self.progress)
                ev.extra.update(validation=val, val_seconds=val_seconds)
                real = self.scorer.score_real()
        if reused is None:
            error = synthesis_failure(ev, state.backend.name)
            info = {**self.info, "error": error} if error else {**self.info, "validation": val}
            self.baseline_doc = write_baseline(run_dir / "eval" / BASELINE, self.probe_set, ev, real, info)
            if error:  # a software error: no step is taken (the loop raises SoftwareError with it)
                self._fail(state, error)
                return
            self._estimate = ev.seconds
        else:
            self.baseline_doc = reused
            self._estimate = float((reused.get("seconds") or {}).get("total") or 0.0)
        base_agg = self.baseline_doc["base"]["aggregate"]
        real_sim = (self.baseline_doc.get("real") or {}).get("aggregate", {}).get("speaker_similarity")
        self.language = self.probe_set.material.language
        self.selector = Selector(base_agg, selection_rules(cfg.eval), real_similarity=real_sim,
                                 baseline_scores=sentence_scores(self.baseline_doc["base"], self.language))
        self._baseline_seconds = time.perf_counter() - t0
        if reused is None:
            self._record(ev, None, state)
            logger.info(
                "baseline (base model, zero-shot) on %d sentences (%d eval-split, %d probes) in %.1f s: %s",
                len(self.probe_set.texts),
                self.probe_set.n_eval,
                len(self.probe_set.probes),
                self._baseline_seconds,
                describe(base_agg),
            )
            self._warn_partial(BASELINE, base_agg)
        else:
            self._replay(resumed_from)
            self._losses = [r for r in read_jsonl(run_dir / "metrics.jsonl")
                            if int(r.get("step", 0)) <= resumed_from]
        self._t_train = time.perf_counter()

    def _reusable_baseline(self) -> dict[str, Any] | None:
        """A resumed run's baseline, when it was made with the same protocol (same inputs, same scores)."""
        doc = load_doc(self.run_dir / "eval" / BASELINE / "metrics.json")
        if doc and doc.get("protocol", {}).get("key") == self.probe_set.key():
            logger.info("resumed run: baseline reused from %s", self.run_dir / "eval" / BASELINE)
            return doc
        return None

    def _replay(self, resumed_from: int) -> None:
        """Restore best / early-stopping state from the evaluations made before the resume point."""
        assert self.selector is not None
        best = best_checkpoint(self.run_dir)
        for doc in eval_docs(self.run_dir / "eval", self.probe_set.key()):
            step = int(doc["step"])
            if step > resumed_from:
                continue
            agg = doc["finetuned"]["aggregate"]
            decision = self.selector.update(step, agg, sentence_scores(doc["finetuned"], self.language))
            self._aggregates[step] = agg
            self.evaluations.append({"step": step, "seconds": (doc.get("seconds") or {}).get("total"),
                                     "composite": decision.composite})
            if best is not None and best.name == f"step_{step}":
                self.best = decision
        logger.info("resumed run: %d earlier evaluation(s) replayed; best so far: %s", len(self.evaluations),
                    f"step {self.selector.best_step}" if self.selector.best_step is not None else "none")

    def on_step_end(self, state: LoopState) -> None:
        """Evaluate when the cadence says so (and the overhead cap allows), then decide best / stop."""
        if not self.enabled:
            return
        step = state.step
        if "loss" in state.last:
            self._losses.append({"step": step, "loss": state.last["loss"]})
        final = step >= state.total_steps or state.should_stop
        if not (final or self._due(step, state.steps_per_epoch)):
            return
        if not final and self._over_budget():
            self.skipped.append(step)
            logger.info(
                "evaluation at step %d skipped: it would take evaluation above %.0f%% of the wall time "
                "(--eval-max-overhead)",
                step,
                100 * self.cfg.eval.max_overhead,
            )
            return
        t0 = time.perf_counter()
        name = f"step_{step}"
        with preserved_rng():
            val, val_seconds = self._validate(state)
            ev = run_evaluation(state.backend, self.probe_set, self.scorer, name, step, self.progress)
        ev.extra.update(validation=val, val_seconds=val_seconds)
        error = synthesis_failure(ev, state.backend.name)
        if error:  # never scored, never the best: the loop saves this step, stops, and train() raises
            write_evaluation(self.run_dir / "eval" / name, self.probe_set, ev, self.baseline_doc,
                             selection={"composite": None},
                             info={**self.info, "checkpoint": name, "error": error})
            seconds = time.perf_counter() - t0
            self._eval_seconds += seconds
            self.evaluations.append({"step": step, "seconds": round(seconds, 3), "composite": None,
                                     "error": error})
            self._fail(state, error)
            return
        assert self.selector is not None
        decision = self.selector.update(step, ev.aggregate, sentence_scores(ev.scores, self.language))
        self._aggregates[step] = ev.aggregate
        write_evaluation(self.run_dir / "eval" / name, self.probe_set, ev, self.baseline_doc,
                         selection=self._selection(decision), info={**self.info, "checkpoint": name,
                                                                    "epoch": state.last.get("epoch"),
                                                                    "validation": val})
        self._record(ev, decision, state)
        seconds = time.perf_counter() - t0
        self._eval_seconds += seconds
        self._timed.append(seconds)
        self._estimate = sum(self._timed) / len(self._timed)  # the cost the overhead cap expects next time
        self.evaluations.append({"step": step, "seconds": round(seconds, 3), "composite": decision.composite,
                                 "val_seconds": round(val_seconds, 3)})
        logger.info("eval step %d: composite %+.3f%s  %s  (%.1f s)", step, decision.composite,
                    " (new best)" if decision.is_best else f" (best: step {decision.best_step})",
                    describe(ev.aggregate, self.selector.baseline), seconds)
        for w in decision.warnings:
            logger.warning("step %d: %s", step, w)
            self.warnings.append(f"step {step}: {w}")
        self._warn_partial(f"step {step}", ev.aggregate)
        self._warn_overfitting()
        if decision.is_best:
            self.pending_best = decision
            state.save_requested = True
        if decision.stop and not state.should_stop:
            state.should_stop, state.stop_reason = True, decision.reason
            self.stop_reason = decision.reason
            logger.warning("step %d: %s", step, decision.reason)

    def on_checkpoint(self, state: LoopState) -> None:
        """Mark the checkpoint of a new best evaluation as ``checkpoints/best`` and write best.json."""
        pending = self.pending_best
        if not self.enabled or pending is None or state.step != pending.step or state.checkpoint is None:
            return
        set_best(self.run_dir, Path(state.checkpoint))
        write_best_json(self.run_dir / "best.json", pending, self.selector, Path(state.checkpoint).name,
                        self._aggregates.get(pending.step, {}), "in-loop")
        self.best, self.pending_best = pending, None

    def on_train_end(self, state: LoopState) -> None:
        """Write what evaluation cost (eval/in_loop.json) and the report; close the TensorBoard writer."""
        if not self.enabled:
            return
        wall = time.perf_counter() - self._t_train
        summary = {
            "baseline_seconds": round(self._baseline_seconds, 3),
            "evaluations": self.evaluations,
            "skipped_steps": self.skipped,
            "eval_seconds": round(self._eval_seconds, 3),
            "train_wall_seconds": round(wall, 3),
            "overhead_fraction": round(self._eval_seconds / wall, 4) if wall > 0 else None,
            "overhead_fraction_with_baseline": round(
                (self._eval_seconds + self._baseline_seconds) / (wall + self._baseline_seconds), 4),
            "max_overhead": self.cfg.eval.max_overhead,
            "stop_reason": self.stop_reason,
            "warnings": self.warnings,
            "overfit_evals": self.cfg.eval.overfit_evals,
            "best_step": self.best.step if self.best else None,
            "error": self.error,
        }
        atomic_write_json(self.run_dir / "eval" / "in_loop.json", summary)
        logger.info("in-loop evaluation: %d evaluations (%d skipped), %.1f s of %.1f s training wall time "
                    "(%.1f%%; %.1f s baseline before training)", len(self.evaluations), len(self.skipped),
                    self._eval_seconds, wall, 100 * (summary["overhead_fraction"] or 0.0),
                    self._baseline_seconds)
        if self._writer is not None:
            self._writer.close()
        if not self.error:  # did the finetune change the voice? (eval/change.json, shown in the report)
            change.check_run(self.run_dir, device=self.scorer.device)
        self._write_report()

    def _write_report(self) -> None:
        from voicetune.evaluation.report import record_verdict, text_report, write_report

        try:
            said = record_verdict(self.run_dir)  # in best.json and eval/in_loop.json, for the UI and the CLI
            logger.info("verdict: %s", said.text)
            path = write_report(self.run_dir)
            logger.info("report: %s", path)
            logger.debug("%s", text_report(self.run_dir))  # the CLI prints it; the log file keeps it too
        except (OSError, ValueError, RuntimeError) as e:  # a broken plot must not fail a finished run
            logger.warning("could not write the report of %s: %s", self.run_dir, e)

    def _fail(self, state: Any, error: str) -> None:
        """A software error: tell the loop to stop (it saves this step's checkpoint) and train() to raise."""
        logger.error("%s", error)
        self.error = self.stop_reason = error
        state.error, state.should_stop, state.stop_reason = error, True, error
        if state.step == 0:  # the baseline: training never starts, so on_train_end will not run
            self._write_report()

    def _validate(self, state: LoopState) -> tuple[dict[str, float], float]:
        """The validation losses of the current weights on the eval split ({} when off) and their seconds."""
        if self.validation is None:
            return {}, 0.0
        t0 = time.perf_counter()
        val = validation.validation_losses(state.backend, self.validation, self.cfg)
        return val, time.perf_counter() - t0

    def _warn_overfitting(self) -> None:
        """Warn (once per span) when the validation loss rose while the training loss fell for N
        evaluations."""
        span = validation.overfitting(validation.points(self._losses), self.cfg.eval.overfit_evals)
        if span is None or span[1].step == self._overfit_warned:
            return
        self._overfit_warned = span[1].step
        text = validation.overfit_text(span)
        logger.warning("%s", text)
        self.warnings.append(text)

    def _warn_partial(self, name: str, aggregate: dict[str, Any]) -> None:
        warning = partial_errors(name, aggregate)
        if warning:
            logger.warning("%s", warning)
            self.warnings.append(warning)

    # --------------------------------------------------------------------------------- internals

    def _due(self, step: int, steps_per_epoch: int) -> bool:
        options = self.cfg.eval
        if options.every:
            return step % options.every == 0
        every = options.every_epochs * max(1, steps_per_epoch)
        return bool(every) and step % every == 0

    def _over_budget(self) -> bool:
        """Would one more evaluation (at the measured cost) push evaluation above the allowed share?"""
        cap = self.cfg.eval.max_overhead
        if cap <= 0:
            return False
        wall = time.perf_counter() - self._t_train
        train_seconds = wall - self._eval_seconds
        return self._eval_seconds + self._estimate > cap * (
            train_seconds + self._eval_seconds + self._estimate
        )

    def _selection(self, d: Decision) -> dict[str, Any]:
        assert self.selector is not None
        return {
            "composite": d.composite,
            "composite_parts": d.parts,
            "selection": {
                "is_best": d.is_best, "best_step": d.best_step, "best_composite": d.best_composite,
                "evals_without_improvement": d.evals_without_improvement, "stop": d.stop, "reason": d.reason,
                "warnings": d.warnings, "weights": self.selector.rules.weights.as_dict(),
                **intervals_of(d),
            },
        }

    def _record(self, ev: Evaluation, d: Decision | None, state: LoopState) -> None:
        """A metrics.jsonl record (``"kind": "eval"``), TensorBoard scalars and a few audio samples."""
        agg, base = ev.aggregate, (self.selector.baseline if self.selector else ev.aggregate)
        record: dict[str, Any] = {
            "kind": "eval", "name": ev.name, "step": ev.step, "time": time.time(),
            "seconds": round(ev.seconds, 3), "composite": d.composite if d else 0.0,
            "composite_interval": d.interval if d else None,
            "best": bool(d and d.is_best), **{k: agg.get(k) for k in LOGGED_METRICS if k in agg},
            "delta": {k: agg[k] - base[k] for k in LOGGED_METRICS
                      if _finite(agg.get(k)) and _finite(base.get(k))},
            **ev.extra.get("validation", {}),
        }
        append_jsonl(self.run_dir / "metrics.jsonl", json_safe(record))
        self._losses.append(record)
        writer = self._tensorboard()
        if writer is None:
            return
        for k in LOGGED_METRICS:
            if _finite(agg.get(k)):
                writer.add_scalar(f"eval/{k}", agg[k], ev.step)
        writer.add_scalar("eval/composite", record["composite"], ev.step)
        for k, v in ev.extra.get("validation", {}).items():  # val_loss -> val/loss, beside train/loss
            if _finite(v):
                writer.add_scalar(f"val/{k.removeprefix(validation.PREFIX)}", v, ev.step)
        self._audio(writer, ev)
        writer.flush()

    def _audio(self, writer: Any, ev: Evaluation) -> None:
        import torch

        picks = [0, self.probe_set.n_eval] if self.probe_set.probes else [0, 1]
        for i in sorted(set(picks))[:TB_AUDIO_SAMPLES]:
            if i < len(ev.renders) and ev.renders[i].audio is not None:
                r = ev.renders[i]
                writer.add_audio(f"eval/audio_{i:02d}", torch.from_numpy(r.audio)[None], ev.step,
                                 sample_rate=r.sample_rate)

    def _tensorboard(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return None
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), filename_suffix=".eval")
        return self._writer


