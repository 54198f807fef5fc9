"""`voicetune synthesize`: speak text with an exported package (or any native base folder), or with a
checkpoint of a run folder (:func:`load_voice`; the web UI's "synthesize with any checkpoint")."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from voicetune.audio.io import write_wav
from voicetune.backends.base import Backend, Waveform
from voicetune.backends.registry import get_backend
from voicetune.packaging import longest_train_clips, read_package
from voicetune.run import RunInfo, resolve_checkpoint, trainable_path
from voicetune.utils.device import pick_device
from voicetune.utils.paths import UnsafePathError, inside

logger = logging.getLogger(__name__)

REFERENCES = 3  # reference clips that condition synthesis by default
BASE = "base"  # the checkpoint name that means "a run's base model, without finetuning"


class NotAPackageError(ValueError):
    """A training run folder (or one of its checkpoints) was given where an exported package is needed."""


def _refuse_run_folder(folder: Path) -> None:
    """A run folder or checkpoint holds only the trainable state: say how to export it, with the command."""
    import shlex

    from voicetune.packaging import PACKAGE_MANIFEST

    if (folder / PACKAGE_MANIFEST).is_file():
        return
    run, checkpoint = None, ""
    if (folder / "run.json").is_file():
        run = folder
    elif (folder / "meta.json").is_file() and (folder.parent.parent / "run.json").is_file():
        run, checkpoint = folder.parent.parent, f" --checkpoint {shlex.quote(folder.name)}"
    if run is None:
        return
    package = run.parent / f"{run.name}-voice"
    raise NotAPackageError(
        f"{folder} is a training run{' checkpoint' if checkpoint else ''}, not a model package; "
        "export it first:\n"
        f"  voicetune export {shlex.quote(str(run))} --out {shlex.quote(str(package))}{checkpoint}\n"
        f"  voicetune synthesize {shlex.quote(str(package))} --text ... --out ...")


@dataclass
class Voice:
    """A loaded model ready to speak, with its default reference clips and language."""

    backend: Backend
    references: list[Path]
    language: str
    source: str  # what was loaded, e.g. "run/ (step_20)" or "package/"

    def say(self, text: str, out: Path | str, reference: Sequence[Path | str] | None = None,
            language: str | None = None, seed: int = 0) -> Waveform:
        """Render ``text`` in the voice of ``reference`` clips (default: :attr:`references`) to the wav
        ``out``."""
        if not text.strip():
            raise ValueError("--text is empty: give the sentence to speak")
        refs = [Path(r) for r in reference] if reference else list(self.references)
        if not refs:
            raise ValueError(f"{self.source}: no reference clips; pass --reference CLIP.wav")
        for r in refs:
            if not r.is_file():
                raise FileNotFoundError(f"reference clip {r} does not exist")
        wav = self.backend.synthesize(text, refs, language or self.language, seed)
        write_wav(out, wav.audio, wav.sample_rate)
        logger.info("wrote %s (%.2f s) with %s", out, wav.duration, self.source)
        return wav


def _package_references(package_dir: Path, manifest: dict) -> list[Path]:
    """The package's reference clips named in voicetune.json; they must stay inside the package."""
    listed = manifest.get("references", [])
    listed = listed if isinstance(listed, list) else [listed]
    try:
        return [inside(package_dir, str(r), f"{package_dir / 'voicetune.json'} (references)")
                for r in listed[:REFERENCES]]
    except UnsafePathError as e:
        raise ValueError(f"{e}; pass --reference CLIP.wav to use clips of your choice") from None


def _use_preset(backend: Backend, name: str, preset: str | None) -> None:
    presets = type(backend).synthesis_presets
    if preset is not None and preset not in presets:
        raise ValueError(f"--preset {preset}: the {name} backend offers {list(presets) or 'no presets'}")
    if presets:
        backend.use_synthesis_preset(preset or presets[0])


def load_voice(source: Path | str, checkpoint: str | None = None, device: str = "auto",
               preset: str | None = None) -> Voice:
    """Load a model to speak with.

    ``source`` is an exported package or native model folder (``checkpoint`` None), or a run folder written
    by ``voicetune train`` with ``checkpoint`` 'latest', 'best', a folder name like 'step_100', or
    :data:`BASE` (the run's base model alone). A run's default references are its dataset's longest training
    clips, as an export would pack them. ``preset``: one of the backend's synthesis presets
    (``Backend.synthesis_presets``; default: its first), for backends that have them.
    """
    source = Path(source)
    if checkpoint is None:
        _refuse_run_folder(source)
        manifest = read_package(source)
        refs = _package_references(source, manifest)
        backend = get_backend(manifest["backend"])
        _use_preset(backend, manifest["backend"], preset)
        backend.load_base(source, pick_device(device))
        backend.set_train(False)
        return Voice(backend, refs, manifest.get("language", "en"), str(source))
    from voicetune.data.manifest import Dataset

    info = RunInfo.load(source)
    dataset = Dataset.load(info.dataset)
    backend = get_backend(info.backend)
    _use_preset(backend, info.backend, preset)
    backend.load_base(Path(info.base), pick_device(device))
    name = BASE
    if checkpoint != BASE:
        ckpt = resolve_checkpoint(source, checkpoint)
        backend.load_trained(trainable_path(ckpt))
        name = ckpt.name
    backend.set_train(False)
    refs = [clip.audio_path for _, clip in longest_train_clips(dataset, REFERENCES)]
    return Voice(backend, refs, dataset.language, f"{source} ({name})")


def synthesize(
    package_dir: Path | str,
    text: str,
    out: Path | str,
    reference: list[Path | str] | None = None,
    language: str | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    preset: str | None = None,
) -> Waveform:
    """Render ``text`` with the package's model in the voice of ``reference`` clips (default: the
    package's own ``reference/`` clips) and write it to ``out`` as a wav (an existing file only with
    ``force``; never a file of the package or a reference clip). ``preset``: one of the backend's synthesis
    presets (``Backend.synthesis_presets``; default: its first), for backends that have them."""
    package_dir, out = Path(package_dir), Path(out)
    if not text.strip():
        raise ValueError("--text is empty: give the sentence to speak")
    _refuse_run_folder(package_dir)
    refs = [Path(r) for r in reference] if reference else _package_references(package_dir,
                                                                              read_package(package_dir))
    if not refs:
        raise ValueError(f"{package_dir}: the package has no reference/ clips; pass --reference CLIP.wav")
    for r in refs:  # before the model loads
        if not r.is_file():
            raise FileNotFoundError(f"reference clip {r} does not exist")
    _check_out(out, package_dir, refs, force)
    voice = load_voice(package_dir, device=device, preset=preset)
    return voice.say(text, out, reference=refs, language=language, seed=seed)


def _check_out(out: Path, package_dir: Path, refs: list[Path], force: bool) -> None:
    target = out.resolve()
    in_package = package_dir.resolve() in target.parents and (out.exists() or out.is_symlink())
    if out.is_dir() or target in {r.resolve() for r in refs} or in_package:
        raise ValueError(f"--out {out} is a folder, a reference clip or a file of the package; choose a new "
                         "file name")
    if (out.exists() or out.is_symlink()) and not force:
        raise ValueError(f"--out {out} already exists; voicetune does not replace files it did not write: "
                         "choose another name, or add --force to replace it")
