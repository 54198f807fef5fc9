"""The benchmark scripts' CPU modes still run (their GPU runs are done by hand: benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tortoise_train_step_smoke_runs_every_path_on_the_cpu(tmp_path):
    out = tmp_path / "tortoise.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "tortoise_train_step.py"),
            "--smoke",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        check=True,
        env=env,
        timeout=900,
    )
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"reference", "vt_packed_eager", "vt_flat_mlp_bf16w_bf16s_eager"}
    for name, result in report["results"].items():
        assert "error" not in result and result["step_s_median"] > 0, name
        assert name == "reference" or result["speedup_vs_reference"] > 0
    assert report["git_commit"] and report["command"] and report["device"] and report["date"]
