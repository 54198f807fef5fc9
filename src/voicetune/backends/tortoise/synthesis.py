"""Tortoise's full synthesis chain through coqui-tts (``TTS.tts.models.tortoise.Tortoise``): autoregressive
candidates -> CLVP rerank -> diffusion -> UnivNet vocoder, with named presets.

The presets are coqui-tts's (``Tortoise.inference_with_config``: ``ultra_fast``, ``very_fast``, ``fast``,
``standard``, ``high_quality``...) plus ``evaluation``: few candidates and few diffusion steps, what
voicetune's evaluation renders every probe sentence with (in-loop, ``voicetune evaluate``, the base model's
baseline), so that evaluations stay cheap and comparable. ``voicetune synthesize`` uses ``fast``
(tortoise-tts's default) unless ``--preset`` says otherwise.
"""

from __future__ import annotations

import contextlib
import random
import re
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

EVALUATION = "evaluation"
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"preset": "fast"},  # 5 candidates, 50 DDIM steps (tortoise-tts's default preset)
    "ultra_fast": {"preset": "ultra_fast"},  # 16 candidates, 10 steps
    "very_fast": {"preset": "very_fast"},  # 32 candidates, 30 steps (dpm++2m)
    "standard": {"preset": "standard"},  # 5 candidates, 200 steps
    "high_quality": {"preset": "high_quality"},  # 256 candidates, 400 steps
    EVALUATION: {"num_autoregressive_samples": 4, "diffusion_iterations": 10, "sampler": "ddim"},
}
"""Preset name -> the keyword arguments of ``Tortoise.inference_with_config``; the first is the default of
``voicetune synthesize``."""

MAX_PIECE_CHARS = 200  # tortoise-tts splits text into sentences of about this length (its read.py)
MAX_TEXT_TOKENS = 400  # Tortoise.inference refuses more
OUTPUT_RATE = 24000


def reference_audio(refs: Sequence[Path]) -> list[list[torch.Tensor]]:
    """``voice_samples`` of ``Tortoise.get_conditioning_latents``: per clip its [1, T] waveform at 22.05 and
    24 kHz, clipped to [-1, 1] (coqui-tts's ``load_required_audio``, decoded by voicetune, not torchaudio)."""
    from voicetune.backends.gpt_tts.files import load_wav_tensor

    return [[load_wav_tensor(r, 22050), load_wav_tensor(r, OUTPUT_RATE)] for r in refs]


def split_text(text: str, tokenizer: Any) -> list[str]:
    """Sentences packed into pieces of at most :data:`MAX_PIECE_CHARS` characters (tortoise-tts reads long
    text piece by piece); a ValueError when a piece is still too long for the model."""
    text = " ".join(text.split())
    pieces = [""]
    for sentence in re.split(r"(?<=[.!?;:])\s+", text):
        for part in textwrap.wrap(sentence, width=MAX_PIECE_CHARS, break_on_hyphens=False) or [sentence]:
            if pieces[-1] and len(pieces[-1]) + 1 + len(part) > MAX_PIECE_CHARS:
                pieces.append(part)
            else:
                pieces[-1] = f"{pieces[-1]} {part}".strip()
    for piece in pieces:
        n = len(tokenizer.encode(piece))
        if n + 1 >= MAX_TEXT_TOKENS:
            raise ValueError(f"text piece of {n} tokens exceeds Tortoise's {MAX_TEXT_TOKENS}-token limit: "
                             f"{piece[:60]!r}")
    return [p for p in pieces if p]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's and Python's global RNGs seeded for a render and restored afterwards (Tortoise draws with both:
    the conditioning crop with ``random``, sampling and diffusion noise with torch)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            yield
    finally:
        random.setstate(state)


def codes_rendered(samples: int) -> int:
    """Audio codes behind a rendered waveform: the diffusion turns n codes into n x 4 x 24000 // 22050 mel
    frames of 256 samples (after Tortoise's trim at the first long run of silence codes)."""
    return round(samples / 256 * 22050 / (4 * OUTPUT_RATE))


def render(model: Any, text: str, latents: tuple[torch.Tensor, torch.Tensor], preset: str, seed: int,
           max_tokens: int, half: bool) -> tuple[torch.Tensor, int]:
    """One piece of text through ``Tortoise.inference_with_config`` (seeded): (waveform [S] at 24 kHz,
    codes)."""
    out = model.inference_with_config(
        text, conditioning_latents=latents, verbose=False, use_deterministic_seed=seed, half=half,
        max_mel_tokens=max_tokens, **PRESETS[preset])
    wav = out["wav"].reshape(-1).float()
    return wav, codes_rendered(wav.numel())
