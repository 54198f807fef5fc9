"""Named parts of the XTTS GPT: what ``--freeze`` accepts and which per-part learning-rate multiplier applies.

Kept free of heavy imports: :mod:`.options` validates ``--freeze`` and ``--lora-targets`` against these up
front.
"""

from __future__ import annotations

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

# Module names of transformers' GPT2Block that LoRA may adapt (all transformers ``Conv1D``).
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")


def split_names(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty string -> [])."""
    return [v.strip() for v in value.split(",") if v.strip()]


def side_of(part: str) -> str:
    """The learning-rate side (``text``, ``audio``, ``conditioning`` or ``other``) of a part."""
    for side, parts in SIDES.items():
        if part in parts:
            return side
    return "other"
