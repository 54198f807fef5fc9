"""Fixtures for training tests (``tiny_dataset`` and ``tiny_base`` live in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


# Transcripts with characters the tiny base's English vocabulary lacks (é, è, ü, û), two speakers.
ACCENTED = [
    "The morning light crept slowly across the café table.",
    "Could you tell me where the nearest station in Zürich is?",
    "The garden looks wonderful after a week of gentle rain.",
    "Please remember the crème brûlée before you leave the café.",
]


@pytest.fixture(scope="session")
def accent_dataset(piper_sentences, tmp_path_factory) -> Path:
    """A two-speaker dataset (anna, ben) whose transcripts hold accented words (the Piper audio of nearby
    sentences: the text/audio mismatch does not matter to vocabulary and speaker handling)."""
    import shutil

    from voicetune.data.manifest import write_metadata_csv

    root = tmp_path_factory.mktemp("accent_dataset")
    (root / "wavs").mkdir()
    rows = []
    for i, (path, _) in enumerate(piper_sentences):
        shutil.copyfile(path, root / "wavs" / path.name)
        rows.append((f"wavs/{path.name}", ACCENTED[i] if i < 4 else "A plain sentence.", "anna" if i % 2 else "ben"))
    write_metadata_csv(root / "metadata_train.csv", rows[:4])
    write_metadata_csv(root / "metadata_eval.csv", rows[4:])
    return root


# Options shared by the runs that are compared step by step (dropout and conditioning crops stay on: they
# consume random numbers that a resumed run must restore).
TRAIN = {"batch_size": 2, "seed": 5, "lr": 1e-3, "eval_every": 0, "eval_every_epochs": 0}


@pytest.fixture
def train_options() -> dict:
    """Options of the reference run (tests compare their runs with it step by step)."""
    return dict(TRAIN)


class _Lines(__import__("logging").Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record) -> None:  # noqa: ANN001
        self.lines.append(record.getMessage())


@pytest.fixture(scope="session")
def reference_run(tiny_dataset, tiny_base, tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 3 and 6, a memory line every 2 steps) and its log lines."""
    import logging

    from voicetune.training.loop import train

    handler, log = _Lines(), logging.getLogger("voicetune.training")
    old = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        result = train(tiny_dataset, tiny_base, tmp_path_factory.mktemp("reference") / "run", max_steps=6,
                       save_every=3, mem_every=2, **TRAIN)
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    return result, handler.lines
