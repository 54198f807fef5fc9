"""`voicetune synthesize`: speak text with an exported package (or any native base folder)."""

from __future__ import annotations

import logging
from pathlib import Path

from voicetune.audio.io import write_wav
from voicetune.backends.base import Waveform
from voicetune.backends.registry import get_backend
from voicetune.packaging import read_package
from voicetune.utils.device import pick_device

logger = logging.getLogger(__name__)


def synthesize(
    package_dir: Path | str,
    text: str,
    out: Path | str,
    reference: list[Path | str] | None = None,
    language: str | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str | None = None,
) -> Waveform:
    """Render ``text`` with the package's model in the voice of ``reference`` clips (default: the
    package's own ``reference/`` clips) and write it to ``out`` as a wav. ``preset``: one of the backend's
    synthesis presets (``Backend.synthesis_presets``; default: its first), for backends that have them."""
    package_dir = Path(package_dir)
    if not text.strip():
        raise ValueError("--text is empty: give the sentence to speak")
    manifest = read_package(package_dir)
    refs = [Path(r) for r in reference] if reference else [package_dir / r for r in manifest.get("references", [])[:3]]
    if not refs:
        raise ValueError(f"{package_dir}: the package has no reference/ clips; pass --reference CLIP.wav")
    for r in refs:
        if not r.is_file():
            raise FileNotFoundError(f"reference clip {r} does not exist")
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
