"""What training reports about itself: throughput, ETA, memory and model FLOPs utilisation.

The same record goes to the console (the progress text and a log line), ``metrics.jsonl`` and TensorBoard.
Every ``--mem-every`` steps a parseable memory line is logged, in the spirit of AllTalk's::

    [mem] step=100 alloc_gib=3.21 peak_gib=4.05 reserved_gib=5.00        (CUDA)
    [mem] step=100 rss_gib=1.52                                          (CPU: the process's resident memory)

Model FLOPs utilisation (MFU) = achieved model FLOPs / the GPU's peak. Model FLOPs per step are estimated the
usual way: 2 FLOPs per parameter and token for the forward pass, 2 more for the gradients of the activations
and 2 for the gradients of the weights that train, i.e. ``(4 x params + 2 x trainable params) x tokens``
(``6 x params x tokens`` for full finetuning; attention's own FLOPs are left out). The peak is the dense
tensor-core rate of :data:`PEAK_TFLOPS` for the precision in use; other GPUs get no MFU.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

GIB = 1024**3

# Dense (no sparsity) peak TFLOPS by GPU name fragment: (bf16/fp16 tensor cores, fp32 without TF32).
# Data-sheet numbers of the SXM/PCIe parts; the first matching fragment wins.
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H200", 989.0, 67.0),
    ("H100", 989.0, 67.0),  # SXM; the PCIe card is ~25% lower
    ("A100", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("A10", 125.0, 31.2),
    ("V100", 125.0, 15.7),  # fp16 only (no bf16)
    ("T4", 65.0, 8.1),
]


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, description) of ``device`` at ``precision``; (None, why) when unknown."""
    if device.type != "cuda":
        return None, "no MFU on CPU"
    name = torch.cuda.get_device_name(device)
    for fragment, half, single in PEAK_TFLOPS:
        if fragment in name:
            tflops = half if precision in ("bf16", "fp16") else single
            return tflops * 1e12, f"{name}: {tflops:g} TFLOPS dense {precision}"
    return None, f"no MFU: peak FLOPS of {name} unknown"


def step_flops(params: int, trainable: int, tokens: int) -> float:
    """Model FLOPs of one optimizer step over ``tokens`` tokens (forward + backward)."""
    return float(4 * params + 2 * trainable) * tokens


def memory(device: torch.device) -> dict[str, float]:
    """GiB allocated / peak allocated / reserved on a CUDA device; resident set size on CPU.

    One query of the allocator's counters (``memory_stats_as_nested_dict``: no device synchronisation; the
    flattened ``memory_stats`` that ``memory_allocated`` and friends each build costs ~0.1 ms a call)."""
    if device.type == "cuda":
        stats = torch.cuda.memory_stats_as_nested_dict(device)
        allocated = stats.get("allocated_bytes", {}).get("all", {})
        reserved = stats.get("reserved_bytes", {}).get("all", {})
        return {
            "mem_alloc_gib": allocated.get("current", 0) / GIB,
            "mem_peak_gib": allocated.get("peak", 0) / GIB,
            "mem_reserved_gib": reserved.get("current", 0) / GIB,
        }
    try:
        import psutil
    except ImportError:  # psutil is a dependency; without it the memory line is just left out
        return {}
    return {"mem_rss_gib": psutil.Process().memory_info().rss / GIB}


def mem_line(step: int, mem: dict[str, float]) -> str:
    """``[mem] step=N alloc_gib=.. peak_gib=.. reserved_gib=..`` (or ``rss_gib=..`` on CPU)."""
    fields = " ".join(f"{k[len('mem_') :]}={v:.2f}" for k, v in mem.items())
    return f"[mem] step={step} {fields}"


