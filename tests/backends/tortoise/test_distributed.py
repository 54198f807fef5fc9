"""Tortoise on several GPUs goes through the shared distributed code: 2 CPU processes (gloo) follow the loss
trajectory of one process that accumulates the same two micro-batches."""

from __future__ import annotations

import json

import pytest
from _ddp import train_on_two_processes

from voicetune.training.loop import train

PARITY_TOLERANCE = 1e-5  # relative, on every logged loss (only the summation order differs)
COMMON = {"backend": "tortoise", "max_steps": 3, "seed": 5, "lr": 1e-3, "dropout": 0.0, "device": "cpu",
          "eval_every": 0, "eval_every_epochs": 0, "save_every": 3, "batch_size": 2}


@pytest.mark.slow
def test_two_cpu_processes_follow_the_one_process_loss_trajectory(tiny_dataset, tmp_path):
    from voicetune.backends.tiny import make_tiny_base

    base = make_tiny_base("tortoise", tmp_path / "base", dataset=tiny_dataset)
    two = tmp_path / "two"
    done = train_on_two_processes(tiny_dataset, base, two, COMMON, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    one = train(tiny_dataset, base, tmp_path / "one", grad_accum=2, **COMMON)
    a = [json.loads(line)["loss"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    b = [h["loss"] for h in one.losses]
    assert len(a) == len(b) == 3
    assert all(abs(x - y) <= PARITY_TOLERANCE * abs(y) for x, y in zip(a, b)), (a, b)
    assert json.loads((two / "run.json").read_text())["training"]["world_size"] == 2
