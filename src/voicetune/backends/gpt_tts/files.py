"""Files both GPT-TTS base folders hold: the DL-Art-School discrete VAE (``dvae.pth``) and the log-mel
normaliser (XTTS's ``mel_stats.pth``, Tortoise's ``mel_norms.pth``), and how every base file is read.

Everything is read with ``torch.load(weights_only=True)``: nothing is unpickled. An unreadable file raises
:class:`~voicetune.backends.base.BaseModelError` naming it and what it should hold. (Moved from
``backends/xtts/layout.py``, ``backends/xtts/tiny.py`` and ``backends/xtts/features.py``.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from voicetune.backends.base import BaseModelError

# The DiscreteVAE hyperparameters of Coqui's GPTTrainer (XTTS-v2's dvae.pth) and of DL-Art-School's
# Tortoise DVAE (8192 codes instead of 1024); infer_dvae_hparams reads the real ones from the tensor shapes.
DVAE_DEFAULTS: dict[str, Any] = {
    "channels": 80,
    "codebook_dim": 512,
    "hidden_dim": 512,
    "num_resnet_blocks": 3,
    "kernel_size": 3,
    "num_layers": 2,
    "positional_dims": 1,
    "use_transposed_convs": False,
}


def torch_load(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a :class:`BaseModelError` naming the file and
    ``what`` it should hold when it cannot be read."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise BaseModelError(f"{path}: cannot load {what} ({e})") from e


def unwrap_model(obj: Any) -> Any:
    """``{"model": state_dict}`` (the Coqui checkpoint wrapper) → the state dict; anything else unchanged."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    return obj


def check_mel_norms(stats: Any, path: Path | str) -> Any:
    """The [80] float tensor of a loaded mel normaliser; a BaseModelError naming ``path`` when it is not
    one."""
    if not torch.is_tensor(stats) or stats.numel() != 80:
        shape = tuple(stats.shape) if torch.is_tensor(stats) else type(stats).__name__
        raise BaseModelError(f"{path}: expected a tensor of 80 mel-channel statistics, got {shape}")
    stats = stats.reshape(80).float()
    if not torch.isfinite(stats).all() or (stats == 0).any():
        raise BaseModelError(
            f"{path}: mel statistics contain zero or non-finite values (they divide log-mels)"
        )
    return stats


def load_mel_norms(path: Path) -> Any:
    """The [80] log-mel normaliser of mel_norms.pth / mel_stats.pth (never downloaded: always this file)."""
    return check_mel_norms(torch_load(path, "the mel statistics"), path)


def compute_mel_norms(stats_audio: list[Path] | None, seed: int = 0) -> Any:
    """Per-channel mean of the log-mel that TorchMelSpectrogram computes before normalisation.

    Tortoise/XTTS divide log-mels by these "mel_norms". Without audio, seeded white noise stands in.
    Values are kept <= -0.1 so that the division never blows up on a channel whose mean is near zero.
    """
    from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram

    from voicetune.audio.io import load_audio

    mel = TorchMelSpectrogram(mel_norm_file=None, sampling_rate=22050)
    sums, frames = torch.zeros(80), 0
    waves = []
    for p in stats_audio or []:
        audio, _ = load_audio(p, sr=22050)
        waves.append(torch.from_numpy(audio))
    if not waves:
        g = torch.Generator().manual_seed(seed)
        waves = [torch.randn(22050 * 3, generator=g) * 0.05]
    with torch.no_grad():
        for w in waves:
            m = mel(w.clamp(-1, 1)[None])[0]  # [80, T], log of the mel power
            sums += m.sum(dim=1)
            frames += m.shape[1]
    return (sums / max(frames, 1)).clamp(max=-0.1)


def load_wav_tensor(path: Path | str, sample_rate: int) -> torch.Tensor:
    """[1, T] float waveform at ``sample_rate``, clipped to [-1, 1]: coqui-tts's ``load_audio`` (torchaudio
    resampling, clipping) but decoded with voicetune's decoder instead of ``torchaudio.load``."""
    import torchaudio

    from voicetune.audio.io import load_audio

    audio, sr = load_audio(path)
    wav = torch.from_numpy(audio)[None]
    if sr != sample_rate:
        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav.clamp_(-1.0, 1.0)


