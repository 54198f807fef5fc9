"""`voicetune export`: a self-contained model package.

    PACKAGE_DIR/
      <native layout>     for XTTS-v2: config.json, model.pth, vocab.json, dvae.pth, mel_stats.pth, speakers_xtts.pth
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

from voicetune.backends.base import get_backend
from voicetune.data.manifest import Dataset
from voicetune.run import RunInfo, best_checkpoint, latest_checkpoint, read_meta, software_versions
from voicetune.utils.device import pick_device
from voicetune.utils.io import atomic_dir, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

PACKAGE_MANIFEST = "voicetune.json"


def resolve_checkpoint(run_dir: Path, checkpoint: str = "latest") -> Path:
    run_dir = Path(run_dir)
    if checkpoint == "latest":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"{run_dir}/checkpoints: no complete checkpoint; has training finished a step?")
        return ckpt
    if checkpoint == "best":  # marked by the evaluation harness (in-loop or `voicetune evaluate`)
        ckpt = best_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"{run_dir}/checkpoints/best: no best checkpoint marked; use --checkpoint latest")
        return ckpt
    ckpt = run_dir / "checkpoints" / checkpoint
    if not (ckpt / "meta.json").is_file():
        raise FileNotFoundError(f"{ckpt}: not a complete checkpoint (no meta.json)")
    return ckpt


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


def _model_card(manifest: dict[str, Any]) -> str:
    lines = [
        f"# voicetune model package ({manifest['backend']})", "",
        f"- base model: `{manifest['base']}`",
        f"- dataset: `{manifest['dataset']}` ({manifest['train_clips']} training clips)",
        f"- trained steps: {manifest['steps']}", f"- language: {manifest['language']}", "",
        "Use it with voicetune: `voicetune synthesize THIS_FOLDER --text \"Hello.\" --out hello.wav`",
        "or load it with coqui-tts (`Xtts.load_checkpoint(config, checkpoint_dir=THIS_FOLDER)`) and condition",
        "on the clips in `reference/`.", "",
    ]
    if manifest.get("untrained_base"):
        lines += ["**Warning:** the base was an UNTRAINED tiny test model; this package cannot produce usable speech.", ""]
    metrics = manifest.get("metrics")
    if metrics:
        lines += ["## Evaluation (base vs finetuned)", "", "```", json.dumps(metrics.get("summary", metrics), indent=2)[:4000],
                  "```", ""]
    return "\n".join(lines)


def export(run_dir: Path | str, out: Path | str, checkpoint: str = "latest", references: int = 5) -> Path:
    """Write the package for ``checkpoint`` of ``run_dir`` to ``out`` (replaced atomically if it exists)."""
    run_dir, out = Path(run_dir), Path(out)
    info = RunInfo.load(run_dir)
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    dataset = Dataset.load(info.dataset)
    backend = get_backend(info.backend)
    backend.load_base(Path(info.base), pick_device("cpu"))
    backend.load_trained(ckpt / "trainable.pt")
    meta = read_meta(ckpt)
    base_cfg = Path(info.base) / "config.json"
    untrained = base_cfg.is_file() and "voicetune_note" in base_cfg.read_text()
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
        atomic_write_text(tmp / "README.md", _model_card(manifest))
    logger.info("exported %s (%s) to %s", run_dir, ckpt.name, out)
    return out


def read_package(package_dir: Path) -> dict[str, Any]:
    path = Path(package_dir) / PACKAGE_MANIFEST
    if not path.is_file():
        return {"backend": "xtts", "references": [], "language": "en"}  # a plain native folder
    return json.loads(path.read_text())
