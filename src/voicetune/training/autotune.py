"""Batch size, accumulation, precision and checkpointing for this GPU, from a short measured dry run.

:func:`measure` runs forward + backward on the longest clips (memory peaks on the longest batch) at growing
micro-batch sizes and records the peak allocated GPU memory; the optimizer's state is added by arithmetic
(AdamW: two fp32 moments per trained parameter), so no weight changes. :func:`recommend` picks the largest
micro-batch whose peak stays under :data:`HEADROOM` of the GPU's memory, and the accumulation that keeps the
configured effective batch (``batch_size x grad_accum``). Without room for two clips it measures again with
more recomputation, the cheapest first among the modes the backend's options offer (XTTS: each layer's MLP,
which CUDA graphs still capture; then whole layers, which they do not), and recommends the first that makes
room.

``voicetune doctor --base B --dataset D`` prints the recommendation; ``voicetune train --auto`` applies it.
On a CPU nothing is measured: the recommendation is the CPU settings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from voicetune.config import RECOMPUTE_MODES, TrainConfig, with_recompute
from voicetune.training import graphs
from voicetune.training.oom import is_oom
from voicetune.training.step import to_device
from voicetune.utils.device import autocast, resolve_precision

logger = logging.getLogger(__name__)

GIB = 1024**3
HEADROOM = 0.85  # share of the GPU's memory a recommendation may plan to use (fragmentation, other processes)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
_STATE_BYTES = {"adamw": 8, "adam": 8, "sgd": 4, "rmsprop": 8}  # optimizer state per trained fp32 parameter


@dataclass
class Probe:
    batch_size: int
    peak_gib: float  # measured forward + backward peak
    total_gib: float  # + the optimizer state
    seconds: float
    fits: bool
    recompute: str = "none"  # what the backward pass recomputed: one of config.RECOMPUTE_MODES


@dataclass
class Recommendation:
    device: str
    batch_size: int
    grad_accum: int
    precision: str
    gradient_checkpointing: bool
    memory_gib: float | None = None
    probes: list[Probe] = field(default_factory=list)
    note: str = ""
    checkpoint_mlp: bool = False

    def text(self) -> str:
        flags = (
            f"--batch-size {self.batch_size} --grad-accum {self.grad_accum} --precision {self.precision}"
            + (" --gradient-checkpointing" if self.gradient_checkpointing else "")
            + (" --checkpoint-mlp" if self.checkpoint_mlp else "")
        )
        lines = [f"{self.device}: {flags}"]
        for p in self.probes:
            recomputed = f" ({p.recompute} recomputed)" if p.recompute != "none" else ""
            lines.append(
                f"    micro-batch {p.batch_size:>3}{recomputed}: "
                f"{f'peak {p.peak_gib:.2f} GiB + optimizer = {p.total_gib:.2f} GiB' if p.fits else 'OOM'}"
                f" ({p.seconds:.2f} s)"
            )
        if self.note:
            lines.append(f"    {self.note}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _optimizer_gib(backend: Any, cfg: Any) -> float:
    trained = sum(p.numel() for p in backend.trainable().parameters() if p.requires_grad)
    per = _STATE_BYTES.get(cfg.optimizer, 8)
    if getattr(cfg, "optimizer_state_dtype", "fp32") == "bf16":
        per //= 2
    return float(trained * per / GIB)


def _probe(
    backend: Any, store: Any, order: list[int], b: int, cfg: Any, device: torch.device, precision: str
) -> tuple[float, float] | None:
    """(peak GiB, seconds) of forward + backward on the ``b`` longest clips; None when out of memory."""
    gpt = backend.trainable()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    oom = False
    try:
        for _ in range(2):  # the second pass runs warm (compiled graphs, allocator caches)
            batch = to_device(backend.collate([store[i] for i in order[:b]]), device)
            with autocast(device, precision):
                loss = backend.loss(batch, cfg)["loss"]
            loss.backward()
            del batch, loss
            gpt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        if not is_oom(e):
            raise
        oom = True
    gpt.zero_grad(set_to_none=True)
    if oom:
        torch.cuda.empty_cache()
        return None
    return torch.cuda.max_memory_allocated(device) / GIB, (time.perf_counter() - t0) / 2


def measure(
    backend: Any, store: Any, cfg: Any, device: torch.device, recompute: str = "none"
) -> list[Probe]:
    """Peak memory of forward + backward at growing micro-batch sizes (until OOM or the headroom is used)."""
    precision = resolve_precision(cfg.precision, device)
    total = torch.cuda.get_device_properties(device).total_memory / GIB
    lengths = store.lengths()
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    opt = _optimizer_gib(backend, cfg)
    probes: list[Probe] = []
    with torch.random.fork_rng(devices=[device]):
        for b in BATCH_SIZES:
            if b > len(order):
                break
            got = _probe(backend, store, order, b, cfg, device, precision)
            if got is None:
                probes.append(Probe(b, float("inf"), float("inf"), 0.0, False, recompute))
                break
            peak, seconds = got
            probes.append(
                Probe(
                    b,
                    round(peak, 3),
                    round(peak + opt, 3),
                    round(seconds, 3),
                    peak + opt <= HEADROOM * total,
                    recompute,
                )
            )
            if not probes[-1].fits:
                break
    backend.set_train(True)
    return probes


def cpu_recommendation(cfg: Any) -> Recommendation:
    target = cfg.batch_size * cfg.grad_accum
    batch = min(cfg.batch_size, 2)
    return Recommendation(
        "CPU",
        batch,
        max(1, -(-target // batch)),
        "fp32",
        False,
        note="no CUDA GPU: GPU memory cannot be measured here; CPU training is only practical for "
        "the tiny test model",
    )


def escalate(measure_at: Any, start: str, need: int,
             offered: tuple[str, ...] = RECOMPUTE_MODES) -> tuple[int, str, list[Probe]]:
    """(largest micro-batch that fits, the recomputation it needs, every probe). ``measure_at(mode)`` gives
    the probes of one mode; from ``start``, the next, more frugal mode among ``offered`` (the backend's) is
    measured while fewer than ``need`` clips fit, and a mode is chosen only where it fits more clips than the
    faster ones before it."""
    modes = [m for m in RECOMPUTE_MODES[RECOMPUTE_MODES.index(start):] if m in offered or m == start]
    best, chosen, probes = 0, start, []
    for mode in modes:
        more = measure_at(mode)
        probes += more
        fits = max((p.batch_size for p in more if p.fits), default=0)
        if fits > best:
            best, chosen = fits, mode
        if best >= need:
            break
    return best, chosen, probes


def recommend(backend: Any, store: Any, cfg: Any, device: torch.device) -> Recommendation:
    """Measure on ``device`` (a CUDA GPU) and recommend settings that keep ``cfg``'s effective batch."""
    if device.type != "cuda":
        return cpu_recommendation(cfg)
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    cfg_m = _with(cfg, precision=precision)
    target = cfg.batch_size * cfg.grad_accum
    offered = cfg.backend_options.recompute_modes()  # what the backend can recompute, fastest first
    configured = [cfg.recompute]  # the mode the backend is set up for

    def configure(mode: str) -> TrainConfig:
        cfg_r = with_recompute(cfg_m, mode)
        if mode != configured[0]:
            backend.configure_training(cfg_r, cuda_graphs=graphs.planned(backend, cfg_r, device))
            configured[0] = mode
        return cfg_r

    def measure_at(mode: str) -> list[Probe]:
        return measure(backend, store, configure(mode), device, recompute=mode)

    best, mode, probes = escalate(measure_at, cfg.recompute, min(2, target), offered)
    configure(mode)
    name = torch.cuda.get_device_name(device)
    total = torch.cuda.get_device_properties(device).total_memory / GIB
    if best == 0:
        return Recommendation(
            name,
            1,
            target,
            precision,
            True,
            total,
            probes,
            note="even one clip does not fit: try --finetune lora, --param-dtype bf16 or a lower "
            "--max-audio-seconds",
        )
    batch = min(best, target) if target >= 1 else best
    return Recommendation(
        name,
        batch,
        max(1, -(-target // batch)),
        precision,
        mode == "layer",
        round(total, 2),
        probes,
        note=f"measured on the {min(len(store), max(p.batch_size for p in probes))} longest clips; "
        f"plans at most {int(HEADROOM * 100)}% of {total:.1f} GiB",
        checkpoint_mlp=mode == "mlp",
    )


def _with(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def apply_recommendation(backend: Any, store: Any, cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """``train --auto``: measure and return ``cfg`` with the recommended batch geometry and precision."""
    rec = recommend(backend, store, cfg, device)
    logger.info("--auto recommendation:\n%s", rec.text())
    mode = "layer" if rec.gradient_checkpointing else "mlp" if rec.checkpoint_mlp else "none"
    return with_recompute(_with(cfg, batch_size=rec.batch_size, grad_accum=rec.grad_accum,
                                precision=rec.precision), mode)