def format_duration(seconds: float) -> str:
    """A duration as people say it: "8 s", "3 min 20 s", "2 h 05 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class Meter:
    """Turns per-step counts into wall-clock rates, MFU and an ETA.

    Every figure is measured on the wall clock at the same point of every step (when the loop records it),
    so everything between two steps counts: data loading, logging, callbacks (evaluations), checkpoints,
    compiling. No device synchronisation is added for it: the loop already reads each step's loss and
    gradient norm back from the device, so the host is never more than one step ahead of the GPU, and a rate
    over ``n`` steps is exact to within the GPU work of one step (~1/n).

    * ``step_seconds``: wall time since the previous step was recorded (the first step: since
      :meth:`restart`).
    * ``samples_per_s``, ``audio_s_per_s``, ``mfu``: over the last ``window`` steps (fewer at the start),
      all ranks together.
    * ``eta_s``: the steps left times the mean wall time per step since the first step ended (the first
      step, which compiles, is left out once a second one has been measured; later compiles, evaluations and
      checkpoints are in the mean).
    """

    total_steps: int
    start_step: int
    params: int
    trainable: int
    peak: float | None
    window: int = 20
    clock: Callable[[], float] = time.perf_counter
    # (time, samples, audio seconds, tokens) at recorded steps
    _marks: deque[tuple[float, ...]] = field(init=False, repr=False)
    _totals: list[float] = field(init=False, repr=False)
    _first: tuple[float, int] | None = field(init=False, repr=False, default=None)  # (time, step) of step 1
    _t0: float = field(init=False, repr=False, default=0.0)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """Measure from now: the loop calls it just before its first step, so set-up (loading, features, the
        baseline evaluation) counts neither in the first rates nor in the ETA."""
        self._t0 = self.clock()
        self._totals = [0.0, 0.0, 0.0]
        self._marks = deque([(self._t0, 0.0, 0.0, 0.0)], maxlen=max(1, self.window) + 1)
        self._first = None

    def record(self, step: int, samples: int, audio_seconds: float, tokens: int,
               world: int) -> dict[str, float]:
        """Step ``step`` has ended (this rank's ``samples``/``audio_seconds``/``tokens``): its rates, MFU and
        the ETA of the run."""
        now = self.clock()
        previous = self._marks[-1][0]
        for i, n in enumerate((samples, audio_seconds, tokens)):
            self._totals[i] += float(n) * world
        self._marks.append((now, *self._totals))
        t_old, samples_old, audio_old, tokens_old = self._marks[0]
        span = now - t_old
        out = {
            "step_seconds": now - previous,
            "samples_per_s": (self._totals[0] - samples_old) / span if span > 0 else 0.0,
            "audio_s_per_s": (self._totals[1] - audio_old) / span if span > 0 else 0.0,
            "tokens": float(tokens * world),
        }
        if self._first is None:
            self._first = (now, step)
            per_step = now - self._t0
        else:
            per_step = (now - self._first[0]) / max(1, step - self._first[1])
        out["eta_s"] = per_step * max(0, self.total_steps - step)
        if self.peak and span > 0:
            flops = step_flops(self.params, self.trainable, int(self._totals[2] - tokens_old))
            out["mfu"] = flops / span / self.peak
        return out


def progress_text(parts: dict[str, float], loss_parts: dict[str, str] | None = None) -> str:
    """The one-line training status of the console (starts with "loss"), e.g.
    ``loss 1.029 (text 4.541, mel 0.983) · lr 2.0e-04 · 15.1 samples/s · 48.2 audio-s/s · ETA 3 min 20 s``."""
    text = f"loss {parts['loss']:.3f}"
    shown = [f"{label} {parts[name]:.3f}" for name, label in (loss_parts or {}).items() if name in parts]
    if shown:  # the backend's loss parts (Backend.loss_parts: name -> label)
        text += f" ({', '.join(shown)})"
    text += f" · lr {parts.get('lr', 0):.1e} · {parts.get('samples_per_s', 0):.1f} samples/s"
    text += f" · {parts.get('audio_s_per_s', 0):.1f} audio-s/s · ETA {format_duration(parts.get('eta_s', 0))}"
    if "mem_alloc_gib" in parts:
        text += f" · mem {parts['mem_alloc_gib']:.1f}/{parts['mem_peak_gib']:.1f} GiB"
    if "mfu" in parts:
        text += f" · MFU {100 * parts['mfu']:.0f}%"
    return text


def bar_text(parts: dict[str, float]) -> str:
    """The short status next to the progress bar: loss, rates and the run's ETA (evaluations included)."""
    return (f"loss {parts['loss']:.3f} · {parts.get('samples_per_s', 0):.1f} samples/s · "
            f"{parts.get('audio_s_per_s', 0):.1f} audio-s/s · ETA {format_duration(parts.get('eta_s', 0))}")
