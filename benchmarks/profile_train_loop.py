"""Where the wall time of `voicetune train` goes: torch.profiler over steady steps of the real training loop.

Runs ``voicetune.training.loop.train`` (what ``voicetune train`` calls; in-loop evaluation off) on the
full-size random XTTS-v2 base and the synthetic dataset of ``xtts_train_e2e.py``, with the fast flags
(``--param-dtype bf16 --optimizer-state-dtype bf16``, batch 4). A training callback starts the profiler
(CPU and, on a GPU, CUDA activities, with Python stacks) after ``--skip`` steps and stops it ``--steps``
later,
so compiling and capturing stay outside. The trace is summarised into JSON and text:

* per profiled step: wall seconds (callback to callback);
* the host's Python functions and torch ops by total and by self time (per step; tracing Python calls
  slows the host, so these times are inflated, their proportions are what to read; ``--no-stacks`` for ops
  alone);
* on a GPU: the share of the wall time the GPU is busy, every idle gap between kernels, and, for the gaps
  in which the GPU waited for the host (its next launch came after the previous kernel ended), what the host
  was doing in them: the innermost Python functions running then, summed over the gaps;
* the CUDA runtime calls (graph launches, copies, synchronisations) per step.

    . benchmarks/gpu_setup.sh && python3 benchmarks/profile_train_loop.py --out $OUT/profile.json
    python3 benchmarks/profile_train_loop.py --smoke --device cpu --out /tmp/profile_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from provenance import git_commit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GAP_US = 20.0  # GPU idle gaps shorter than this are launch latency, not reported one by one


class ProfileSteps:
    """A voicetune TrainCallback: the profiler runs from the end of step ``skip`` to the end of step
    ``skip + steps``; records each profiled step's wall time."""

    def __init__(self, skip: int, steps: int, cuda: bool, trace: Path, stacks: bool = True):
        self.skip, self.steps, self.cuda, self.trace, self.stacks = skip, steps, cuda, trace, stacks
        self.times: list[float] = []
        self.prof: Any = None

    def on_train_start(self, state: Any) -> None: ...

    def on_step_end(self, state: Any) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if state.step == self.skip:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self.prof = profile(activities=activities, with_stack=self.stacks, record_shapes=False)
            self.prof.start()
            self.times.append(time.perf_counter())
        elif self.prof is not None and len(self.times) <= self.steps:
            self.times.append(time.perf_counter())
            if len(self.times) == self.steps + 1:
                if self.cuda:
                    torch.cuda.synchronize()
                self.prof.stop()
                self.prof.export_chrome_trace(str(self.trace))
                self.prof = None

    def on_checkpoint(self, state: Any) -> None: ...

    def on_train_end(self, state: Any) -> None: ...


def _nest(events: list[dict]) -> list[tuple[dict, float]]:
    """(event, self time in us) of properly nested complete events of one thread; each event gets its
    enclosing event as ``_parent``."""
    out, stack = [], []
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        end = e["ts"] + e["dur"]
        while stack and stack[-1][1] <= e["ts"]:
            stack.pop()
        e["_parent"] = stack[-1][0] if stack else None
        if stack:
            stack[-1][0]["_child"] = stack[-1][0].get("_child", 0.0) + e["dur"]
        stack.append((e, end))
    for e in events:
        out.append((e, e["dur"] - e.pop("_child", 0.0)))
    return out


def _loop_parts(events: list[dict], steps: int) -> list[dict[str, Any]]:
    """What the training loop itself spends per step, by the calls it makes directly (the step, the LR
    schedule, logging, callbacks...): the children of ``_loop``, and the rest as its own time."""
    parts: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for e in events:
        parent = e.get("_parent")
        if parent is not None and parent["name"].endswith(": _loop") and "training/loop.py" in parent["name"]:
            row = parts[e["name"]]
            row[0] += e["dur"]
            row[1] += e["dur"]
            row[2] += 1
    return _table(parts, steps, 0, 25)


def _table(rows: dict[str, list[float]], steps: int, key: int, n: int = 30) -> list[dict[str, Any]]:
    top = sorted(rows.items(), key=lambda kv: -kv[1][key])[:n]
    return [{"name": name[:160], "total_ms_per_step": round(v[0] / 1e3 / steps, 3),
             "self_ms_per_step": round(v[1] / 1e3 / steps, 3), "calls_per_step": round(v[2] / steps, 2)}
            for name, v in top]


