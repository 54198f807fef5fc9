"""The training loop: one function you can read in one sitting.

    model structure (vocabulary, LoRA, frozen parts) → features (cached once) → length-bucketed, seeded,
    resumable data stream (sampler.py) → per step: micro-batches → autocast forward → (scaled) backward →
    all-reduce across ranks → unscale → clip → optimizer step (step.py; out-of-memory: halve the micro-batch)
    → LR schedule → log (console, metrics.jsonl, TensorBoard: observe.py) → atomic checkpoint

A run can be resumed exactly (resume.py), stops cleanly on Ctrl+C/SIGTERM (signals.py), and runs on several
GPUs under torchrun/accelerate (distributed.py). Everything model-specific goes through the
:class:`~voicetune.backends.base.Backend` contract. What watches the run from outside (in-loop evaluation:
best checkpoint, early stopping) is a :class:`TrainCallback` that the caller hands in
(:func:`voicetune.finetune.train` adds the evaluator; this module never imports the evaluation).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicetune.backends.base import Backend, FeatureStore, Progress
from voicetune.backends.registry import get_backend, load_train_config, merge_options, resolve
from voicetune.config import TrainConfig, save_yaml
from voicetune.data.manifest import Dataset
from voicetune.run import (
    RUN_ENTRIES,
    RunInfo,
    checkpoints_dir,
    latest_checkpoint,
    mark_run,
    software_versions,
)
from voicetune.training import graphs
from voicetune.training.checkpoint import checkpoint_bytes, save_checkpoint
from voicetune.training.compile_cache import CompileCache
from voicetune.training.distributed import Dist, init_distributed, shutdown
from voicetune.training.errors import SoftwareError, TrainError
from voicetune.training.observe import Meter, bar_text, mem_line, memory, peak_flops, progress_text
from voicetune.training.oom import MicroBatchPlan
from voicetune.training.optim import build_optimizer, build_scheduler
from voicetune.training.resume import (
    clean_leftovers,
    extra_state,
    load_state,
    restore,
    resume_config,
    resume_point,
    resume_sources,
    truncate_metrics,
)
from voicetune.training.sampler import StepSampler, rank_share
from voicetune.training.signals import GracefulStop
from voicetune.training.step import StepEngine, make_scaler
from voicetune.utils.device import pick_device, resolve_precision
from voicetune.utils.disk import warn_if_short
from voicetune.utils.io import append_jsonl, fsync_path
from voicetune.utils.outputs import MARKER, read_marker

logger = logging.getLogger(__name__)

METER_WINDOW = 20  # steps the logged rates are measured over (at least)
PROGRESS_SECONDS = 0.1  # the progress callback runs at most this often (a terminal redraw costs ~0.15 ms)

__all__ = ["LoopState", "TrainCallback", "TrainError", "TrainResult", "train"]


@dataclass
class LoopState:
    """What callbacks see (and may change: ``should_stop``) after every optimizer step."""

    run_dir: Path
    backend: Backend
    cfg: TrainConfig
    total_steps: int
    step: int = 0
    last: dict[str, float] = field(default_factory=dict)
    should_stop: bool = False
    stop_reason: str = ""
    checkpoint: Path | None = None
    steps_per_epoch: int = 1
    save_requested: bool = False  # a callback asks for a checkpoint of this step (e.g. a new best evaluation)
    resumed_from: int = 0  # the checkpoint step a resumed run continues after (0: a new run)
    # A software error a callback found (e.g. every evaluation sentence failed to synthesize): the loop stops,
    # saves this step's checkpoint, finishes (report) and train() raises SoftwareError with this message.
    error: str = ""


class TrainCallback:
    """Hooks into the loop (e.g. the in-loop evaluation, voicetune.evaluation.in_loop); rank 0 only. Subclass
    it
    and override what you need: every hook is a no-op here."""

    def on_train_start(self, state: LoopState) -> None:
        """Before the first step (after a resume: before the first step after the checkpoint)."""

    def on_step_end(self, state: LoopState) -> None:
        """After every optimizer step; may set ``state.should_stop`` / ``state.save_requested``."""

    def on_checkpoint(self, state: LoopState) -> None:
        """After a checkpoint was written (``state.checkpoint``)."""

    def on_train_end(self, state: LoopState) -> None:
        """After the last step, an early stop or a signal."""


def _call(callbacks: list[TrainCallback], hook: str, state: LoopState) -> None:
    for cb in callbacks:
        getattr(cb, hook)(state)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_checkpoint: Path
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    clips: int = 0
    # the signal (SIGINT/SIGTERM) that stopped the run early; "" when it was not stopped
    interrupted: str = ""
    resumed_from: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_config(config_file: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The config of a new run: ``config_file`` (YAML) or the defaults, with ``overrides`` (flat names)
    applied."""
    cfg = load_train_config(config_file) if config_file else TrainConfig()
    return merge_options(cfg, overrides)


