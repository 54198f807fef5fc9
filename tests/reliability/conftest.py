"""Fixtures of the reliability suite (``tiny_dataset``, ``tiny_base`` and ``asr_model`` live in
tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# The runs the kill trials compare with (dropout and conditioning crops on: they draw random numbers).
TRAIN = {"batch_size": 2, "seed": 5, "lr": 1e-3, "eval_every": 0, "eval_every_epochs": 0}


@pytest.fixture(scope="session")
def small_run(tiny_dataset, tiny_base, tmp_path_factory) -> Path:
    """A finished 2-step run with checkpoints step_1 and step_2 (read-only: copy it with :func:`run_copy`)."""
    from voicetune.training.loop import train

    run = tmp_path_factory.mktemp("small_run") / "run"
    train(tiny_dataset, tiny_base, run, max_steps=2, save_every=1, keep_last=5, **TRAIN)
    return run


@pytest.fixture
def run_copy(small_run, tmp_path):
    """A private copy of :func:`small_run` to damage."""

    def make(name: str = "run") -> Path:
        return Path(shutil.copytree(small_run, tmp_path / name, symlinks=True))

    return make
