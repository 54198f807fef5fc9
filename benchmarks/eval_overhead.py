"""What one in-loop evaluation costs, before and after batching, with one and with two seeds per sentence.

The default in-loop probe set (4 eval-split sentences with their recordings + the first 4 English probes) of
an XTTS-v2 backend (``--size full``: the real architecture, 30 x 1024 GPT, random weights; ``tiny``: the test
model). Random weights never emit a stop token, so each render is stopped at the length its sentence takes at
14 characters/s: with ``synthesis_max_audio_tokens`` one sentence at a time (before), and in a batch by a
logits processor that ends each row at its own length (after), so both do the work a real model would.

* **before**: one ``synthesize`` per render, each render scored alone (Whisper's sequential decoding,
  Resemblyzer, DistillMOS one clip at a time), as evaluation worked until this change;
* **after**: what ``voicetune train`` runs now: ``suite.run_evaluation`` (``harness.render``, which hands
  ``synthesis_batch_size`` texts to ``synthesize_batch``, and ``Scorer.score``, which scores the model-based
  metrics in batches) with the protocol's ``--eval-seeds`` k (``k1``, ``k2``), plus what selection adds: the
  bootstrap intervals of :mod:`voicetune.evaluation.stats` (``stats_s``). ``cpu_s``: process CPU seconds
  (all threads) of one evaluation. On a voicetune without ``--eval-seeds`` (before issue 14), ``k1`` is its
  ``run_evaluation`` and ``k2`` the same building blocks on twice the renders.

Both include the failure detectors and MCD/PESQ/STOI (CPU; left out of both where pesq/pystoi are not
installed, and the JSON says so). ``--asr`` names the faster-whisper model
(``packaged``: tiny.en); without one (the GPU box has no faster-whisper) the ASR is left out of both and the
JSON says so. The renders of both paths are compared (same seeds: batching must not change them).

    # GPU box (see /work/shared/GPU-NOTES.md): carry the coqui-tts, resemblyzer and distillmos wheels
    python3 benchmarks/eval_overhead.py --size full --device cuda --out $OUT/eval_overhead.json
    # CPU, tiny model, with the packaged tiny.en ASR:
    .venv/bin/python benchmarks/eval_overhead.py --size tiny --device cpu --asr packaged --out /tmp/e.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import git_commit

SR = 22050
EVAL_LIKE = [
    "The morning light crept slowly across the kitchen table.",
    "Could you tell me where the nearest train station is?",
    "The garden looks wonderful after a week of gentle rain.",
    "Please remember to close the window before you leave.",
]
CHARS_PER_SECOND = 14.0
EQUALITY_TOKENS = 40  # length of the renders compared between batched and one-at-a-time rendering
FULL_GPT = {"gpt_layers": 30, "gpt_n_model_channels": 1024, "gpt_n_heads": 16, "gpt_max_audio_tokens": 605,
            "gpt_max_text_tokens": 402, "decoder_input_dim": 1024}  # XTTS-v2 (vocab: 6681 tokens, here ~400)


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


def build_dataset(root: Path) -> Path:
    """3 long train clips (the references) and the 4 eval-like sentences with stand-in recordings."""
    import soundfile as sf

    from voicetune.data.manifest import write_metadata_csv

    (root / "wavs").mkdir(parents=True, exist_ok=True)
    train, evals = [], []
    for i, sec in enumerate((8.0, 7.0, 6.0)):
        sf.write(root / "wavs" / f"train{i}.wav", speechlike(sec, 110 + 7 * i, i), SR)
        train.append((f"wavs/train{i}.wav", "A sentence of the train split.", "speaker"))
    for i, text in enumerate(EVAL_LIKE):
        sf.write(root / "wavs" / f"eval{i}.wav", speechlike(3.0 + 0.2 * i, 130 + 5 * i, 10 + i), SR)
        evals.append((f"wavs/eval{i}.wav", text, "speaker"))
    write_metadata_csv(root / "metadata_train.csv", train)
    write_metadata_csv(root / "metadata_eval.csv", evals)
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def cap_of(text: str) -> int:
    """Audio tokens of ``text`` at 14 characters/s (one token = 1024 samples at 22.05 kHz)."""
    from voicetune.evaluation.metrics import spoken_chars

    return math.ceil(spoken_chars(text) / CHARS_PER_SECOND * SR / 1024)


SPLIT: dict[str, float] = {}  # where batched rendering's time goes (filled by per_row_caps' wrappers)


def reset_split() -> None:
    SPLIT.update(generate_s=0.0, generate_calls=0, rows=0, latents_and_decoder_s=0.0)


class RowCaps:
    """A logits processor before the sampling: row i can only emit the stop token once it holds caps[i] codes
    (random weights never stop by themselves). Graph-safe (no host reads): the codes made are the ids after
    the prefix that are not the start-of-audio token, which the static loop's unwritten columns hold and
    which :func:`never_start_audio` keeps the random model from sampling."""

    def __init__(self, caps: list[int], eos: int):
        self.caps, self.eos, self.start, self.start_audio = caps, eos, None, None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:  # the first call sees the prefix (batched.generate's inputs) alone
            self.start, self.start_audio = input_ids.shape[1], input_ids[0, -1]
            self.caps_t = torch.tensor(self.caps, device=scores.device)
        made = (input_ids[:, self.start :] != self.start_audio).sum(-1)
        only_stop = torch.full_like(scores, float("-inf"))
        only_stop[:, self.eos] = 0.0
        return torch.where((made >= self.caps_t).unsqueeze(-1), only_stop, scores)


def never_start_audio(backend: Any) -> None:
    """The random model's head cannot pick the start-of-audio token (a trained one does not: it only ever
    begins the audio), so that RowCaps can count codes."""
    gpt = backend.model.gpt
    with torch.no_grad():
        gpt.mel_head.bias[gpt.start_audio_token] = -1e4


@contextlib.contextmanager
def per_row_caps(backend: Any, caps_by_text: dict[tuple, int]):
    """Batched generation stops each row at its sentence's length (``RowCaps``)."""
    from transformers import LogitsProcessorList

    from voicetune.backends.xtts import batched

    generate, warpers, decode = batched.generate, batched.warpers, batched.decode

    def capped_generate(gpt, latents, texts, generators, sampling, carry_on=None):
        caps = [caps_by_text[tuple(t.flatten().tolist())] for t in texts]
        batched.warpers = lambda sampling: LogitsProcessorList([*warpers(sampling), RowCaps(caps, eos)])
        eos = int(gpt.stop_audio_token)
        t0 = time.perf_counter()
        try:
            return generate(gpt, latents, texts, generators, sampling, carry_on)
        finally:
            batched.warpers = warpers
            sync(latents.device)
            SPLIT["generate_s"] += time.perf_counter() - t0
            SPLIT["generate_calls"] += 1
            SPLIT["rows"] += len(texts)

    def timed_decode(*a, **kw):
        t0 = time.perf_counter()
        out = decode(*a, **kw)
        SPLIT["latents_and_decoder_s"] += time.perf_counter() - t0  # decode returns CPU audio: synced
        return out

    batched.generate, batched.decode = capped_generate, timed_decode
    backend.synthesis_max_audio_tokens = max(caps_by_text.values())
    try:
        yield
    finally:
        batched.generate, batched.decode = generate, decode
        backend.synthesis_max_audio_tokens = None


