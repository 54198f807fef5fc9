"""End to end: the real ``voicetune train`` command on the full-size XTTS-v2 GPT, timed on the wall clock.

What users run, not a step in isolation: ``python -m voicetune.cli train DATA --base BASE --out RUN
--param-dtype bf16 --optimizer-state-dtype bf16 --batch-size 4 --max-steps N --eval-every 0
--eval-every-epochs 0`` as a subprocess, on a dataset folder in voicetune's layout (the step benchmark's
synthetic 6-11 s clips, 16 train + 2 eval) and the full-size random base of ``xtts_train_step.py``.

Reported per run, from the run's own ``metrics.jsonl`` timestamps (one record per step):

* wall-clock samples/s over the second half of the steps (the steady part);
* wall-clock samples/s over the whole run, compile and capture included: from the process start, and from
  the loop's start;
* start-up: seconds from the process start to the end of step 1, step 1's own seconds (compile + capture),
  and the other slow steps (a new padded length compiling);
* peak GPU memory (``mem_peak_gib`` of the last record: the allocator's peak since the process started);
* the logged samples/s against the wall clock over the same steps (the progress bar's honesty).

The command runs ``--runs`` times back to back with one compile cache (voicetune's, in the work folder, and
Inductor's/Triton's, also there, empty at first): ``cold`` compiles everything; ``warm`` finds torch's local
caches and voicetune's filled; ``voicetune-cache`` starts with empty Inductor/Triton folders (as after a
reboot clears /tmp) and only voicetune's cache, which it loads.

In the same invocation, ``xtts_train_step.py`` measures the reference (coqui-tts GPTTrainer, fp32: how the
Coqui recipe and AllTalk train) and, for comparison, the step benchmark's row of the same configuration, so
the ratios are side by side. Writes JSON after every part, so a cut-short run still yields numbers::

    . benchmarks/gpu_setup.sh && python3 benchmarks/xtts_train_e2e.py --out $OUT/xtts_train_e2e.json
    python3 benchmarks/xtts_train_e2e.py --smoke --device cpu --out /tmp/e2e.json     # CPU check, ~2 min
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from provenance import git_commit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAST_FLAGS = ["--param-dtype", "bf16", "--optimizer-state-dtype", "bf16"]
RUN_KINDS = ("cold", "warm", "voicetune-cache")
METER_WINDOW = 20  # steps the logged rates cover (voicetune.training.loop.METER_WINDOW)
STEP_CONFIG = "vt_graphs_layers_bf16w_bf16s"  # the step benchmark's row of what `voicetune train` runs here


def build_inputs(work: Path, smoke: bool, device: str, n_train: int, n_eval: int,
                 seed: int) -> tuple[Path, Path]:
    """The full-size (or --smoke: 2-layer) random XTTS-v2 base and a dataset folder in voicetune's layout."""
    import torch
    from xtts_train_step import make_base, make_clips

    from voicetune.data.manifest import write_metadata_csv

    base, _ = make_base(work / "base", smoke, torch.device(device))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the training processes get the whole GPU
    data = work / "data"
    clips = make_clips(data / "wavs", n_train + n_eval, base / "vocab.json", seed)
    rows = [(f"wavs/{c.audio_path.name}", c.text, "speaker") for c in clips]
    write_metadata_csv(data / "metadata_train.csv", rows[:n_train])
    write_metadata_csv(data / "metadata_eval.csv", rows[n_train:])
    return base, data


def train_command(data: Path, base: Path, out: Path, args: argparse.Namespace) -> list[str]:
    # (on a CPU, bf16 weights train under bf16 autocast, several times slower than fp32 there: the CPU check
    # runs the code paths in fp32)
    fast = FAST_FLAGS if args.device != "cpu" else []
    cmd = [sys.executable, "-m", "voicetune.cli", "train", str(data), "--base", str(base), "--out", str(out),
           *fast, "--batch-size", str(args.batch), "--max-steps", str(args.steps), "--eval-every", "0",
           "--eval-every-epochs", "0", "--log-every", "1", "--save-every", "0", "--device", args.device]
    return cmd + args.train_args.split()


