"""The run folder written by `voicetune train` and read by evaluate/export.

Layout::

    RUN_DIR/
      run.json                 backend, base folder, dataset folder (absolute), versions, seed, and
                               "training": clips kept/dropped (by reason), padding, global batch, what trains
      vocab.json               the extended vocabulary (only with --extend-vocab)
      config.yaml              the TrainConfig
      metrics.jsonl            one JSON object per logged step (and per evaluation)
      train.log                everything `voicetune train` logged: every step, warnings, tracebacks
      tensorboard/             event files
      features/                cached model-ready features (by content hash)
      checkpoints/step_N/      trainable.pt (backend.save, :data:`TRAINABLE`), state.pt (optimizer, scheduler,
                               RNG, data position: tensors and plain values only), meta.json (step, epoch,
                               losses)
      .voicetune-output.json   the run folder's marker (utils/outputs.py): what it holds, the sources of the
                               command that started it
      checkpoints/latest       text file naming the newest complete checkpoint ("step_N")
      checkpoints/best         text file naming the checkpoint with the best evaluation (never pruned)
      best.json                why it is best: step, composite score, metrics vs the baseline
      eval/<name>/             metrics.json and rendered wavs (baseline, step_N: see evaluate/suite.py)
      report.html              loss and metric curves, per-evaluation table, audio, warnings
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voicetune.utils.io import atomic_write_json, atomic_write_text
from voicetune.utils.outputs import MARKER, read_marker

# What a run folder holds (voicetune writes all of it; see the module doc).
RUN_ENTRIES = (
    "run.json",
    "vocab.json",
    "config.yaml",
    "metrics.jsonl",
    "train.log",
    "tensorboard",
    "features",
    "checkpoints",
    "best.json",
    "eval",
    "report.html",
)
_CHECKPOINT_NAME = re.compile(r"step_[0-9]{1,12}")

# in a checkpoint folder: the backend's trainable state (Backend.save / load_trained)
TRAINABLE = "trainable.pt"


class RunError(ValueError):
    """A run folder is missing or incomplete; the message names what."""


@dataclass
class RunInfo:
    backend: str
    base: str
    dataset: str
    seed: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    # How the run trains (voicetune.training): clips kept/dropped and why, padding, batch geometry, what
    # trains.
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
    found = [p for p in d.glob("step_*") if _CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()
             and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def _marked(run_dir: Path, name: str) -> Path | None:
    """The checkpoint a marker file (``latest``/``best``) names; it must be ``step_N`` of this run's
    checkpoints/."""
    marker = checkpoints_dir(run_dir) / name
    if not marker.is_file():
        return None
    try:
        text = marker.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{marker}: unreadable ({e}); delete it (voicetune writes it again)") from e
    if not _CHECKPOINT_NAME.fullmatch(text):
        raise RunError(f"{marker}:1: {text[:80]!r} is not a checkpoint name of this run (step_N); refused. "
                       "Delete the file (voicetune writes it again) or put a checkpoint name in it")
    p = checkpoints_dir(run_dir) / text
    return p if (p / "meta.json").is_file() else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    p = _marked(run_dir, "latest")
    if p is not None:
        return p
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def set_latest(run_dir: Path, ckpt: Path) -> None:
    atomic_write_text(checkpoints_dir(run_dir) / "latest", ckpt.name + "\n")


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint named by the ``best`` marker, when there is one and it is complete."""
    return _marked(run_dir, "best")


def set_best(run_dir: Path, ckpt: Path) -> None:
    """Mark ``ckpt`` (a complete checkpoint folder of this run) as the best one; pruning keeps it."""
    atomic_write_text(checkpoints_dir(run_dir) / "best", Path(ckpt).name + "\n")


def is_run_folder(run_dir: Path) -> bool:
    """A folder that `voicetune train` wrote (its marker, or the run.json/config.yaml of an older version)."""
    run_dir = Path(run_dir)
    older = (run_dir / "run.json").is_file() or (run_dir / "config.yaml").is_file()
    return "run" in read_marker(run_dir) or older


def is_marked_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` carries the marker of a run folder that `voicetune train` owns
    (:func:`mark_run`)."""
    return "run" in read_marker(Path(run_dir))


def mark_run(run_dir: Path, sources: dict[str, str]) -> None:
    """Write the run folder's marker (what it may hold, and the sources of the command that started it)."""
    from voicetune import __version__

    atomic_write_json(Path(run_dir) / MARKER, {"written_by": f"voicetune {__version__}",
                                               "outputs": {"run": {"entries": list(RUN_ENTRIES), **sources}}})


def run_sources(run_dir: Path) -> dict[str, Any]:
    """The sources recorded by :func:`mark_run` ({} for a folder without a marker)."""
    entry = read_marker(Path(run_dir)).get("run")
    return entry if isinstance(entry, dict) else {}


def read_meta(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / "meta.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: unreadable ({e}); this checkpoint is damaged: use another one "
                       "(--checkpoint)") from e
    if isinstance(data, dict):
        return data
    raise RunError(f"{path}: expected a JSON object; this checkpoint is damaged: use another one "
                   "(--checkpoint)")


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
