"""Progress of `voicetune prepare` / `dataset import` in seconds of input audio, so the ETA is honest.

Files are analysed (decoded + VAD) ahead of transcription, in a background thread, and their clips are
transcribed and checked in batches; most of the time goes to the batches. So the count advances only as clips
are finished: each clip carries the share of its file's duration that its length is of the file's speech,
half of it when the clip is transcribed and half when it is checked and written (their measured costs on a
CPU are about equal: 6.1 s of ASR, 4.7 + 4.8 s of speaker embeddings and QA for the demo's 3 minutes). A file
without speech, or one that is skipped, counts whole at once. Totals come from the files' headers
(:func:`voicetune.audio.stream.header_duration`), before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Progress = Callable[[float, float, str], None]

ASR_SHARE = 0.5  # of a clip's share, credited when it is transcribed; the rest when it is checked and written


class AudioProgress:
    """Calls ``progress(done_seconds, total_seconds, "STAGE: what")`` as clips of ``sources`` are finished."""

    def __init__(self, progress: Progress | None, sources: Sequence[Any], stage: str):
        from voicetune.audio.stream import header_duration

        self.progress, self.stage = progress, stage
        self.durations = {sf.rel: header_duration(sf.path) for sf in sources} if progress else {}
        self.total = sum(self.durations.values())
        self.speech: dict[str, float] = {}  # file -> seconds of its clips to transcribe
        self.credited: dict[str, float] = {}  # file -> seconds of input counted as done
        self._transcribed: set[int] = set()  # id() of the jobs whose ASR share is counted

    @property
    def done(self) -> float:
        return min(self.total, sum(self.credited.values()))

    def report(self, what: str) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total, f"{self.stage}: {what}")

    def planned(self, rel: str, clip_seconds: list[float]) -> None:
        """A file's clips to transcribe are known; a file without any counts as done now."""
        self.speech[rel] = sum(clip_seconds)
        if not clip_seconds:
            self.file_done(rel)

    def file_done(self, rel: str) -> None:
        """Count the whole file (skipped, without speech, or finished)."""
        self.credited[rel] = self.durations.get(rel, 0.0)

    def _credit(self, job: Any, fraction: float) -> None:
        rel = job.file.rel
        speech = self.speech.get(rel) or 0.0
        if speech > 0:
            share = self.durations.get(rel, 0.0) * job.span.duration / speech
            credited = self.credited.get(rel, 0.0) + share * fraction
            self.credited[rel] = min(self.durations.get(rel, 0.0), credited)

    def transcribed(self, jobs: Sequence[Any]) -> None:
        """ASR results exist for ``jobs`` (new or from the cache)."""
        if self.progress is None:
            return
        new = [j for j in jobs if id(j) not in self._transcribed]
        for j in new:
            self._transcribed.add(id(j))
            self._credit(j, ASR_SHARE)
        if new:
            self.report(f"transcribing {new[-1].file.rel}")

    def checked(self, jobs: Sequence[Any]) -> None:
        """``jobs`` are checked and written: the rest of their share."""
        if self.progress is None:
            return
        for j in jobs:
            self._credit(j, 1.0 - ASR_SHARE if id(j) in self._transcribed else 1.0)
            self._transcribed.discard(id(j))
        if jobs:
            self.report(f"checked {jobs[-1].file.rel}")
