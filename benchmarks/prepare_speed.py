"""Speed of `voicetune prepare` as a multiple of real time, on ~10 minutes of generated speech.

    python benchmarks/prepare_speed.py                       # CPU, packaged tiny.en, default settings
    python benchmarks/prepare_speed.py --device cuda --asr-batch-size 32
    python benchmarks/prepare_speed.py --qa-mos on           # with DistillMOS per clip

The input (two ~5-minute mp3 "recordings" of the packaged Piper voice, with pauses and room tone) is
generated once into ``--input`` (reusable: ``--generate-only``). Models are loaded by a short warm-up run
first, so the timed run measures processing, not loading; both are reported. The result (device, date,
git commit, command, settings, seconds per stage) is written as JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import torch

            return torch.cuda.get_device_name(0)
        except (ImportError, RuntimeError) as e:
            return f"cuda ({e})"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def generate(folder: Path, minutes: float) -> None:
    """Two mp3 files of Piper speech, ``minutes`` in all (sentences re-used in a seeded order)."""
    import numpy as np

    from voicetune.demo_audio import DEMO_SENTENCES, _add_room, _write_any, speak

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    voice = {s: speak(s)[0] for s in DEMO_SENTENCES}
    for f in range(2):
        parts, total = [np.zeros(11025, np.float32)], 0.0
        while total < minutes * 30:
            audio = voice[DEMO_SENTENCES[int(rng.integers(len(DEMO_SENTENCES)))]]
            pause = np.zeros(int(rng.uniform(0.4, 1.4) * 22050), np.float32)
            parts += [audio, pause]
            total += (len(audio) + len(pause)) / 22050
        _write_any(folder / f"talk_{f + 1}.mp3", np.clip(_add_room(np.concatenate(parts), rng), -1, 1), 22050)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--input", type=Path, default=ROOT / "benchmarks" / ".prepare_input")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--asr-batch-size", type=int, default=8)
    ap.add_argument("--qa-mos", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument(
        "--note", default="", help="free text stored with the result (e.g. how the box was set up)"
    )
    ap.add_argument(
        "--result", type=Path, help="JSON to write (default: benchmarks/results/prepare_speed_<device>.json)"
    )
    args = ap.parse_args()
    if not list(args.input.glob("*.mp3")):
        generate(args.input, args.minutes)
    if args.generate_only:
        return 0
    from voicetune.data.prepare import prepare
    from voicetune.data.transcribe import packaged_model_path

    model = str(packaged_model_path())
    settings = {
        "asr_model": model,
        "device": args.device,
        "asr_batch_size": args.asr_batch_size,
        "qa_mos": args.qa_mos,
    }
    with tempfile.TemporaryDirectory() as tmp:
        warm_in = Path(tmp) / "warm"
        warm_in.mkdir()
        first = min(args.input.glob("*.mp3"))
        t0 = time.monotonic()
        shutil.copy(first, warm_in / first.name)
        prepare(
            warm_in,
            Path(tmp) / "warm_out",
            qa_mos=args.qa_mos,
            device=args.device,
            asr_model=model,
            asr_batch_size=args.asr_batch_size,
        )
        cold = time.monotonic() - t0
        result = prepare(args.input, Path(tmp) / "out", **settings)
    out = {
        "benchmark": "prepare_speed",
        "device": _device_name(args.device),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": settings | {"asr_model": "tiny.en (packaged)"},
        "input_minutes": result.minutes_input,
        "seconds": result.seconds_elapsed,
        "speed_x_real_time": round(result.speed, 1),
        "warmup_seconds_incl_model_loading": round(cold, 1),
        "stage_seconds": result.stage_seconds,
        "clips": result.n_clips,
        "kept": result.n_kept,
        "second_opinions": result.n_second_opinions,
        "mos_checked": result.mos_checked,
        "torch_threads_env": os.environ.get("OMP_NUM_THREADS", ""),
        "note": args.note,
    }
    dest = args.result or ROOT / "benchmarks" / "results" / f"prepare_speed_{args.device.split(':')[0]}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
