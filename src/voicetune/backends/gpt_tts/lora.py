"""Where LoRA goes in a GPT of the UnifiedVoice family (XTTS's GPT, Tortoise's UnifiedVoice); the adapters
themselves are model-agnostic (:mod:`voicetune.backends.adapters`).

The adapters go into transformers' ``GPT2Model`` inside the coqui-tts GPT (``gpt.gpt``): its blocks hold
``attn.c_attn`` (fused q/k/v), ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj``, all transformers ``Conv1D``
(weights stored ``[in, out]``, hence ``fan_in_fan_out=True``). No other module of these GPTs uses those
names (the conditioning encoder has ``qkv``/``proj_out``, XTTS's perceiver ``to_q``/``to_kv``/``to_out``).

A LoRA checkpoint holds only the adapter weights (plus any other parameter that trains, e.g. the rows of a
resized text embedding); :func:`~voicetune.backends.adapters.merged_state_dict` folds the adapters back into
the base weights so that the exported weights have exactly the keys coqui-tts expects.
(Moved from ``backends/xtts/lora.py``.)
"""

from __future__ import annotations

from typing import Any

from voicetune.backends.adapters import LoraSettings, inject_lora
from voicetune.backends.gpt_tts.parts import LORA_TARGETS

__all__ = ["FAN_IN_FAN_OUT", "LORA_TARGETS", "apply_lora"]

FAN_IN_FAN_OUT = True  # transformers' Conv1D stores weights [in, out]


def apply_lora(gpt: Any, settings: LoraSettings) -> int:
    """Inject LoRA adapters into ``gpt.gpt`` (the GPT-2 layers); returns the number of adapter parameters.

    The adapters start as a no-op (``lora_B`` is zero), so the model's outputs are unchanged until training.
    Only the adapters are set to train here; the caller decides about the rest of the GPT.
    """
    return inject_lora(gpt.gpt, settings, fan_in_fan_out=FAN_IN_FAN_OUT)
