"""The XTTS-v2 base-model folder: which files it holds, how to validate them and how to read them.

The layout is the one Coqui publishes (``coqui/XTTS-v2``) and that ``coqui-tts`` loads with
``Xtts.load_checkpoint(config, checkpoint_dir=...)``::

    BASE_DIR/
      config.json         XttsConfig (model_args, audio, inference settings)
      model.pth           {"model": state_dict} with gpt.*, hifigan_decoder.*, mel_stats
      dvae.pth            DiscreteVAE state dict (turns mel spectrograms into GPT audio codes)
      mel_stats.pth       tensor [80]: per-channel log-mel normaliser (the "mel_norms" of Tortoise)
      vocab.json          the BPE tokenizer (``tokenizers`` JSON) read by VoiceBpeTokenizer
      speakers_xtts.pth   optional: {name: {"gpt_cond_latent", "speaker_embedding"}} built-in voices

Only the inference model needs model.pth + vocab.json + config.json; training the GPT also needs
dvae.pth (audio codes) and mel_stats.pth (mel normalisation).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

from voicetune.backends.base import BaseModelError
from voicetune.backends.gpt_tts import files
from voicetune.backends.gpt_tts.files import DVAE_DEFAULTS, check_mel_norms, infer_dvae_hparams
from voicetune.backends.gpt_tts.files import unwrap_model as _unwrap_model
from voicetune.utils.paths import file_problem as _file_problem

__all__ = [
    "CONFIG",
    "DVAE",
    "DVAE_DEFAULTS",
    "INFERENCE_ONLY_GPT_PREFIXES",
    "LAYOUT_FILES",
    "MEL_STATS",
    "MODEL",
    "OPTIONAL_FILES",
    "REQUIRED_FILES",
    "SPEAKERS",
    "VOCAB",
    "infer_dvae_hparams",
    "load_config",
    "load_dvae",
    "load_mel_stats",
    "load_model_state",
    "load_speakers",
    "normalize_model_state",
    "read_config_dict",
    "validate_base_dir",
    "voicetune_settings",
]

logger = logging.getLogger(__name__)

CONFIG = "config.json"
MODEL = "model.pth"
DVAE = "dvae.pth"
MEL_STATS = "mel_stats.pth"
VOCAB = "vocab.json"
SPEAKERS = "speakers_xtts.pth"

REQUIRED_FILES = (CONFIG, MODEL, DVAE, MEL_STATS, VOCAB)
OPTIONAL_FILES = (SPEAKERS,)
LAYOUT_FILES = REQUIRED_FILES + OPTIONAL_FILES

_WHAT = {
    CONFIG: "the model configuration",
    MODEL: "the GPT + HiFi-GAN weights",
    DVAE: "the discrete VAE that turns audio into GPT audio codes (needed for training)",
    MEL_STATS: "the mel-spectrogram normalisation statistics",
    VOCAB: "the BPE text tokenizer",
    SPEAKERS: "the built-in speaker latents",
}

# Keys the Coqui GPTTrainer stores next to the XTTS model and that Xtts does not use
# (mirrors Xtts.get_compatible_checkpoint_state_dict).
_TRAINER_ONLY_PREFIXES = ("torch_mel_spectrogram_style_encoder", "torch_mel_spectrogram_dvae", "dvae")
# Modules created by GPT.init_gpt_for_inference: aliases of existing weights (XTTS v1 checkpoints hold them).
INFERENCE_ONLY_GPT_PREFIXES = ("gpt_inference.", "gpt.wte.")

_HINT = (
    "A base folder needs the XTTS-v2 files (download coqui/XTTS-v2 from the Hugging Face hub, "
    "or create an untrained test model with `voicetune make-tiny-base`)."
)


def validate_base_dir(path: Path | str) -> dict[str, Path]:
    """Check that ``path`` holds a readable XTTS-v2 layout; return ``{file name: path}``.

    Raises :class:`BaseModelError` naming every missing, empty or unreadable required file.
    A missing ``speakers_xtts.pth`` only logs a warning (voicetune clones voices from reference audio).
    """
    path = Path(path)
    if not path.is_dir():
        raise BaseModelError(f"{path}: base model folder does not exist or is not a folder. {_HINT}")
    problems: list[str] = []
    found: dict[str, Path] = {}
    for name in LAYOUT_FILES:
        p = path / name
        problem = _file_problem(p)
        if problem is None:
            found[name] = p
        elif name in OPTIONAL_FILES and not p.exists():
            logger.warning(
                "%s: %s is missing (%s); continuing without built-in speakers", path, name, _WHAT[name]
            )
        else:
            problems.append(f"{p}: {problem} ({_WHAT[name]})")
    for name in (CONFIG, VOCAB):
        if name in found:
            try:
                json.loads(found[name].read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                problems.append(f"{found[name]}: unreadable, not valid JSON ({e})")
    if problems:
        raise BaseModelError(
            f"{path} is not a usable XTTS-v2 base model:\n  " + "\n  ".join(problems) + f"\n{_HINT}"
        )
    return found


def read_config_dict(path: Path) -> dict[str, Any]:
    """The raw config.json mapping (kept verbatim for export, extra keys included)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaseModelError(f"{path}: cannot read the XTTS config ({e})") from e
    if not isinstance(data, dict):
        raise BaseModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    model = str(data.get("model", "xtts")).lower()
    if model != "xtts":
        raise BaseModelError(f"{path}: this is a config for model {model!r}, not an XTTS model")
    return data


