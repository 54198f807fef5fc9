"""Named parts of Tortoise's autoregressive model (coqui-tts ``UnifiedVoice``): what ``--freeze`` accepts and
which learning-rate side (--text-lr-weight, --mel-lr-weight) a parameter is on. No heavy imports."""

from __future__ import annotations

from voicetune.backends.gpt_tts.parts import LORA_TARGETS, split_names

__all__ = ["LORA_TARGETS", "PARTS", "SIDES", "split_names"]

# part name -> the UnifiedVoice submodule it is (TTS/tts/layers/tortoise/autoregressive.py).
PARTS: dict[str, str] = {
    "conditioning_encoder": "conditioning_encoder",  # reference mels -> one conditioning latent
    "text_embedding": "text_embedding",
    "text_pos_embedding": "text_pos_embedding",
    "text_head": "text_head",
    "mel_embedding": "mel_embedding",
    "mel_pos_embedding": "mel_pos_embedding",
    "mel_head": "mel_head",
    "transformer": "gpt",  # the GPT-2 layers (transformers GPT2Model)
    "final_norm": "final_norm",
}

# learning-rate side -> parts (everything else: the conditioning encoder, the transformer, the final norm: x
# 1).
SIDES: dict[str, tuple[str, ...]] = {
    "text": ("text_embedding", "text_pos_embedding", "text_head"),
    "mel": ("mel_embedding", "mel_pos_embedding", "mel_head"),
}
