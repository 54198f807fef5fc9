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
    """GiB allocated / peak allocated / reserved on a CUDA device; resident set size on CPU."""
    if device.type == "cuda":
        return {
            "mem_alloc_gib": torch.cuda.memory_allocated(device) / GIB,
            "mem_peak_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "mem_reserved_gib": torch.cuda.memory_reserved(device) / GIB,
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
    """Turns per-step counts into rates, MFU and an ETA (the ETA from the wall time since the (re)start, so it
    includes checkpoints and evaluations)."""

    total_steps: int
    start_step: int
    params: int
    trainable: int
    peak: float | None
    t0: float = field(default_factory=time.perf_counter)

    def restart(self) -> None:
        """Measure from now (the first training step): set-up and the baseline evaluation are not training."""
        self.t0 = time.perf_counter()

    def record(
        self, step: int, step_seconds: float, samples: int, audio_seconds: float, tokens: int, world: int
    ) -> dict[str, float]:
        """Rates of this step (all ranks together) and the ETA of the run."""
        out = {
            "samples_per_s": samples * world / step_seconds if step_seconds > 0 else 0.0,
            "audio_s_per_s": audio_seconds * world / step_seconds if step_seconds > 0 else 0.0,
            "tokens": float(tokens * world),
        }
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        out["eta_s"] = elapsed / done * (self.total_steps - step) if done > 0 else 0.0
        if self.peak and step_seconds > 0:
            out["mfu"] = step_flops(self.params, self.trainable, tokens) / step_seconds / self.peak
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
