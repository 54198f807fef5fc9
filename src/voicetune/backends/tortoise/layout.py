"""The Tortoise base-model folder (the tortoise-v2 layout): which files it holds, how to validate and read
them.

The inference files are those tortoise-tts and coqui-tts load (``Tortoise.load_checkpoint(config,
checkpoint_dir=...)``); training the autoregressive model also needs DL-Art-School's discrete VAE::

    BASE_DIR/
      autoregressive.pth      UnifiedVoice state dict (the GPT voicetune finetunes; an ai-voice-cloning /
                              DL-Art-School finetune, or a voicetune export, in the same layout)
      mel_norms.pth           tensor [80]: the per-channel log-mel normaliser (read from here, never
                              downloaded)
      dvae.pth                DL-Art-School's DiscreteVAE with 8,192 codes (turns audio into the GPT's audio
                              codes; training only, not in the inference download)
      diffusion_decoder.pth   DiffusionTts state dict (codes -> mel spectrogram)
      clvp2.pth               CLVP state dict (reranks the autoregressive candidates)
      vocoder.pth             {"model_g": UnivNet state dict} (mel -> 24 kHz waveform)
      config.json             optional: a coqui-tts TortoiseConfig (absent: the tortoise-v2 architecture)
      rlg_auto.pth, rlg_diffuser.pth   optional: random-voice latents (unused by voicetune; kept on export)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from voicetune.backends.base import BaseModelError
from voicetune.backends.gpt_tts.files import torch_load, unwrap_model
from voicetune.utils.paths import file_problem

logger = logging.getLogger(__name__)

AUTOREGRESSIVE = "autoregressive.pth"
MEL_NORMS = "mel_norms.pth"
DVAE = "dvae.pth"
DIFFUSION = "diffusion_decoder.pth"
CLVP = "clvp2.pth"
VOCODER = "vocoder.pth"
CONFIG = "config.json"
RLG = ("rlg_auto.pth", "rlg_diffuser.pth")

REQUIRED_FILES = (AUTOREGRESSIVE, MEL_NORMS, DVAE, DIFFUSION, CLVP, VOCODER)
OPTIONAL_FILES = (CONFIG, *RLG)

_HUB = "the Hugging Face repository jbetker/tortoise-tts-v2 (folder .models/)"
WHERE = {
    AUTOREGRESSIVE: f"the autoregressive model: tortoise-v2's from {_HUB}, or a finetune of it",
    MEL_NORMS: "the log-mel normaliser: tortoise-tts's tortoise/data/mel_norms.pth (also in coqui-tts's "
    "tortoise-v2 download)",
    DVAE: f"DL-Art-School's 8,192-code discrete VAE, needed for training: .models/dvae.pth in {_HUB}, the "
    "file ai-voice-cloning downloads for training (it is not part of the inference download)",
    DIFFUSION: f"the diffusion decoder: tortoise-v2's from {_HUB}",
    CLVP: f"the CLVP reranker: tortoise-v2's clvp2.pth from {_HUB}",
    VOCODER: f"the UnivNet vocoder: tortoise-v2's from {_HUB}",
    CONFIG: "the model configuration (coqui-tts TortoiseConfig)",
}

# Keys UnifiedVoice state dicts may hold that its modules do not: the attention-mask buffers of older
# transformers' GPT2Attention (coqui-tts loads with strict=False for them), and the inference-only aliases
# that post_init_gpt2_config adds (never saved by voicetune).
INFERENCE_ONLY_PREFIXES = ("inference_model.", "gpt.wte.")
_LEGACY_SUFFIXES = (".attn.bias", ".attn.masked_bias")

_HINT = ("A Tortoise base folder holds the tortoise-v2 files plus DL-Art-School's dvae.pth (or create an "
         "untrained test model with `voicetune make-tiny-base --backend tortoise`).")


def validate_base_dir(path: Path | str) -> dict[str, Path]:
    """Check that ``path`` holds a readable tortoise-v2 layout; return ``{file name: path}`` (optional files
    only when present). Raises :class:`BaseModelError` naming every missing, empty or unreadable file and
    where users get it."""
    path = Path(path)
    if not path.is_dir():
        raise BaseModelError(f"{path}: base model folder does not exist or is not a folder. {_HINT}")
    problems: list[str] = []
    found: dict[str, Path] = {}
    for name in REQUIRED_FILES + OPTIONAL_FILES:
        p = path / name
        problem = file_problem(p)
        if problem is None:
            found[name] = p
        elif name in REQUIRED_FILES or p.exists():
            problems.append(f"{p}: {problem} ({WHERE.get(name, 'random-voice latents')})")
    if CONFIG in found:
        try:
            read_config_dict(found[CONFIG])
        except BaseModelError as e:
            problems.append(str(e))
    if problems:
        raise BaseModelError(f"{path} is not a usable Tortoise base model:\n  " + "\n  ".join(problems) +
                             f"\n{_HINT}")
    return found


def read_config_dict(path: Path) -> dict[str, Any]:
    """The raw config.json mapping (kept for export); a BaseModelError when it is not a Tortoise config."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaseModelError(f"{path}: cannot read the Tortoise config ({e})") from e
    if not isinstance(data, dict):
        raise BaseModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    model = str(data.get("model", "tortoise")).lower()
    if model != "tortoise":
        raise BaseModelError(f"{path}: this is a config for model {model!r}, not a Tortoise model")
    return data


