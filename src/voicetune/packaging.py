"""`voicetune export`: a self-contained model package.

    PACKAGE_DIR/
      <native layout>     the backend's (Backend.export; for XTTS-v2: config.json, model.pth, vocab.json,
      dvae.pth,
                          mel_stats.pth, speakers_xtts.pth)
      reference/          the speaker's clips, longest first (01_7.9s.wav, 02_7.1s.wav, ...)
      voicetune.json      backend, base, dataset, steps, metrics against the base, config, versions, the
                          export check
      README.md           model card

The package is built in a temporary folder and renamed into place when complete. Before that, the export
check (:func:`check_export`; ``--no-check`` skips it) loads the written package back as a base model and
renders a few sentences with it, with the checkpoint and with the base model (same sentences, same seed):
an export that renders like the base model while the checkpoint does not has lost the finetune (e.g. an
adapter that was not merged), and is refused.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from voicetune.backends.base import Backend
from voicetune.backends.registry import backend_class, detect_backend, get_backend
from voicetune.data.manifest import Clip, Dataset
from voicetune.evaluation import change
from voicetune.evaluation.harness import json_safe, render
from voicetune.evaluation.probes import probe_sentences
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
CHECK_SENTENCES = 2  # probe sentences the export check renders with each of the three models
CHECK_SEED = 0


class ExportCheckError(RuntimeError):
    """The written export does not render what its checkpoint renders (it lost the finetune)."""


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


def _renders(backend: Backend, texts: list[str], refs: list[Path], language: str) -> list[change.Clip]:
    out = render(backend, texts, refs, language, CHECK_SEED, what="export check")
    return [(r.audio, r.sample_rate) if r.audio is not None else None for r in out]


def _clearly_moved(c: change.Change) -> bool:
    """The checkpoint's renders are well away from the base model's (twice a no-effect limit), so an export
    that renders like the base model lost something, not a margin of rounding."""
    limits = (2 * change.SPECTRAL_DISTANCE_MAX, 2 * change.SPEAKER_DISTANCE_MAX)
    return c.spectral_distance > limits[0] or c.speaker_distance > limits[1]  # NaN: not moved


def check_export(trained: Backend, package: Path, base: Path, refs: list[Path], language: str,
                 checkpoint: str) -> dict[str, Any]:
    """Load ``package`` back and compare its renders with the base model's and the ``trained`` backend's
    (:mod:`voicetune.evaluation.change`); raise :class:`ExportCheckError` when the export renders like the
    base model although the checkpoint does not. Returns what voicetune.json records ("export_check")."""
    texts = sorted(probe_sentences(language, 4), key=len)[:CHECK_SENTENCES]  # the shortest: cheap renders
    tuned = _renders(trained, texts, refs, language)
    renders = {}
    for what, folder in (("export", package), ("base", base)):  # one model in memory at a time
        backend = get_backend(trained.name)
        backend.load_base(folder, trained.device)
        renders[what] = _renders(backend, texts, refs, language)
        del backend
    ckpt = change.compare(renders["base"], tuned, "the base model", checkpoint, texts)
    exported = change.compare(renders["base"], renders["export"], "the base model", "the export", texts)
    if ckpt is None or exported is None:
        logger.warning("export check: the sentences could not be rendered by all three models; not checked")
        return {"checked": False, "why": "renders failed"}
    doc = {"checked": True, "sentences": len(texts), "seed": CHECK_SEED,
           "checkpoint_vs_base": json_safe(ckpt.as_dict()),
           "export_vs_base": json_safe(exported.as_dict())}
    if ckpt.indistinguishable:
        logger.warning("export check: %s itself renders like the base model, so the check cannot tell "
                       "whether the export kept the finetune. %s", checkpoint, ckpt.message)
        return {**doc, "passed": None}
    if exported.indistinguishable and not _clearly_moved(ckpt):
        logger.warning("export check: the export renders like the base model, and %s differs from it only "
                       "marginally (spectral distance %.2f dB): inconclusive", checkpoint,
                       ckpt.spectral_distance)
        return {**doc, "passed": None}
    if exported.indistinguishable:
        raise ExportCheckError(
            f"the exported model renders like the base model although {checkpoint} does not (export against "
            f"the base: speaker-embedding distance {change.number(exported.speaker_distance, '.4f')}, "
            "spectral "
            f"distance {change.number(exported.spectral_distance, '.2f')} dB; {checkpoint} against the base: "
            f"{change.number(ckpt.spectral_distance, '.2f')} dB): the export lost the finetune (e.g. an "
            "adapter that was not merged into the written weights). Nothing was written; --no-check writes "
            "it anyway")
    logger.info("export check passed: the export renders unlike the base model (spectral distance %.2f dB), "
                "as %s does (%.2f dB)", exported.spectral_distance, checkpoint, ckpt.spectral_distance)
    return {**doc, "passed": True}


def export_check_line(doc: dict[str, Any]) -> str:
    """One line on the export check recorded in voicetune.json."""
    if not doc.get("checked"):
        return f"export check: not run ({doc.get('why', 'no record')})"
    if doc.get("passed") is None:
        return "export check: inconclusive: the checkpoint itself renders like the base model"
    return (f"export check: passed (the reloaded export differs from the base model by "
            f"{change.number(doc['export_vs_base'].get('spectral_distance'), '.2f')} dB, the checkpoint by "
            f"{change.number(doc['checkpoint_vs_base'].get('spectral_distance'), '.2f')} dB)")


def export(run_dir: Path | str, out: Path | str, checkpoint: str = "auto", references: int = 5,
           force: bool = False, check: bool = True) -> Path:
    """Write the package for ``checkpoint`` of ``run_dir`` to ``out`` and return ``out``.

    ``checkpoint`` 'auto' packages the best evaluation when the run marked one, else the latest checkpoint;
    ``voicetune.json`` and the model card say which and why. ``out`` must be new, empty or an earlier package:
    another non-empty folder is refused unless ``force`` (then the package is added next to its files, which
    are kept); the run, its base model and its dataset are never written to. Built beside ``out``, moved in
    when complete. ``check``: reload the written export and refuse it (:class:`ExportCheckError`) when it lost
    the finetune (:func:`check_export`).
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
        checked = (check_export(backend, tmp, Path(info.base), [tmp / r for r in refs[:3]], dataset.language,
                                ckpt.name) if check else {"checked": False, "why": "--no-check"})
        manifest = {
            "format": 1, "backend": info.backend, "base": info.base, "dataset": info.dataset,
            "checkpoint": ckpt.name, "checkpoint_choice": _why(run_dir, ckpt), "steps": meta.get("step"),
            "language": dataset.language, "speakers": dataset.speakers, "train_clips": len(dataset.train),
            "references": refs, "untrained_base": untrained, "metrics": _latest_eval_metrics(run_dir, ckpt),
            "train_config": yaml.safe_load((run_dir / "config.yaml").read_text()),
            "versions": software_versions(), "export_check": checked,
        }
        atomic_write_text(tmp / "README.md", _model_card(manifest, out, type(backend).usage()))
        atomic_write_json(tmp / PACKAGE_MANIFEST, manifest)  # last: its presence marks a complete package
    logger.info("exported %s (%s: %s) to %s", run_dir, ckpt.name, manifest["checkpoint_choice"], out)
    return out


def read_package(package_dir: Path) -> dict[str, Any]:
    """A package's voicetune.json; for a plain native model folder, its backend (detected) and no
    references."""
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
