"""What trains in the XTTS GPT: the shared rules of :mod:`voicetune.backends.gpt_tts.structure` with XTTS's
parts and options, and its extended vocabulary (kept in the run folder).

A checkpoint (``trainable.pt``) of plain full finetuning is the GPT's state dict. When only part of the GPT
trains (LoRA adapters, frozen parts) it holds only what trains, and when the model's structure differs from
the base (LoRA adapters, a grown vocabulary) it says so under ``META_KEY``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicetune.backends.adapters import LoraSettings
from voicetune.backends.gpt_tts import structure as shared
from voicetune.backends.gpt_tts.structure import META_KEY, set_dropout, split_meta
from voicetune.backends.xtts.options import XttsOptions
from voicetune.backends.xtts.parts import PARTS, SIDES, split_names

__all__ = [
    "META_KEY",
    "RUN_VOCAB",
    "gpt_part",
    "lora_settings",
    "param_groups",
    "read_run_vocab",
    "set_dropout",
    "set_trainable",
    "split_meta",
    "summarize",
    "trainable_state",
]

RUN_VOCAB = "vocab.json"  # the extended vocabulary, in the run folder


def gpt_part(param_name: str) -> str:
    """The :data:`PARTS` name of a GPT parameter (by its first path component)."""
    return shared.gpt_part(param_name, PARTS)


def set_trainable(gpt: Any, cfg: Any, vocab_extended: bool) -> tuple[int, int]:
    """``requires_grad`` from cfg: every GPT weight (full) or the LoRA adapters (lora), minus ``--freeze``.

    With LoRA and an extended vocabulary the text embedding and head train too (the new rows must learn).
    Returns (trainable, total) parameter counts.
    """
    extra = ("text_embedding", "text_head") if vocab_extended else ()
    return shared.set_trainable(gpt, cfg.finetune, set(split_names(XttsOptions.of(cfg).freeze)), PARTS, extra)


def param_groups(gpt: Any, cfg: Any) -> list[dict[str, Any]]:
    """Optimizer groups by learning-rate side (text, audio, conditioning: --lr-*-mult, other) x weight decay
    (:func:`voicetune.backends.gpt_tts.structure.param_groups`)."""
    opts = XttsOptions.of(cfg)
    mults = {"text": opts.lr_text_mult, "audio": opts.lr_audio_mult, "conditioning": opts.lr_cond_mult}
    return shared.param_groups(gpt, cfg, PARTS, SIDES, mults)


def trainable_state(gpt: Any, vocab_json: str | None, lora: LoraSettings | None) -> dict[str, Any]:
    """What a checkpoint holds: the whole GPT state, or (when only part trains) just the trained tensors."""
    from voicetune.backends.xtts.layout import INFERENCE_ONLY_GPT_PREFIXES

    return shared.trainable_state(gpt, INFERENCE_ONLY_GPT_PREFIXES, vocab_json, lora)


def read_run_vocab(run_dir: Path | None) -> str | None:
    """The extended vocab.json text kept in a run folder, if any."""
    if run_dir is None:
        return None
    path = Path(run_dir) / RUN_VOCAB
    return path.read_text(encoding="utf-8") if path.is_file() else None


def summarize(gpt: Any) -> str:
    return shared.summarize(gpt, PARTS)


def lora_settings(cfg: Any) -> LoraSettings | None:
    return shared.lora_settings(cfg, XttsOptions.of(cfg).lora_targets)