def load_config(path: Path) -> Any:
    """XttsConfig from config.json (unknown keys, e.g. voicetune's notes, are ignored as in coqui-tts)."""
    from TTS.tts.configs.xtts_config import XttsConfig

    data = read_config_dict(path)
    cfg = XttsConfig()
    try:
        cfg.from_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise BaseModelError(f"{path}: not a valid XttsConfig ({e})") from e
    return cfg


def voicetune_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
    """voicetune's own optional settings stored in config.json under "voicetune" (ignored by coqui-tts)."""
    extra = config_dict.get("voicetune", {})
    return extra if isinstance(extra, dict) else {}


def _torch_load(path: Path, what: str) -> Any:
    """torch.load with weights_only; the original XTTS-v2 model.pth pickles an XttsConfig object, which is
    allowed through coqui-tts's legacy allow-list. The file is never rewritten (coqui-tts would).

    An unreadable file raises :class:`BaseModelError` naming it and ``what`` it should hold.
    """
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            from TTS.tts.models.xtts import _legacy_safe_globals

            with _legacy_safe_globals():
                return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise BaseModelError(f"{path}: cannot load {what} ({e})") from e


def normalize_model_state(state: dict[str, Any]) -> dict[str, Any]:
    """Bring an XTTS state dict to the keys of ``Xtts.state_dict()``.

    Accepts what ``Xtts.get_compatible_checkpoint_state_dict`` accepts: plain keys, ``xtts.``-prefixed keys
    of the Coqui trainer (whose ``dvae.*`` / ``torch_mel_spectrogram_*`` entries are dropped), and XTTS v1
    checkpoints that also hold the inference-only aliases ``gpt.gpt_inference.*`` / ``gpt.gpt.wte.*``.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        key = key.removeprefix("xtts.")
        if key.split(".")[0] in _TRAINER_ONLY_PREFIXES:
            continue
        if key.startswith(tuple("gpt." + p for p in INFERENCE_ONLY_GPT_PREFIXES)):
            continue
        out[key] = value
    return out


def load_model_state(path: Path) -> dict[str, Any]:
    """The normalised state dict of model.pth (``{"model": state_dict}``, or a bare state dict)."""
    ckpt = _unwrap_model(_torch_load(path, "the XTTS checkpoint"))
    if not isinstance(ckpt, dict) or not any(str(k).startswith(("gpt.", "xtts.gpt.")) for k in ckpt):
        raise BaseModelError(
            f"{path}: not an XTTS checkpoint (expected {{'model': state_dict}} with gpt.* keys)"
        )
    return normalize_model_state(ckpt)


def load_mel_stats(path: Path) -> Any:
    """The [80] mel normaliser tensor of mel_stats.pth."""
    return check_mel_norms(_torch_load(path, "the mel statistics"), path)


def load_dvae(path: Path, expected_tokens: int | None = None) -> Any:
    """Build the DiscreteVAE of dvae.pth (in eval mode, on CPU)."""
    return files.load_dvae(
        path,
        expected_tokens,
        expected_what="config.json expects gpt_num_audio_tokens - 2 =",
        gpt_file="model.pth",
        state=_torch_load(path, "the DVAE"),
    )


def load_speakers(path: Path) -> dict[str, Any]:
    """The built-in speakers of speakers_xtts.pth ({} when absent)."""
    if not Path(path).is_file():
        return {}
    speakers = _torch_load(path, "the speaker latents")
    if not isinstance(speakers, dict):
        raise BaseModelError(f"{path}: expected a dict of speakers, got {type(speakers).__name__}")
    return speakers
