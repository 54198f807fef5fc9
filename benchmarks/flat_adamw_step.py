"""How long FlatAdamW's update takes for the full XTTS-v2 GPT (441 M bf16 weights), against the memory
traffic.

Times ``FlatAdamW.step`` (compiled: one kernel per buffer, stochastic rounding of weights and moments) and,
for scale, ``torch.optim.AdamW(fused=True)`` on fp32 weights, plus variants of the update (one random draw per
rounding, as before; no stochastic rounding at all) to see what the rounding costs. Writes JSON with the
device, date and commit.

    python3 benchmarks/flat_adamw_step.py --out $OUT/flat_adamw.json        # on the GPU box
    python3 benchmarks/flat_adamw_step.py --numel 1000000 --device cpu --out /tmp/f.json   # CPU check
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

import torch
from provenance import git_commit

from voicetune.training import optim


def _adamw_fp32(p, g, m, v, s) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float32 weight and moments after one AdamW step (the arithmetic of optim._adamw_update)."""
    g32 = g.float()
    m32 = m.float() * s[1] + g32 * (1 - s[1])
    v32 = v.float() * s[2] + g32 * g32 * (1 - s[2])
    return p.float() * s[0] - s[3] * m32 / (v32.sqrt() / s[4] + s[5]), m32, v32


def update_three_draws(p, g, m, v, s) -> None:
    """The update before: one 16-bit draw (one random-number evaluation) per rounding."""
    p32, m32, v32 = _adamw_fp32(p, g, m, v, s)
    p.copy_(optim.stochastic_round(p32, p.dtype))
    m.copy_(optim.stochastic_round(m32, m.dtype))
    v.copy_(optim.stochastic_round(v32, v.dtype))


def update_weight_only(p, g, m, v, s) -> None:
    """Stochastic rounding of the weight only; moments rounded to nearest."""
    p32, m32, v32 = _adamw_fp32(p, g, m, v, s)
    p.copy_(optim.stochastic_round(p32, p.dtype))
    m.copy_(m32.to(m.dtype))
    v.copy_(v32.to(v.dtype))


def update_nearest(p, g, m, v, s) -> None:
    """No stochastic rounding at all (the floor: memory traffic and arithmetic only)."""
    p32, m32, v32 = _adamw_fp32(p, g, m, v, s)
    p.copy_(p32.to(p.dtype))
    m.copy_(m32.to(m.dtype))
    v.copy_(v32.to(v.dtype))


def timed(fn, device: torch.device, warmup: int = 3, steps: int = 10) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps * 1e3


def first_and_later_extra_gib(fn, device: torch.device) -> tuple[float, float]:
    """GiB allocated above what was live before, at the peak of the first call (compiling included) and of a
    later call: what the update needs beyond the weights, gradients and moments."""
    if device.type != "cuda":
        return float("nan"), float("nan")
    extra = []
    for _ in range(2):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        extra.append(round((torch.cuda.max_memory_allocated() - before) / 2**30, 3))
    return extra[0], extra[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numel", type=int, default=441_018_563)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    n = args.numel
    results: dict[str, Any] = {}
    for state in ("bf16", "fp32"):
        w = torch.nn.Parameter(torch.randn(n, device=device, dtype=torch.bfloat16) * 0.02)
        opt = optim.FlatAdamW([w], lr=1e-5, weight_decay=0.01,
                              state_dtype=torch.bfloat16 if state == "bf16" else torch.float32)
        opt._flat[0]["grad"].normal_()
        state_bytes = 2 if state == "bf16" else 4
        traffic = n * (2 + 2 + 2 * state_bytes + 2 + 2 * state_bytes)  # read p, g, m, v; write p, m, v
        first, later = first_and_later_extra_gib(opt.step, device)
        ms = timed(opt.step, device)
        results[f"FlatAdamW step, {state} moments"] = {
            "ms": round(ms, 3),
            "GB_per_s": round(traffic / ms / 1e6, 1),
            "extra_gib_first_call": first,
            "extra_gib_later_call": later,
        }
        if state == "bf16" and device.type == "cuda":
            f = opt._flat[0]
            bucket = [(f["param"], f["grad"], f["exp_avg"], f["exp_avg_sq"])]
            scalars = torch.tensor([[1 - 1e-7, 0.9, 0.999, 1e-5, 0.03, 1e-8]], device=device)
            for name, fn in (
                ("three draws (before)", update_three_draws),
                ("weight-only rounding", update_weight_only),
                ("round to nearest", update_nearest),
            ):
                compiled = torch.compile(lambda b, s, fn=fn: [fn(*x, y) for x, y in zip(b, s)], dynamic=True)
                try:
                    with torch.no_grad():
                        ms = timed(lambda c=compiled, b=bucket, s=scalars: c(b, s), device)
                except Exception as e:  # noqa: BLE001 (an experiment failing must not lose the other numbers)
                    results[f"variant: {name}, bf16 moments"] = {"error": f"{type(e).__name__}: {e}"[:300]}
                    continue
                results[f"variant: {name}, bf16 moments"] = {"ms": round(ms, 3),
                                                              "GB_per_s": round(traffic / ms / 1e6, 1)}
        del opt, w
    w32 = torch.nn.Parameter(torch.randn(n, device=device) * 0.02)
    w32.grad = torch.randn_like(w32)
    ref = torch.optim.AdamW(
        [w32], lr=1e-5, **({"fused": True} if device.type == "cuda" else {"foreach": True})
    )
    ms = timed(ref.step, device)
    results["torch AdamW fused, fp32 weights + moments"] = {
        "ms": round(ms, 3),
        "GB_per_s": round(n * 28 / ms / 1e6, 1),
    }
    commit = git_commit()
    report = {
        "benchmark": "flat_adamw_step",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "date": datetime.date.today().isoformat(),
        "git_commit": commit,
        "torch": torch.__version__,
        "command": " ".join(
            ["python3", "benchmarks/flat_adamw_step.py", f"--numel {n}", f"--device {args.device}"]
        ),
        "numel": n,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
