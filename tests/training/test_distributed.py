"""Data parallel training: gradients averaged over ranks, rank 0 writes, same trajectory as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from _ddp import train_on_two_processes

from voicetune.training.loop import train

# 2 processes x micro-batch 2 and 1 process x micro-batch 2 x accumulation 2 see the same 4 clips per step and
# average the same two micro-batch gradients; only the summation order differs.
PARITY_TOLERANCE = 1e-5  # relative, on every logged loss
COMMON = {"max_steps": 4, "seed": 5, "lr": 1e-3, "dropout": 0.0, "device": "cpu", "eval_every": 0,
          "eval_every_epochs": 0, "save_every": 2, "batch_size": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reduce_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from voicetune.training.distributed import Dist, all_reduce_gradients

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.full((3,), float(rank + 1))  # 1 on rank 0, 2 on rank 1
    b.grad = torch.ones(2) * 4 if rank == 0 else None  # no gradient on rank 1 counts as zeros
    dist = Dist(rank, 2, rank)
    all_reduce_gradients([a, b], dist)
    torch.save({"a": a.grad, "b": b.grad, "any": dist.any(rank == 1, torch.device("cpu")),
                "mean": dist.mean({"x": float(rank)}, torch.device("cpu"))}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_gradients_are_averaged_over_ranks_and_flags_are_shared(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "r")
    mp.spawn(_reduce_worker, args=(_free_port(), out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert torch.equal(got["a"], torch.full((3,), 1.5)) and torch.equal(got["b"], torch.full((2,), 2.0))
        assert got["any"] is True and got["mean"] == {"x": 0.5}


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_cpu_processes_follow_the_one_process_loss_trajectory(tiny_dataset, tiny_base, tmp_path):
    two = tmp_path / "two"
    done = train_on_two_processes(tiny_dataset, tiny_base, two, COMMON, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    one = train(tiny_dataset, tiny_base, tmp_path / "one", grad_accum=2, **COMMON)
    a, b = _losses(two), [h["loss"] for h in one.losses]
    assert len(a) == len(b) == 4
    assert all(abs(x - y) <= PARITY_TOLERANCE * abs(y) for x, y in zip(a, b)), (a, b)
    info = json.loads((two / "run.json").read_text())["training"]
    assert info["world_size"] == 2 and info["global_batch"] == 4
    assert len(list((two / "tensorboard").iterdir())) == 1  # rank 0 alone writes
    # resuming a 2-process run under 2 processes continues its trajectory
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicetune.cli",
            "train",
            "--resume",
            str(two),
            "--gpus",
            "2",
            "--max-steps",
            "6",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    longer = train(resume=one.run_dir, max_steps=6)
    c, d = _losses(two), _losses(one.run_dir)
    assert len(c) == len(d) == 6 and longer.steps == 6
    assert all(abs(x - y) <= PARITY_TOLERANCE * abs(y) for x, y in zip(c, d)), (c, d)
    print("2-process vs 1-process losses:", c, d)
