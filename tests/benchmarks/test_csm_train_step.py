"""benchmarks/csm_train_step.py runs end to end on the tiny model on a CPU (its numbers mean nothing there:
the real run is on the GPU box, benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_csm_benchmark_runs_every_default_path_on_the_tiny_model(tmp_path):
    out = tmp_path / "csm.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "csm_train_step.py"),
            "--tiny",
            "--device",
            "cpu",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--no-busy",
            "--out",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"device", "date", "git_commit", "command"} <= set(report)
    for name in ("plain", "vt_lora", "vt_full", "vt_lora_defaults"):
        res = report["results"][name]
        assert "error" not in res, res.get("error")
        assert res["samples_per_s"] > 0 and res["frames_per_s"] > 0 and "speed_vs_plain" in res
    plain, lora = report["results"]["plain"]["settings"], report["results"]["vt_lora"]["settings"]
    assert plain["audio_encoded_every_step"] and plain["lora_modules_in_mimi"] > 0  # as community scripts do
    assert lora["mimi_on"] == "cpu" and set(report["goals"]) == {"lora_speed_vs_plain", "lora_peak_vs_plain",
                                                                  "full_peak_gb"}
