"""``voicetune.make_tiny_base``: write an UNTRAINED tiny random base model of a backend (tests, demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicetune.backends.registry import backend_class
from voicetune.utils.outputs import output_dir

MAX_STATS_CLIPS = 32  # clips read for the mel statistics when a dataset is given


def make_tiny_base(backend: str, out: Path | str, dataset: Path | str | None = None, force: bool = False,
                   **kw: Any) -> Path:
    """Write an untrained, tiny, randomly initialised base model of ``backend`` in its native layout.

    It makes noise, not speech: it lets tests and the offline demo run every stage in seconds.
    ``dataset`` (a prepared dataset folder) is a shortcut: its transcripts train the vocabulary and its
    training clips give the audio statistics. Other keyword arguments go to the backend's
    ``Backend.make_tiny_base`` (``corpus_texts``, ``stats_audio``, ``seed``) and take precedence. ``out`` must
    be new, empty or an earlier tiny base (another non-empty folder only with ``force``; its files are kept);
    it is built beside ``out`` and moved in when complete.
    """
    if dataset is not None:
        from voicetune.data.manifest import Dataset

        ds = Dataset.load(dataset)
        kw.setdefault("corpus_texts", [c.text for c in ds.train + ds.eval])
        kw.setdefault("stats_audio", [c.audio_path for c in ds.train[:MAX_STATS_CLIPS]])
    cls = backend_class(backend)
    # A tiny base of an older voicetune has no output marker; the backend knows one by its files.
    with output_dir(out, "tiny-base", force=force, inputs=[dataset] if dataset else [],
                    signature=cls.is_untrained) as tmp:
        cls.make_tiny_base(tmp, **kw)
    return Path(out)
