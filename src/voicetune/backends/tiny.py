"""``voicetune.make_tiny_base``: write an UNTRAINED tiny random base model of a backend (tests, demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicetune.backends.base import available_backends

MAX_STATS_CLIPS = 32  # clips read for the mel statistics when a dataset is given


def make_tiny_base(backend: str, out: Path | str, dataset: Path | str | None = None, **kw: Any) -> Path:
    """Write an untrained, tiny, randomly initialised base model of ``backend`` in its native layout.

    It makes noise, not speech: it lets tests and the offline demo run every stage in seconds.
    ``dataset`` (a prepared dataset folder) is a shortcut: its transcripts train the vocabulary and its
    training clips give the mel statistics. Other keyword arguments go to the backend's maker
    (for xtts: ``corpus_texts``, ``stats_audio``, ``seed``) and take precedence.
    """
    if dataset is not None:
        from voicetune.data.manifest import Dataset

        ds = Dataset.load(dataset)
        kw.setdefault("corpus_texts", [c.text for c in ds.train + ds.eval])
        kw.setdefault("stats_audio", [c.audio_path for c in ds.train[:MAX_STATS_CLIPS]])
    if backend == "xtts":
        from voicetune.backends.xtts.tiny import make_tiny_xtts_base

        return make_tiny_xtts_base(Path(out), **kw)
    raise ValueError(f"no tiny base model for backend {backend!r}; choose one of {available_backends()}")
