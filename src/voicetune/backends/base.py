"""The one interface every model backend implements, and the registry by name.

The training loop, the evaluation harness, checkpointing and export packaging know only this
interface. A backend owns its model, its cached features and its native on-disk layout.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from voicetune.config import TrainConfig
from voicetune.data.manifest import Clip, Dataset

Progress = Callable[[int, int, str], None]
"""Progress callback: (done, total, what). The CLI shows a bar, the UI a progress widget."""


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


class FeatureStore(torch.utils.data.Dataset):
    """Cached, model-ready features of a dataset split (computed once by ``build_features``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]: ...

    def lengths(self) -> list[int]:
        """Per-item length (e.g. audio tokens) used for length-bucketed batching."""
        ...


@runtime_checkable
class Backend(Protocol):
    name: str
    device: torch.device

    def load_base(self, path: Path, device: torch.device) -> None:
        """Validate the base folder (naming any missing/unreadable file) and load its weights."""

    def build_features(self, clips: Sequence[Clip], cache: Path, progress: Progress | None = None) -> FeatureStore:
        """Compute text tokens, audio codes and conditioning inputs ONCE, cached by content hash."""

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad a list of FeatureStore items into a batch."""

    def trainable(self) -> torch.nn.Module:
        """The module the optimizer updates (its state is what checkpoints hold)."""

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        """Optimizer parameter groups (e.g. decay / no-decay)."""

    def loss(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """{"loss": weighted total, plus named unweighted parts, e.g. "text_ce", "mel_ce"}."""

    def set_train(self, mode: bool) -> None:
        """Switch the trainable parts to training (True) or inference (False) mode."""

    def synthesize(self, text: str, refs: Sequence[Path], language: str, seed: int) -> Waveform:
        """Render ``text`` in the voice of the reference clips, deterministically for a given seed."""

    def save(self, path: Path) -> None:
        """Write the trainable state only (atomically)."""

    def load_trained(self, path: Path) -> None:
        """Load a state written by :meth:`save` onto the loaded base."""

    def export(self, out: Path) -> None:
        """Write the backend's native layout (loadable by the upstream library unchanged)."""


_REGISTRY: dict[str, str] = {
    "xtts": "voicetune.backends.xtts.backend:XttsBackend",
}


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate a backend by name (imports it lazily: no heavy imports at voicetune import time)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {available_backends()} with --backend")
    module_name, cls_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**kwargs)


def dataset_clips(dataset: Dataset, split: str) -> list[Clip]:
    return list(dataset.train if split == "train" else dataset.eval)
