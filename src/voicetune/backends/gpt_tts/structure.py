"""What trains in a GPT of the UnifiedVoice family: full finetuning, LoRA, frozen parts, per-side learning
rates, and the checkpoint state that follows from them. Each backend passes its own part names
(``backends/<name>/parts.py``). (Moved from ``backends/xtts/structure.py``; XTTS's vocabulary stays there.)

A checkpoint (``trainable.pt``) of plain full finetuning is the GPT's state dict. When only part of the GPT
trains (LoRA adapters, frozen parts) it holds only what trains, and when the model's structure differs from
the base (LoRA adapters, a grown vocabulary) it says so under :data:`META_KEY`, so that any loader (resume,
evaluation, export, synthesis) rebuilds the same structure on the base before loading the weights.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch

from voicetune.backends.adapters import LoraSettings, is_lora_key
from voicetune.backends.gpt_tts.parts import gpt_part, side_of, split_names

META_KEY = "__voicetune__"


def set_dropout(gpt: Any, p: float) -> None:
    """Set the dropout probability of the GPT-2 layers (attention, residual and embedding dropout)."""
    for m in gpt.gpt.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    for block in gpt.gpt.h:  # transformers' eager attention reads the probability from here
        if hasattr(block.attn, "attn_dropout"):
            block.attn.attn_dropout.p = p


def set_trainable(gpt: Any, finetune: str, frozen: Collection[str], parts: Mapping[str, str],
                  lora_extra: Collection[str] = ()) -> tuple[int, int]:
    """``requires_grad``: every GPT weight (``finetune`` full) or the LoRA adapters (lora), minus the
    ``frozen`` parts. ``lora_extra``: parts that train beside the adapters (e.g. the grown rows of an extended
    vocabulary). Returns (trainable, total) parameter counts."""
    lora = finetune == "lora"
    for name, p in gpt.named_parameters():
        part = gpt_part(name, parts)
        if is_lora_key(name):
            p.requires_grad_(True)
        elif lora:
            p.requires_grad_(part in lora_extra and part not in frozen)
        else:
            p.requires_grad_(part not in frozen)
    counts = [(p.numel(), p.requires_grad) for p in gpt.parameters()]
    return sum(n for n, g in counts if g), sum(n for n, _ in counts)


def param_groups(gpt: Any, cfg: Any, parts: Mapping[str, str], sides: Mapping[str, tuple[str, ...]],
                 mults: Mapping[str, float]) -> list[dict[str, Any]]:
    """Optimizer groups by learning-rate side (the keys of ``sides``, then ``other``) x weight decay.

    Weight decay applies to the weight matrices of Linear/Conv layers only: biases, LayerNorm gains, token and
    position embeddings and (XTTS) the perceiver's latent queries are not decayed (Coqui's
    ``optimizer_wd_only_on_weights`` excludes the same kinds). A side whose multiplier (``mults``) is not 1
    gets its own groups (``text/decay``...) with ``lr = cfg.lr x multiplier``; everything else is in
    ``decay``/``no_decay`` (the optimizer's default LR): with every multiplier at 1 that is the two groups of
    Coqui's recipe.
    """
    from transformers.pytorch_utils import Conv1D

    matrix_modules = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    mults = {**{side: 1.0 for side in sides}, **mults, "other": 1.0}
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in gpt.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            side = side_of(gpt_part(f"{module_name}.{name}" if module_name else name, parts), sides)
            side = side if mults[side] != 1.0 else "other"  # a side gets its own groups only for its own LR
            decay = isinstance(module, matrix_modules) and name == "weight"
            group = groups.get((side, decay))
            if group is None:
                kind = "decay" if decay else "no_decay"
                group = groups[(side, decay)] = {
                    "params": [],
                    "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": kind if side == "other" else f"{side}/{kind}",
                }
                if side != "other":
                    group["lr"] = cfg.lr * mults[side]
            group["params"].append(p)
    order = ["other", *sides]
    return [groups[k] for k in sorted(groups, key=lambda k: (order.index(k[0]), not k[1]))]


def trainable_state(gpt: Any, inference_prefixes: tuple[str, ...], vocab_json: str | None,
                    lora: LoraSettings | None) -> dict[str, Any]:
    """What a checkpoint holds: the whole GPT state, or (when only part trains) just the trained tensors.
    ``inference_prefixes``: keys of inference-only aliases that never reach a saved state."""
    full = {
        k: v.detach().cpu()
        for k, v in gpt.state_dict().items()
        if not k.startswith(inference_prefixes)
    }
    trains = {n for n, p in gpt.named_parameters() if p.requires_grad}
    partial = trains != {n for n, _ in gpt.named_parameters()}
    state = {k: v for k, v in full.items() if k in trains} if partial else full
    if partial or vocab_json is not None or lora is not None:
        state[META_KEY] = {
            "format": 1,
            "partial": partial,
            "vocab": vocab_json,
            "lora": lora.to_dict() if lora is not None else None,
        }
    return state


def split_meta(state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, meta) of a loaded trainable.pt (meta {} for a plain state dict)."""
    if isinstance(state, dict) and META_KEY in state:
        state = dict(state)
        return state, state.pop(META_KEY) or {}
    return state, {}


def summarize(gpt: Any, parts: Mapping[str, str]) -> str:
    counts: dict[str, int] = {}
    for name, p in gpt.named_parameters():
        if p.requires_grad:
            key = "lora" if is_lora_key(name) else gpt_part(name, parts)
            counts[key] = counts.get(key, 0) + p.numel()
    return ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def lora_settings(cfg: Any, lora_targets: str) -> LoraSettings | None:
    """The LoRA adapters of ``cfg`` (``--finetune lora``) on the comma-separated ``lora_targets``; None for
    full finetuning."""
    if cfg.finetune != "lora":
        return None
    return LoraSettings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(split_names(lora_targets)))
