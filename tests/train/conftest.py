"""Fixtures for training tests: a tiny XTTS base and a small dataset folder of real Piper speech."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(piper_sentences, tmp_path_factory) -> Path:
    """A Coqui-format dataset folder (4 train + 2 eval clips) built directly from known sentences."""
    import shutil

    from voicetune.data.manifest import write_metadata_csv

    root = tmp_path_factory.mktemp("tiny_dataset")
    (root / "wavs").mkdir()
    rows = []
    for path, text in piper_sentences:
        shutil.copyfile(path, root / "wavs" / path.name)
        rows.append((f"wavs/{path.name}", text, "piper"))
    write_metadata_csv(root / "metadata_train.csv", rows[:4])
    write_metadata_csv(root / "metadata_eval.csv", rows[4:])
    return root


@pytest.fixture(scope="session")
def tiny_base(tiny_dataset, tmp_path_factory) -> Path:
    from voicetune.backends.tiny import make_tiny_base

    return make_tiny_base("xtts", tmp_path_factory.mktemp("tiny_base") / "base", dataset=tiny_dataset, seed=0)
