"""One Tortoise autoregressive training step at full size: DL-Art-School's way (the reference) against
voicetune.

Builds the full-size UnifiedVoice of tortoise-v2 (30 layers x 1024, 16 heads, 256 text tokens, 8,194 audio
tokens; random weights: speed and memory do not depend on their values) and DL-Art-School's DVAE (8,192
codes), and times, in one process, on the same synthetic 6-11 s clips as xtts_train_step.py (22.05 kHz) at the
same batch size:

* ``reference``: how DL-Art-School (and so ai-voice-cloning) trains: every step turns the batch's waveforms
  into normalised mels and DVAE codes and the 2 conditioning clips per item into mels (on the GPU), then
  coqui-tts's ``UnifiedVoice.get_conditioning`` + ``forward``, loss 0.01 x text + 1 x mel, backward, gradient
  clipping at 4 and torch's AdamW (lr 1e-5, betas 0.9/0.96, weight decay 0.01), fp32 with TF32 off. Waveforms
  are padded to the batch's longest clip (cheaper than padding to max_wav_length).
* ``vt_*``: ``TortoiseBackend`` on features from ``build_features`` (codes and mels computed once), driven by
  the training loop's own step (``voicetune.training.step.StepEngine.run``), one TrainConfig per row: the
  shared GPT-TTS speed work of backends/gpt_tts (packed loss, bf16 weights and moments in FlatAdamW, compile,
  CUDA graphs, MLP recomputation).

Reports samples/s, peak allocated memory (steady and including warm-up, compile and capture), MFU, and the
ratios to the reference; the goals (>= 5x samples/s at <= 0.5x peak memory including warm-up) are checked in
the JSON. Measuring helpers come from xtts_train_step.py. Usage (GPU box, see benchmarks/README.md):

    . benchmarks/gpu_setup.sh && python3 benchmarks/tortoise_train_step.py --out $OUT/tortoise.json
    python3 benchmarks/tortoise_train_step.py --smoke --device cpu --out /tmp/t.json   # ~1 min on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
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
import xtts_train_step as xb
from provenance import git_commit

logger = logging.getLogger("tortoise_train_step")

SAMPLE_RATE = 22050
COND_CLIPS, COND_LENGTH = 2, 44000  # DL-Art-School's num_conditioning_candidates, conditioning_length
TEXT_VOCAB, AUDIO_VOCAB = 256, 8194
GOALS = {"speedup_vs_reference": 5.0, "peak_alloc_incl_warmup_vs_reference": 0.5}

_GRAPHS = {"compile": "on", "param_dtype": "bf16", "optimizer_state_dtype": "bf16", "cuda_graphs": "on"}
CONFIGS: dict[str, dict[str, Any] | None] = {
    "reference": None,  # DL-Art-School: codes recomputed every step, fp32, AdamW
    "vt_packed_eager": {"compile": "off"},  # cached codes + the packed loss on SDPA, fp32 weights
    "vt_compiled_bf16w_bf16s": {
        "compile": "on",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "cuda_graphs": "off",
    },
    # the speed work that makes XTTS 6-7x: bf16 weights + moments, per-layer compile, CUDA graphs
    "vt_graphs_layers_bf16w_bf16s": {**_GRAPHS, "compile_scope": "layers"},
    "vt_graphs_layers_mlp_bf16w_bf16s": {**_GRAPHS, "compile_scope": "layers", "checkpoint_mlp": True},
    "vt_graphs_bf16w_bf16s": {**_GRAPHS, "compile_scope": "model"},  # whole-loss compile: minutes per length
    "vt_graphs_mlp_bf16w_bf16s": {**_GRAPHS, "compile_scope": "model", "checkpoint_mlp": True},
    # what a CPU can run of it (--smoke): the loss on FlatAdamW's bf16 buffers with MLP recomputation, eager
    "vt_flat_mlp_bf16w_bf16s_eager": {
        "compile": "off",
        "param_dtype": "bf16",
        "optimizer_state_dtype": "bf16",
        "cuda_graphs": "off",
        "checkpoint_mlp": True,
    },
}
DEFAULT_CONFIGS = "reference,vt_graphs_layers_bf16w_bf16s,vt_graphs_layers_mlp_bf16w_bf16s"
SMOKE_CONFIGS = "reference,vt_packed_eager,vt_flat_mlp_bf16w_bf16s_eager"


# ----------------------------------------------------------------------------------------- set-up
def ar_args(smoke: bool) -> dict[str, Any]:
    """tortoise-v2's UnifiedVoice (TortoiseArgs' defaults are the full size) with small synthesis models (they
    do not train: the benchmark never runs them); a 2-layer GPT for --smoke."""
    from voicetune.backends.tortoise.tiny import TINY_ARGS

    synthesis = {k: v for k, v in TINY_ARGS.items() if not k.startswith("ar_")}
    ar = {"ar_layers": 2, "ar_model_dim": 256, "ar_heads": 4} if smoke else {}
    return {**synthesis, **ar, "diff_in_latent_channels": ar.get("ar_model_dim", 1024)}


def make_base(out: Path, smoke: bool) -> tuple[Path, int]:
    """A random tortoise-v2 folder: full-size autoregressive model and DL-Art-School DVAE (tiny ones with
    --smoke). Returns (folder, autoregressive parameters)."""
    from voicetune.backends.tortoise.tiny import TINY_DVAE, write_base

    write_base(out, ar_args(smoke), TINY_DVAE if smoke else None, seed=0)
    state = torch.load(out / "autoregressive.pth", weights_only=True, mmap=True)
    return out, sum(v.numel() for v in state.values())


def make_clips(work: Path, n: int, seed: int) -> list[Any]:
    """xtts_train_step.py's synthetic clips (same audio and transcripts), one speaker."""
    vocab = work / "xtts_vocab.json"
    xb.write_vocab(vocab, xb.TEXT_VOCAB)  # only picks the transcripts' length, as in the XTTS benchmark
    return xb.make_clips(work / "clips", n, vocab, seed)


