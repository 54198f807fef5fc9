"""`voicetune doctor`: pre-flight checks before hours of work, each line pass / warn / fail."""

from __future__ import annotations

import importlib.util
import logging
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from voicetune.stackcheck import StackCheck

logger = logging.getLogger(__name__)

GIB = 1024**3


@dataclass
class Check:
    name: str
    status: str  # "pass" | "warn" | "fail"
    detail: str


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    stack: StackCheck | None = None  # the stack check's full result (tracebacks of failed components)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def text(self) -> str:
        mark = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
        width = max(len(c.name) for c in self.checks)
        lines = [f"[{mark[c.status]}] {c.name.ljust(width)}  {c.detail}" for c in self.checks]
        if self.recommendations:
            lines += ["", "recommended settings:"] + [f"  - {r}" for r in self.recommendations]
        return "\n".join(lines)


def _check_python(r: DoctorReport) -> None:
    v = sys.version_info
    r.add("python", "pass" if v >= (3, 10) else "fail", f"{platform.python_version()} ({sys.executable})")


def _check_disk(r: DoctorReport, where: Path) -> None:
    free = shutil.disk_usage(where).free / GIB
    status = "pass" if free >= 20 else "warn" if free >= 5 else "fail"
    r.add("disk", status, f"{free:.1f} GiB free at {where} (XTTS-v2 runs want >= 20 GiB for checkpoints)")


def _check_ram(r: DoctorReport) -> None:
    import psutil

    total = psutil.virtual_memory().total / GIB
    status = "pass" if total >= 16 else "warn" if total >= 8 else "fail"
    r.add(
        "RAM", status, f"{total:.1f} GiB total, {psutil.virtual_memory().available / GIB:.1f} GiB available"
    )


