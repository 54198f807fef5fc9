"""What one in-loop evaluation costs, per part, and what share of the wall time it takes at a given step time.

Renders the default in-loop probe set (4 eval-split-like sentences + the first 4 English probes) with an
XTTS-v2 backend (``--size full``: the real architecture, 30 x 1024 GPT, random weights; ``tiny``: the test
model), each generation capped at the length the sentence takes at 14 characters/s (random weights never
emit a stop token, so every render is exactly as long as a real one would be), then scores every render
with the in-loop metrics (Resemblyzer similarity, DistillMOS, failure detectors; MCD/PESQ/STOI on the
eval-like sentences when pesq/pystoi are importable; ASR when ``--asr`` names a faster-whisper model).

Writes JSON: per-part seconds, the evaluation total, and for each ``--step-seconds`` the overhead of one
evaluation per epoch for several epoch lengths and the smallest interval that keeps evaluation under 15%.

    # GPU box (see /work/shared/GPU-NOTES.md): carry .whl_eval (coqui-tts + resemblyzer + distillmos wheels)
    python3 benchmarks/eval_overhead.py --size full --device cuda --out $OUT/eval_overhead.json
    # CPU, tiny model, with the packaged tiny.en ASR:
    .venv/bin/python benchmarks/eval_overhead.py --size tiny --device cpu --asr packaged --out /tmp/eval_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

SR = 22050
EVAL_LIKE = [
    "The morning light crept slowly across the kitchen table.",
    "Could you tell me where the nearest train station is?",
    "The garden looks wonderful after a week of gentle rain.",
    "Please remember to close the window before you leave.",
]
CHARS_PER_SECOND = 14.0
FULL_GPT = {"gpt_layers": 30, "gpt_n_model_channels": 1024, "gpt_n_heads": 16, "gpt_max_audio_tokens": 605,
            "gpt_max_text_tokens": 402, "decoder_input_dim": 1024}  # XTTS-v2 (its vocab: 6681 tokens, here ~400)


def speechlike(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal with a pitch contour (stands in for a recording)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)))
    audio = voice * syllables + 0.01 * rng.standard_normal(len(t))
    return (0.3 * audio / np.abs(audio).max()).astype(np.float32)


def build_base(folder: Path, size: str, clips: list[Path], texts: list[str]) -> Path:
    from voicetune.backends.xtts import tiny

    if size == "full":
        tiny.TINY_GPT.update(FULL_GPT)
        tiny.TINY_SYNTHESIS_MAX_AUDIO_TOKENS = 605  # XTTS-v2's own cap; per-sentence caps are set below
    return tiny.make_tiny_xtts_base(folder, corpus_texts=texts, stats_audio=clips, seed=0)


def timed(fn, device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def render_all(backend: Any, texts: list[str], refs: list[Path], device: torch.device) -> tuple[list, list[float]]:
    from voicetune.evaluation.metrics import spoken_chars

    backend.set_train(False)
    wavs, seconds = [], []
    for text in texts:
        backend.synthesis_max_audio_tokens = math.ceil(spoken_chars(text) / CHARS_PER_SECOND * SR / 1024)
        wav, s = timed(lambda text=text: backend.synthesize(text, refs, "en", seed=0), device)
        wavs.append(wav)
        seconds.append(s)
    return wavs, seconds


def score_all(wavs: list, texts: list[str], reals: list[Path], device: torch.device, asr: Any) -> dict[str, float]:
    from voicetune.evaluation import metrics as M

    metric_device = "cuda" if device.type == "cuda" else "cpu"
    centroid, t_centroid = timed(lambda: M.speaker_centroid(reals, device=metric_device), device)
    parts = {"centroid_once": t_centroid, "similarity": 0.0, "mos": 0.0, "failures": 0.0, "intrusive": 0.0,
             "asr": 0.0}
    for i, (w, text) in enumerate(zip(wavs, texts, strict=True)):
        a, sr = w.audio, w.sample_rate
        parts["similarity"] += timed(partial(M.speaker_similarity, [a], [], sr, metric_device, centroid), device)[1]
        parts["mos"] += timed(partial(M.predicted_mos, a, sr, metric_device), device)[1]
        hyp = ""
        if asr is not None:
            hyp, s = timed(partial(M.transcribe_text, asr, M.audio_at(a, sr, 16000), "en"), device)
            parts["asr"] += s
        parts["failures"] += timed(partial(M.detect_failures, a, sr, text, CHARS_PER_SECOND, False, hyp, "en"),
                                   device)[1]
        if i < len(reals):
            try:
                for fn in (M.mcd_dtw, M.pesq_wb, M.stoi):
                    parts["intrusive"] += timed(partial(fn, a, reals[i], sr), device)[1]
            except ImportError:
                parts["intrusive"] = math.nan
    return parts


def projection(eval_seconds: float, step_seconds: float) -> dict[str, Any]:
    """Overhead of one evaluation per epoch, and the smallest interval under the default 15% cap."""
    per_epoch = {str(n): eval_seconds / (n * step_seconds + eval_seconds) for n in (25, 125, 250, 500, 1000)}
    return {"step_seconds": step_seconds, "overhead_one_eval_per_epoch_of_n_steps": per_epoch,
            "min_steps_between_evals_for_15pct": math.ceil(eval_seconds * (0.85 / 0.15) / step_seconds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--asr", default=None, help="faster-whisper model for the ASR part ('packaged': tiny.en)")
    p.add_argument("--step-seconds", type=float, nargs="+", default=[0.15, 0.2, 0.5])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    from voicetune.backends.xtts.backend import XttsBackend
    from voicetune.evaluation.probes import probe_sentences

    texts = EVAL_LIKE + probe_sentences("en", 4)
    work = Path(tempfile.mkdtemp(prefix="eval_overhead_"))
    refs = []
    for i, sec in enumerate((8.0, 7.0, 6.0, 3.5, 3.0, 3.2, 2.8)):
        path = work / f"clip{i}.wav"
        import soundfile as sf

        sf.write(path, speechlike(sec, 110 + 7 * i, i), SR)
        refs.append(path)
    base, t_build = timed(lambda: build_base(work / "base", args.size, refs[:3], texts), torch.device("cpu"))
    backend = XttsBackend()
    _, t_load = timed(lambda: backend.load_base(base, device), device)
    asr = None
    if args.asr:
        from voicetune.evaluation.metrics import get_asr

        model = args.asr
        if model == "packaged":
            from voicetune.data.transcribe import packaged_model_path

            model = str(packaged_model_path())
        asr = get_asr(model, "en", "cuda" if device.type == "cuda" else "cpu")
    render_all(backend, texts[:2], refs[:3], device)  # warm-up (kernels, first conditioning)
    score_all(*render_all(backend, texts[:1], refs[:3], device)[:1], texts[:1], refs[3:], device, asr)
    backend.set_train(True)  # clear the conditioning cache: an evaluation starts cold
    wavs, render_seconds = render_all(backend, texts, refs[:3], device)
    backend.set_train(True)
    nocache = []
    for text in texts[:2]:  # without the conditioning cache: each sentence recomputes it
        nocache.append(render_all(backend, [text], refs[:3], device)[1][0])
        backend.set_train(True)
    parts = score_all(wavs, texts, refs[3:], device, asr)
    render_total = sum(render_seconds)
    scoring = sum(v for k, v in parts.items() if k != "centroid_once" and not math.isnan(v))
    total = render_total + scoring
    import subprocess
    import sys

    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    result = {
        "benchmark": "eval_overhead", "command": " ".join(sys.argv), "commit": git.stdout.strip() or "unknown",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "size": args.size,
        "gpt_params_m": sum(p.numel() for p in backend.trainable().parameters()) / 1e6,
        "sentences": len(texts), "build_seconds": t_build, "load_seconds": t_load,
        "audio_seconds": [len(w.audio) / w.sample_rate for w in wavs],
        "render_seconds": render_seconds, "render_total": render_total,
        "render_first_two_without_conditioning_cache": nocache,
        "scoring_seconds": parts, "asr_measured": asr is not None,
        "eval_total_seconds": total,
        "projection": [projection(total, s) for s in args.step_seconds],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