# ----------------------------------------------------------------------------------------- the reference
def reference_batches(tokenizer: Any, clips: list[Any], batches: list[list[int]], seed: int) -> list[dict]:
    """The batches DL-Art-School's paired_voice_audio dataset + collate give: 0-padded text, waveforms padded
    to the longest, and 2 conditioning crops of 44,000 samples from other clips of the speaker (0-padded)."""
    from voicetune.backends.gpt_tts.files import load_wav_tensor

    rng = random.Random(seed)
    wavs = [load_wav_tensor(c.audio_path, SAMPLE_RATE)[0] for c in clips]
    tokens = [torch.tensor(tokenizer.encode(c.text), dtype=torch.long) for c in clips]

    def crop(i: int) -> torch.Tensor:
        w = wavs[i]
        if w.numel() <= COND_LENGTH:
            return torch.nn.functional.pad(w, (0, COND_LENGTH - w.numel()))
        start = rng.randint(0, w.numel() - COND_LENGTH)
        return w[start : start + COND_LENGTH]

    out = []
    for idx in batches:
        t_max, w_max = max(tokens[i].numel() for i in idx), max(wavs[i].numel() for i in idx)
        conds = [
            [crop(rng.choice([j for j in range(len(clips)) if j != i])) for _ in range(COND_CLIPS)]
            for i in idx
        ]
        out.append(
            {
                "text": torch.stack(
                    [torch.nn.functional.pad(tokens[i], (0, t_max - tokens[i].numel())) for i in idx]
                ),
                "text_lengths": torch.tensor([tokens[i].numel() for i in idx]),
                "wav": torch.stack(
                    [torch.nn.functional.pad(wavs[i], (0, w_max - wavs[i].numel())) for i in idx]
                ),
                "wav_lengths": torch.tensor([wavs[i].numel() for i in idx]),
                "cond": torch.stack([torch.stack(c) for c in conds]),  # [B, 2, 44000]
            }
        )
    return out


def run_reference(
    base: Path, clips: list[Any], batches: list[list[int]], device: torch.device, args: Any
) -> dict:
    from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram
    from TTS.tts.models.tortoise import Tortoise

    from voicetune.backends.gpt_tts.files import load_dvae
    from voicetune.backends.tortoise import layout

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config, _ = layout.load_config(layout.validate_base_dir(base))
    model = Tortoise(config)
    gpt = model.autoregressive
    gpt.load_state_dict(torch.load(base / layout.AUTOREGRESSIVE, weights_only=True))
    tokenizer = model.tokenizer
    del model
    gpt.to(device).train()
    dvae = load_dvae(base / layout.DVAE).to(device)
    mel = TorchMelSpectrogram(mel_norm_file=str(base / layout.MEL_NORMS)).to(device)
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-5, betas=(0.9, 0.96), weight_decay=0.01)
    cycle = itertools.cycle(reference_batches(tokenizer, clips, batches, args.seed))

    def step() -> None:
        batch = {k: v.to(device) for k, v in next(cycle).items()}
        with torch.no_grad():  # DL-Art-School's torch_mel_spectrogram and discrete_token injectors
            codes = dvae.get_codebook_indices(mel(batch["wav"]))
            cond = torch.stack([mel(c) for c in batch["cond"].unbind(1)], dim=1)
        latent = gpt.get_conditioning(cond)
        text_ce, mel_ce, _ = gpt(latent, batch["text"], batch["text_lengths"], codes, batch["wav_lengths"])
        (0.01 * text_ce + mel_ce).backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 4.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = xb.measure(step, device, args.warmup, args.steps)
    result["gpu_busy"] = xb.gpu_busy_fraction(step, device)
    result["settings"] = {"precision": "fp32", "tf32": False, "optimizer": type(optimizer).__name__,
                          "codes_recomputed_every_step": True, "grad_clip": 4.0}
    return result