def _check_gpu(r: DoctorReport) -> None:
    import torch

    r.add("torch", "pass", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")
    if not torch.cuda.is_available():
        r.add("GPU", "warn", "no CUDA GPU visible: training runs on the CPU, which is only practical for the "
              "tiny test model (the demo); a real XTTS-v2 finetune needs a GPU")
        r.recommendations.append("CPU: --precision fp32 --batch-size 2 (demo / tests only)")
        return
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        vram = p.total_memory / GIB
        status = "pass" if vram >= 8 else "warn"
        r.add(f"GPU {i}", status, f"{p.name}, {vram:.1f} GiB, compute capability {p.major}.{p.minor}")
    vram = torch.cuda.get_device_properties(0).total_memory / GIB
    bf16 = torch.cuda.is_bf16_supported()
    r.add("bf16", "pass" if bf16 else "warn", "supported" if bf16 else "not supported: training runs in fp32")
    batch = 2 if vram < 12 else 4 if vram < 24 else 8 if vram < 48 else 16
    accum = max(1, 32 // batch)
    r.recommendations.append(f"GPU 0 ({vram:.0f} GiB): --precision {'bf16' if bf16 else 'fp32'} "
                             f"--batch-size {batch} --grad-accum {accum}")


def _check_packages(r: DoctorReport) -> None:
    missing = [
        m
        for m in ("TTS", "faster_whisper", "silero_vad", "resemblyzer", "distillmos", "soundfile", "av")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        r.add("packages", "fail", f"not importable: {', '.join(missing)} (run `make setup`)")
    else:
        r.add(
            "packages",
            "pass",
            "coqui-tts, faster-whisper, silero-vad, resemblyzer, distillmos, soundfile, PyAV",
        )


def _check_asr(r: DoctorReport) -> None:
    from voicetune.data.transcribe import resolve_asr_model

    try:
        _, desc = resolve_asr_model("auto", "en")
        r.add("ASR model", "pass", desc)
    except (RuntimeError, ValueError, OSError) as e:
        r.add("ASR model", "fail", str(e))


def _check_base(r: DoctorReport, base: Path, backend: str) -> None:
    from voicetune.backends.base import BaseModelError
    from voicetune.backends.registry import backend_class

    cls = backend_class(backend)
    try:
        files = cls.validate_base_folder(base)
    except BaseModelError as e:
        r.add("base model", "fail", str(e))
        return
    size = sum(p.stat().st_size for p in files.values()) / GIB
    note = " — UNTRAINED tiny test model, not usable for real voices" if cls.is_untrained(base) else ""
    r.add("base model", "warn" if note else "pass",
          f"{base}: complete {backend} layout ({size:.2f} GiB){note}")


def _check_training_memory(r: DoctorReport, base: Path, dataset: Path, backend_name: str,
                           clips: int = 64) -> None:
    """A dry run of training on the dataset's longest clips: measured peak memory -> recommended settings."""
    import tempfile

    import torch

    from voicetune.audio.io import AudioDecodeError, audio_duration
    from voicetune.backends.base import BaseModelError
    from voicetune.backends.registry import get_backend, train_config
    from voicetune.data.manifest import Dataset, DatasetError
    from voicetune.training import graphs
    from voicetune.training.autotune import cpu_recommendation, recommend

    # the effective batch the recommendation keeps (32)
    cfg = train_config(backend=backend_name, batch_size=4, grad_accum=8)
    if not torch.cuda.is_available():
        rec = cpu_recommendation(cfg)
        r.add("training dry run", "warn", "no CUDA GPU: cannot measure GPU memory; recommending CPU settings")
        r.recommendations.append(rec.text())
        return
    try:
        data = Dataset.load(dataset)
        longest = sorted(data.train, key=lambda c: -audio_duration(c.audio_path))[:clips]
        backend = get_backend(cfg.backend)
        backend.load_base(base, torch.device("cuda"))
        with tempfile.TemporaryDirectory(prefix="voicetune-doctor-") as tmp:
            backend.configure_model(cfg)
            store = backend.build_features(longest, Path(tmp))
            if len(store) == 0:
                r.add(
                    "training dry run", "fail", f"{dataset}: no usable training clip (see the warnings above)"
                )
                return
            backend.configure_training(cfg, cuda_graphs=graphs.planned(backend, cfg, torch.device("cuda")))
            rec = recommend(backend, store, cfg, torch.device("cuda"))
    except (BaseModelError, DatasetError, AudioDecodeError, OSError, ValueError) as e:
        r.add("training dry run", "fail", str(e))
        return
    fits = any(p.fits for p in rec.probes)
    r.add("training dry run", "pass" if fits else "fail",
          f"peak memory measured on {len(store)} longest clips at micro-batches "
          f"{', '.join(str(p.batch_size) for p in rec.probes)}")
    r.recommendations.append(rec.text() + "\n    (voicetune train --auto measures and applies this itself)")


def _check_stack(r: DoctorReport) -> None:
    """Synthesis, ASR, speaker encoder and MOS actually run (voicetune.stackcheck), with the versions."""
    from voicetune.stackcheck import check_stack

    stack = r.stack = check_stack()
    r.add("versions", "pass", stack.versions_line())
    for c in stack.results:
        r.add(f"stack: {c.component}", "pass" if c.ok else "fail", c.line())
    failed = "" if stack.ok else f"; FAILED: {', '.join(c.component for c in stack.failures)}"
    r.add("stack check", "pass" if stack.ok else "fail",
          f"{len(stack.results)} components in {stack.seconds:.1f} s on the CPU (reference speech: "
          f"{stack.reference}){failed}")


def doctor(base: Path | None = None, workdir: Path | None = None, dataset: Path | None = None,
           backend: str = "xtts", stack: bool = True) -> DoctorReport:
    """Run every check and return the report (the CLI prints ``report.text()``).

    ``stack``: also check that the stack works, not only that it is installed (:mod:`voicetune.stackcheck`:
    a tiny XTTS model synthesizes a sentence; ASR, speaker encoder and MOS score it; a few seconds).
    ``base`` is checked against ``backend``'s layout (a registered backend). With ``base`` and ``dataset``, a
    short training dry run on the GPU measures peak memory at growing batch sizes and recommends batch size,
    accumulation, precision and checkpointing (voicetune.training.autotune).
    """
    r = DoctorReport()
    _check_python(r)
    _check_disk(r, Path(workdir or Path.cwd()))
    _check_ram(r)
    _check_gpu(r)
    _check_packages(r)
    _check_asr(r)
    if stack:
        _check_stack(r)
    if base is not None:
        _check_base(r, Path(base), backend)
    if dataset is not None:
        if base is None or any(c.name == "base model" and c.status == "fail" for c in r.checks):
            r.add("training dry run", "fail", "needs a usable --base model folder as well as --dataset")
        else:
            _check_training_memory(r, Path(base), Path(dataset), backend)
    return r
