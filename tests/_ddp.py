"""Running `voicetune train --gpus 2` as a user would, on 2 CPU processes (gloo stands in for NCCL): the
distributed parity tests of every backend start their two-process run through this."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def train_on_two_processes(dataset: Path, base: Path, out: Path, options: dict[str, Any],
                           timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`voicetune train DATASET --base BASE --out OUT --gpus 2 --grad-accum 1` with ``options`` as flags
    (``max_steps=3`` -> ``--max-steps=3``), one thread per process; the finished process (not checked)."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    cmd = [sys.executable, "-m", "voicetune.cli", "train", str(dataset), "--base", str(base),
           "--out", str(out), "--gpus", "2", "--grad-accum", "1", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