# ----------------------------------------------------------------------------------------- voicetune
def conditioning_flops(backend: Any, store: Any, device: torch.device, precision: str) -> float:
    """Forward FLOPs of the conditioning encoder for one clip (its 2 conditioning crops), counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from voicetune.backends.tortoise.speed import conditioning
    from voicetune.utils.device import autocast

    cond = backend.collate([store[0]])["cond_mels"].to(device)
    with FlopCounterMode(display=False) as counter, autocast(device, precision):
        conditioning(backend.gpt, cond)
    return float(counter.get_total_flops())


def run_voicetune(overrides: dict[str, Any], base: Path, clips: list[Any], batches: list[list[int]],
                  device: torch.device, args: Any, work: Path) -> dict:
    backend, store, cfg, settings, optimizer, precision = xb.setup_voicetune(
        overrides, base, clips, device, args, work, backend_name="tortoise"
    )
    order = itertools.cycle(batches)
    step, driver = xb.voicetune_step(backend, store, order, cfg, optimizer, device, precision)
    result = xb.measure(step, device, args.warmup, args.steps)
    result["gpu_kernels_ms_per_step"] = {}
    result["gpu_busy"] = xb.gpu_busy_fraction(step, device, kernels=result["gpu_kernels_ms_per_step"])
    graphed = getattr(getattr(step, "engine", None), "graphs", None) is not None
    result["breakdown_ms"] = (
        None if graphed else xb.breakdown(backend, store, order, cfg, optimizer, device, precision)
    )
    result["packed_lengths"] = sorted({int(backend.collate([store[i] for i in idx]).get(
        "text_targets", torch.zeros(1, 0)).shape[1]) for idx in batches})
    result["settings"] = {**settings, "resolved_precision": precision, "optimizer": type(optimizer).__name__,
                          "driver": driver, "grad_clip": cfg.grad_clip, "lr": cfg.lr}
    if args.cond_flops is None:
        with contextlib.suppress(RuntimeError):  # the FLOP count must never lose the measurement
            args.cond_flops = conditioning_flops(backend, store, device, precision)
    del backend, store, optimizer
    importlib.import_module("torch._dynamo").reset()  # drop compiled graphs (and CUDA-graph pools)
    return result


# ----------------------------------------------------------------------------------------- FLOPs, report
def step_flops(
    d: int, layers: int, positions: list[int], n_text: list[int], n_mel: list[int], cond: float
) -> float:
    """Model FLOPs of one step (3 x forward) over the positions UnifiedVoice.forward computes and counts in
    its loss (per row: 1 conditioning + T+2 text + M+2 audio positions, the batch's padding included)."""
    total = 3.0 * cond
    for n, t, m in zip(positions, n_text, n_mel):
        total += (
            6.0 * 12 * d * d * layers * n
            + 6.0 * layers * n * n * d
            + 6.0 * d * (TEXT_VOCAB * t + AUDIO_VOCAB * m)
        )
    return total


def _finish(report: dict, batches: list[list[int]], tokens: list[int], wav_lengths: list[int],
            seconds: list[float], args: Any) -> None:
    model = report["model"]
    flops = []
    for idx in batches:
        t, m = max(tokens[i] for i in idx) + 2, max(wav_lengths[i] for i in idx) // 1024 + 2
        flops.append(step_flops(model["d_model"], model["layers"], [1 + t + m] * len(idx), [t] * len(idx),
                                [m] * len(idx), (args.cond_flops or 0.0) * len(idx)))
    mean_flops = float(np.mean(flops))
    audio = float(np.mean([sum(seconds[i] for i in idx) for idx in batches]))
    report["flops_per_step"], report["cond_forward_flops_per_clip"] = mean_flops, args.cond_flops
    ref = report["results"].get("reference", {})
    for res in report["results"].values():
        if "step_s_median" not in res:
            continue
        s = res["step_s_median"]
        res.update(samples_per_s=args.batch / s, audio_s_per_s=audio / s, tflops_per_s=mean_flops / s / 1e12,
                   mfu=mean_flops / s / report["bf16_peak_flops"] if report["bf16_peak_flops"] else None)
        if "step_s_median" in ref:
            res["speedup_vs_reference"] = ref["step_s_median"] / s
            for key in ("peak_alloc", "peak_alloc_incl_warmup"):
                theirs = ref[f"{key}_gib"]
                res[f"{key}_vs_reference"] = (
                    res[f"{key}_gib"] / theirs if math.isfinite(theirs) and theirs else None
                )
            res["goals_met"] = {
                k: (res.get(k) is not None and (res[k] >= v if k.startswith("speedup") else res[k] <= v))
                for k, v in GOALS.items()
            }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file written after every configuration")
    p.add_argument("--configs", default=None, help=f"comma-separated, from {list(CONFIGS)} (default: "
                   f"{DEFAULT_CONFIGS}; with --smoke: {SMOKE_CONFIGS})")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--clips", type=int, default=16, help="synthetic clips (batches are a fixed cycle over them)"
    )
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--smoke", action="store_true", help="a 2-layer GPT and tiny DVAE: every code path in ~1 min"
    )
    p.add_argument("--commit", default=None, help="git commit of the code (default: git rev-parse HEAD)")
    p.add_argument("--command", default=None, help="the full command line, recorded in the JSON")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    args.cond_flops = None
    if args.smoke:
        args.clips, args.warmup, args.steps = min(args.clips, 8), min(args.warmup, 1), min(args.steps, 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("TTS", "trainer", "voicetune.backends.tortoise.features"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    device = torch.device(args.device)
    names = [
        n.strip()
        for n in (args.configs or (SMOKE_CONFIGS if args.smoke else DEFAULT_CONFIGS)).split(",")
        if n.strip()
    ]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tortoise_bench_"))
    t0 = time.perf_counter()
    base, n_gpt = make_base(work / "base", args.smoke)
    clips = make_clips(work, args.clips, args.seed)
    logger.info(
        "base and clips ready in %.1f s (UnifiedVoice: %.1f M parameters)",
        time.perf_counter() - t0,
        n_gpt / 1e6,
    )
    order = list(range(len(clips)))
    random.Random(args.seed).shuffle(order)
    batches = [order[i : i + args.batch] for i in range(0, len(order) - args.batch + 1, args.batch)]

    from TTS.tts.layers.tortoise.tokenizer import VoiceBpeTokenizer

    from voicetune.audio.io import audio_duration

    tok = VoiceBpeTokenizer()
    tokens = [len(tok.encode(c.text)) for c in clips]
    wav_lengths = [round(audio_duration(c.audio_path) * SAMPLE_RATE) for c in clips]
    seconds = [w / SAMPLE_RATE for w in wav_lengths]
    args_ = ar_args(args.smoke)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report: dict[str, Any] = {
        "benchmark": "tortoise_train_step",
        "device": name,
        "date": datetime.date.today().isoformat(),
        "git_commit": args.commit or git_commit(),
        "command": args.command or " ".join([sys.executable, *sys.argv]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "bf16_peak_flops": next((v for k, v in xb.BF16_PEAK.items() if k in name), None),
        "bf16_peak_source": "datasheet dense BF16 tensor-core peak (no sparsity)",
        "goals": GOALS,
        "model": {
            "gpt_params": n_gpt,
            "layers": args_.get("ar_layers", 30),
            "d_model": args_.get("ar_model_dim", 1024),
            "heads": args_.get("ar_heads", 16),
            "text_vocab": TEXT_VOCAB,
            "audio_tokens": AUDIO_VOCAB,
            "dvae_codes": 8192,
            "smoke": args.smoke,
        },
        "data": {
            "clips": len(clips),
            "batch": args.batch,
            "batches": batches,
            "clip_seconds": [round(s, 3) for s in seconds],
            "text_tokens": tokens,
            "conditioning": f"{COND_CLIPS} x {COND_LENGTH} samples per clip",
        },
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "results": {},
    }
    for key in ("transformers", "TTS"):
        with contextlib.suppress(ImportError):
            report[key] = __import__(key).__version__
    for cname in names:
        xb.free(device)
        logger.info("=== %s", cname)
        t = time.perf_counter()
        try:
            res = (run_reference(base, clips, batches, device, args) if CONFIGS[cname] is None
                   else run_voicetune(CONFIGS[cname], base, clips, batches, device, args, work))
        except Exception as e:  # one failing configuration must not lose the others' numbers
            logger.exception("%s failed", cname)
            res = {"error": f"{type(e).__name__}: {e}"}
        res["config_wall_s"] = time.perf_counter() - t
        report["results"][cname] = res
        _finish(report, batches, tokens, wav_lengths, seconds, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        xb._print_table(report)
    failed = [n for n, r in report["results"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
