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
        rows.append(
            (f"wavs/{path.name}", ACCENTED[i] if i < 4 else "A plain sentence.", "anna" if i % 2 else "ben")
        )
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
        self.levels: list[int] = []

    def emit(self, record) -> None:
        self.lines.append(record.getMessage())
        self.levels.append(record.levelno)


@pytest.fixture(scope="session")
def reference_run(tiny_dataset, tiny_base, tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 3 and 6, a memory line every 2 steps, a console line every
    4) and its log lines (with their levels: INFO reaches the console, DEBUG only the log file)."""
    import logging

    from voicetune.training.loop import train

    handler, log = _Lines(), logging.getLogger("voicetune.training")
    old = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        result = train(tiny_dataset, tiny_base, tmp_path_factory.mktemp("reference") / "run", max_steps=6,
                       save_every=3, mem_every=2, console_every=4, **TRAIN)
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    return result, list(zip(handler.levels, handler.lines, strict=True))


@pytest.fixture
def tone_dataset(tmp_path):
    """A Coqui-format dataset of 6 voiced tones (GPU boxes have no Piper voice; memory does not depend on
    it)."""
    import numpy as np

    from voicetune.audio.io import write_wav
    from voicetune.data.manifest import write_metadata_csv

    (tmp_path / "data" / "wavs").mkdir(parents=True)
    rows = [(f"wavs/t{i}.wav", text, "tone") for i, text in enumerate(
        ["Good morning to you all.", "The rain has stopped at last.", "Please pass me the salt.",
         "We met at the station.", "It is a lovely day.", "Thank you for coming."])]
    for i, (wav, _, _) in enumerate(rows):
        t = np.arange(int(22050 * (2.0 + 0.7 * i))) / 22050
        voice = sum(np.sin(2 * np.pi * (100.0 + 15 * i) * k * t) / k for k in range(1, 6))
        write_wav(
            tmp_path / "data" / wav,
            (0.2 * voice * (0.6 + 0.4 * np.sin(6 * np.pi * t))).astype(np.float32),
            22050,
        )
    write_metadata_csv(tmp_path / "data" / "metadata_train.csv", rows[:4])
    write_metadata_csv(tmp_path / "data" / "metadata_eval.csv", rows[4:])
    return tmp_path / "data"


@pytest.fixture
def xtts_for_training(tmp_path):
    """A factory ``(base, dataset, cfg, device) -> (backend, store)``: the XTTS backend loaded and configured
    for ``cfg``, the train split's features built, in training mode (what the loop does before StepEngine)."""

    def make(base: Path, dataset: Path, cfg, device):
        from voicetune.backends.base import get_backend
        from voicetune.data.manifest import Dataset
        from voicetune.training import graphs

        backend = get_backend("xtts")
        backend.load_base(base, device)
        backend.configure_model(cfg)
        store = backend.build_features(Dataset.load(dataset).train, tmp_path / "features")
        backend.configure_training(cfg, cuda_graphs=graphs.planned(backend, cfg, device))
        backend.set_train(True)
        return backend, store

    return make
