"""Data-parallel training over several processes (GPUs), started by an official launcher.

``voicetune train --gpus N`` re-runs itself under ``torch.distributed.run`` (torchrun); users may equally
start ``torchrun --nproc-per-node N -m voicetune.cli train ...`` or ``accelerate launch --num-processes N -m
voicetune.cli train ...``: all of them set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``, which :func:`init_distributed` reads (NCCL on GPUs, gloo on CPUs).

Each rank computes the gradients of its share of the step's clips (see :mod:`voicetune.training.sampler`);
after the last micro-batch the gradients are averaged with one all-reduce per bucket
(:func:`all_reduce_gradients`). The loop drives the backend's loss directly rather than through
``DistributedDataParallel``'s forward, so the averaging is explicit; it also lets every rank agree on skipped
steps (out of memory, fp16 overflow) before any gradient is exchanged. Rank 0 alone writes logs, metrics and
checkpoints.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

_BUCKET_ELEMENTS = 1 << 24  # 16 M elements per all-reduce (64 MiB in fp32)


@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def any_of(self, flags: Sequence[bool], device: torch.device) -> list[bool]:
        """:meth:`any` of several flags in one all-reduce (none on a single process)."""
        if not self.enabled:
            return [bool(f) for f in flags]
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return [v > 0 for v in t.tolist()]

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Average scalar values over the ranks (same keys on every rank)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_name: str) -> tuple[Dist, str]:
    """Join the process group when launched by torchrun/accelerate; returns (Dist, this rank's device)."""
    world = env_world()
    if world <= 1:
        return Dist(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    logger.info(
        "distributed training: rank %d of %d (local rank %d) on %s", rank, world, local_rank, device_name
    )
    return Dist(rank, world, local_rank), device_name


def shutdown(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], dist: Dist) -> None:
    """Average the gradients of ``params`` over the ranks (a parameter without a gradient counts as zero)."""
    if not dist.enabled:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for group in by_dtype.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for g in group:
            if bucket and size + g.numel() > _BUCKET_ELEMENTS:
                _reduce_bucket(bucket, dist.world)
                bucket, size = [], 0
            bucket.append(g)
            size += g.numel()
        if bucket:
            _reduce_bucket(bucket, dist.world)


def _reduce_bucket(bucket: list[torch.Tensor], world: int) -> None:
    flat = torch.cat([b.reshape(-1) for b in bucket])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for b in bucket:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def launch_command(argv: Sequence[str], gpus: int) -> list[str]:
    """The torchrun command that runs ``voicetune <argv>`` on ``gpus`` processes of this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={gpus}",
        "-m",
        "voicetune.cli",
        *argv,
    ]


def launch(argv: Sequence[str], gpus: int) -> int:
    """Run ``voicetune <argv>`` under torchrun on ``gpus`` local processes; returns its exit status."""
    if gpus > 1 and torch.cuda.is_available() and torch.cuda.device_count() < gpus:
        raise ValueError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA GPUs are visible")
    cmd = launch_command(argv, gpus)
    logger.info("launching %d processes: %s", gpus, " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus)))
    return subprocess.call(cmd, env=env)
