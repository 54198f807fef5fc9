"""What trains in CSM: LoRA on the backbone and/or depth-decoder layers, or full finetuning minus frozen
parts; optimizer groups; the checkpoint state that follows from them.

The Mimi codec never trains. A checkpoint (``trainable.pt``) holds the tensors that train (the adapters, or
the unfrozen weights) and, under :data:`META_KEY`, what a loader needs to rebuild the same model on the base:
the LoRA settings, the speaker id and the transcripts of the training clips (by content hash: synthesis
prompts with those clips as context).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from voicetune.backends.adapters import LoraSettings, is_lora_key
from voicetune.backends.csm.options import CsmOptions
from voicetune.backends.csm.parts import CODEC_PREFIX, lora_pattern, part_of, split_names

logger = logging.getLogger(__name__)

META_KEY = "__voicetune__"
TRAINABLE_MODULES = ("backbone_model", "depth_decoder", "lm_head", "embed_text_tokens")


def trainable_view(model: Any) -> torch.nn.ModuleDict:
    """The model without its codec, as one module (the same submodules: names and parameters are the
    model's)."""
    return torch.nn.ModuleDict({name: getattr(model, name) for name in TRAINABLE_MODULES})


def lora_settings(cfg: Any) -> LoraSettings | None:
    if cfg.finetune != "lora":
        return None
    opts = CsmOptions.of(cfg)
    targets = split_names(opts.lora_targets)
    return LoraSettings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(targets),
                        target_regex=lora_pattern(split_names(opts.lora_parts), targets))


def set_trainable(model: Any, cfg: Any) -> tuple[int, int]:
    """``requires_grad`` from cfg: the LoRA adapters (lora), or every weight of the parts not in ``--freeze``
    (full); never the codec. Returns (trainable, total) parameter counts, codec excluded."""
    lora = cfg.finetune == "lora"
    frozen = set(split_names(CsmOptions.of(cfg).freeze))
    for name, p in model.named_parameters():
        if name.startswith(CODEC_PREFIX):
            p.requires_grad_(False)
        elif is_lora_key(name):
            p.requires_grad_(True)
        else:
            p.requires_grad_(not lora and part_of(name) not in frozen)
    counts = [(p.numel(), p.requires_grad) for p in trainable_view(model).parameters()]
    return sum(n for n, g in counts if g), sum(n for n, _ in counts)


def summarize(model: Any) -> str:
    counts: dict[str, int] = {}
    for name, p in trainable_view(model).named_parameters():
        if p.requires_grad:
            key = "lora" if is_lora_key(name) else part_of(name)
            counts[key] = counts.get(key, 0) + p.numel()
    return ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def param_groups(model: Any, cfg: Any) -> list[dict[str, Any]]:
    """Two groups: weight matrices with weight decay (Linear layers, LoRA matrices, the codebook heads), and
    the rest without (embeddings, norm gains)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    for name, p in trainable_view(model).named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        embedding = part_of(name) in ("text_embedding", "audio_embedding") and not is_lora_key(name)
        (decay if p.ndim >= 2 and not embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def trainable_state(model: Any, lora: LoraSettings | None, extra: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds: the tensors that train, under every name they have (a tied tensor under both:
    torch.save stores it once), plus :data:`META_KEY`."""
    named = list(trainable_view(model).named_parameters(remove_duplicate=False))
    trains = [(n, p) for n, p in named if p.requires_grad]
    copies: dict[int, torch.Tensor] = {}
    state: dict[str, Any] = {n: copies.setdefault(id(p), p.detach().cpu().clone()) for n, p in trains}
    state[META_KEY] = {"format": 1, "partial": len(trains) != len(named),
                       "lora": lora.to_dict() if lora is not None else None, **extra}
    return state


def split_meta(state: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a loaded trainable.pt."""
    if isinstance(state, dict) and META_KEY in state:
        state = dict(state)
        return state, state.pop(META_KEY) or {}
    return state, {}


def cast_for_training(model: Any, dtype: torch.dtype, trained_dtype: torch.dtype) -> None:
    """Frozen weights (never updated: bf16 halves their memory and the casts) to ``dtype``, trained ones to
    ``trained_dtype``; the codec keeps its own (it does not run in training)."""
    with torch.no_grad():
        for p in trainable_view(model).parameters():
            target = trained_dtype if p.requires_grad else dtype
            if p.is_floating_point() and p.dtype != target:
                p.data = p.data.to(target)
