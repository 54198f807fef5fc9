"""Named parts of a GPT of the UnifiedVoice family: what ``--freeze`` accepts and which per-side learning-rate
multiplier applies. Each backend lists its own (``backends/<name>/parts.py``); the rules are shared here.

Kept free of heavy imports: options modules validate ``--freeze`` and ``--lora-targets`` against these up
front. (Moved from ``backends/xtts/parts.py``.)
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LORA_TARGETS", "gpt_part", "side_of", "split_names"]


# Module names of transformers' GPT2Block that LoRA may adapt (all transformers ``Conv1D``; gpt_tts/lora.py).
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")


def split_names(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty string -> [])."""
    return [v.strip() for v in value.split(",") if v.strip()]


def side_of(part: str, sides: Mapping[str, tuple[str, ...]]) -> str:
    """The learning-rate side of a part (a key of ``sides``), or ``other``."""
    for side, parts in sides.items():
        if part in parts:
            return side
    return "other"


def gpt_part(param_name: str, parts: Mapping[str, str]) -> str:
    """The part (a key of ``parts``: part name -> GPT submodule) of a GPT parameter, by its first path
    component; ``transformer`` for anything else."""
    head = param_name.split(".")[0]
    for part, module in parts.items():
        if module == head:
            return part
    return "transformer"
