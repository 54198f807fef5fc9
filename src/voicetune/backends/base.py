"""The whole contract between voicetune and a model backend.

The training loop, the step engine, autotune, the evaluation, checkpointing, export packaging, ``doctor`` and
the CLI know only :class:`Backend` and :class:`FeatureStore`; nothing is probed with ``hasattr``. A backend
subclasses :class:`Backend` in ``backends/<name>/``, implements the abstract members, overrides the optional
hooks it needs (each has a documented do-nothing default here), and is registered by name in
:mod:`voicetune.backends.registry`. Adding one needs no edit of ``training/`` or ``evaluation/``.

Life of a backend in a training run (voicetune.training.loop)::

    load_base -> configure_model -> set_length_limits -> build_features -> configure_training -> param_groups
    -> per micro-batch: collate, batch_stats, graph_inputs (CUDA graphs) or loss -> save (checkpoints)
    evaluation: set_train(False) -> synthesize_batch / synthesize -> set_train(True);  export: export
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from voicetune.backends.registry import available_backends, get_backend  # noqa: F401  (re-exported)
from voicetune.config import BackendOptions, TrainConfig
from voicetune.data.manifest import Clip

Progress = Callable[[int, int, str], None]
"""Progress callback: (done, total, what). The CLI shows a bar, the UI a progress widget."""

Batch = dict[str, Any]
"""A collated batch: tensors (and anything else the backend's collate puts in)."""


class BaseModelError(ValueError):
    """A base-model folder is incomplete or unreadable; the message names the file."""


@dataclass
class Waveform:
    audio: np.ndarray  # float32 mono, [-1, 1]
    sample_rate: int
    meta: dict[str, Any] | None = None  # e.g. {"hit_max_length": bool, "num_tokens": int}

    @property
    def duration(self) -> float:
        return len(self.audio) / float(self.sample_rate)


class FeatureStore(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Cached, model-ready features of a dataset split (computed once by ``build_features``)."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def lengths(self) -> list[int]:
        """Per-item length (e.g. audio tokens) used for length-bucketed batching."""

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next items are read for (random crops keyed by (seed, epoch, item)); default:
        none."""

    def forget(self, indices: list[int]) -> None:
        """Drop what is memoised for these items, so a redone step reads them afresh; default: nothing
        kept."""

    def durations(self) -> list[float]:
        """Audio seconds per item (run.json's audio hours); default: unknown (empty)."""
        return []

    def drop_summary(self) -> dict[str, int]:
        """Clips left out of the store, by reason (e.g. {"audio too long": 3}); default: none."""
        return {}


class Backend(abc.ABC):
    """One model family: its base folder, features, loss, synthesis, trainable state and native export."""

    # ------------------------------------------------------------------ class level (no model loaded)
    name: ClassVar[str]
    """Registry name, e.g. "xtts"."""
    options: ClassVar[type[BackendOptions]] = BackendOptions
    """Its options dataclass (fields, docs, checks), held by ``TrainConfig.backend_options``."""
    base_layout: ClassVar[str] = ""
    """One line naming the base folder's native layout, for help texts and errors."""
    loss_parts: ClassVar[dict[str, str]] = {}
    """The unweighted loss parts :meth:`loss` returns besides "loss", name -> short console label."""
    loss_note: ClassVar[str] = ""
    """How to read the loss parts (e.g. why a flat total does not mean nothing is learned), shown beside the
    report's loss panel; default: nothing to add."""
    supports_cuda_graphs: ClassVar[bool] = False
    """Whether :meth:`graph_inputs` can return a batch's tensors, so that CUDA graphs may capture
    :meth:`loss`."""
    synthesis_batch_size: ClassVar[int] = 1
    """How many texts the evaluation passes to :meth:`synthesize_batch` at once (1: one by one)."""
    synthesis_presets: ClassVar[tuple[str, ...]] = ()
    """Named speed/quality presets of synthesis that ``voicetune synthesize --preset`` offers, its default
    first (:meth:`use_synthesis_preset`); empty: one way to synthesize. A new instance renders the way
    evaluations render (every evaluation uses a fresh or the training instance), until a preset is chosen."""

    @classmethod
    @abc.abstractmethod
    def make_tiny_base(cls, out: Path, *, corpus_texts: Sequence[str] = (), stats_audio: Sequence[Path] = (),
                       seed: int = 0) -> Path:
        """Write an UNTRAINED tiny random base in the native layout (tests, demo); return its folder.
        ``corpus_texts``/``stats_audio``: a dataset's transcripts and clips to fit vocabulary and
        statistics."""

    @classmethod
    @abc.abstractmethod
    def validate_base_folder(cls, path: Path) -> dict[str, Path]:
        """The files of a complete base folder by role; :class:`BaseModelError` naming what is missing or
        bad."""

    @classmethod
    def is_native_folder(cls, path: Path) -> bool:
        """Whether ``path`` is a base folder of this backend (synthesis from a plain native folder)."""
        try:
            cls.validate_base_folder(path)
        except (BaseModelError, OSError):
            return False
        return True

    @classmethod
    def is_untrained(cls, path: Path) -> bool:
        """Whether ``path`` is an untrained tiny test base (:meth:`make_tiny_base`); default: no."""
        return False

    @classmethod
    def usage(cls) -> list[str]:
        """Model-card lines on loading an export outside voicetune (the upstream library); default: none."""
        return []

    # ------------------------------------------------------------------ loading and what trains
    device: torch.device

    @abc.abstractmethod
    def load_base(self, path: Path, device: torch.device) -> None:
        """Validate the base folder (naming any missing/unreadable file) and load its weights onto
        ``device``."""

    def configure_model(self, cfg: TrainConfig, run_dir: Path | None = None,
                        texts: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """Shape what trains before features and optimizer (vocabulary for ``texts`` = (transcript, language),
        LoRA, frozen parts, dropout); files it needs go to ``run_dir``. Returns a summary for run.json.
        Default: nothing to shape, {}."""
        return {}

    def set_length_limits(self, max_audio_seconds: float = 0.0, max_text_tokens: int = 0) -> None:
        """Training clips longer than these are dropped by build_features (0: the model's own limits).
        Default: no limits of its own."""

    @abc.abstractmethod
    def build_features(
        self, clips: Sequence[Clip], cache: Path, progress: Progress | None = None
    ) -> FeatureStore:
        """Compute text tokens, audio codes and conditioning inputs ONCE, cached by content hash."""

    @abc.abstractmethod
    def collate(self, items: list[dict[str, torch.Tensor]]) -> Batch:
        """Pad a list of FeatureStore items into a batch (on the CPU)."""

    def configure_training(self, cfg: TrainConfig, cuda_graphs: bool = False) -> None:
        """Apply speed/memory options (kernels, compile, recomputation, parameter dtype) before the optimizer.
        ``cuda_graphs``: the loop will capture micro-batches in CUDA graphs (decided by
        voicetune.training.graphs).
        Default: none."""

    # ------------------------------------------------------------------ training
    @abc.abstractmethod
    def trainable(self) -> torch.nn.Module:
        """The module the optimizer updates (its state is what checkpoints hold)."""

    @abc.abstractmethod
    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the parameters that train (e.g. decay / no-decay, per-part LR)."""

    @abc.abstractmethod
    def loss(self, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """{"loss": weighted total, plus the unweighted parts named in :attr:`loss_parts`}, on the device."""

    def batch_stats(self, batch: Batch) -> dict[str, float]:
        """"audio_seconds" and "tokens" of a collated batch (throughput and MFU); default: unknown, {}."""
        return {}

    def graph_inputs(self, batch: Batch) -> dict[str, torch.Tensor] | None:
        """The tensors of a batch that :meth:`loss` reads, when a CUDA graph may capture it (one graph per
        shape; see :attr:`supports_cuda_graphs`); None: run this batch eagerly. Default: None."""
        return None

    def validation_loss(self, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """Teacher-forced losses of a held-out batch, without gradients; the caller picks the mode
        (:meth:`set_train`). Default: :meth:`loss` under ``torch.no_grad``."""
        with torch.no_grad():
            return self.loss(batch, cfg)

    @abc.abstractmethod
    def set_train(self, mode: bool) -> None:
        """Switch the trainable parts to training (True) or inference (False) mode: ``trainable().training``
        follows ``mode``. The loop calls it before the first step, and after a step's callbacks only when
        ``trainable().training`` says one of them switched to inference mode; a call for the mode already
        set should cost next to nothing."""

    # ------------------------------------------------------------------ synthesis
    @abc.abstractmethod
    def synthesize(self, text: str, refs: Sequence[Path], language: str, seed: int) -> Waveform:
        """Render ``text`` in the voice of the reference clips, deterministically for a given seed."""

    def use_synthesis_preset(self, name: str) -> None:
        """Render later syntheses with preset ``name`` (one of :attr:`synthesis_presets`). Default: the
        backend has no presets, and naming one is a ValueError."""
        raise ValueError(f"the {self.name} backend has no synthesis presets (asked for {name!r})")

    def synthesize_batch(self, texts: Sequence[str], refs: Sequence[Path], language: str,
                         seeds: Sequence[int]) -> list[Waveform | Exception]:
        """Render several texts (one seed each); a failed text gives its exception in its place.
        Default: :meth:`synthesize` one by one. Backends that batch generation override it."""
        out: list[Waveform | Exception] = []
        for text, seed in zip(texts, seeds, strict=True):
            try:
                out.append(self.synthesize(text, refs, language, seed))
            except Exception as e:  # noqa: BLE001 - one failed text is a measured failure, not a crash
                out.append(e)
        return out

    # ------------------------------------------------------------------ state and export
    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Write the trainable state only (atomically)."""

    @abc.abstractmethod
    def load_trained(self, path: Path) -> None:
        """Load a state written by :meth:`save` onto the loaded base."""

    @abc.abstractmethod
    def export(self, out: Path) -> None:
        """Write the backend's native layout (loadable by the upstream library unchanged)."""

