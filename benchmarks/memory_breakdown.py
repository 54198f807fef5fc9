"""Where the GPU memory of one voicetune training configuration goes at its peak, warm-up and CUDA-graph
capture included.

Builds the full-size XTTS-v2 GPT as ``xtts_train_step.py`` does, runs a few optimizer steps of one of its
configurations with PyTorch's allocator history on (``torch.cuda.memory._record_memory_history``), replays the
allocation trace to find the moment of peak allocated memory, and groups what was live then by the voicetune
(or coqui-tts) function that allocated it, marking allocations made inside the backward pass and inside
compiled code. It also records the peak of each step (the first one warms up and captures the graphs).

    python3 benchmarks/memory_breakdown.py --config vt_graphs_bf16w_bf16s --out benchmarks/results/memory.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).parent))
import xtts_train_step as bench
from provenance import git_commit

GIB = 2**30


def label(frames: list[dict[str, Any]]) -> str:
    """What allocated a block: the innermost voicetune or coqui-tts function on its Python stack, with
    ``backward`` / ``compiled`` marks (the stack of a backward allocation ends at the ``.backward()``
    call)."""
    names = [f.get("filename", "") for f in frames]
    owner = next(
        (f for f in frames if "/voicetune/" in f.get("filename", "") or "/TTS/" in f.get("filename", "")),
        None,
    )
    where = "(no voicetune frame)"
    if owner is not None:
        path = owner["filename"]
        cut = path.rfind("/voicetune/") if "/voicetune/" in path else path.rfind("/TTS/")
        where = f"{path[cut + 1:]}:{owner.get('name', '?')}"
    marks = []
    if any(n.endswith("torch/autograd/__init__.py") or "autograd/graph.py" in n for n in names):
        marks.append("backward")
    if any("torchinductor" in n or "/_inductor/" in n for n in names):
        marks.append("compiled")
    return f"{where} [{', '.join(marks)}]" if marks else where


def live_at_peak(snapshot: dict[str, Any], device: int = 0) -> tuple[float, dict[str, float], int, list]:
    """Replay the allocation trace: (peak GiB, GiB live at the peak by :func:`label`, trace events, the
    largest blocks live at the peak with the innermost frames of their stacks)."""
    live: dict[int, tuple[int, str, list]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, str, list]] = {}
    trace = snapshot["device_traces"][device]
    for event in trace:
        action = event["action"]
        if action == "alloc":
            frames = event.get("frames", [])
            live[event["addr"]] = (event["size"], label(frames), frames)
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif action in ("free_requested", "free_completed") and event["addr"] in live:
            total -= live.pop(event["addr"])[0]
    groups: dict[str, float] = {}
    for size, name, _ in at_peak.values():
        groups[name] = groups.get(name, 0.0) + size / GIB
    ordered = dict(sorted(((k, round(v, 3)) for k, v in groups.items()), key=lambda kv: -kv[1]))
    largest = [
        {
            "gib": round(size / GIB, 3),
            "frames": [
                f"{f.get('filename', '?')}:{f.get('line', '?')} {f.get('name', '?')}" for f in frames[:12]
            ],
        }
        for size, _, frames in sorted(at_peak.values(), key=lambda x: -x[0])[:6]
    ]
    return peak / GIB, ordered, len(trace), largest


def run(config: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    device = torch.device("cuda")
    base, _ = bench.make_base(work / "base", args.smoke, device)
    clips = bench.make_clips(work / "clips", args.clips, base / "vocab.json", args.seed)
    bench.free(device)
    torch.cuda.memory._record_memory_history(max_entries=args.max_entries, stacks="python")
    phases: dict[str, float] = {}

    def mark(name: str) -> None:
        torch.cuda.synchronize(device)
        phases[name] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
        torch.cuda.reset_peak_memory_stats(device)

    backend, store, cfg, _, optimizer, precision = bench.setup_voicetune(
        bench.CONFIGS[config], base, clips, device, args, work
    )
    mark("load, features, configure, optimizer")
    batches = [list(range(i, i + args.batch)) for i in range(0, args.clips - args.batch + 1, args.batch)]
    step, _ = bench.voicetune_step(
        backend, store, itertools.cycle(batches), cfg, optimizer, device, precision
    )
    for i in range(args.steps):
        step()
        mark(f"step {i + 1}")
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, groups, events, largest = live_at_peak(snapshot, torch.cuda.current_device())
    return {"config": config, "settings": bench.CONFIGS[config], "peak_alloc_by_phase_gib": phases,
            "peak_alloc_gib_from_trace": round(peak, 3), "live_at_peak_gib": groups, "trace_events": events,
            "trace_truncated": events >= args.max_entries, "largest_live_at_peak": largest}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--config", action="append", required=True, help=f"one of {list(bench.CONFIGS)[1:]}; repeatable"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-entries", type=int, default=2_000_000)
    ap.add_argument("--smoke", action="store_true", help="a 2-layer GPT (checks the script in seconds)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    unknown = [c for c in args.config if bench.CONFIGS.get(c) is None]
    if unknown:
        ap.error(f"not voicetune configurations of xtts_train_step.py: {unknown}")
    report = {
        "benchmark": "memory_breakdown",
        "device": torch.cuda.get_device_name(0),
        "date": datetime.date.today().isoformat(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "command": " ".join(["python3", *sys.argv]),
        "batch": args.batch,
        "smoke": args.smoke,
        "results": [],
    }
    for config in args.config:
        with tempfile.TemporaryDirectory() as tmp:
            report["results"].append(run(config, args, Path(tmp)))
        torch._dynamo.reset()
        bench.free(torch.device("cuda"))
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["results"][-1], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