def run_train(kind: str, cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run the command, echoing every 25th line; returns the process's wall-clock start and end."""
    print(f"=== {kind}: {' '.join(cmd)}", flush=True)
    t_start = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=ROOT, bufsize=1)
        assert proc.stdout is not None
        for n, line in enumerate(proc.stdout):
            f.write(line)
            if n % 25 == 0 or "Error" in line or "compile cache" in line or "captured" in line:
                print(f"[{kind} {time.time() - t_start:6.1f}s] {line.rstrip()[:200]}", flush=True)
        rc = proc.wait()
    return {"returncode": rc, "process_start": t_start, "process_end": time.time(), "log": str(log)}


def analyse(run_dir: Path, proc: dict[str, Any], batch: int) -> dict[str, Any]:
    """Wall-clock figures of one run from its metrics.jsonl (one record per step, each with its time)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "step" in r and r.get("kind") != "eval"]
    if len(records) < 4:
        return {"error": f"only {len(records)} steps logged"}
    n = len(records)
    half = n // 2
    t = [r["time"] for r in records]
    steady = batch * (n - 1 - half) / (t[-1] - t[half])
    loop_start = t[0] - records[0]["step_seconds"]
    seconds = [r["step_seconds"] for r in records]
    median = sorted(seconds[half:])[len(seconds[half:]) // 2]
    slow = [{"step": r["step"], "seconds": round(r["step_seconds"], 3)} for r in records[1:]
            if r["step_seconds"] > 10 * median and r["step_seconds"] > 0.5]
    # the progress bar's figure at the last step covers the meter's window (the last 20 steps; in a shorter
    # run, every step since the loop started): the wall clock over the same steps
    window = min(METER_WINDOW, n)
    since = t[-1 - window] if window < n else loop_start
    wall_window = batch * window / (t[-1] - since)
    # the logged figures whose windows lie inside the second half, against the wall clock over it
    logged_steady = [r["samples_per_s"] for r in records[half + METER_WINDOW:]]
    logged_mean = sum(logged_steady) / len(logged_steady) if logged_steady else None
    peak = max((r.get("mem_peak_gib", 0.0) for r in records), default=0.0)
    rss = max((r.get("mem_rss_gib", 0.0) for r in records), default=0.0)
    return {
        "steps": n,
        "samples": batch * n,
        "wall_samples_per_s_steady": steady,
        "wall_samples_per_s_whole_from_process_start": batch * n / (t[-1] - proc["process_start"]),
        "wall_samples_per_s_whole_from_loop_start": batch * n / (t[-1] - loop_start),
        "startup_to_step1_end_s": t[0] - proc["process_start"],
        "setup_before_loop_s": loop_start - proc["process_start"],
        "step1_seconds": records[0]["step_seconds"],
        "slow_steps": slow,
        "median_step_seconds_steady": median,
        "process_wall_s": proc["process_end"] - proc["process_start"],
        "logged_samples_per_s_last": records[-1]["samples_per_s"],
        "wall_samples_per_s_last_window": wall_window,
        "logged_vs_wall_last_window": records[-1]["samples_per_s"] / wall_window,
        "logged_samples_per_s_steady_mean": logged_mean,
        "logged_vs_wall_steady": logged_mean / steady if logged_mean else None,
        "peak_alloc_gib": peak or None,
        "peak_rss_gib": rss or None,
        "mfu_last": records[-1].get("mfu"),
    }


def run_step_benchmark(work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The reference (and the step benchmark's row of this configuration) from xtts_train_step.py."""
    out = work / "step_benchmark.json"
    configs = "reference" if args.no_step_row else f"reference,{STEP_CONFIG}"
    cmd = [sys.executable, str(HERE / "xtts_train_step.py"), "--configs", configs, "--out", str(out),
           "--device", args.device, "--batch", str(args.batch), "--warmup", str(args.ref_warmup),
           "--steps", str(args.ref_steps), "--workdir", str(work / "step_bench")]
    if args.smoke:
        cmd.append("--smoke")
    print(f"=== step benchmark: {' '.join(cmd)}", flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    if not out.is_file():
        return {"error": f"xtts_train_step.py exited with {rc} and wrote nothing"}
    return json.loads(out.read_text())["results"]


def summarize(report: dict[str, Any]) -> None:
    ref = report.get("step_benchmark", {}).get("reference", {})
    ref_sps, ref_peak = ref.get("samples_per_s"), ref.get("peak_alloc_incl_warmup_gib")
    for run in report["runs"].values():
        m = run.get("metrics") or {}
        if ref_sps and "wall_samples_per_s_steady" in m:
            m["x_reference_steady"] = m["wall_samples_per_s_steady"] / ref_sps
            m["x_reference_whole_from_loop_start"] = m["wall_samples_per_s_whole_from_loop_start"] / ref_sps
        if ref_peak and m.get("peak_alloc_gib"):
            m["peak_vs_reference"] = m["peak_alloc_gib"] / ref_peak
    print(json.dumps({k: {kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in
                          (v.get("metrics") or v).items() if kk != "slow_steps"}
                      for k, v in report["runs"].items()}, indent=1), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="2-layer GPT, few steps: the code paths on a CPU")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 300; smoke 8)")
    p.add_argument("--batch", type=int, default=None, help="default 4 (smoke 2)")
    p.add_argument("--clips", type=int, default=None, help="train clips, default 16 (smoke 6); 2 more go to "
                   "the eval split")
    p.add_argument("--runs", default=",".join(RUN_KINDS), help=f"comma-separated, from {RUN_KINDS}")
    p.add_argument("--train-args", default="", help="extra flags of voicetune train (--compile-scope model)")
    p.add_argument("--ref-warmup", type=int, default=None, help="step benchmark warm-up steps (default 8)")
    p.add_argument("--ref-steps", type=int, default=None, help="step benchmark timed steps (default 20)")
    p.add_argument("--no-reference", action="store_true", help="skip the step benchmark")
    p.add_argument("--no-step-row", action="store_true", help=f"reference only, not {STEP_CONFIG}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--commit", default=None)
    args = p.parse_args(argv)
    args.steps = args.steps or (8 if args.smoke else 300)
    args.clips = args.clips or (6 if args.smoke else 16)
    args.no_step_row = args.no_step_row or args.device == "cpu"  # its row captures CUDA graphs
    args.batch = args.batch or (2 if args.smoke else 4)
    args.ref_warmup = args.ref_warmup or (2 if args.smoke else 8)
    args.ref_steps = args.ref_steps or (3 if args.smoke else 20)
    kinds = [k.strip() for k in args.runs.split(",") if k.strip()]
    if set(kinds) - set(RUN_KINDS):
        p.error(f"--runs: unknown {sorted(set(kinds) - set(RUN_KINDS))}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xtts_e2e_"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    t0 = time.time()
    base, data = build_inputs(work, args.smoke, args.device, args.clips, 2, args.seed)
    print(f"base and dataset ready in {time.time() - t0:.1f} s: {base}, {data}", flush=True)
    device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda") else
                   platform.processor() or "cpu")
    report: dict[str, Any] = {
        "benchmark": "xtts_train_e2e", "device": device_name, "date": datetime.date.today().isoformat(),
        "git_commit": args.commit or git_commit(), "command": " ".join([sys.executable, *sys.argv]),
        "torch": torch.__version__, "python": platform.python_version(), "smoke": args.smoke,
        "batch": args.batch, "steps": args.steps, "train_clips": args.clips, "runs": {},
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", "VOICETUNE_CACHE_DIR": str(work / "voicetune_cache")}

    def write() -> None:
        summarize(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    for i, kind in enumerate(kinds):
        inductor = work / ("inductor_fresh" if kind == "voicetune-cache" else "inductor")
        run_env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(inductor / "inductor"),
                   "TRITON_CACHE_DIR": str(inductor / "triton")}
        out = work / f"run{i}_{kind}"
        cmd = train_command(data, base, out, args)
        proc = run_train(kind, cmd, run_env, work / f"run{i}_{kind}.log")
        entry: dict[str, Any] = {"command": " ".join(cmd), **proc}
        try:
            entry["metrics"] = analyse(out, proc, args.batch)
        except (OSError, ValueError, KeyError, ZeroDivisionError) as e:
            entry["metrics"] = {"error": f"{type(e).__name__}: {e}"}
        log = Path(proc["log"]).read_text(errors="replace").splitlines()
        entry["log_tail"] = log[-15:]
        entry["log_compile_lines"] = [line[:300] for line in log
                                      if "compile cache" in line or "captured" in line]
        report["runs"][kind] = entry
        write()
    if not args.no_reference:
        report["step_benchmark"] = run_step_benchmark(work, args, env)
        write()
    return 0 if all(r["returncode"] == 0 for r in report["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
