"""What trains in the XTTS GPT: full finetuning, LoRA, frozen parts, per-part learning rates, an extended
vocabulary, and the checkpoint state that follows from them.

A checkpoint (``trainable.pt``) of plain full finetuning is the GPT's state dict, as before. When only part of
the GPT trains (LoRA adapters, frozen parts) it holds only what trains, and when the model's structure differs
from the base (LoRA adapters, a grown vocabulary) it says so under :data:`META_KEY`, so that any loader
(resume, evaluation, export, synthesis) rebuilds the same structure on the base before loading the weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from voicetune.backends.adapters import LoraSettings, is_lora_key
from voicetune.backends.xtts.options import XttsOptions
from voicetune.backends.xtts.parts import PARTS, side_of, split_names

logger = logging.getLogger(__name__)

META_KEY = "__voicetune__"
RUN_VOCAB = "vocab.json"  # the extended vocabulary, in the run folder


def gpt_part(param_name: str) -> str:
    """The :data:`PARTS` name of a GPT parameter (by its first path component)."""
    head = param_name.split(".")[0]
    for part, module in PARTS.items():
        if module == head:
            return part
    return "transformer"


def set_dropout(gpt: Any, p: float) -> None:
    """Set the dropout probability of the GPT-2 layers (attention, residual and embedding dropout)."""
    for m in gpt.gpt.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    for block in gpt.gpt.h:  # transformers' eager attention reads the probability from here
        if hasattr(block.attn, "attn_dropout"):
            block.attn.attn_dropout.p = p


def set_trainable(gpt: Any, cfg: Any, vocab_extended: bool) -> tuple[int, int]:
    """``requires_grad`` from cfg: every GPT weight (full) or the LoRA adapters (lora), minus ``--freeze``.

    With LoRA and an extended vocabulary the text embedding and head train too (the new rows must learn).
    Returns (trainable, total) parameter counts.
    """
    lora = cfg.finetune == "lora"
    frozen = set(split_names(XttsOptions.of(cfg).freeze))
    for name, p in gpt.named_parameters():
        part = gpt_part(name)
        if is_lora_key(name):
            p.requires_grad_(True)
        elif lora:
            p.requires_grad_(
                vocab_extended and part in ("text_embedding", "text_head") and part not in frozen
            )
        else:
            p.requires_grad_(part not in frozen)
    counts = [(p.numel(), p.requires_grad) for p in gpt.parameters()]
    return sum(n for n, g in counts if g), sum(n for n, _ in counts)


def param_groups(gpt: Any, cfg: Any) -> list[dict[str, Any]]:
    """Optimizer groups by learning-rate side (text, audio, conditioning, other) x weight decay.

    Weight decay applies to the weight matrices of Linear/Conv layers only: biases, LayerNorm gains, token and
    position embeddings and the perceiver's latent queries are not decayed (Coqui's
    ``optimizer_wd_only_on_weights`` excludes the same kinds). A side whose multiplier is not 1 gets its own
    groups (``text/decay``...) with ``lr = cfg.lr x multiplier``; everything else is in ``decay``/``no_decay``
    (the optimizer's default LR): with every multiplier at 1 that is the two groups of Coqui's recipe.
    """
    from transformers.pytorch_utils import Conv1D

    matrix_modules = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    opts = XttsOptions.of(cfg)
    mults = {
        "text": opts.lr_text_mult,
        "audio": opts.lr_audio_mult,
        "conditioning": opts.lr_cond_mult,
        "other": 1.0,
    }
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in gpt.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            side = side_of(gpt_part(f"{module_name}.{name}" if module_name else name))
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
    order = ["other", "text", "audio", "conditioning"]
    return [groups[k] for k in sorted(groups, key=lambda k: (order.index(k[0]), not k[1]))]


def trainable_state(gpt: Any, vocab_json: str | None, lora: LoraSettings | None) -> dict[str, Any]:
    """What a checkpoint holds: the whole GPT state, or (when only part trains) just the trained tensors."""
    from voicetune.backends.xtts.layout import INFERENCE_ONLY_GPT_PREFIXES

    full = {
        k: v.detach().cpu()
        for k, v in gpt.state_dict().items()
        if not k.startswith(INFERENCE_ONLY_GPT_PREFIXES)
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


def read_run_vocab(run_dir: Path | None) -> str | None:
    """The extended vocab.json text kept in a run folder, if any."""
    if run_dir is None:
        return None
    path = Path(run_dir) / RUN_VOCAB
    return path.read_text(encoding="utf-8") if path.is_file() else None


def summarize(gpt: Any) -> str:
    counts: dict[str, int] = {}
    for name, p in gpt.named_parameters():
        if p.requires_grad:
            key = "lora" if is_lora_key(name) else gpt_part(name)
            counts[key] = counts.get(key, 0) + p.numel()
    return ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def lora_settings(cfg: Any) -> LoraSettings | None:
    if cfg.finetune != "lora":
        return None
    targets = split_names(XttsOptions.of(cfg).lora_targets)
    return LoraSettings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(targets))
