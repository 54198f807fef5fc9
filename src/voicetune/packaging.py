"""`voicetune export`: a self-contained model package.

    PACKAGE_DIR/
      <native layout>     the backend's (Backend.export; for XTTS-v2: config.json, model.pth, vocab.json,
      dvae.pth,
                          mel_stats.pth, speakers_xtts.pth)
      reference/          the speaker's clips, longest first (01_7.9s.wav, 02_7.1s.wav, ...)
      voicetune.json      backend, base, dataset, steps, metrics against the base, config, versions
      README.md           model card

The package is built in a temporary folder and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from voicetune.backends.registry import backend_class, detect_backend, get_backend
from voicetune.data.manifest import Dataset
from voicetune.run import RunInfo, read_meta, resolve_checkpoint, software_versions, trainable_path
from voicetune.utils.device import pick_device
from voicetune.utils.io import atomic_dir, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

PACKAGE_MANIFEST = "voicetune.json"


def _copy_references(dataset: Dataset, out: Path, count: int) -> list[str]:
    """Copy the longest train clips, longest first, named by rank and duration."""
    import soundfile as sf

    durations = []
    for clip in dataset.train:
        info = sf.info(str(clip.audio_path))
        durations.append((info.frames / info.samplerate, clip))
    durations.sort(key=lambda t: -t[0])
    (out / "reference").mkdir(parents=True, exist_ok=True)
    names = []
    for rank, (dur, clip) in enumerate(durations[:count], 1):
        name = f"reference/{rank:02d}_{dur:.1f}s.wav"
        shutil.copyfile(clip.audio_path, out / name)
        names.append(name)
    return names


def _latest_eval_metrics(run_dir: Path, ckpt: Path) -> dict[str, Any] | None:
    path = run_dir / "eval" / ckpt.name / "metrics.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            logger.warning("%s is unreadable; the package will carry no metrics", path)
    return None


def _model_card(manifest: dict[str, Any], out: Path, usage: list[str]) -> str:
    """README.md: prose with rounded numbers (voicetune.modelcard); ``usage``: the backend's lines on loading
    it elsewhere (Backend.usage)."""
    from voicetune.modelcard import model_card

    return model_card(manifest, out.name, usage)


def export(run_dir: Path | str, out: Path | str, checkpoint: str = "latest", references: int = 5) -> Path:
    """Write the package for ``checkpoint`` of ``run_dir`` to ``out`` (replaced atomically if it exists)."""
    run_dir, out = Path(run_dir), Path(out)
    info = RunInfo.load(run_dir)
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    dataset = Dataset.load(info.dataset)
    backend = get_backend(info.backend)
    backend.load_base(Path(info.base), pick_device("cpu"))
    backend.load_trained(trainable_path(ckpt))
    meta = read_meta(ckpt)
    untrained = type(backend).is_untrained(Path(info.base))
    with atomic_dir(out) as tmp:
        backend.export(tmp)
        refs = _copy_references(dataset, tmp, references)
        manifest = {
            "format": 1, "backend": info.backend, "base": info.base, "dataset": info.dataset,
            "checkpoint": ckpt.name, "steps": meta.get("step"), "language": dataset.language,
            "speakers": dataset.speakers, "train_clips": len(dataset.train), "references": refs,
            "untrained_base": untrained, "metrics": _latest_eval_metrics(run_dir, ckpt),
            "train_config": yaml.safe_load((run_dir / "config.yaml").read_text()),
            "versions": software_versions(),
        }
        atomic_write_json(tmp / PACKAGE_MANIFEST, manifest)
        atomic_write_text(tmp / "README.md", _model_card(manifest, out, type(backend).usage()))
    logger.info("exported %s (%s) to %s", run_dir, ckpt.name, out)
    return out


def read_package(package_dir: Path) -> dict[str, Any]:
    """A package's voicetune.json; for a plain native model folder, its backend (detected) and no references."""
    path = Path(package_dir) / PACKAGE_MANIFEST
    if not path.is_file():
        return {"backend": detect_backend(Path(package_dir)), "references": [], "language": "en"}
    manifest = json.loads(path.read_text())
    backend_class(manifest.get("backend", ""))  # a ConfigError naming the registered backends if unknown
    return manifest
