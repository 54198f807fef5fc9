"""An UNTRAINED, tiny, randomly initialised Tortoise base in the real tortoise-v2 layout (tests, the demo).

It lets the whole pipeline run on a CPU in seconds (features, training, the full synthesis chain, export,
loading in coqui-tts); it produces noise, not speech. What is small and what is not:

* autoregressive.pth: a UnifiedVoice of 2 layers x 64 channels, 4 heads, with tortoise-v2's vocabularies (255
  text tokens + start, 8,192 audio codes + start/stop) and position tables;
* dvae.pth: DL-Art-School's DVAE structure with 8,192 codes, 64 channels and one residual block;
* diffusion_decoder.pth, clvp2.pth: 2-layer DiffusionTts / 1-layer CLVP of 64 channels;
* vocoder.pth: coqui-tts's Tortoise builds the UnivNet vocoder at its one size, so it keeps the real
  architecture (~15 M parameters, ~60 MB) with random weights;
* mel_norms.pth: from ``stats_audio`` (seeded noise without it);
* config.json: the coqui-tts TortoiseConfig of these sizes (tortoise-v2's own folder has none: its sizes are
  TortoiseConfig's defaults) plus a generation cap for the tiny model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from voicetune.backends.gpt_tts.files import DVAE_DEFAULTS, compute_mel_norms
from voicetune.backends.tortoise import layout
from voicetune.utils.io import atomic_torch_save, atomic_write_text

logger = logging.getLogger(__name__)

TINY_NOTE = "UNTRAINED tiny random model for tests/demo; not usable for real speech"
TINY_ARGS: dict[str, Any] = {
    "ar_layers": 2, "ar_model_dim": 64, "ar_heads": 4,
    "diff_model_channels": 64, "diff_num_layers": 2, "diff_in_latent_channels": 64, "diff_num_heads": 4,
    "clvp_dim_text": 64, "clvp_dim_speech": 64, "clvp_dim_latent": 64, "clvp_text_enc_depth": 1,
    "clvp_speech_enc_depth": 1, "clvp_text_heads": 2, "clvp_speech_heads": 2,
}
TINY_DVAE = {"hidden_dim": 64, "codebook_dim": 64, "num_resnet_blocks": 1}
DVAE_TOKENS = 8192
# Generation cap of the tiny model (a random GPT rarely emits the stop code): 24 codes, ~1.1 s of audio.
TINY_SYNTHESIS_MAX_AUDIO_TOKENS = 24


def tortoise_config(args: dict[str, Any] | None = None) -> Any:
    """A coqui-tts TortoiseConfig: tortoise-v2's sizes updated with ``args`` (TortoiseArgs fields)."""
    from TTS.tts.configs.tortoise_config import TortoiseArgs, TortoiseConfig

    return TortoiseConfig(model_args=TortoiseArgs(**(args or {})))


def write_base(
    out: Path,
    args: dict[str, Any] | None = None,
    dvae: dict[str, Any] | None = None,
    stats_audio: list[Path] | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a random Tortoise base of the sizes ``args`` (TortoiseArgs fields over tortoise-v2's) and
    ``dvae`` (DiscreteVAE arguments over DL-Art-School's) to ``out``: every file of the layout, config.json
    with ``extra`` keys. Same arguments, same weights."""
    import torch
    from TTS.tts.layers.xtts.dvae import DiscreteVAE
    from TTS.tts.models.tortoise import Tortoise

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tortoise_config(args)
    mel_norms = compute_mel_norms(stats_audio, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Tortoise(cfg)
        dvae_model = DiscreteVAE(
            **{**DVAE_DEFAULTS, **(dvae or {})}, normalization=None, num_tokens=DVAE_TOKENS
        )
    data = {**(extra or {}), **cfg.to_dict()}
    atomic_write_text(out / layout.CONFIG, json.dumps(data, indent=2) + "\n")
    atomic_torch_save(model.autoregressive.state_dict(), out / layout.AUTOREGRESSIVE)
    atomic_torch_save(model.diffusion.state_dict(), out / layout.DIFFUSION)
    atomic_torch_save(model.clvp.state_dict(), out / layout.CLVP)
    atomic_torch_save({"model_g": model.vocoder.state_dict()}, out / layout.VOCODER)
    atomic_torch_save(dvae_model.state_dict(), out / layout.DVAE)
    atomic_torch_save(mel_norms.clone(), out / layout.MEL_NORMS)
    return out


def make_tiny_tortoise_base(out: Path | str, stats_audio: list[Path] | None = None, seed: int = 0) -> Path:
    """Write an UNTRAINED, tiny, randomly initialised Tortoise base folder at ``out`` (module doc); its
    mel_norms.pth comes from ``stats_audio`` (paths; seeded noise when None). Every file is written
    atomically; other files in ``out`` are left alone. Returns ``out``."""
    logger.warning("writing %s to %s", TINY_NOTE, out)
    extra = {"voicetune_note": TINY_NOTE,
             "voicetune": {"tiny": True, "synthesis_max_audio_tokens": TINY_SYNTHESIS_MAX_AUDIO_TOKENS}}
    return write_base(Path(out), TINY_ARGS, TINY_DVAE, stats_audio, seed, extra)
