"""One CSM-1B training step at full size: the plain transformers + peft path against voicetune's.

Builds the full-size ``sesame/csm-1b`` architecture from transformers' ``CsmConfig`` defaults (which are
csm-1b's: backbone 2048 wide x 16 layers, 32 heads, 8 key-value heads, MLP 8192 (Llama-3.2-1B-like); depth
decoder 1024 x 4, 8 heads, 2 key-value heads, MLP 8192; 32 codebooks of 2048 codes (+3 specials); 128,256 text
tokens) with Mimi from ``MimiConfig``'s defaults (kyutai/mimi), random weights (speed and memory do not depend
on their values; Mimi's codebooks are drawn at random so that codes vary), and times, in one process, on the
same synthetic clips (24 kHz, default 16 x 10 s, ~40 text tokens each) as a fixed cycle of batches:

* ``plain``: how community scripts finetune CSM: the model in bf16, ``peft.get_peft_model`` with LoRA r=32 on
  q/k/v/o/gate/up/down (by name, so Mimi's attention layers get adapters too), ``CsmProcessor(...,
  output_labels=True)`` every step and the model encoding the audio through Mimi inside ``forward``, the depth
  decoder on all frames (``depth_decoder_labels_ratio=1.0``), torch's fused AdamW;
* ``vt_*``: ``CsmBackend`` on Mimi codes computed once (``build_features``), driven by the training loop's own
  step (``StepEngine.run``: compile, CUDA graphs, FlatAdamW as configured), one TrainConfig per row
  (``CONFIGS``): ``vt_lora`` (LoRA r=32 on the same layers, never Mimi; depth decoder on 1/16 of the frames;
  voicetune's GPU defaults: per-layer compile, CUDA graphs, bf16 weights and moments) and ``vt_full`` (full
  finetuning, same settings), ``vt_lora_defaults`` (vt_lora with TrainConfig's generic defaults: fp32 adapter
  weights, so no FlatAdamW and no CUDA graphs).

Reports samples/s, frames/s (Mimi frames, 12.5 per second of audio), peak allocated/reserved memory (steady
and including warm-up, compile and capture), GPU busy fraction, and speed and memory ratios against ``plain``,
with the goals (LoRA >= 3x samples/s at <= 40 % of the peak; full finetuning peak < 24 GB); writes JSON after
every configuration. Usage (GPU box; no coqui-tts needed, but soundfile/soxr from the carried wheels):

    . benchmarks/gpu_setup.sh && python3 benchmarks/csm_train_step.py --out $OUT/csm.json   # ~5-8 min, H200
    python3 benchmarks/csm_train_step.py --tiny --device cpu --out /tmp/csm.json   # a minute on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from provenance import git_commit
from xtts_train_step import configure_training, free, gpu_busy_fraction, measure, voicetune_step

logger = logging.getLogger("csm_train_step")

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920  # Mimi: 12.5 frames per second at 24 kHz
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 2**30

CONFIGS: dict[str, dict[str, Any] | None] = {
    "plain": None,  # transformers + peft, processor + Mimi every step, depth decoder on all frames
    # voicetune's LoRA: same adapters (never on Mimi), GPU defaults (compile auto, CUDA graphs auto = on with
    # bf16 weights), 1/16 depth frames
    "vt_lora": {"finetune": "lora", "lora_rank": 32, "lora_alpha": 64.0, "param_dtype": "bf16",
                "optimizer_state_dtype": "bf16"},
    "vt_full": {"finetune": "full", "param_dtype": "bf16", "optimizer_state_dtype": "bf16"},
    # TrainConfig's generic defaults (fp32 LoRA weights: FlatAdamW and so the CUDA graphs are off; compile on)
    "vt_lora_defaults": {"finetune": "lora", "lora_rank": 32, "lora_alpha": 64.0},
    # ablations: what the graphs and the compile each buy
    "vt_lora_nographs": {"finetune": "lora", "lora_rank": 32, "lora_alpha": 64.0, "param_dtype": "bf16",
                         "optimizer_state_dtype": "bf16", "cuda_graphs": "off"},
    "vt_lora_eager": {"finetune": "lora", "lora_rank": 32, "lora_alpha": 64.0, "compile": "off",
                      "cuda_graphs": "off"},
    "vt_lora_all_frames": {"finetune": "lora", "lora_rank": 32, "lora_alpha": 64.0, "param_dtype": "bf16",
                           "optimizer_state_dtype": "bf16", "depth_fraction": 1.0},
    "vt_full_model_compile": {"finetune": "full", "param_dtype": "bf16", "optimizer_state_dtype": "bf16",
                              "compile_scope": "model"},
}
DEFAULT_CONFIGS = "plain,vt_lora,vt_full,vt_lora_defaults"

TEXTS = [
    (
        "The morning light crept slowly across the kitchen table while the kettle began to sing on the "
        "old stove."
    ),
    (
        "Could you tell me where the nearest train station is, and whether the last train has already "
        "left tonight?"
    ),
    (
        "The garden looks wonderful after a week of gentle rain, and the roses are finally starting to "
        "bloom again."
    ),
    (
        "Please remember to close the window before you leave, because the forecast says a storm is "
        "coming tonight."
    ),
]


# ----------------------------------------------------------------------------------------- set-up
def build_processor_and_config(tiny: bool) -> tuple[Any, Any]:
    """A CsmProcessor (local byte-level BPE with csm-1b's special tokens, CSM chat template, 24 kHz) and the
    CsmConfig: full size (transformers' defaults = csm-1b) or the tiny test model; token ids from the
    tokenizer."""
    from transformers import CsmConfig, MimiConfig

    from voicetune.backends.csm import tiny as tiny_base

    tokenizer = tiny_base.train_tokenizer(TEXTS * 4)
    processor = tiny_base.build_processor(tokenizer)
    if tiny:
        return processor, tiny_base.tiny_config(tokenizer)
    ids = {name: tokenizer.token_to_id(tok) for name, tok in (("bos_token_id", tiny_base.BOS),
                                                              ("audio_token_id", tiny_base.AUDIO),
                                                              ("audio_eos_token_id", tiny_base.AUDIO_EOS))}
    config = CsmConfig(codec_config=MimiConfig().to_dict(), pad_token_id=ids["audio_token_id"], **ids)
    return processor, config


def template_model(config: Any, seed: int) -> Any:
    """The random model on the CPU in float32, Mimi's codebooks drawn at random (a random-init quantizer has
    all-zero codebooks: every frame would get code 0); each configuration trains a deep copy."""
    from transformers import CsmForConditionalGeneration

    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(config).eval()
    with torch.no_grad():
        for module in model.codec_model.modules():
            if hasattr(module, "embed_sum") and hasattr(module, "cluster_usage"):
                module.embed_sum.normal_()
                module._embed = None
    return model


def make_clips(folder: Path, n: int, seconds: float, seed: int) -> list[Any]:
    """``n`` synthetic speech-like clips (voiced harmonics with a moving pitch, plus noise) and texts."""
    from voicetune.audio.io import write_wav
    from voicetune.data.manifest import Clip

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = 110 + 40 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        audio = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        audio = 0.2 * audio / np.abs(audio).max() + 0.01 * rng.standard_normal(t.size)
        path = folder / f"clip_{i:02d}.wav"
        write_wav(path, audio.astype(np.float32), SAMPLE_RATE)
        clips.append(Clip(path, TEXTS[i % len(TEXTS)], "speaker", "en"))
    return clips


# ----------------------------------------------------------------------------------------- plain path
def run_plain(template: Any, processor: Any, clips: list[Any], batches: list[list[int]], device: torch.device,
              args: Any) -> dict[str, Any]:
    """The community recipe: bf16 model, peft LoRA by module name, processor + Mimi every step, all frames."""
    from peft import LoraConfig, get_peft_model

    from voicetune.audio.io import load_audio

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = copy.deepcopy(template).to(dtype).to(device)
    model = get_peft_model(
        model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=LORA_TARGETS)
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    audio = [load_audio(c.audio_path, sr=SAMPLE_RATE)[0] for c in clips]
    prompts = [f"<|begin_of_text|>[0]{c.text}<|end_of_text|><|AUDIO|><|audio_eos|>" for c in clips]
    cycle = itertools.cycle(batches)

    def step() -> None:
        idx = next(cycle)
        inputs = processor(text=[prompts[i] for i in idx], audio=[audio[i] for i in idx], output_labels=True,
                           depth_decoder_labels_ratio=args.plain_depth_ratio)
        inputs = inputs.to(device, dtype=dtype)  # floating tensors (the audio) in the model's dtype
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = measure(step, device, args.warmup, args.steps)
    result["gpu_busy"] = gpu_busy_fraction(step, device) if args.busy else None
    adapted = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    result["settings"] = {
        "dtype": str(dtype),
        "lora": {"r": 32, "alpha": 64, "dropout": 0.05, "targets": LORA_TARGETS},
        "lora_modules": len(adapted),
        "lora_modules_in_mimi": sum("codec_model" in n for n in adapted),
        "trainable_params": sum(p.numel() for p in params),
        "depth_decoder_labels_ratio": args.plain_depth_ratio,
        "optimizer": "torch AdamW (fused)",
        "audio_encoded_every_step": True,
    }
    return result  # the model and optimizer go with this frame


# ----------------------------------------------------------------------------------------- voicetune
def run_voicetune(name: str, overrides: dict[str, Any], template: Any, processor: Any, clips: list[Any],
                  batches: list[list[int]], device: torch.device, args: Any, work: Path) -> dict[str, Any]:
    from voicetune.backends.csm.backend import CsmBackend
    from voicetune.backends.registry import train_config
    from voicetune.training.optim import build_optimizer
    from voicetune.utils.device import resolve_precision

    if device.type == "cpu":  # bf16 weights need bf16 autocast and graphs need a GPU: plain fp32 on a CPU
        overrides = {k: v for k, v in overrides.items() if k not in ("param_dtype", "optimizer_state_dtype")}
    torch.manual_seed(args.seed)
    backend = CsmBackend()
    backend.adopt(
        copy.deepcopy(template), copy.deepcopy(processor), device, base_ref="(random full-size csm-1b)"
    )
    settings = {
        "backend": "csm",
        "batch_size": args.batch,
        "seed": args.seed,
        "device": str(device),
        "lr": 1e-4,
        **overrides,
    }
    cfg = train_config(**settings)
    backend.configure_model(cfg)
    store = backend.build_features(clips, work / "features")
    configure_training(backend, cfg, device)
    precision = resolve_precision(cfg.precision, device)
    optimizer = build_optimizer(backend.param_groups(cfg), cfg, device)
    backend.set_train(True)
    step, driver = voicetune_step(backend, store, itertools.cycle(batches), cfg, optimizer, device, precision)
    result = measure(step, device, args.warmup, args.steps)
    result["gpu_busy"] = gpu_busy_fraction(step, device) if args.busy else None
    engine = getattr(step, "engine", None)
    shapes = sorted({tuple(backend.collate([store[i] for i in idx])["tokens"].shape) for idx in batches})
    result["settings"] = {
        **settings,
        "resolved_precision": precision,
        "optimizer": type(optimizer).__name__,
        "driver": driver,
        "cuda_graphs": bool(engine is not None and engine.graphs is not None),
        "padded_shapes": [list(s) for s in shapes],
        "trainable_params": sum(p.numel() for p in backend.trainable().parameters() if p.requires_grad),
        "mimi_on": str(next(backend.model.codec_model.parameters()).device),
        "text_embedding_on": str(backend.model.embed_text_tokens.weight.device),
    }
    del backend, store, optimizer, step
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
    p.add_argument("--seconds", type=float, default=10.0, help="length of every clip")
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--tiny", action="store_true", help="the tiny test model, 2 s clips: checks the code paths"
    )
    p.add_argument(
        "--plain-depth-ratio", type=float, default=1.0, help="the plain path's depth_decoder_labels_ratio"
    )
    p.add_argument(
        "--no-busy", dest="busy", action="store_false", help="skip the profiler's GPU-busy fraction"
    )
    p.add_argument("--command", default=None, help="the full command line, recorded in the JSON")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.seconds, args.clips = min(args.seconds, 2.0), min(args.clips, 8)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    work = args.workdir or Path(tempfile.mkdtemp(prefix="csm_bench_"))
    t0 = time.perf_counter()
    processor, config = build_processor_and_config(args.tiny)
    template = template_model(config, args.seed)
    clips = make_clips(work / "clips", args.clips, args.seconds, args.seed)
    order = list(range(len(clips)))
    random.Random(args.seed).shuffle(order)
    batches = [order[i : i + args.batch] for i in range(0, len(order) - args.batch + 1, args.batch)]
    n_params = sum(p.numel() for p in template.parameters())
    n_mimi = sum(p.numel() for p in template.codec_model.parameters())
    logger.info("model and clips ready in %.1f s (%.1f M parameters, %.1f M of them Mimi)",
                time.perf_counter() - t0, n_params / 1e6, n_mimi / 1e6)
    frames_per_batch = args.batch * int(args.seconds * SAMPLE_RATE) // FRAME_SAMPLES
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report: dict[str, Any] = {
        "benchmark": "csm_train_step", "device": name, "date": datetime.date.today().isoformat(),
        "git_commit": git_commit(), "command": args.command or " ".join([sys.executable, *sys.argv]),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "model": {"params": n_params, "mimi_params": n_mimi, "tiny": args.tiny,
                  "backbone": [config.num_hidden_layers, config.hidden_size],
                  "depth_decoder": [config.depth_decoder_config.num_hidden_layers,
                                    config.depth_decoder_config.hidden_size],
                  "num_codebooks": config.num_codebooks, "text_vocab": config.text_vocab_size},
        "data": {"clips": len(clips), "clip_seconds": args.seconds, "batch": args.batch, "batches": batches,
                 "frames_per_batch": frames_per_batch},
        "warmup_steps": args.warmup, "timed_steps": args.steps, "results": {},
    }
    for key in ("transformers", "peft"):
        with contextlib.suppress(ImportError):
            report[key] = importlib.import_module(key).__version__
    for cname in names:
        free(device)
        logger.info("=== %s", cname)
        t = time.perf_counter()
        try:
            if CONFIGS[cname] is None:
                res = run_plain(template, processor, clips, batches, device, args)
            else:
                res = run_voicetune(
                    cname, CONFIGS[cname], template, processor, clips, batches, device, args, work
                )
        except Exception as e:  # one failing configuration must not lose the others' numbers
            logger.exception("%s failed", cname)
            res = {"error": f"{type(e).__name__}: {e}"}
        res["config_wall_s"] = time.perf_counter() - t
        report["results"][cname] = res
        _finish(report, frames_per_batch, args.batch)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        _print_table(report)
    return 0


def _finish(report: dict[str, Any], frames_per_batch: int, batch: int) -> None:
    """Throughput, ratios against ``plain`` and the goals (recomputed as results come in)."""
    plain = report["results"].get("plain", {})
    for res in report["results"].values():
        if "step_s_median" not in res:
            continue
        s = res["step_s_median"]
        res["samples_per_s"] = batch / s
        res["frames_per_s"] = frames_per_batch / s
        if "step_s_median" in plain:
            res["speed_vs_plain"] = plain["step_s_median"] / s
            base = plain["peak_alloc_incl_warmup_gib"]
            res["peak_incl_warmup_vs_plain"] = (None if math.isnan(base) else
                                                res["peak_alloc_incl_warmup_gib"] / base)

    def goal(value: float | None, text: str, met: Any) -> dict[str, Any]:
        known = value is not None and not math.isnan(value)  # memory is unknown (NaN) on a CPU
        return {"value": value if known else None, "goal": text, "met": bool(met(value)) if known else None}

    goals = {}
    lora, full = report["results"].get("vt_lora", {}), report["results"].get("vt_full", {})
    if "speed_vs_plain" in lora:
        goals["lora_speed_vs_plain"] = goal(lora["speed_vs_plain"], ">= 3", lambda v: v >= 3)
        goals["lora_peak_vs_plain"] = goal(
            lora.get("peak_incl_warmup_vs_plain"), "<= 0.40", lambda v: v <= 0.40
        )
    if "peak_alloc_incl_warmup_gib" in full:
        goals["full_peak_gb"] = goal(
            full["peak_alloc_incl_warmup_gib"] * GIB / 1e9, "< 24 GB", lambda v: v < 24
        )
    report["goals"] = goals


def _print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['device']}  torch {report['torch']}  transformers {report.get('transformers')}")
    print(
        f"{'config':24s} {'ms/step':>8s} {'smp/s':>7s} {'frm/s':>8s} {'alloc':>6s} {'all':>6s} {'resv':>6s} "
        f"{'x plain':>7s} {'mem/pl':>6s} {'busy':>5s} {'warm s':>7s}"
    )
    for name, r in report["results"].items():
        if "step_s_median" not in r:
            print(f"{name:24s} ERROR {r.get('error', '')[:150]}")
            continue
        busy = f"{r['gpu_busy']:.2f}" if r.get("gpu_busy") is not None else "-"
        mem = r.get("peak_incl_warmup_vs_plain")
        print(
            f"{name:24s} {1e3 * r['step_s_median']:8.1f} {r['samples_per_s']:7.1f} {r['frames_per_s']:8.0f} "
            f"{r['peak_alloc_gib']:6.2f} {r['peak_alloc_incl_warmup_gib']:6.2f} "
            f"{r['peak_reserved_incl_warmup_gib']:6.2f} {r.get('speed_vs_plain', float('nan')):7.2f} "
            f"{mem if mem is not None else float('nan'):6.3f} {busy:>5s} {r['warmup_s']:7.1f}"
        )
    for goal, g in report.get("goals", {}).items():
        verdict = "unknown here" if g["met"] is None else "MET" if g["met"] else "NOT met"
        print(f"goal {goal}: {g['value']} ({g['goal']}): {verdict}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