def render_before(backend: Any, texts: list[str], refs: list[Path], seeds: list[int],
                  device: torch.device) -> tuple[list, list[float]]:
    """One synthesize call per render, each capped at its sentence's length."""
    backend.set_train(False)
    wavs, seconds = [], []
    for text, seed in zip(texts, seeds, strict=True):
        backend.synthesis_max_audio_tokens = cap_of(text)
        wav, s = timed(partial(backend.synthesize, text, refs, "en", seed), device)
        wavs.append(wav)
        seconds.append(s)
    backend.synthesis_max_audio_tokens = None
    return wavs, seconds


def score_before(wavs: list, texts: list[str], reals: list[Path], centroid: np.ndarray, device: torch.device,
                 asr: Any, intrusive: bool = True) -> dict[str, float]:
    """Each render scored alone, as the harness did before batching (sequential Whisper decoding)."""
    from voicetune.evaluation import metrics as M

    metric_device = "cuda" if device.type == "cuda" else "cpu"
    parts = {"similarity": 0.0, "mos": 0.0, "asr": 0.0, "failures": 0.0, "intrusive": 0.0}
    for i, (w, text) in enumerate(zip(wavs, texts, strict=True)):
        a, sr = w.audio, w.sample_rate
        similarity = partial(M.speaker_similarity, [a], [], sr, metric_device, centroid)
        parts["similarity"] += timed(similarity, device)[1]
        parts["mos"] += timed(partial(M.predicted_mos, a, sr, metric_device), device)[1]
        hyp = ""
        if asr is not None:
            clip = M.audio_at(a, sr, 16000)
            hyp, s = timed(lambda clip=clip: asr.transcribe(clip, language="en").text, device)
            parts["asr"] += s
        failures = partial(M.detect_failures, a, sr, text, CHARS_PER_SECOND, False, hyp, "en")
        parts["failures"] += timed(failures, device)[1]
        if i < len(reals) and intrusive:
            for fn in (M.mcd_dtw, M.pesq_wb, M.stoi):
                parts["intrusive"] += timed(partial(fn, a, reals[i], sr), device)[1]
    return parts