def infer_dvae_hparams(state: dict[str, Any], source: Path | str = "dvae.pth") -> dict[str, Any]:
    """DiscreteVAE constructor arguments that match a dvae.pth state dict.

    XTTS-v2's dvae.pth uses the GPTTrainer values (:data:`DVAE_DEFAULTS`), DL-Art-School's Tortoise DVAE the
    same with 8192 codes; reading them from the tensor shapes also accepts the much smaller DVAEs of
    voicetune's tiny test models.
    """
    try:
        first = state["encoder.0.0.weight"]
        embed = state["codebook.embed"]
    except KeyError as e:
        raise BaseModelError(f"{source}: not a DiscreteVAE state dict (missing {e.args[0]})") from e
    layer_idx = {int(m.group(1)) for k in state if (m := re.fullmatch(r"encoder\.(\d+)\.0\.weight", k))}
    res_idx = {int(m.group(1)) for k in state if (m := re.fullmatch(r"encoder\.(\d+)\.net\.0\.weight", k))}
    hp = dict(DVAE_DEFAULTS)
    hp.update(
        channels=int(first.shape[1]),
        hidden_dim=int(first.shape[0]),
        kernel_size=int(first.shape[-1]),
        num_layers=len(layer_idx),
        num_resnet_blocks=len(res_idx),
        codebook_dim=int(embed.shape[0]),
        num_tokens=int(embed.shape[1]),
        use_transposed_convs=not any(k.endswith(".0.conv.weight") for k in state if k.startswith("decoder.")),
    )
    if first.ndim != 3 or hp["channels"] != 80:
        raise BaseModelError(
            f"{source}: expected a 1-D DiscreteVAE over 80 mel channels, got {tuple(first.shape)}"
        )
    return hp


def load_dvae(path: Path, expected_tokens: int | None = None, *, expected_what: str = "the GPT expects",
              gpt_file: str = "the GPT's weights", state: Any = None) -> Any:
    """Build the DiscreteVAE of dvae.pth (in eval mode, on CPU, frozen). ``expected_tokens``: the number of
    codes the GPT reads (``expected_what`` says where that number comes from, ``gpt_file`` which file holds
    the GPT, for the error). ``state``: the file's loaded content (read here when None)."""
    from TTS.tts.layers.xtts.dvae import DiscreteVAE

    state = unwrap_model(torch_load(path, "the DVAE") if state is None else state)
    if not isinstance(state, dict):
        raise BaseModelError(f"{path}: expected a DiscreteVAE state dict, got {type(state).__name__}")
    hp = infer_dvae_hparams(state, path)
    if expected_tokens is not None and hp["num_tokens"] != expected_tokens:
        raise BaseModelError(
            f"{path}: the DVAE has {hp['num_tokens']} codes but {expected_what} {expected_tokens}; dvae.pth "
            f"and {gpt_file} are from different models"
        )
    dvae = DiscreteVAE(normalization=None, **hp)
    # GPTTrainer loads dvae.pth with strict=False; we only need the encoder and the codebook to be complete.
    missing, _ = dvae.load_state_dict(state, strict=False)
    needed = [k for k in missing if k.startswith(("encoder.", "codebook.embed"))]
    if needed:
        raise BaseModelError(f"{path}: DVAE weights incomplete, missing {needed[:5]}")
    dvae.eval()
    for p in dvae.parameters():
        p.requires_grad_(False)
    return dvae


def drop_kind(reason: str) -> str:
    """The kind of a drop reason written by XTTS's or Tortoise's ``build_feature_store`` (for counting in
    logs and run.json)."""
    kinds = (
        ("longer than max_wav_length", "too_long_audio"),
        ("more than max_text_length", "too_long_text"),
        ("shorter than", "too_short"),
        ("[UNK]", "unknown_characters"),
        ("empty transcript", "empty_text"),
        ("cannot read the audio", "unreadable"),
        ("is not supported", "unsupported_language"),
    )
    for fragment, kind in kinds:
        if fragment in reason:
            return kind
    return "other"


def has_untrained_note(config: Path) -> bool:
    """Whether ``config`` (a base folder's config.json) carries the note voicetune's tiny makers write into
    an UNTRAINED random model."""
    return config.is_file() and "voicetune_note" in config.read_text(encoding="utf-8", errors="replace")
