"""``voicetune.make_tiny_base``: write an UNTRAINED tiny random base model of a backend (tests, demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicetune.backends.base import available_backends


def make_tiny_base(backend: str, out: Path | str, **kw: Any) -> Path:
    """Write an untrained, tiny, randomly initialised base model of ``backend`` in its native layout.

    It makes noise, not speech: it lets tests and the offline demo run every stage in seconds.
    Keyword arguments go to the backend's maker (for xtts: ``corpus_texts``, ``stats_audio``, ``seed``).
    """
    if backend == "xtts":
        from voicetune.backends.xtts.tiny import make_tiny_xtts_base

        return make_tiny_xtts_base(Path(out), **kw)
    raise ValueError(f"no tiny base model for backend {backend!r}; choose one of {available_backends()}")
