"""One XTTS-v2 GPT training step at full size: coqui-tts's GPTTrainer (the reference) against voicetune.

Builds the full-size XTTS-v2 GPT (30 layers x 1024, 16 heads, 6681 text tokens, 1026 audio tokens,
perceiver conditioning; random weights: speed and memory do not depend on their values) and times, in one
process, on the same synthetic 6-11 s clips (22.05 kHz, ~40 text tokens) at the same batch size:

* ``reference``: ``GPTTrainer.format_batch_on_device`` + ``train_step`` + backward + the AdamW of
  ``GPTTrainer.get_optimizer``, fp32 with TF32 off, DVAE codes and conditioning mels recomputed every step,
  DVAE and HiFi-GAN on the GPU: how the Coqui recipe and AllTalk train.
* ``vt_*``: ``XttsBackend`` on features from ``build_features`` (codes computed once), driven by
  ``voicetune.training.loop._optimizer_step`` with the optimizer of
  ``voicetune.training.optim.build_optimizer``, one TrainConfig per row.

Reports samples/s, audio-seconds/s, peak allocated/reserved memory (steady state and including warm-up),
model FLOPs utilisation against the GPU's dense bf16 peak, compile/warm-up time, and speed and memory ratios
against the reference; writes JSON after every configuration. Usage (GPU box, see benchmarks/README.md):

    . benchmarks/gpu_setup.sh && python3 benchmarks/xtts_train_step.py --out $OUT/result.json
    # CPU check:
    python3 benchmarks/xtts_train_step.py --smoke --device cpu --configs reference,vt_packed_eager
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import itertools
import json
import logging
import math
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import git_commit

logger = logging.getLogger("xtts_train_step")

TEXT_VOCAB = 6681  # XTTS-v2's vocab.json
SAMPLE_RATE = 22050
# Dense (no sparsity) bf16 tensor-core peaks from the datasheets, FLOP/s.
BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "A10": 125e12}

CONFIGS: dict[str, dict[str, Any] | None] = {
    "reference": None,  # coqui-tts GPTTrainer, fp32, TF32 off
    # voicetune before this work: cached codes, bf16 autocast, coqui's GPT.forward, fused AdamW.
    "vt_coqui_bf16": {"fast_loss": False, "compile": "off", "attention": "sdpa"},
    "vt_packed_eager": {"compile": "off"},
    "vt_compiled": {"compile": "on"},
    # (cuda_graphs "off" keeps the earlier rows what they measured: bf16 weights now turn CUDA graphs on)
    "vt_compiled_bf16w": {"compile": "on", "param_dtype": "bf16", "cuda_graphs": "off"},
    "vt_compiled_bf16w_bf16s": {
        "compile": "on",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "cuda_graphs": "off",
    },
    "vt_cudagraphs_bf16w_bf16s": {
        "compile": "on",
        "compile_mode": "reduce-overhead",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
    },
    "vt_model_compiled_bf16w_bf16s": {
        "compile": "on",
        "compile_scope": "model",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "cuda_graphs": "off",
    },
    "vt_model_cudagraphs_bf16w_bf16s": {
        "compile": "on",
        "compile_mode": "reduce-overhead",
        "compile_scope": "model",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
    },
    "vt_model_cudagraphs_bf16w": {
        "compile": "on",
        "compile_mode": "reduce-overhead",
        "compile_scope": "model",
        "param_dtype": "bf16",
    },
    "vt_lowmem": {
        "compile": "on",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "gradient_checkpointing": True,
        "cuda_graphs": "off",
    },
    # voicetune's own CUDA graphs: a micro-batch's whole forward + backward is one replay
    "vt_graphs_bf16w_bf16s": {
        "compile": "on",
        "compile_scope": "model",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "cuda_graphs": "on",
    },
    "vt_graphs_bf16w": {
        "compile": "on",
        "compile_scope": "model",
        "param_dtype": "bf16",
        "cuda_graphs": "on",
    },
    # + each layer's MLP recomputed in the backward pass (no random numbers inside: the graphs still capture
    # it)
    "vt_graphs_mlp_bf16w_bf16s": {
        "compile": "on",
        "compile_scope": "model",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "cuda_graphs": "on",
        "checkpoint_mlp": True,
    },
    # one compiled layer (reused by all 30) inside the graph: as fast as the whole-loss compile there, and it
    # compiles in seconds
    "vt_graphs_layers_bf16w_bf16s": {
        "compile": "on",
        "compile_scope": "layers",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "cuda_graphs": "on",
    },
    "vt_graphs_layers_bf16w": {
        "compile": "on",
        "compile_scope": "layers",
        "param_dtype": "bf16",
        "cuda_graphs": "on",
    },
    "vt_graphs_eager_bf16w_bf16s": {
        "compile": "off",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "cuda_graphs": "on",
    },
}
DEFAULT_CONFIGS = ("reference,vt_coqui_bf16,vt_packed_eager,vt_compiled,vt_compiled_bf16w,"
                   "vt_compiled_bf16w_bf16s,vt_cudagraphs_bf16w_bf16s,vt_model_cudagraphs_bf16w_bf16s,vt_lowmem")


# ----------------------------------------------------------------------------------------- set-up
def gpt_args(smoke: bool) -> dict[str, Any]:
    """XTTS-v2's GPT (XttsArgs' defaults are the full size); a small one for --smoke."""
    args = {"gpt_num_audio_tokens": 1026, "gpt_start_audio_token": 1024, "gpt_stop_audio_token": 1025,
            "gpt_use_masking_gt_prompt_approach": True, "gpt_use_perceiver_resampler": True,
            "gpt_max_audio_tokens": 605, "gpt_max_text_tokens": 402, "gpt_max_prompt_tokens": 70,
            "gpt_code_stride_len": 1024, "gpt_layers": 30, "gpt_n_model_channels": 1024, "gpt_n_heads": 16}
    if smoke:
        args.update(gpt_layers=2, gpt_n_model_channels=256, gpt_n_heads=4, decoder_input_dim=256)
    return args


def write_vocab(path: Path, size: int) -> None:
    """A BPE vocabulary in XTTS's format, padded with unused tokens to XTTS-v2's size."""
    from voicetune.backends.xtts.tiny import BUILTIN_CORPUS, train_bpe_vocab

    train_bpe_vocab(BUILTIN_CORPUS * 4, path, vocab_size=384)
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    for i in range(max(vocab.values()) + 1, size):
        vocab[f"<unused{i}>"] = i
    path.write_text(json.dumps(data))


def make_base(out: Path, smoke: bool, device: torch.device) -> tuple[Path, int]:
    """Write a randomly initialised XTTS-v2 folder (model.pth, dvae.pth, mel_stats.pth, vocab, config)."""
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig
    from TTS.tts.layers.xtts.dvae import DiscreteVAE
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    from voicetune.backends.xtts import layout
    from voicetune.backends.xtts.tiny import compute_mel_stats

    out.mkdir(parents=True, exist_ok=True)
    write_vocab(out / layout.VOCAB, TEXT_VOCAB)
    tok = VoiceBpeTokenizer(vocab_file=str(out / layout.VOCAB))
    args = XttsArgs(**gpt_args(smoke), gpt_number_text_tokens=tok.get_number_tokens(),
                    gpt_start_text_token=tok.tokenizer.token_to_id("[START]"),
                    gpt_stop_text_token=tok.tokenizer.token_to_id("[STOP]"))
    cfg = XttsConfig(model_args=args, audio=XttsAudioConfig())
    torch.manual_seed(0)
    with torch.device(device):
        model = Xtts(cfg)
    mel_stats = compute_mel_stats(None)
    model.mel_stats.copy_(mel_stats)
    dvae = DiscreteVAE(**layout.DVAE_DEFAULTS, normalization=None, num_tokens=1024)
    (out / layout.CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2))
    torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}}, out / layout.MODEL)
    torch.save(dvae.state_dict(), out / layout.DVAE)
    torch.save(mel_stats, out / layout.MEL_STATS)
    n_gpt = sum(p.numel() for p in model.gpt.parameters())
    del model
    return out, n_gpt


def make_clips(folder: Path, n: int, vocab: Path, seed: int = 0) -> list[Any]:
    """``n`` voiced synthetic clips of 6-11 s with ~40-token English transcripts."""
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    from voicetune.audio.io import write_wav
    from voicetune.backends.xtts.tiny import BUILTIN_CORPUS
    from voicetune.data.manifest import Clip

    tok = VoiceBpeTokenizer(vocab_file=str(vocab))
    words = " ".join(BUILTIN_CORPUS).split()
    rng = np.random.default_rng(seed)
    clips = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        seconds = float(rng.uniform(6.0, 11.0))
        t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
        f0 = 100 + 80 * rng.random()
        voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        audio = 0.2 * voice * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t)) + 0.01 * rng.standard_normal(len(t))
        path = folder / f"clip{i:02d}.wav"
        write_wav(path, audio, SAMPLE_RATE)
        start, text = int(rng.integers(0, len(words))), ""
        for w in itertools.islice(itertools.cycle(words), start, start + 200):
            text = f"{text} {w}".strip()
            if len(tok.encode(text, "en")) >= 40:
                break
        clips.append(Clip(path, text, "speaker", "en"))
    return clips


# ----------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device) -> tuple[float, float]:
    if device.type != "cuda":
        return float("nan"), float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(device) / 2**30


def measure(step, device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """Warm-up steps (compiling happens here), then ``steps`` timed steps, each ended by a device sync."""
    gc_time = [0.0, 0.0]

    def gc_timer(phase: str, info: dict) -> None:  # time spent in Python's garbage collector
        gc_time[0 if phase == "start" else 1] += time.perf_counter() * (1 if phase == "stop" else -1)

    t0 = time.perf_counter()
    warm_times = []
    for _ in range(warmup):
        t = time.perf_counter()
        step()
        sync(device)
        warm_times.append(time.perf_counter() - t)
    warmup_s = time.perf_counter() - t0
    alloc_w, reserved_w = peaks(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    gc.callbacks.append(gc_timer)
    try:
        for _ in range(steps):
            t = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t)
    finally:
        gc.callbacks.remove(gc_timer)
    alloc, reserved = peaks(device)
    median = float(np.median(times))
    return {
        "step_s_mean": float(np.mean(times)),
        "step_s_median": median,
        "step_s_min": float(np.min(times)),
        "step_s_max": float(np.max(times)),
        "gc_s_per_step": (gc_time[0] + gc_time[1]) / steps,
        "warmup_s": warmup_s,
        "warmup_step_s": warm_times,
        "compile_and_warmup_overhead_s": max(0.0, warmup_s - warmup * median),
        "peak_alloc_gib": alloc,
        "peak_reserved_gib": reserved,
        "peak_alloc_incl_warmup_gib": max(alloc, alloc_w),
        "peak_reserved_incl_warmup_gib": max(reserved, reserved_w),
    }


def gpu_busy_fraction(step, device: torch.device, n: int = 3, kernels: dict | None = None) -> float | None:
    """Fraction of wall time the GPU executes kernels (torch.profiler), over ``n`` steps. ``kernels``, if
    given, receives the 25 kernels with the most GPU time: name -> [ms per step, launches per step]."""
    if device.type != "cuda":
        return None
    try:
        return _busy(step, device, n, kernels)
    except RuntimeError as e:  # the profiler is diagnostics only
        logger.warning("profiling failed: %s", e)
        return None


def _busy(step, device: torch.device, n: int, kernels: dict | None = None) -> float:
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        sync(device)
    wall = time.perf_counter() - t
    busy = []
    per_name: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.elapsed_us() > 0:
            busy.append((e.time_range.start, e.time_range.end))
            entry = per_name.setdefault(e.name[:100], [0.0, 0.0])
            entry[0] += e.time_range.elapsed_us() / 1e3 / n
            entry[1] += 1 / n
    if kernels is not None:
        top = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:25]
        kernels.update({name: [round(ms, 3), round(count, 1)] for name, (ms, count) in top})
        kernels["(all kernels)"] = [round(sum(v[0] for v in per_name.values()), 3),
                                    round(sum(v[1] for v in per_name.values()), 1)]
    busy.sort()
    total, end = 0.0, -1.0
    for s, e in busy:  # union of kernel intervals
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e6 / wall


def conditioning_flops(backend: Any, store: Any, batches: list[list[int]], device: torch.device,
                       precision: str) -> float:
    """Forward FLOPs of the conditioning encoder + perceiver for one clip (counted, under the step's
    autocast)."""
    from torch.utils.flop_counter import FlopCounterMode

    from voicetune.backends.xtts.speed import conditioning
    from voicetune.utils.device import autocast

    cond = backend.collate([store[i] for i in batches[0]])["cond_mels"][:1].to(device)
    # (no no_grad: its tracker fails)
    with FlopCounterMode(display=False) as counter, autocast(device, precision):
        conditioning(backend.model.gpt, cond)
    return float(counter.get_total_flops())


def voicetune_step(backend: Any, store: Any, order: Any, cfg: Any, optimizer: Any, device: torch.device,
                   precision: str) -> tuple[Any, str]:
    """One optimizer step exactly as voicetune's training loop runs it: ``StepEngine.run`` (or, in revisions
    before it, ``loop._optimizer_step``). Returns (step function, which driver)."""
    try:
        from voicetune.training.distributed import Dist
        from voicetune.training.oom import MicroBatchPlan
        from voicetune.training.step import StepEngine, make_scaler
    except ImportError:
        from voicetune.training.loop import _optimizer_step

        return (lambda: _optimizer_step(backend, store, order, cfg, optimizer, device, precision),
                "voicetune.training.loop._optimizer_step")
    plan = MicroBatchPlan(per_rank=cfg.batch_size * cfg.grad_accum, size=cfg.batch_size)
    engine = StepEngine(
        backend, store, optimizer, cfg, device, precision, Dist(), plan, make_scaler(precision, device)
    )
    counter = itertools.count(1)

    def step() -> dict:
        return engine.run(next(counter), [(i, 0) for i in next(order)])

    step.engine = engine  # type: ignore[attr-defined]
    return step, "voicetune.training.step.StepEngine.run"


def breakdown(backend: Any, store: Any, order: Any, cfg: Any, optimizer: Any, device: torch.device,
              precision: str, n: int = 5) -> dict[str, float]:
    """Median ms of each part of ``_optimizer_step`` (same calls), each part ended by a device sync.

    ``*_cpu`` is the host time until the part's calls return (before the sync): launch and Python overhead.
    """
    from voicetune.utils.device import autocast

    parts: dict[str, list[float]] = {}

    def mark(name: str, t: float, t_cpu: float | None = None) -> float:
        sync(device)
        now = time.perf_counter()
        parts.setdefault(name, []).append(1e3 * (now - t))
        if t_cpu is not None:
            parts.setdefault(name + "_cpu", []).append(1e3 * (t_cpu - t))
        return now

    params = [p for g in optimizer.param_groups for p in g["params"]]
    for _ in range(n):
        t = time.perf_counter()
        idx = next(order)
        items = [store[i] for i in idx]
        t = mark("load_items", t)
        batch = backend.collate(items)
        t = mark("collate_pack", t)
        batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        t = mark("to_device", t)
        with autocast(device, precision):
            out = backend.loss(batch, cfg)
        t = mark("forward", t, time.perf_counter())
        out["loss"].backward()
        t = mark("backward", t, time.perf_counter())
        [float(v.detach()) for v in out.values()]
        if cfg.grad_clip > 0:
            float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        t = mark("clip", t)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark("optimizer", t, time.perf_counter())
    return {k: float(np.median(v)) for k, v in parts.items()}


# ----------------------------------------------------------------------------------------- FLOPs
def step_flops(d: int, layers: int, text_vocab: int, audio_vocab: int, n_text: list[int], n_mel: list[int],
               cond_tokens: int, cond_fwd_flops: float) -> float:
    """Model FLOPs of one step (forward + backward = 3 x forward) over the real (unpadded) positions.

    Per clip: 6 x (12 d^2 per layer) x tokens for the transformer's matrices, 6 x head size x positions of
    each head, 6 x L^2 x d per layer for causal attention (QK^T and PV, half the matrix), plus 3 x the
    counted forward FLOPs of the conditioning encoder + perceiver.
    """
    total = 3.0 * cond_fwd_flops
    for t, m in zip(n_text, n_mel):
        n = cond_tokens + t + m
        total += 6.0 * 12 * d * d * layers * n + 6.0 * layers * n * n * d
        total += 6.0 * d * (text_vocab * t + audio_vocab * m)
    return total


def batch_shape(
    clips_tokens: list[int], wav_lengths: list[int], stride: int = 1024
) -> tuple[list[int], list[int]]:
    """Valid text and audio positions per clip, as GPT.forward counts them."""
    n_text = [t + 1 for t in clips_tokens]
    n_mel = [math.ceil(w / stride) + 3 + 1 for w in wav_lengths]
    return n_text, n_mel


# ----------------------------------------------------------------------------------------- the reference
def reference_trainer(base: Path, device: torch.device, smoke: bool) -> Any:
    from TTS.tts.configs.xtts_config import XttsAudioConfig
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainer, GPTTrainerConfig

    args = GPTArgs(**gpt_args(smoke), max_conditioning_length=132300, min_conditioning_length=66150,
                   max_wav_length=255995, max_text_length=200, tokenizer_file=str(base / "vocab.json"),
                   mel_norm_file=str(base / "mel_stats.pth"), dvae_checkpoint=str(base / "dvae.pth"),
                   xtts_checkpoint=str(base / "model.pth"))
    config = GPTTrainerConfig(
        model_args=args,
        audio=XttsAudioConfig(sample_rate=22050, dvae_sample_rate=22050, output_sample_rate=24000),
        batch_size=4,
        optimizer="AdamW",
        optimizer_wd_only_on_weights=True,
        optimizer_params={"betas": [0.9, 0.96], "eps": 1e-8, "weight_decay": 1e-2},
        lr=5e-06,
    )
    model = GPTTrainer.init_from_config(config)
    model = model.to(device)
    model.eval()  # GPTTrainer.on_train_epoch_start: everything in eval mode but the GPT
    model.xtts.gpt.train()
    return model


def reference_batches(
    model: Any, clips: list[Any], batches: list[list[int]], seed: int
) -> list[dict[str, Any]]:
    """The batches XTTSDataset + collate_fn would produce (random 3-6 s conditioning slices, masking
    approach)."""
    from TTS.tts.layers.xtts.trainer.dataset import XTTSDataset

    from voicetune.backends.xtts.features import load_wav_tensor

    rng = random.Random(seed)
    items = []
    for clip in clips:
        wav = load_wav_tensor(clip.audio_path, SAMPLE_RATE)
        tokens = torch.IntTensor(model.xtts.tokenizer.encode(clip.text, clip.language))
        length = rng.randint(66150, 132300)
        if wav.shape[-1] - length < 0:
            length = wav.shape[-1] // 2
        start = rng.randint(0, wav.shape[-1] - length)
        cond = torch.nn.functional.pad(wav[:, start : start + length], (0, 132300 - length))
        items.append(
            {
                "text": tokens,
                "text_lengths": torch.tensor(tokens.shape[0], dtype=torch.long),
                "wav": wav,
                "wav_lengths": torch.tensor(wav.shape[-1], dtype=torch.long),
                "filenames": str(clip.audio_path),
                "conditioning": cond.unsqueeze(1),
                "cond_lens": torch.tensor([torch.nan]),
                "cond_idxs": torch.tensor([start, start + length]),
            }
        )
    return [XTTSDataset.collate_fn(None, [items[i] for i in idx]) for idx in batches]


def run_reference(
    base: Path, clips: list[Any], batches: list[list[int]], device: torch.device, args: Any
) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = reference_trainer(base, device, args.smoke)
    optimizer = model.get_optimizer()
    cpu_batches = reference_batches(model, clips, batches, args.seed)
    cycle = itertools.cycle(cpu_batches)

    def step() -> None:
        # a fresh copy every step: GPT.forward rescales cond_idxs in place
        batch = {k: (v.to(device, copy=True) if torch.is_tensor(v) else v) for k, v in next(cycle).items()}
        # the closure runs before run_reference's final `del`, which ruff reads as unbinding: hence the noqa
        batch = model.format_batch_on_device(batch)  # noqa: F821 - bound while step() runs; see above
        _, losses = model.train_step(batch, None)  # noqa: F821 - bound while step() runs; see above
        losses["loss"].backward()
        optimizer.step()  # noqa: F821 - bound while step() runs; see above
        optimizer.zero_grad(set_to_none=True)  # noqa: F821 - bound while step() runs; see above

    result = measure(step, device, args.warmup, args.steps)
    result["gpu_busy"] = gpu_busy_fraction(step, device)
    result["settings"] = {"precision": "fp32", "tf32": False, "optimizer": type(optimizer).__name__,
                          "codes_recomputed_every_step": True}
    del model, optimizer, cpu_batches
    return result


# ----------------------------------------------------------------------------------------- voicetune
def configure_training(backend: Any, cfg: Any, device: torch.device) -> None:
    """``backend.configure_training`` as the training loop calls it: with its CUDA-graphs decision (revisions
    before the declared backend contract took the config alone)."""
    try:
        from voicetune.training.graphs import planned
    except ImportError:
        backend.configure_training(cfg)
        return
    backend.configure_training(cfg, cuda_graphs=planned(backend, cfg, device))


def setup_voicetune(overrides: dict[str, Any], base: Path, clips: list[Any], device: torch.device, args: Any,
                    work: Path, backend_name: str = "xtts") -> tuple[Any, Any, Any, dict[str, Any], Any, str]:
    """(backend, feature store, TrainConfig, its settings, optimizer, precision) of one voicetune row,
    ready to train (``args``: ``batch`` and ``seed``; ``backend_name``: tortoise_train_step.py's rows)."""
    from voicetune.backends.base import get_backend
    from voicetune.training.optim import build_optimizer
    from voicetune.utils.device import resolve_precision

    try:  # options by flat name, the XTTS ones included (backend options, voicetune.backends.registry)
        from voicetune.backends.registry import train_config
    except ImportError:  # revisions before the backend options: one flat TrainConfig
        from voicetune.config import TrainConfig as train_config

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    backend = get_backend(backend_name)
    backend.load_base(base, device)
    store = backend.build_features(clips, work / "features")
    # "auto" is bf16 on the GPU; a CPU smoke run of bf16 weights needs bf16 said outright
    auto = "bf16" if overrides.get("param_dtype") == "bf16" and device.type == "cpu" else "auto"
    settings = {"batch_size": args.batch, "precision": auto, "seed": args.seed, **overrides}
    cfg = (
        train_config(**settings) if backend_name == "xtts" else train_config(backend=backend_name, **settings)
    )
    precision = resolve_precision(cfg.precision, device)
    configure_training(backend, cfg, device)
    optimizer = build_optimizer(backend.param_groups(cfg), cfg, device)
    backend.set_train(True)
    return backend, store, cfg, settings, optimizer, precision


def run_voicetune(
    name: str,
    overrides: dict[str, Any],
    base: Path,
    clips: list[Any],
    batches: list[list[int]],
    device: torch.device,
    args: Any,
    work: Path,
) -> dict:
    backend, store, cfg, settings, optimizer, precision = setup_voicetune(
        overrides, base, clips, device, args, work
    )
    order = itertools.cycle(batches)
    step, driver = voicetune_step(backend, store, order, cfg, optimizer, device, precision)

    result = measure(step, device, args.warmup, args.steps)
    result["gpu_kernels_ms_per_step"] = {}
    result["gpu_busy"] = gpu_busy_fraction(step, device, kernels=result["gpu_kernels_ms_per_step"])
    # the breakdown times the eager calls part by part; a graph replay has no parts to time
    graphed = getattr(getattr(step, "engine", None), "graphs", None) is not None
    result["breakdown_ms"] = (
        None if graphed else breakdown(backend, store, order, cfg, optimizer, device, precision)
    )
    lengths = sorted(
        {
            int(backend.collate([store[i] for i in idx]).get("text_targets", torch.zeros(1, 0)).shape[1])
            for idx in batches
        }
    )
    result["packed_lengths"] = lengths
    result["settings"] = {**settings, "resolved_precision": precision, "optimizer": type(optimizer).__name__,
                          "driver": driver}
    if args.cond_flops is None:
        try:
            args.cond_flops = conditioning_flops(backend, store, batches, device, precision)
        except RuntimeError as e:  # the FLOP count must never lose the measurement
            logger.warning("counting the conditioning FLOPs failed: %s", e)
    del backend, store, optimizer
    importlib.import_module("torch._dynamo").reset()  # drop compiled graphs (and CUDA-graph pools)
    return result


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file written after every configuration")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, from {list(CONFIGS)}")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--clips", type=int, default=16, help="synthetic clips (batches are a fixed cycle over them)"
    )
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="a 2-layer GPT: checks the code paths in seconds")
    p.add_argument("--commit", default=None, help="git commit of the code (default: git rev-parse HEAD)")
    p.add_argument("--command", default=None, help="the full command line, recorded in the JSON")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    args.cond_flops = None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("TTS", "trainer", "voicetune.backends.xtts.features"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    device = torch.device(args.device)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="xtts_bench_"))
    t0 = time.perf_counter()
    base, n_gpt = make_base(work / "base", args.smoke, device)
    clips = make_clips(work / "clips", args.clips, base / "vocab.json", args.seed)
    logger.info(
        "base and clips ready in %.1f s (GPT: %.1f M parameters)", time.perf_counter() - t0, n_gpt / 1e6
    )
    order = list(range(len(clips)))
    random.Random(args.seed).shuffle(order)
    batches = [order[i : i + args.batch] for i in range(0, len(order) - args.batch + 1, args.batch)]

    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    from voicetune.audio.io import audio_duration

    tok = VoiceBpeTokenizer(vocab_file=str(base / "vocab.json"))
    tokens = [len(tok.encode(c.text, "en")) for c in clips]
    wav_lengths = [round(audio_duration(c.audio_path) * SAMPLE_RATE) for c in clips]
    seconds = [w / SAMPLE_RATE for w in wav_lengths]
    ga = gpt_args(args.smoke)
    d, n_layers = ga["gpt_n_model_channels"], ga["gpt_layers"]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    report: dict[str, Any] = {
        "benchmark": "xtts_train_step",
        "device": name,
        "date": datetime.date.today().isoformat(),
        "git_commit": args.commit or git_commit(),
        "command": args.command or " ".join([sys.executable, *sys.argv]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "bf16_peak_flops": peak,
        "bf16_peak_source": "datasheet dense BF16 tensor-core peak (no sparsity)",
        "model": {
            "gpt_params": n_gpt,
            "layers": n_layers,
            "d_model": d,
            "heads": ga["gpt_n_heads"],
            "text_vocab": TEXT_VOCAB,
            "audio_tokens": 1026,
            "smoke": args.smoke,
        },
        "data": {
            "clips": len(clips),
            "batch": args.batch,
            "batches": batches,
            "clip_seconds": [round(s, 3) for s in seconds],
            "text_tokens": tokens,
        },
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "results": {},
    }
    for key in ("transformers", "TTS"):
        with contextlib.suppress(ImportError):
            report[key] = __import__(key).__version__

    for cname in names:
        free(device)
        logger.info("=== %s", cname)
        t = time.perf_counter()
        try:
            if CONFIGS[cname] is None:
                res = run_reference(base, clips, batches, device, args)
            else:
                res = run_voicetune(cname, CONFIGS[cname], base, clips, batches, device, args, work)
        except Exception as e:  # one failing configuration must not lose the others' numbers
            logger.exception("%s failed", cname)
            res = {"error": f"{type(e).__name__}: {e}"}
        res["config_wall_s"] = time.perf_counter() - t
        report["results"][cname] = res
        _finish(report, batches, tokens, wav_lengths, seconds, ga, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        _print_table(report)
    return 0


def _finish(report: dict, batches: list[list[int]], tokens: list[int], wav_lengths: list[int],
            seconds: list[float], ga: dict, args: Any) -> None:
    """Per-result throughput, MFU and ratios (recomputed as results come in)."""
    flops = []
    for idx in batches:
        n_text, n_mel = batch_shape([tokens[i] for i in idx], [wav_lengths[i] for i in idx])
        flops.append(
            step_flops(
                ga["gpt_n_model_channels"],
                ga["gpt_layers"],
                TEXT_VOCAB,
                1026,
                n_text,
                n_mel,
                32,
                (args.cond_flops or 0.0) * len(idx),
            )
        )
    mean_flops = float(np.mean(flops))
    audio_per_batch = float(np.mean([sum(seconds[i] for i in idx) for idx in batches]))
    report["flops_per_step"] = mean_flops
    report["cond_forward_flops_per_clip"] = args.cond_flops
    ref = report["results"].get("reference", {})
    for res in report["results"].values():
        if "step_s_median" not in res:
            continue
        s = res["step_s_median"]
        res["samples_per_s"] = args.batch / s
        res["audio_s_per_s"] = audio_per_batch / s
        res["tflops_per_s"] = mean_flops / s / 1e12
        res["mfu"] = mean_flops / s / report["bf16_peak_flops"] if report["bf16_peak_flops"] else None
        if "step_s_median" in ref:
            res["speedup_vs_reference"] = ref["step_s_median"] / s
            res["peak_alloc_vs_reference"] = (
                res["peak_alloc_gib"] / ref["peak_alloc_gib"] if ref["peak_alloc_gib"] else None
            )


def _print_table(report: dict) -> None:
    print(
        f"\n{report['device']}  torch {report['torch']}  flops/step {report['flops_per_step'] / 1e12:.2f} T"
    )
    print(
        f"{'config':32s} {'s/step':>8s} {'smp/s':>7s} {'aud-s/s':>8s} {'alloc':>6s} {'resv':>6s} {'MFU':>6s} "
        f"{'x ref':>6s} {'mem/ref':>7s} {'busy':>5s} {'warm s':>7s}"
    )
    for name, r in report["results"].items():
        if "step_s_median" not in r:
            print(f"{name:32s} ERROR {r.get('error', '')[:120]}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        busy = f"{r['gpu_busy']:.2f}" if r.get("gpu_busy") is not None else "-"
        print(
            f"{name:32s} {r['step_s_median']:8.4f} {r['samples_per_s']:7.1f} {r['audio_s_per_s']:8.1f} "
            f"{r['peak_alloc_gib']:6.2f} {r['peak_reserved_gib']:6.2f} {mfu:>6s} "
            f"{r.get('speedup_vs_reference', float('nan')):6.2f} "
            f"{r.get('peak_alloc_vs_reference') or float('nan'):7.2f} {busy:>5s} {r['warmup_s']:7.1f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