def _prepare_run_dir(run_dir: Path, sources: dict[str, str]) -> None:
    """A new run's folder: new, empty, or the folder of an attempt that stopped before its first checkpoint
    (its logs are cleared, its cached features kept). Any other folder is refused: voicetune never writes over
    files it did not write, nor over an earlier run."""
    if latest_checkpoint(run_dir) is not None:
        raise TrainError(
            f"{run_dir} already holds checkpoints from an earlier run; choose a new --out folder, or "
            f"continue it with --resume {run_dir} (voicetune never overwrites a run)"
        )
    if run_dir.is_dir() and any(run_dir.iterdir()):
        present = {p.name for p in run_dir.iterdir()} - {MARKER}
        ours = "run" in read_marker(run_dir) or bool(present & {"run.json", "features"})
        if not (ours and present <= set(RUN_ENTRIES)):
            raise TrainError(
                f"--out {run_dir} is not empty ({', '.join(sorted(present)[:6])}) and is not a run folder of "
                "voicetune; choose a new or empty folder (voicetune never writes over files it did not write)"
            )
        stale = ("metrics.jsonl", "tensorboard", "eval", "best.json", "report.html", "run.json", "vocab.json")
        for name in stale:
            p = run_dir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        logger.info("%s: starting again in the folder of a run that stopped before its first checkpoint",
                    run_dir)
        clean_leftovers(run_dir)  # what the interrupted attempt left half-written
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_run(run_dir, sources)


