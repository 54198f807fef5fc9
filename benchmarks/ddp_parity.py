"""Data-parallel parity and speed-up: the same training run on 1 GPU and on 2 GPUs (torchrun via --gpus 2).

Both runs see the same clips in every optimizer step (1 GPU: micro-batch B x accumulation 2; 2 GPUs:
micro-batch B on each, accumulation 1; global batch 2B), so their per-step losses must agree up to the order
of floating point sums. Dropout is off (--dropout 0): dropout masks are drawn per process and would differ by
design. Writes JSON: both loss curves, the largest relative difference against the stated tolerance, step
times, samples/s and the speed-up.

The model is an untrained XTTS-v2 in the real layout (voicetune.backends.xtts.tiny): ``--size tiny`` (2 x 64,
seconds) or ``--size mid`` (12 layers x 512, ~50 M GPT parameters: closer to real step times). The clips are
synthetic voiced tones (2.5-8 s), so nothing is downloaded. Usage on the 2-GPU box::

    . benchmarks/gpu_setup.sh && python3 benchmarks/ddp_parity.py --out $OUT/ddp_parity.json
    # CPU check (gloo):
    python3 benchmarks/ddp_parity.py --device cpu --size tiny --steps 4 --out /tmp/ddp.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from provenance import git_commit

MID_GPT = {"gpt_layers": 12, "gpt_n_model_channels": 512, "gpt_n_heads": 8, "decoder_input_dim": 512}
TEXTS = [
    "The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore.",
    "The morning light crept slowly across the kitchen table.", "Could you tell me where the station is?",
    "Please remember to close the window before you leave.", "A journey of a thousand miles begins today.",
    "We will meet again on Thursday at the old library.", "Thank you very much for your help.",
]


def synthetic_dataset(root: Path, clips: int, seed: int = 0) -> Path:
    """A Coqui-format dataset of voiced harmonic tones with a wandering pitch and a little noise."""
    from voicetune.audio.io import write_wav
    from voicetune.data.manifest import write_metadata_csv

    rng = np.random.default_rng(seed)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    rows = []
    sr = 22050
    for i in range(clips):
        seconds = float(rng.uniform(2.5, 8.0))
        t = np.arange(int(seconds * sr)) / sr
        f0 = 110 + 40 * rng.random() + 15 * np.sin(2 * np.pi * 0.7 * t + rng.random() * 6)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        audio = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        audio = 0.2 * audio / np.abs(audio).max() + 0.005 * rng.standard_normal(len(t))
        write_wav(root / "wavs" / f"clip_{i:03d}.wav", audio.astype(np.float32), sr)
        rows.append((f"wavs/clip_{i:03d}.wav", TEXTS[i % len(TEXTS)], "speaker"))
    write_metadata_csv(root / "metadata_train.csv", rows)
    write_metadata_csv(root / "metadata_eval.csv", rows[:2])
    return root


def run_training(dataset: Path, base: Path, out: Path, gpus: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `voicetune train` run; returns its losses and speed (from metrics.jsonl)."""
    cmd = [
        sys.executable,
        "-m",
        "voicetune.cli",
        "train",
        str(dataset),
        "--base",
        str(base),
        "--out",
        str(out),
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--grad-accum",
        str(2 // gpus),
        "--dropout",
        "0",
        "--seed",
        "1",
        "--lr",
        str(args.lr),
        "--precision",
        args.precision,
        "--compile",
        args.compile,
        "--device",
        args.device,
        "--eval-every",
        "0",
        "--eval-every-epochs",
        "0",
        "--mem-every",
        "0",
        "--log-every",
        "1",
    ]
    cmd += shlex.split(args.train_args)
    if gpus > 1:
        cmd += ["--gpus", str(gpus)]
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    wall = time.time() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = records[args.warmup:] or records
    step_s = statistics.median(r["step_seconds"] for r in steady)
    return {
        "gpus": gpus, "command": " ".join(cmd), "wall_seconds": round(wall, 2),
        "losses": [r["loss"] for r in records],
        "median_step_seconds": round(step_s, 5),
        "samples_per_s": round(statistics.median(r["samples_per_s"] for r in steady), 3),
        "peak_gib": max((r.get("mem_peak_gib", 0.0) for r in records), default=0.0),
        "global_batch": json.loads((out / "run.json").read_text())["training"]["global_batch"],
    }


def device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--size", choices=("tiny", "mid"), default="mid")
    p.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo, for a functional check)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the speed figures")
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch per GPU")
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 (default) for a tight parity check; bf16 for production-like speed")
    p.add_argument("--compile", default="off", choices=("off", "on", "auto"))
    p.add_argument(
        "--train-args",
        default="",
        help="more `voicetune train` flags for both runs, e.g. the fast GPU configuration: "
        "'--param-dtype bf16 --optimizer-state-dtype bf16 --compile-scope model' (with --precision "
        "bf16 --compile on)",
    )
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest allowed relative loss difference (default: 1e-4 for fp32, 2e-2 otherwise)")
    p.add_argument("--timeout", type=int, default=540, help="seconds per training run")
    p.add_argument("--workdir", default=None, help="keep the dataset/base/runs here (default: a temp folder)")
    p.add_argument("--commit", default=None)
    args = p.parse_args(argv)
    tolerance = args.tolerance if args.tolerance is not None else (1e-4 if args.precision == "fp32" else 2e-2)

    import torch

    from voicetune.backends.xtts.tiny import make_tiny_xtts_base

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ddp_parity_"))
    dataset = synthetic_dataset(work / "dataset", args.clips)
    base = make_tiny_xtts_base(work / "base", corpus_texts=TEXTS, gpt=MID_GPT if args.size == "mid" else None)
    result: dict[str, Any] = {
        "benchmark": "ddp_parity", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "commit": args.commit or git_commit(), "command": " ".join([sys.executable, *sys.argv]),
        "device": device_name(args.device), "torch": torch.__version__, "size": args.size,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "workdir", "commit")},
        "tolerance_relative": tolerance,
    }
    visible = torch.cuda.device_count() if args.device != "cpu" and torch.cuda.is_available() else 0
    one = run_training(dataset, base, work / "one", 1, args)
    result["one_gpu"] = one
    if args.device != "cpu" and visible < 2:
        result["error"] = f"only {visible} CUDA GPU(s) visible: the 2-GPU run was skipped"
    else:
        # the cache is content-addressed
        shutil.copytree(work / "one" / "features", work / "two" / "features")
        two = run_training(dataset, base, work / "two", 2, args)
        diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(two["losses"], one["losses"])]
        result.update(two_gpus=two, max_relative_loss_difference=max(diffs),
                      parity_ok=len(two["losses"]) == len(one["losses"]) and max(diffs) <= tolerance,
                      speedup_samples_per_s=round(two["samples_per_s"] / one["samples_per_s"], 3),
                      speedup_step_time=round(one["median_step_seconds"] / two["median_step_seconds"], 3))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("one_gpu", "two_gpus")}, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result.get("parity_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