def compare(before: list, after: list) -> dict[str, Any]:
    """Do the batched renders (Waveforms) equal the one-at-a-time ones (same seeds)?"""
    tokens = [a.meta["num_tokens"] == b.meta["num_tokens"] for a, b in zip(after, before, strict=True)]
    diffs = [float(np.abs(a.audio - b.audio).max()) if a.audio.shape == b.audio.shape else None
             for a, b in zip(after, before, strict=True)]
    return {"same_length": tokens, "max_abs_diff": diffs,
            "all_equal": all(d == 0.0 for d in diffs)}


def projection(eval_seconds: float, step_seconds: float) -> dict[str, Any]:
    """Overhead of one evaluation per epoch, and the smallest interval under the default 15% cap."""
    per_epoch = {str(n): eval_seconds / (n * step_seconds + eval_seconds) for n in (25, 125, 250, 500, 1000)}
    return {"step_seconds": step_seconds, "overhead_one_eval_per_epoch_of_n_steps": per_epoch,
            "min_steps_between_evals_for_15pct": math.ceil(eval_seconds * (0.85 / 0.15) / step_seconds)}


class NoAsr:
    """Where faster-whisper is not installed (the GPU box): every transcript is empty, ASR time is not counted
    in either path, and the JSON says ``asr_measured: false``."""

    name = "none (not measured)"

    def transcribe_each(self, clips: list, language: str | None = None, batch_size: int = 8) -> list[str]:
        return [""] * len(clips)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--asr", default=None, help="faster-whisper model for the ASR part ('packaged': tiny.en)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="seeds per sentence to measure")
    p.add_argument("--step-seconds", type=float, nargs="+", default=[0.02, 0.15])
    p.add_argument("--skip-before", action="store_true", help="only the batched evaluation")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    from voicetune.backends.xtts.backend import XttsBackend
    from voicetune.config import EvalOptions
    from voicetune.data.manifest import Dataset
    from voicetune.evaluation import suite
    from voicetune.evaluation.probes import probe_sentences

    work = Path(tempfile.mkdtemp(prefix="eval_overhead_"))
    data = Dataset.load(build_dataset(work / "data"))
    texts = [c.text for c in data.eval] + probe_sentences("en", 4)
    reals = [c.audio_path for c in data.eval]
    train_clips = [c.audio_path for c in data.train]
    build = partial(build_base, work / "base", args.size, train_clips, texts)
    base, t_build = timed(build, torch.device("cpu"))
    backend = XttsBackend()
    _, t_load = timed(lambda: backend.load_base(base, device), device)
    never_start_audio(backend)
    asr_model = args.asr
    if asr_model == "packaged":
        from voicetune.data.transcribe import packaged_model_path

        asr_model = str(packaged_model_path())
    intrusive = _importable("pesq") and _importable("pystoi")  # the GPU box may lack them (then: left out)
    options = EvalOptions(asr_model=asr_model or "auto", intrusive=intrusive)
    probe_set = suite.build_probe_set(data, suite.Protocol.of(options))
    assert probe_set.texts == texts, probe_set.texts
    metric_device = "cuda" if device.type == "cuda" else "cpu"
    if asr_model:
        scorer = suite.Scorer(probe_set, metric_device, metric_device)
    else:
        scorer = suite.Scorer.__new__(suite.Scorer)
        scorer.probe_set, scorer.device, scorer.asr = probe_set, metric_device, NoAsr()
        from voicetune.evaluation import metrics as M

        scorer.centroid = M.speaker_centroid(probe_set.material.held_out, device=metric_device)
        scorer.dv_centroid = suite.dvector_centroid(probe_set.material.held_out)
    refs = list(probe_set.material.references)
    caps = {}
    from voicetune.backends.xtts import batched

    for text in texts:
        caps[tuple(batched.text_tokens(backend.model, text, "en").flatten().tolist())] = cap_of(text)
    result: dict[str, Any] = {
        "benchmark": "eval_overhead", "command": " ".join([sys.executable, *sys.argv]),
        "commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or "cpu"),
        "torch": torch.__version__, "size": args.size, "asr_measured": bool(asr_model),
        "intrusive_measured": intrusive,
        "asr": scorer.asr.name,
        "gpt_params_m": sum(p.numel() for p in backend.trainable().parameters()) / 1e6,
        "sentences": len(texts), "caps_tokens": [cap_of(t) for t in texts], "build_seconds": t_build,
        "load_seconds": t_load, "synthesis_batch_size": type(backend).synthesis_batch_size, "runs": {},
    }

    def write() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")

    # warm-up: kernels, the conditioning, every metric model (unrecorded), as suite.warm_up does in training
    reset_split()
    with per_row_caps(backend, caps):
        timed(lambda: suite.warm_up(backend, probe_set, scorer), device)
        timed(lambda: backend.synthesize_batch(texts[:2], refs, "en", [0, 0]), device)
    render_before(backend, texts[:1], refs, [0], device)
    print(f"set up in {t_build + t_load:.1f} s; warm-up done", flush=True)
    for k in args.seeds:
        rows = [t for t in texts for _ in range(k)]
        seeds = [options.seed + j for _ in texts for j in range(k)]
        entry: dict[str, Any] = {"renders": len(rows)}
        backend.set_train(True)  # each evaluation starts cold (the training loop clears the conditioning)
        reset_split()
        with per_row_caps(backend, caps):
            if _has_seeds(options):  # exactly what the training loop runs: the protocol renders k seeds
                options_k = dataclasses.replace(options, seeds=k)
                probe_k = suite.build_probe_set(data, suite.Protocol.of(options_k))
                scorer.probe_set = probe_k
                evaluate = partial(suite.run_evaluation, backend, probe_k, scorer, "step_1", 1)
                cpu0 = time.process_time()
                ev, total = timed(evaluate, device)
                cpu_eval = time.process_time() - cpu0
                after, render_s, score_s = ev.renders, ev.render_seconds, ev.score_seconds
                cpu0 = time.process_time()
                stats_s = timed(partial(_select, ev, probe_k), device)[1]  # intervals + selection
                cpu_stats = time.process_time() - cpu0
                scorer.probe_set = probe_set
            elif k == 1:  # a voicetune without seeds (main before this change): what its loop runs
                evaluate = partial(suite.run_evaluation, backend, probe_set, scorer, "step_1", 1)
                cpu0 = time.process_time()
                ev, total = timed(evaluate, device)
                cpu_eval, stats_s, cpu_stats = time.process_time() - cpu0, 0.0, 0.0
                after, render_s, score_s = ev.renders, ev.render_seconds, ev.score_seconds
            else:
                after, render_s = timed(partial(_render_seeded, backend, rows, refs, seeds), device)
                _, score_s = timed(partial(_score_k, scorer, after, k), device)
                total, cpu_eval, stats_s, cpu_stats = render_s + score_s, math.nan, 0.0, 0.0
        steps = max(caps.values()) + 1  # one batch: generation runs as long as its longest row (+ its stop)
        entry["after"] = {"render_s": render_s, "score_s": score_s, "stats_s": stats_s,
                          "total_s": total + stats_s, "cpu_s": cpu_eval + cpu_stats, "cpu_stats_s": cpu_stats,
                          "generation_steps": steps, "render_ms_per_generation_step": 1e3 * render_s / steps,
                          "render_split": dict(SPLIT),
                          "audio_seconds": [round(len(r.audio) / r.sample_rate, 3) for r in after
                                            if r.audio is not None]}
        print(f"k={k} after: render {render_s:.2f} s, score {score_s:.2f} s, "
              f"intervals+selection {stats_s:.2f} s, total {total + stats_s:.2f} s wall, "
              f"{cpu_eval + cpu_stats:.2f} s CPU", flush=True)
        result["runs"][f"k{k}"] = entry
        write()
        if args.skip_before:
            continue
        backend.set_train(True)
        wavs, render_seconds = render_before(backend, rows, refs, seeds, device)
        parts = score_before(wavs, rows, reals, scorer.centroid, device, scorer.asr if asr_model else None,
                             intrusive)
        entry["before"] = {"render_s": sum(render_seconds), "render_seconds": render_seconds,
                           "score_s": sum(parts.values()), "score_parts": parts,
                           "total_s": sum(render_seconds) + sum(parts.values())}
        entry["speed_up"] = entry["before"]["total_s"] / total
        print(f"k={k} before: render {sum(render_seconds):.2f} s, score {sum(parts.values()):.2f} s",
              flush=True)
        write()
    # batched against one at a time, same seeds, every render to the same length (no per-row stopping)
    backend.synthesis_max_audio_tokens = EQUALITY_TOKENS
    alone = [backend.synthesize(t, refs, "en", seed) for seed, t in enumerate(texts)]
    together = backend.synthesize_batch(texts, refs, "en", list(range(len(texts))))
    backend.synthesis_max_audio_tokens = None
    result["batched_equals_one_at_a_time"] = {"tokens": EQUALITY_TOKENS, **compare(alone, together)}
    for entry in result["runs"].values():
        entry["projection"] = [projection(entry["after"]["total_s"], s) for s in args.step_seconds]
    write()
    print(json.dumps(result, indent=2, default=str))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _has_seeds(options: Any) -> bool:
    """Does this voicetune render several seeds per sentence itself (--eval-seeds)?"""
    return "seeds" in type(options).PROTOCOL


