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
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from voicetune.backends.registry import backend_class, detect_backend, get_backend
from voicetune.data.manifest import Clip, Dataset
from voicetune.run import (
    RunInfo,
    best_checkpoint,
    latest_checkpoint,
    read_meta,
    resolve_checkpoint,
    software_versions,
    trainable_path,
)
from voicetune.utils.device import pick_device
from voicetune.utils.disk import disk_full_guard, ensure_free_space, tree_bytes
from voicetune.utils.io import atomic_write_json, atomic_write_text
from voicetune.utils.outputs import check_output, output_dir

logger = logging.getLogger(__name__)

PACKAGE_MANIFEST = "voicetune.json"


def resolve_export_checkpoint(run_dir: Path, checkpoint: str = "auto") -> Path:
    """The checkpoint folder of ``checkpoint``: 'auto' (the best evaluation when the run marked one, else the
    latest), 'latest', 'best', or a checkpoint folder name like step_100 (a name, not a path)."""
    run_dir = Path(run_dir)
    if checkpoint == "auto":
        return best_checkpoint(run_dir) or resolve_checkpoint(run_dir, "latest")
    if checkpoint not in ("latest", "best") and not re.fullmatch(r"step_[0-9]+", checkpoint):
        raise ValueError(f"--checkpoint {checkpoint!r}: give 'auto', 'latest', 'best' or a checkpoint folder "
                         f"name of {run_dir}/checkpoints like step_100")
    return resolve_checkpoint(run_dir, checkpoint)


def _why(run_dir: Path, ckpt: Path) -> str:
    best = best_checkpoint(run_dir)
    latest = latest_checkpoint(run_dir)
    if best is not None and ckpt.name == best.name:
        also = " (also the latest)" if latest is not None and latest.name == ckpt.name else ""
        return "the best evaluation of the run" + also
    if latest is not None and ckpt.name == latest.name:
        return "the latest checkpoint" + ("" if best else " (the run marked no best evaluation)")
    return "chosen with --checkpoint"


def longest_train_clips(dataset: Dataset, count: int) -> list[tuple[float, Clip]]:
    """(seconds, clip) of the ``count`` longest train clips, longest first: the reference clips of a model."""
    import soundfile as sf

    durations = []
    for clip in dataset.train:
        info = sf.info(str(clip.audio_path))
        durations.append((info.frames / info.samplerate, clip))
    durations.sort(key=lambda t: -t[0])
    return durations[:count]


def _copy_references(dataset: Dataset, out: Path, count: int) -> list[str]:
    """Copy the longest train clips, longest first, named by rank and duration."""
    (out / "reference").mkdir(parents=True, exist_ok=True)
    names = []
    for rank, (dur, clip) in enumerate(longest_train_clips(dataset, count), 1):
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


def export(run_dir: Path | str, out: Path | str, checkpoint: str = "auto", references: int = 5,
           force: bool = False) -> Path:
    """Write the package for ``checkpoint`` of ``run_dir`` to ``out`` and return ``out``.

    ``checkpoint`` 'auto' packages the best evaluation when the run marked one, else the latest checkpoint;
    ``voicetune.json`` and the model card say which and why. ``out`` must be new, empty or an earlier package:
    another non-empty folder is refused unless ``force`` (then the package is added next to its files, which
    are kept); the run, its base model and its dataset are never written to. Built beside ``out``, moved in
    when complete.
    """
    run_dir, out = Path(run_dir), Path(out)
    info = RunInfo.load(run_dir)
    inputs = [run_dir, Path(info.base), Path(info.dataset)]
    check_output(out, "package", force=force, inputs=inputs, signature=PACKAGE_MANIFEST)
    ckpt = resolve_export_checkpoint(run_dir, checkpoint)
    dataset = Dataset.load(info.dataset)
    need = tree_bytes(Path(info.base), ckpt / "trainable.pt") + sum(
        c.audio_path.stat().st_size for c in dataset.train[: 4 * references]) + (16 << 20)
    ensure_free_space(out.parent if not out.exists() else out, need, f"the model package {out}")
    backend = get_backend(info.backend)
    backend.load_base(Path(info.base), pick_device("cpu"))
    backend.load_trained(trainable_path(ckpt))
    meta = read_meta(ckpt)
    untrained = type(backend).is_untrained(Path(info.base))
    publish = output_dir(out, "package", force=force, inputs=inputs, signature=PACKAGE_MANIFEST,
                         complete=(PACKAGE_MANIFEST,))
    with disk_full_guard(out.parent, need, f"the model package {out}"), publish as tmp:
        backend.export(tmp)
        refs = _copy_references(dataset, tmp, references)
        manifest = {
            "format": 1, "backend": info.backend, "base": info.base, "dataset": info.dataset,
            "checkpoint": ckpt.name, "checkpoint_choice": _why(run_dir, ckpt), "steps": meta.get("step"),
            "language": dataset.language, "speakers": dataset.speakers, "train_clips": len(dataset.train),
            "references": refs, "untrained_base": untrained, "metrics": _latest_eval_metrics(run_dir, ckpt),
            "train_config": yaml.safe_load((run_dir / "config.yaml").read_text()),
            "versions": software_versions(),
        }
        atomic_write_text(tmp / "README.md", _model_card(manifest, out, type(backend).usage()))
        atomic_write_json(tmp / PACKAGE_MANIFEST, manifest)  # last: its presence marks a complete package
    logger.info("exported %s (%s: %s) to %s", run_dir, ckpt.name, manifest["checkpoint_choice"], out)
    return out


def read_package(package_dir: Path) -> dict[str, Any]:
    """A package's voicetune.json; for a plain native model folder, its backend (detected) and no references."""
    path = Path(package_dir) / PACKAGE_MANIFEST
    if not path.is_file():
        return {"backend": detect_backend(Path(package_dir)), "references": [], "language": "en"}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); export the run again") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object; export the run again")  # noqa: TRY004
    backend_class(manifest.get("backend", ""))  # a ConfigError naming the registered backends if unknown
    return manifest
