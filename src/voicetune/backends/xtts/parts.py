"""Named parts of the XTTS GPT: what ``--freeze`` accepts and which per-part learning-rate multiplier applies.

Kept free of heavy imports: :mod:`.options` validates ``--freeze`` and ``--lora-targets`` against these up
front. The rules (and the GPT-2 modules LoRA adapts) are shared with Tortoise:
:mod:`voicetune.backends.gpt_tts.parts`.
"""

from __future__ import annotations

from voicetune.backends.gpt_tts import parts as _shared
from voicetune.backends.gpt_tts.parts import LORA_TARGETS, split_names

__all__ = ["LORA_TARGETS", "PARTS", "SIDES", "side_of", "split_names"]

# part name -> the GPT submodule it is (coqui-tts TTS/tts/layers/xtts/gpt.py).
PARTS: dict[str, str] = {
    "conditioning_encoder": "conditioning_encoder",  # reference mel -> conditioning features
    "conditioning_perceiver": "conditioning_perceiver",  # perceiver resampler -> 32 conditioning latents
    "text_embedding": "text_embedding",
    "text_pos_embedding": "text_pos_embedding",
    "text_head": "text_head",
    "mel_embedding": "mel_embedding",
    "mel_pos_embedding": "mel_pos_embedding",
    "mel_head": "mel_head",
    "transformer": "gpt",  # the GPT-2 layers (transformers GPT2Model)
    "final_norm": "final_norm",
}

# learning-rate multiplier side -> parts (everything else: the transformer and the final norm, multiplier 1).
SIDES: dict[str, tuple[str, ...]] = {
    "text": ("text_embedding", "text_pos_embedding", "text_head"),
    "audio": ("mel_embedding", "mel_pos_embedding", "mel_head"),
    "conditioning": ("conditioning_encoder", "conditioning_perceiver"),
}


def side_of(part: str) -> str:
    """The learning-rate side (``text``, ``audio``, ``conditioning`` or ``other``) of a part."""
    return _shared.side_of(part, SIDES)