def _select(ev: Any, probe_set: Any) -> Any:
    """What selection adds per evaluation: the paired intervals of every metric and of the composite against
    a baseline (here: the evaluation itself, which costs the same)."""
    from voicetune.evaluation.selection import Selector
    from voicetune.evaluation.suite import sentence_scores

    scores = sentence_scores(ev.scores, probe_set.material.language)
    return Selector(ev.aggregate, baseline_scores=scores).update(1, ev.aggregate, scores)


def _render_seeded(backend: Any, texts: list[str], refs: list[Path], seeds: list[int]) -> list:
    """harness.render's batching with a seed per render (what two seeds per sentence render)."""
    from voicetune.evaluation.harness import _render

    backend.set_train(False)
    size = type(backend).synthesis_batch_size
    out = []
    for start in range(0, len(texts), size):
        t0 = time.perf_counter()
        chunk = slice(start, start + size)
        results = backend.synthesize_batch(texts[chunk], refs, "en", seeds[chunk])
        seconds = (time.perf_counter() - t0) / len(results)
        out += [_render(w, seconds, "eval", start + i) for i, w in enumerate(results)]
    return out


def _score_k(scorer: Any, renders: list, k: int) -> list[dict]:
    """Scorer.score on each seed's renders (the probe set's order), as an evaluation with k seeds scores."""
    return [scorer.score(renders[j::k]) for j in range(k)]


if __name__ == "__main__":
    main()