def clamp_batch(cfg: TrainConfig, n_clips: int, world: int) -> TrainConfig:
    """``cfg`` with --batch-size (then --grad-accum) lowered, with a warning, so that one optimizer step takes
    no more clips than the training split holds."""
    if world > n_clips:
        raise TrainError(f"{n_clips} training clip(s) cannot be shared by {world} processes; use --gpus "
                         f"{n_clips} or fewer, or add clips")
    batch, accum = cfg.batch_size, cfg.grad_accum
    if batch * accum * world <= n_clips:
        return cfg
    batch = max(1, min(batch, n_clips // world))
    accum = max(1, min(accum, n_clips // (batch * world)))
    logger.warning("--batch-size %d x --grad-accum %d x %d process(es) takes more clips per step than the %d "
                   "training clips; using --batch-size %d --grad-accum %d", cfg.batch_size, cfg.grad_accum,
                   world, n_clips, batch, accum)
    return dataclasses.replace(cfg, batch_size=batch, grad_accum=accum)


@dataclass
class _Run:
    """Everything one training run holds (built by :func:`_setup`, driven by :func:`_loop`)."""

    cfg: TrainConfig
    run_dir: Path
    dist: Dist
    device: torch.device
    precision: str
    backend: Backend
    store: FeatureStore
    sampler: StepSampler
    optimizer: torch.optim.Optimizer
    scheduler: Any
    engine: StepEngine
    state: LoopState
    callbacks: list[TrainCallback]
    progress: Progress | None
    meter: Meter | None = None
    compile_cache: CompileCache | None = None  # what torch.compile built, kept between runs (rank 0 saves)
    writer: Any = None
    start_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    interrupted: str = ""


def _sources(dataset_dir: Path | str | None, base: Path | str | None, out: Path | str | None,
             cfg: TrainConfig | None, config_file: Path | str | None, overrides: dict[str, Any],
             resume: Path | str | None) -> tuple[TrainConfig, Path, Path, Path, Path | None]:
    """(config, run folder, dataset, base, checkpoint to resume from or None) of a new or resumed run."""
    if resume is not None:
        if cfg is not None or config_file is not None:
            raise TrainError(
                "--resume continues with the run's own config.yaml; pass only the options to change"
            )
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise TrainError(f"--resume {resume} writes into that run folder; drop --out {out}")
        run_dir = Path(resume)
        cfg = resume_config(run_dir, overrides)
        ckpt = resume_point(run_dir)
        dataset, base_dir = resume_sources(run_dir, dataset_dir, base)
        return cfg, run_dir, dataset, base_dir, ckpt
    if dataset_dir is None or base is None or out is None:
        raise TrainError("a new run needs a dataset folder, --base and --out (or --resume RUN_DIR)")
    cfg = merge_options(resolve(cfg), overrides) if cfg else resolve_config(
        Path(config_file) if config_file is not None else None, overrides)
    return cfg, Path(out), Path(dataset_dir), Path(base), None


def _features(backend: Backend, cfg: TrainConfig, dataset: Dataset, run_dir: Path, dist: Dist,
              progress: Progress | None) -> tuple[FeatureStore, dict[str, Any]]:
    """The model and its features: structure (vocabulary, LoRA, frozen parts), length limits, cached features.

    Rank 0 shapes the model (it may write files to the run folder, e.g. an extended vocabulary) and computes
    the features first; the other ranks then do the same from what rank 0 wrote.
    Returns (feature store, what the structure step reported).
    """
    texts = [(c.text, c.language) for c in dataset.train]
    model: dict[str, Any] = {}
    for turn in (0, 1):
        if (turn == 0) == dist.is_main:
            model = backend.configure_model(cfg, run_dir, texts)
        dist.barrier()
    backend.set_length_limits(cfg.max_audio_seconds, cfg.max_text_tokens)
    store: FeatureStore | None = None
    for turn in (0, 1):
        if (turn == 0) == dist.is_main:
            store = backend.build_features(
                dataset.train, run_dir / "features", progress if dist.is_main else None
            )
        dist.barrier()
    assert store is not None
    if len(store) == 0:
        raise TrainError(
            f"no usable training clips in {dataset.root} (all were dropped; see the warnings above)"
        )
    return store, model


def _data_report(store: FeatureStore, n_clips: int, sampler: StepSampler, cfg: TrainConfig,
                 dist: Dist) -> dict[str, Any]:
    """Clips kept and dropped (by reason), padding with and without length bucketing, batch geometry;
    logged."""
    dropped = store.drop_summary()
    report: dict[str, Any] = {
        "clips": n_clips,
        "clips_used": len(store),
        "clips_dropped": dropped,
        "world_size": dist.world,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "global_batch": cfg.batch_size * cfg.grad_accum * dist.world,
    }
    if dropped:
        logger.warning("dropped %d of %d training clips: %s (limits: --max-audio-seconds, --max-text-tokens; "
                       "--extend-vocab for unknown characters)", sum(dropped.values()), n_clips,
                       ", ".join(f"{n} {kind}" for kind, n in sorted(dropped.items())))
    durations = store.durations()
    if durations:
        report["audio_hours"] = round(sum(durations) / 3600, 4)
    shuffled = sampler.padding_fraction(cfg.batch_size, bucketed=False)
    bucketed = sampler.padding_fraction(cfg.batch_size, bucketed=True)
    report["padding_fraction"] = {"shuffled": round(shuffled, 4), "bucketed": round(bucketed, 4),
                                  "in_use": round(bucketed if cfg.bucket_window > 1 else shuffled, 4)}
    if cfg.bucket_window > 1:
        logger.info(
            "length bucketing: padding %.1f%% of audio positions instead of %.1f%% with plain shuffling",
            100 * bucketed,
            100 * shuffled,
        )
    logger.info("global batch %d = batch %d x accumulation %d x %d process(es)", report["global_batch"],
                cfg.batch_size, cfg.grad_accum, dist.world)
    return report


def _setup(cfg: TrainConfig, run_dir: Path, dataset_dir: Path, base: Path, ckpt: Path | None, dist: Dist,
           device_name: str, progress: Progress | None, callbacks: list[TrainCallback] | None) -> _Run:
    """Build the run: model, features, data order, optimizer, schedule; restore a checkpoint when resuming."""
    if ckpt is None and dist.is_main:
        _prepare_run_dir(run_dir, {"dataset": str(Path(dataset_dir).resolve()),
                                   "base": str(Path(base).resolve())})
    elif ckpt is not None and dist.is_main:
        clean_leftovers(run_dir)
    saved = load_state(ckpt) if ckpt is not None else None  # first: a bad checkpoint changes nothing
    dist.barrier()
    seed_everything(cfg.seed)
    device = pick_device(device_name)
    dataset = Dataset.load(dataset_dir)
    backend = get_backend(cfg.backend)
    backend.load_base(Path(base), device)
    store, model = _features(backend, cfg, dataset, run_dir, dist, progress)
    # speed/memory options (bf16 weights etc.) before the optimizer, with the CUDA-graphs decision
    backend.configure_training(cfg, cuda_graphs=graphs.planned(backend, cfg, device))
    if cfg.auto and ckpt is None:  # measured batch geometry for this GPU (a resumed run keeps its own)
        from voicetune.training.autotune import apply_recommendation

        cfg = apply_recommendation(backend, store, cfg, device)
        seed_everything(cfg.seed)
    if ckpt is None:  # a resumed run keeps the geometry it was saved with
        cfg = clamp_batch(cfg, len(store), dist.world)
    precision = resolve_precision(cfg.precision, device)
    step_size = cfg.batch_size * cfg.grad_accum * dist.world
    sampler = StepSampler(store.lengths(), step_size, cfg.seed, cfg.bucket_window)
    report = _data_report(store, len(dataset.train), sampler, cfg, dist)
    if dist.is_main and ckpt is None:
        save_yaml(cfg, run_dir / "config.yaml")
    if dist.is_main and ckpt is None:  # a base that is no local path (a hub id) is recorded as given
        base_ref = str(Path(base).resolve()) if Path(base).exists() else str(base)
        RunInfo(cfg.backend, base_ref, str(Path(dataset_dir).resolve()), cfg.seed, software_versions(),
                training={**report, "model": model, "loss_parts": list(type(backend).loss_parts),
                          "loss_note": type(backend).loss_note}).save(run_dir)
    steps_per_epoch = sampler.steps_per_epoch()
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    optimizer = build_optimizer(backend.param_groups(cfg), cfg, device)
    compiled = _compile_cache(cfg, backend, device, precision)
    scheduler = build_scheduler(optimizer, cfg, total, steps_per_epoch)
    plan = MicroBatchPlan(per_rank=cfg.batch_size * cfg.grad_accum, size=cfg.batch_size)
    engine = StepEngine(
        backend, store, optimizer, cfg, device, precision, dist, plan, make_scaler(precision, device)
    )
    if dist.is_main:  # say early when the checkpoints will not fit (each save checks again, and refuses)
        warn_if_short(run_dir, (cfg.keep_last + 1) * checkpoint_bytes(run_dir, backend, optimizer),
                      f"keeping {cfg.keep_last} checkpoints (--keep-last) plus the one being written")
    state = LoopState(run_dir, backend, cfg, total, steps_per_epoch=steps_per_epoch)
    run = _Run(cfg, run_dir, dist, device, precision, backend, store, sampler, optimizer, scheduler, engine,
               state, list(callbacks or []) if dist.is_main else [], progress, compile_cache=compiled)
    if ckpt is not None:
        assert saved is not None
        run.start_step = restore(ckpt, saved, backend=backend, optimizer=optimizer, scheduler=scheduler,
                                engine=engine, sampler=sampler, dist=dist)
        run.state.resumed_from = run.start_step
        run.state.step, run.state.checkpoint = run.start_step, ckpt
        if dist.is_main:  # restored: record its changed options (length, logging...) for the next resume
            save_yaml(cfg, run_dir / "config.yaml")
            truncate_metrics(run_dir, run.start_step)
    run.meter = _meter(backend, engine, device, precision, total, run.start_step, cfg.log_every)
    logger.info("training %s on %s (%s): %d clips, batch %d x accum %d x %d process(es), steps %d..%d of %d "
                "(%.1f epochs)", cfg.backend, device, precision, len(store), cfg.batch_size, cfg.grad_accum,
                dist.world, run.start_step + 1, total, total, total / steps_per_epoch)
    return run


def _compile_cache(cfg: TrainConfig, backend: Backend, device: torch.device,
                   precision: str) -> CompileCache | None:
    """The run's compile cache (compile_cache.py), loaded into torch's caches before the first step."""
    if not cfg.compile_cache:
        return None
    settings = {"backend": cfg.backend, "precision": precision, "param_dtype": cfg.param_dtype,
                "optimizer_state_dtype": cfg.optimizer_state_dtype, "compile_mode": cfg.compile_mode,
                "cuda_graphs": cfg.cuda_graphs, "recompute": cfg.recompute,
                "backend_options": dataclasses.asdict(cfg.backend_options)}
    cache = CompileCache.for_run(device, backend.trainable(), settings)
    cache.load()
    return cache


def _meter(backend: Backend, engine: StepEngine, device: torch.device, precision: str, total: int,
           start: int = 0, log_every: int = 1) -> Meter:
    params = sum(p.numel() for p in backend.trainable().parameters())
    trainable = sum(p.numel() for p in engine.params)
    peak, what = peak_flops(device, precision)
    if start == 0:
        logger.log(logging.INFO if peak else logging.DEBUG,  # on a CPU there is no MFU to speak of
                   "MFU: %s; model FLOPs per token = 4 x %.1f M params + 2 x %.1f M trainable", what,
                   params / 1e6, trainable / 1e6)
    # rates over the last METER_WINDOW steps, or over the whole interval between two log lines
    return Meter(total, start, params, trainable, peak, window=max(METER_WINDOW, log_every))


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
    """Finetune ``base`` on the dataset's train split, writing the run folder ``out``.

    ``cfg`` (or ``config_file``, a YAML TrainConfig) gives the settings; keyword ``overrides`` by flat name
    (e.g. ``max_steps=50``, ``eval_every=10``, ``dropout=0.0``) are applied on top and validated.
    ``resume=RUN_DIR`` continues that run from its latest checkpoint exactly (dataset, base and config come
    from the run; ``overrides`` may change its length, checkpointing, logging and evaluation). ``callbacks``
    (:class:`TrainCallback`) watch the run on rank 0: this function runs no evaluation of its own
    (:func:`voicetune.finetune.train`, what ``voicetune.train`` and the CLI call, adds it). Under
    torchrun/accelerate every process calls this; rank 0 writes. The first Ctrl+C/SIGTERM ends the current
    step, saves and returns (``TrainResult.interrupted``).
    """
    t0 = time.time()
    cfg, run_dir, dataset_dir, base, ckpt = _sources(
        dataset_dir, base, out, cfg, config_file, overrides, resume
    )
    dist, device_name = init_distributed(cfg.device)
    try:
        run = _setup(cfg, run_dir, dataset_dir, base, ckpt, dist, device_name, progress, callbacks)
        if run.start_step >= run.state.total_steps:
            logger.info(
                "%s is already complete (step %d of %d); raise --max-steps or --epochs to train longer",
                run_dir,
                run.start_step,
                run.state.total_steps,
            )
        else:
            with GracefulStop() as stopper:
                _loop(run, stopper)
        result = _finish(run, time.time() - t0)
        if run.state.error:  # after the checkpoint and the report: fail loud, never a quality result
            raise SoftwareError(f"{run.state.error}; checkpoint {run.state.checkpoint} was saved; "
                                f"see {run_dir / 'report.html'}")
        return result
    finally:
        shutdown(dist)


def _loop(run: _Run, stopper: GracefulStop) -> None:
    """Steps from the start (or resume) point to the end, an early stop or a signal.

    Per step, only what the step needs: the data, the step itself, the LR schedule and the rates. Logging,
    memory queries and progress text happen at their own cadence; the model goes back to training mode only
    when a callback took it out (the in-loop evaluation); the ranks agree on stopping and saving in one
    all-reduce (none on a single process)."""
    state, cfg, dist = run.state, run.cfg, run.dist
    if dist.is_main:
        run.writer = _tensorboard(run.run_dir, purge_step=run.start_step + 1 if run.start_step else None)
    _call(run.callbacks, "on_train_start", state)
    if state.error:  # e.g. the baseline evaluation could not synthesize a single sentence: no step is taken
        raise SoftwareError(f"{state.error}; training did not start")
    run.backend.set_train(True)
    trainable = run.backend.trainable()
    total = state.total_steps
    assert run.meter is not None
    run.meter.restart()  # rates and the ETA measure the steps, not the set-up and the baseline evaluation
    shown = -math.inf  # when the progress callback last ran
    with warnings.catch_warnings():  # one schedule step per optimizer step, also when fp16 skipped it
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        for step in range(run.start_step + 1, total + 1):
            share = rank_share(run.sampler.next_step(), dist.rank, dist.world)
            upcoming = rank_share(run.sampler.peek_step(), dist.rank, dist.world) if step < total else None
            parts = run.engine.run(step, share, upcoming)
            run.scheduler.step()
            log = dist.is_main and (step % cfg.log_every == 0 or step == total)
            mem = dist.is_main and bool(cfg.mem_every) and step % cfg.mem_every == 0
            parts = _observe(run, step, parts, with_memory=log or mem)
            run.history.append(parts)
            state.step, state.last = step, parts
            if dist.is_main:
                if log:
                    console = step % cfg.console_every == 0 or step in (run.start_step + 1, total)
                    _log_step(run, step, total, parts, console)
                if mem:
                    logger.info("%s", mem_line(step, {k: v for k, v in parts.items()
                                                      if k.startswith("mem_")}))
                if run.progress and (step == total or time.perf_counter() - shown >= PROGRESS_SECONDS):
                    run.progress(step, total, f"train: {bar_text(parts)}")
                    shown = time.perf_counter()
            if run.callbacks:
                _call(run.callbacks, "on_step_end", state)
                if not trainable.training:  # a callback switched the model to inference mode (evaluation)
                    run.backend.set_train(True)
            signal_stop, cb_stop, requested = dist.any_of(
                (bool(stopper.requested), state.should_stop, state.save_requested), run.device)
            state.should_stop = state.should_stop or cb_stop or signal_stop
            if signal_stop and not run.interrupted:
                run.interrupted = stopper.requested or "signal on another rank"
                state.stop_reason = state.stop_reason or f"{run.interrupted}: stopped by the user"
            due = bool(cfg.save_every) and step % cfg.save_every == 0
            if due or step == total or state.should_stop or requested:
                state.save_requested = False
                _save(run, step, parts)
            if state.should_stop:
                logger.info("stopping at step %d: %s", step,
                            "the software error above" if state.error else state.stop_reason)
                break


def _observe(run: _Run, step: int, parts: dict[str, float], with_memory: bool = True) -> dict[str, float]:
    """The step's logged values: loss parts averaged over ranks, LR, epoch, wall-clock rates, ETA, MFU and
    (``with_memory``: where they are logged) the memory counters."""
    counts = {k: parts.pop(k) for k in ("samples", "audio_seconds", "tokens") if k in parts}
    parts = run.dist.mean(parts, run.device)
    parts.update(lr=run.scheduler.get_last_lr()[0], epoch=run.sampler.progress_epochs)
    assert run.meter is not None
    parts.update(run.meter.record(step, int(counts.get("samples", 0)), counts.get("audio_seconds", 0.0),
                                  int(counts.get("tokens", 0)), run.dist.world))
    if with_memory:
        parts.update(memory(run.device))
    return parts


def _save(run: _Run, step: int, parts: dict[str, float]) -> None:
    """A checkpoint of this step (every rank takes part: the RNG states are gathered; rank 0 writes)."""
    extra = extra_state(run.engine, run.dist)
    if run.dist.is_main:
        run.state.checkpoint = save_checkpoint(
            run.run_dir, step, run.backend, run.optimizer, run.scheduler,
            {"epoch": run.sampler.progress_epochs, "loss": parts.get("loss")}, run.sampler.state_dict(),
            run.cfg.keep_last, extra=extra)
        _call(run.callbacks, "on_checkpoint", run.state)
        fsync_path(run.run_dir / "metrics.jsonl")  # the log lines up to this checkpoint are on disk
        if run.compile_cache is not None:
            run.compile_cache.save()
    else:
        run.state.checkpoint = checkpoints_dir(run.run_dir) / f"step_{step}"
    run.dist.barrier()


def _finish(run: _Run, seconds: float) -> TrainResult:
    _call(run.callbacks, "on_train_end", run.state)
    if run.writer:
        run.writer.close()
    if run.interrupted:
        logger.warning(
            "interrupted (%s) at step %d; checkpoint %s. Continue with: voicetune train --resume %s",
            run.interrupted,
            run.state.step,
            run.state.checkpoint,
            run.run_dir,
        )
    assert run.state.checkpoint is not None
    return TrainResult(
        run.run_dir,
        run.state.step,
        Path(run.state.checkpoint),
        run.history,
        seconds,
        len(run.store),
        interrupted=run.interrupted,
        resumed_from=run.start_step,
    )


def _tensorboard(run_dir: Path, purge_step: int | None = None) -> Any:
    """The run's TensorBoard writer; a resumed run purges the events logged after its checkpoint."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a broken install should not stop training
        logger.warning("tensorboard is not importable; TensorBoard events are not written")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)


def _log_step(run: _Run, step: int, total: int, parts: dict[str, float], console: bool = True) -> None:
    """metrics.jsonl (flushed to the OS; to disk at checkpoints), TensorBoard and a log line (INFO on the
    console's steps; DEBUG, i.e. the log file only, on the others): ~0.2 ms a step, where an fsync per line
    cost ~2.4 ms and an event per scalar ~0.7 ms (of a ~20 ms GPU step)."""
    record = {"step": step, "time": time.time(), **{k: float(f"{v:.7g}") for k, v in parts.items()}}
    append_jsonl(run.run_dir / "metrics.jsonl", record, sync=False)
    if run.writer:
        _tensorboard_scalars(run.writer, {f"train/{k}": v for k, v in parts.items() if k != "epoch"}, step)
    logger.log(logging.INFO if console else logging.DEBUG, "step %d/%d %s", step, total,
               progress_text(parts, type(run.backend).loss_parts))


def _tensorboard_scalars(writer: Any, values: dict[str, float], step: int) -> None:
    """All of a step's scalars as one TensorBoard event (the same scalars as one add_scalar each)."""
    try:
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        writer._get_file_writer().add_summary(summary, step)
    except (ImportError, AttributeError):  # another TensorBoard version: one event per value
        for k, v in values.items():
            writer.add_scalar(k, v, step)
