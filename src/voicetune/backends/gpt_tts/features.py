"""The per-clip feature cache of the GPT-TTS backends (XTTS and Tortoise): computing, reusing and reading it.

Both backends compute the same kind of thing once per clip (text tokens, DVAE codes, a mel for conditioning)
and store it as ``<key>.pt`` under the run's feature folder; they differ in the tokenizer, the mels and how a
conditioning crop is drawn. What they share is here: :func:`compute_features` (the loop over clips with its
checks, drops with reasons and progress), :func:`load_cached` (a cache file is read with
``weights_only=True``; one that is unreadable, not voicetune's or of another version is recomputed, never
trusted) and :class:`CachedFeatureStore` (epochs, read counts, the in-memory copy of loaded items, durations
and drop counts). A backend supplies a :class:`ClipExtractor` and its store's ``__getitem__``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from voicetune.backends.base import FeatureStore, Progress
from voicetune.backends.gpt_tts.files import drop_kind
from voicetune.data.manifest import Clip
from voicetune.utils.io import atomic_torch_save, file_sha256

logger = logging.getLogger(__name__)


class ClipExtractor(Protocol):
    """What a backend's feature extractor provides to :func:`compute_features`."""

    @property
    def sample_rate(self) -> int:
        """Of the waveform the features are computed from."""
        ...

    @property
    def max_wav_length(self) -> int:
        """The longest usable clip, in samples."""
        ...

    def tokens_of(self, clip: Clip) -> torch.Tensor:
        """The clip's text tokens; ValueError with the reason when the text cannot be tokenized."""
        ...

    def text_problem(self, tokens: torch.Tensor) -> str | None: ...

    def wav_problem(self, n_samples: int) -> str | None: ...

    def cache_key(self, audio_hash: str, clip: Clip) -> str:
        """The cache file's name: everything the features depend on, hashed."""
        ...

    def load_wav(self, path: Path) -> torch.Tensor:
        """[1, T] waveform at ``sample_rate``."""
        ...

    def audio_features(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cached tensors of a [1, T] waveform; ``audio_codes`` among them."""
        ...

    def record_extra(self, clip: Clip) -> dict[str, Any]:
        """Fields stored beside the features for a reader of the cache (e.g. the language)."""
        ...


def load_cached(path: Path, version: int) -> dict[str, Any] | None:
    """A cache file's record, or None when it is absent, unreadable, not voicetune's (anything
    ``weights_only`` refuses) or of another ``version``: the caller then recomputes it."""
    if not path.is_file():
        return None
    try:
        item = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        logger.warning("feature cache file %s is unreadable or not voicetune's (%s); recomputing it", path,
                       str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__)
        return None
    if not isinstance(item, dict) or item.get("version") != version:
        return None
    return item


def clip_features(
    clip: Clip, cache: Path, extractor: ClipExtractor, version: int
) -> tuple[Path | None, int, str]:
    """(cache file, number of audio codes, "computed" | "reused") or (None, 0, why the clip is unusable)."""
    from voicetune.audio.io import AudioDecodeError, audio_duration

    path, rate = Path(clip.audio_path), extractor.sample_rate
    try:
        tokens = extractor.tokens_of(clip)
    except ValueError as e:
        return None, 0, str(e)
    problem = extractor.text_problem(tokens)
    if problem:
        return None, 0, problem
    try:
        approx = int(audio_duration(path) * rate)
        if approx > extractor.max_wav_length + rate // 100:  # from the header: skip without decoding
            return None, 0, str(extractor.wav_problem(approx))
        target = cache / f"{extractor.cache_key(file_sha256(path), clip)}.pt"
        item = load_cached(target, version)
        if item is not None:
            problem = extractor.wav_problem(int(item["wav_length"]))
            return (None, 0, problem) if problem else (target, int(item["audio_codes"].numel()), "reused")
        wav = extractor.load_wav(path)
    except (OSError, AudioDecodeError) as e:
        return None, 0, f"cannot read the audio ({e})"
    problem = extractor.wav_problem(wav.shape[-1])
    if problem:
        return None, 0, problem
    feats = extractor.audio_features(wav)
    record = {"text_tokens": tokens, "wav_length": int(wav.shape[-1]), **feats, "audio_path": str(path),
              "text": clip.text, **extractor.record_extra(clip), "version": version}
    atomic_torch_save(record, target)
    return target, int(feats["audio_codes"].numel()), "computed"


@dataclass
class Computed:
    """What :func:`compute_features` found: the usable clips' cache files, code counts and clips, the
    dropped ones with their reasons, and how many were computed or reused."""

    files: list[Path] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    clips: list[Clip] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (audio path, reason)
    computed: int = 0
    reused: int = 0


def compute_features(clips: Sequence[Clip], cache: Path, extractor: ClipExtractor, version: int, label: str,
                     progress: Progress | None = None) -> Computed:
    """Compute (or reuse) the features of every clip; an unusable clip is skipped with a warning naming it
    and the reason. ``label``: what the progress bar and the log call these features."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    out, total = Computed(), len(clips)
    for n, clip in enumerate(clips):
        if progress:
            progress(n, total, label)
        target, n_codes, status = clip_features(clip, cache, extractor, version)
        if target is None:
            logger.warning("skipping clip %s: %s", clip.audio_path, status)
            out.dropped.append((str(clip.audio_path), status))
            continue
        out.files.append(target)
        out.lengths.append(n_codes)
        out.clips.append(clip)
        out.computed += status == "computed"
        out.reused += status == "reused"
    if progress:
        progress(total, total, label)
    if out.dropped:
        logger.warning("dropped %d of %d clips (see the warnings above)", len(out.dropped), total)
    logger.info("%s: %d computed, %d reused from %s", label, out.computed, out.reused, cache)
    return out


class CachedFeatureStore(FeatureStore):
    """The cache files of a split, read on demand and kept in RAM (a clip's features are a fraction of a
    MB, so after the first epoch a step reads no file). Subclasses draw the conditioning in
    ``__getitem__``, seeded by (seed, epoch, item, reads of the item in this epoch): :meth:`set_epoch`
    restarts the read counts and :meth:`forget` lets a redone step draw what the first read drew."""

    def __init__(self, found: Computed, seconds_per_code: float, seed: int = 0):
        self.files, self._lengths = list(found.files), list(found.lengths)
        self.dropped, self.computed, self.reused = list(found.dropped), found.computed, found.reused
        self.seconds_per_code, self.seed, self.epoch, self.random_crop = seconds_per_code, seed, 0, True
        self._reads = [0] * len(self.files)
        self._memory: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.files)

    def lengths(self) -> list[int]:
        """Audio codes per item (for length-bucketed batching)."""
        return list(self._lengths)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the conditioning crops for ``epoch`` (the per-epoch read counts restart at a new epoch)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._reads = [0] * len(self.files)

    def forget(self, indices: list[int]) -> None:
        """The next read of these items draws the crop of a first read in this epoch (the training loop reads
        each clip once per epoch, so its crops depend only on (seed, epoch, clip), also when a step is
        redone)."""
        for i in indices:
            self._reads[i] = 0

    def durations(self) -> list[float]:
        """Seconds of audio per item (from the audio-code counts)."""
        return [n * self.seconds_per_code for n in self._lengths]

    def drop_summary(self) -> dict[str, int]:
        """How many clips were dropped, by kind of reason (too_long_audio, too_long_text,
        unknown_characters...)."""
        out: dict[str, int] = {}
        for _, reason in self.dropped:
            kind = drop_kind(reason)
            out[kind] = out.get(kind, 0) + 1
        return out

    def _load(self, i: int) -> dict[str, torch.Tensor]:
        item = self._memory.get(i)
        if item is None:
            item = self._memory[i] = torch.load(self.files[i], map_location="cpu", weights_only=True)
        return item

    def _read(self, i: int) -> dict[str, torch.Tensor]:
        """Item ``i``'s record, counted as one more read in this epoch (``__getitem__``, each backend's own,
        reads through this and draws its conditioning)."""
        item = self._load(i)
        self._reads[i] += 1
        return item


def collate_codes(items: list[dict[str, torch.Tensor]], stop_audio_token: int) -> dict[str, torch.Tensor]:
    """The text tokens (padded with 0), audio codes (padded with the stop code) and wave lengths of a batch,
    as both coqui-tts GPTs take them; the caller adds its conditioning."""
    b = len(items)
    text_lengths = torch.tensor([it["text_tokens"].numel() for it in items], dtype=torch.long)
    code_lengths = [it["audio_codes"].numel() for it in items]
    text = torch.zeros(b, int(text_lengths.max()), dtype=torch.long)
    codes = torch.full((b, max(code_lengths)), stop_audio_token, dtype=torch.long)
    for i, it in enumerate(items):
        text[i, : text_lengths[i]] = it["text_tokens"]
        codes[i, : code_lengths[i]] = it["audio_codes"]
    return {
        "text_inputs": text,
        "text_lengths": text_lengths,
        "audio_codes": codes,
        "wav_lengths": torch.stack([it["wav_length"] for it in items]),
    }