def summarise(trace: Path, steps: int, wall: float) -> dict[str, Any]:
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    by_cat: dict[str, list[dict]] = collections.defaultdict(list)
    for e in events:
        by_cat[e.get("cat", "")].append(e)
    host_fn: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    python = by_cat.get("python_function", [])  # Python calls of every thread
    threads: dict[Any, list[dict]] = collections.defaultdict(list)
    for e in python + by_cat.get("cpu_op", []):
        threads[(e.get("pid"), e.get("tid"))].append(e)
    # the loop's own thread (other threads, e.g. TensorBoard's writer, mostly wait on locks)
    main = [t for t, evs in threads.items() if any("training/loop.py" in e["name"] for e in evs)]
    main = main or list(threads)
    for evs in (threads[t] for t in main):
        for e, self_us in _nest(evs):
            row = host_fn[("py " if e.get("cat") == "python_function" else "op ") + e["name"]]
            row[0] += e["dur"]
            row[1] += self_us
            row[2] += 1
    out: dict[str, Any] = {
        "host_by_total": _table(host_fn, steps, 0), "host_by_self": _table(host_fn, steps, 1),
        "loop_calls": _loop_parts([e for t in main for e in threads[t]], steps),
    }
    runtime = by_cat.get("cuda_runtime", []) + by_cat.get("cuda_driver", [])
    calls: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for e in runtime:
        calls[e["name"]][0] += e["dur"]
        calls[e["name"]][1] += e["dur"]
        calls[e["name"]][2] += 1
    out["cuda_runtime"] = _table(calls, steps, 0, 15)
    kernels = sorted(by_cat.get("kernel", []) + by_cat.get("gpu_memcpy", []) + by_cat.get("gpu_memset", []),
                     key=lambda e: e["ts"])
    if kernels:
        loop_thread = [e for t in main for e in threads[t] if e.get("cat") == "python_function"]
        out["gpu"] = _gpu_gaps(kernels, runtime, loop_thread, steps, wall)
    return out


def _gpu_gaps(kernels: list[dict], runtime: list[dict], python: list[dict], steps: int,
              wall: float) -> dict[str, Any]:
    launch = {e.get("args", {}).get("correlation"): e for e in runtime}
    busy, end, gaps = 0.0, kernels[0]["ts"], []
    for k in kernels:
        if k["ts"] > end:
            gap = k["ts"] - end
            call = launch.get(k.get("args", {}).get("correlation"))
            host_late = call is not None and call["ts"] > end
            if gap > GAP_US:
                gaps.append({"start": end, "us": gap, "waited_for_host": host_late,
                             "launched_by": call["name"] if call else None,
                             "host_from": end, "host_to": call["ts"] if host_late else end})
            busy += k["dur"]
        else:
            busy += max(0.0, k["ts"] + k["dur"] - end)
        end = max(end, k["ts"] + k["dur"])
    span = end - kernels[0]["ts"]
    # what the host ran while the GPU waited: the innermost Python functions overlapping each such gap
    py = sorted(python, key=lambda e: e["ts"])
    during: dict[str, float] = collections.defaultdict(float)
    for g in gaps:
        if not g["waited_for_host"]:
            continue
        lo, hi = g["host_from"], g["host_to"]
        inside = [e for e in py if e["ts"] < hi and e["ts"] + e["dur"] > lo]
        for e in inside:
            has_child = any(c is not e and c["ts"] >= e["ts"] and c["ts"] + c["dur"] <= e["ts"] + e["dur"]
                            and c["ts"] < hi and c["ts"] + c["dur"] > lo for c in inside)
            if not has_child:
                during[e["name"]] += min(hi, e["ts"] + e["dur"]) - max(lo, e["ts"])
    waited = [g for g in gaps if g["waited_for_host"]]
    return {
        "busy_fraction_of_kernel_span": busy / span if span else None,
        "busy_ms_per_step": busy / 1e3 / steps,
        "wall_ms_per_step": wall * 1e3 / steps,
        "idle_ms_per_step": (span - busy) / 1e3 / steps,
        "idle_gaps_per_step": len(gaps) / steps,
        "idle_waiting_for_host_ms_per_step": sum(g["us"] for g in waited) / 1e3 / steps,
        "largest_gaps": [{"ms": round(g["us"] / 1e3, 3), "waited_for_host": g["waited_for_host"],
                          "next_launch": g["launched_by"]}
                         for g in sorted(gaps, key=lambda g: -g["us"])[:15]],
        "host_during_idle_ms_per_step": [{"function": k[:160], "ms_per_step": round(v / 1e3 / steps, 3)}
                                         for k, v in sorted(during.items(), key=lambda kv: -kv[1])[:25]],
    }


