"""`voicetune synthesize`: speak text with an exported package (or any native base folder)."""

from __future__ import annotations

import logging
from pathlib import Path

from voicetune.audio.io import write_wav
from voicetune.backends.base import Waveform
from voicetune.backends.registry import get_backend
from voicetune.packaging import read_package
from voicetune.utils.device import pick_device
from voicetune.utils.paths import UnsafePathError, inside

logger = logging.getLogger(__name__)


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
    manifest = read_package(package_dir)
    listed = manifest.get("references", [])
    listed = listed if isinstance(listed, list) else [listed]
    try:  # voicetune.json names them relative to the package; they must stay inside it
        refs = [Path(r) for r in reference] if reference else [
            inside(package_dir, str(r), f"{package_dir / 'voicetune.json'} (references)") for r in listed[:3]]
    except UnsafePathError as e:
        raise ValueError(f"{e}; pass --reference CLIP.wav to use clips of your choice") from None
    if not refs:
        raise ValueError(f"{package_dir}: the package has no reference/ clips; pass --reference CLIP.wav")
    for r in refs:
        if not r.is_file():
            raise FileNotFoundError(f"reference clip {r} does not exist")
    _check_out(out, package_dir, refs, force)
    backend = get_backend(manifest["backend"])
    presets = type(backend).synthesis_presets
    if preset is not None and preset not in presets:
        raise ValueError(f"--preset {preset}: the {manifest['backend']} backend offers "
                         f"{list(presets) or 'no presets'}")
    if presets:
        backend.use_synthesis_preset(preset or presets[0])
    backend.load_base(package_dir, pick_device(device))
    backend.set_train(False)
    wav = backend.synthesize(text, refs, language or manifest.get("language", "en"), seed)
    write_wav(out, wav.audio, wav.sample_rate)
    logger.info("wrote %s (%.2f s)", out, wav.duration)
    return wav


def _check_out(out: Path, package_dir: Path, refs: list[Path], force: bool) -> None:
    target = out.resolve()
    in_package = package_dir.resolve() in target.parents and (out.exists() or out.is_symlink())
    if out.is_dir() or target in {r.resolve() for r in refs} or in_package:
        raise ValueError(f"--out {out} is a folder, a reference clip or a file of the package; choose a new "
                         "file name")
    if (out.exists() or out.is_symlink()) and not force:
        raise ValueError(f"--out {out} already exists; voicetune does not replace files it did not write: "
                         "choose another name, or add --force to replace it")