def load_config(files: dict[str, Path]) -> tuple[Any, dict[str, Any]]:
    """(TortoiseConfig, its raw mapping or {}) of a validated folder: config.json, else tortoise-v2's
    defaults."""
    from TTS.tts.configs.tortoise_config import TortoiseConfig

    cfg = TortoiseConfig()
    if CONFIG not in files:
        return cfg, {}
    data = read_config_dict(files[CONFIG])
    try:
        cfg.from_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise BaseModelError(f"{files[CONFIG]}: not a valid TortoiseConfig ({e})") from e
    if cfg.model_args.enable_redaction:  # a wav2vec2 aligner downloaded at load time; voicetune never redacts
        logger.info("%s: enable_redaction is ignored (voicetune renders the whole text)", files[CONFIG])
        cfg.model_args.enable_redaction = False
    return cfg, data


def voicetune_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
    """voicetune's own optional settings stored in config.json under "voicetune" (ignored by coqui-tts)."""
    extra = config_dict.get("voicetune", {})
    return extra if isinstance(extra, dict) else {}


def autoregressive_state(obj: Any, source: Path | str) -> dict[str, Any]:
    """The UnifiedVoice tensors of a loaded autoregressive.pth (or a ``{"model": ...}``-wrapped one), without
    the keys of older transformers and the inference-only aliases."""
    import torch

    state = unwrap_model(obj)
    if not isinstance(state, dict) or not any(str(k).startswith("gpt.h.") for k in state):
        raise BaseModelError(
            f"{source}: not a Tortoise autoregressive model (expected a UnifiedVoice state dict "
            "with gpt.h.* keys)"
        )
    return {k: v for k, v in state.items() if torch.is_tensor(v) and not k.startswith(INFERENCE_ONLY_PREFIXES)
            and not k.endswith(_LEGACY_SUFFIXES)}


def load_into(module: Any, state: dict[str, Any], source: Path, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, as a BaseModelError naming ``source`` on a mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BaseModelError(f"{source}: {what} does not match config.json / the tortoise-v2 architecture "
                             f"({str(e)[:600]})") from e


def load_state(path: Path, what: str) -> dict[str, Any]:
    """A state dict file (weights_only), unwrapped from ``{"model": ...}``."""
    state = unwrap_model(torch_load(path, what))
    if not isinstance(state, dict):
        raise BaseModelError(f"{path}: expected a state dict of {what}, got {type(state).__name__}")
    return state


def load_vocoder_state(path: Path) -> dict[str, Any]:
    """The UnivNet generator of vocoder.pth (``{"model_g": state_dict}``, as tortoise-tts and coqui-tts read
    it)."""
    obj = torch_load(path, "the vocoder")
    if not isinstance(obj, dict) or not isinstance(obj.get("model_g"), dict):
        raise BaseModelError(
            f"{path}: expected {{'model_g': UnivNet state dict}} (tortoise-v2's vocoder.pth)"
        )
    return obj["model_g"]