def text_summary(report: dict[str, Any]) -> str:
    lines = [f"{report['device']}  torch {report['torch']}  commit {report['git_commit']}",
             f"profiled steps {report['profiled_steps']}: {report['step_ms']} ms each"]
    prof = report["profile"]
    gpu = prof.get("gpu")
    if gpu:
        lines.append(f"GPU busy {gpu['busy_ms_per_step']:.2f} ms of {gpu['wall_ms_per_step']:.2f} ms a step; "
                     f"idle {gpu['idle_ms_per_step']:.2f} ms in {gpu['idle_gaps_per_step']:.1f} gaps, "
                     f"{gpu['idle_waiting_for_host_ms_per_step']:.2f} ms of it waiting for the host")
        lines.append("host while the GPU waited (ms/step):")
        lines += [f"  {r['ms_per_step']:8.3f}  {r['function']}" for r in gpu["host_during_idle_ms_per_step"]]
    lines.append("the loop's own calls (ms/step, calls/step):")
    lines += [f"  {r['total_ms_per_step']:8.3f} {r['calls_per_step']:7.1f}  {r['name']}"
              for r in prof["loop_calls"]]
    lines.append("host by self time (ms/step, calls/step):")
    lines += [f"  {r['self_ms_per_step']:8.3f} {r['calls_per_step']:7.1f}  {r['name']}"
              for r in prof["host_by_self"]]
    lines.append("host by total time (ms/step):")
    lines += [f"  {r['total_ms_per_step']:8.3f}  {r['name']}" for r in prof["host_by_total"]]
    if prof.get("cuda_runtime"):
        lines.append("CUDA runtime (ms/step, calls/step):")
        lines += [f"  {r['total_ms_per_step']:8.3f} {r['calls_per_step']:7.1f}  {r['name']}"
                  for r in prof["cuda_runtime"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON; the text summary goes next to it (.txt)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="2-layer GPT on a CPU: checks the code paths")
    p.add_argument("--skip", type=int, default=None, help="steps before profiling (default 60; smoke 2)")
    p.add_argument("--steps", type=int, default=None, help="profiled steps (default 20; smoke 2)")
    p.add_argument("--batch", type=int, default=None, help="default 4 (smoke 2)")
    p.add_argument("--train-args", default="", help="extra options: name=value,...")
    p.add_argument("--no-stacks", action="store_true", help="no Python call tracing (it slows the host ~2x; "
                   "without it only torch ops and CUDA calls are attributed)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    skip, steps = args.skip or (2 if args.smoke else 60), args.steps or (2 if args.smoke else 20)
    batch = args.batch or (2 if args.smoke else 4)
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from xtts_train_e2e import build_inputs

    from voicetune.training.loop import train

    work = args.workdir or Path(tempfile.mkdtemp(prefix="profile_loop_"))
    base, data = build_inputs(work, args.smoke, args.device, 6 if args.smoke else 16, 2, 1)
    cuda = args.device.startswith("cuda")
    callback = ProfileSteps(skip, steps, cuda, work / "trace.json", not args.no_stacks)
    options: dict[str, Any] = {"batch_size": batch, "max_steps": skip + steps + 1, "eval_every": 0,
                               "eval_every_epochs": 0, "save_every": 0, "device": args.device}
    if cuda:
        options.update(param_dtype="bf16", optimizer_state_dtype="bf16")
    for item in filter(None, args.train_args.split(",")):
        name, _, value = item.partition("=")
        options[name.strip()] = value.strip()
    print(f"training {options} on {base}; profiling steps {skip + 1}..{skip + steps}", flush=True)
    t0 = time.perf_counter()
    train(data, base, work / "run", callbacks=[callback], **options)
    print(f"training done in {time.perf_counter() - t0:.1f} s; summarising the trace", flush=True)
    wall = callback.times[-1] - callback.times[0]
    report = {
        "benchmark": "profile_train_loop", "date": datetime.date.today().isoformat(),
        "git_commit": git_commit(),
        "command": " ".join([sys.executable, *sys.argv]), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "options": options, "profiled_steps": steps,
        "step_ms": [round(1e3 * (b - a), 2) for a, b in zip(callback.times, callback.times[1:])],
        "profile": summarise(work / "trace.json", steps, wall),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    text = text_summary(report)
    args.out.with_suffix(".txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
