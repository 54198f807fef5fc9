"""The run folder written by `voicetune train` and read by evaluate/export.

Layout::

    RUN_DIR/
      run.json                 backend, base folder, dataset folder (absolute), versions, seed, and "training":
                               clips kept/dropped (by reason), padding, global batch, what trains
      vocab.json               the extended vocabulary (only with --extend-vocab)
      config.yaml              the TrainConfig
      metrics.jsonl            one JSON object per logged step (and per evaluation)
      train.log                everything `voicetune train` logged: every step, warnings, tracebacks
      tensorboard/             event files
      features/                cached model-ready features (by content hash)
      checkpoints/step_N/      trainable.pt (backend.save, :data:`TRAINABLE`), state.pt (optimizer,
                               scheduler, RNG, data position), meta.json (step, epoch, losses)
      checkpoints/latest       text file naming the newest complete checkpoint ("step_N")
      checkpoints/best         text file naming the checkpoint with the best evaluation (never pruned)
      best.json                why it is best: step, composite score, metrics vs the baseline
      eval/<name>/             metrics.json and rendered wavs (baseline, step_N: see evaluate/suite.py)
      report.html              loss and metric curves, per-evaluation table, audio, warnings
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voicetune.utils.io import atomic_write_json, atomic_write_text

TRAINABLE = "trainable.pt"  # in a checkpoint folder: the backend's trainable state (Backend.save / load_trained)


class RunError(ValueError):
    """A run folder is missing or incomplete; the message names what."""


@dataclass
class RunInfo:
    backend: str
    base: str
    dataset: str
    seed: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    # How the run trains (voicetune.training): clips kept/dropped and why, padding, batch geometry, what trains.
    training: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / "run.json", asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunInfo:
        path = Path(run_dir) / "run.json"
        if not path.is_file():
            raise RunError(f"{path}: missing; is {run_dir} a folder written by `voicetune train`?")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunError(f"{path}: unreadable ({e})") from e
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def software_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("voicetune", "torch", "torchaudio", "coqui-tts", "transformers", "faster-whisper"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (those with meta.json), oldest step first."""
    d = checkpoints_dir(run_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.glob("step_*") if p.is_dir() and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    marker = checkpoints_dir(run_dir) / "latest"
    if marker.is_file():
        p = checkpoints_dir(run_dir) / marker.read_text().strip()
        if (p / "meta.json").is_file():
            return p
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def set_latest(run_dir: Path, ckpt: Path) -> None:
    atomic_write_text(checkpoints_dir(run_dir) / "latest", ckpt.name + "\n")


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint named by the ``best`` marker, when there is one and it is complete."""
    marker = checkpoints_dir(run_dir) / "best"
    if marker.is_file():
        p = checkpoints_dir(run_dir) / marker.read_text().strip()
        if (p / "meta.json").is_file():
            return p
    return None


def set_best(run_dir: Path, ckpt: Path) -> None:
    """Mark ``ckpt`` (a complete checkpoint folder of this run) as the best one; pruning keeps it."""
    atomic_write_text(checkpoints_dir(run_dir) / "best", Path(ckpt).name + "\n")


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "meta.json").read_text())


def trainable_path(ckpt: Path) -> Path:
    """The backend state of a checkpoint folder (``ckpt/trainable.pt``)."""
    return Path(ckpt) / TRAINABLE


def resolve_checkpoint(run_dir: Path, checkpoint: str = "latest") -> Path:
    """A complete checkpoint folder of ``run_dir``: 'latest', 'best' (when evaluation marked one), a folder
    name like 'step_100', or a path to a checkpoint folder. Raises :class:`RunError` naming what is
    missing."""
    run_dir = Path(run_dir)
    if checkpoint == "latest":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise RunError(f"{checkpoints_dir(run_dir)}: no complete checkpoint; has training finished a "
                           f"step?")
        return ckpt
    if checkpoint == "best":  # marked by the evaluation (in-loop or `voicetune evaluate`)
        ckpt = best_checkpoint(run_dir)
        if ckpt is None:
            raise RunError(f"{checkpoints_dir(run_dir) / 'best'}: this run marked no best checkpoint; "
                           "use --checkpoint latest")
        return ckpt
    ckpt = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoints_dir(run_dir) / checkpoint
    if not (ckpt / "meta.json").is_file():
        raise RunError(f"{ckpt}: not a complete checkpoint (no meta.json)")
    if not trainable_path(ckpt).is_file():
        raise RunError(f"{trainable_path(ckpt)}: missing; the checkpoint is incomplete")
    return ckpt
