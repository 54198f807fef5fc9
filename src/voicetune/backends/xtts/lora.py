"""LoRA adapters on the XTTS GPT's transformer layers (peft), their adapter-only state and merging for export.

The adapters go into transformers' ``GPT2Model`` inside coqui-tts's ``GPT`` (``gpt.gpt``): its blocks hold
``attn.c_attn`` (fused q/k/v), ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj``, all transformers ``Conv1D``
(weights stored ``[in, out]``, hence ``fan_in_fan_out=True``). No other module of the XTTS GPT uses those
names (the conditioning encoder has ``qkv``/``proj_out``, the perceiver ``to_q``/``to_kv``/``to_out``).

A LoRA checkpoint holds only the adapter weights (plus any other parameter that trains, e.g. the rows of a
resized text embedding); :func:`merged_state_dict` folds the adapters back into the base weights so that
the exported ``model.pth`` has exactly the keys coqui-tts expects.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

ADAPTER = "default"
_LORA_KEY = ".lora_"
_BASE_LAYER = ".base_layer."


@dataclass(frozen=True)
class LoraSettings:
    """What :func:`apply_lora` injects; stored in checkpoints so that any loader can rebuild the adapters."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraSettings:
        return cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]))


def has_lora(module: torch.nn.Module) -> bool:
    """Whether peft LoRA layers were injected into ``module``."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def apply_lora(gpt: Any, settings: LoraSettings) -> int:
    """Inject LoRA adapters into ``gpt.gpt`` (the GPT-2 layers); returns the number of adapter parameters.

    The adapters start as a no-op (``lora_B`` is zero), so the model's outputs are unchanged until training.
    Only the adapters are set to train here; the caller decides about the rest of the GPT.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(gpt):
        raise ValueError("LoRA adapters are already injected into this model")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        fan_in_fan_out=True,
        bias="none",
    )
    device = next(gpt.gpt.parameters()).device
    dtype = next(gpt.gpt.parameters()).dtype
    inject_adapter_in_model(config, gpt.gpt, adapter_name=ADAPTER)
    n = 0
    for name, p in gpt.gpt.named_parameters():
        if _LORA_KEY in name:
            p.data = p.data.to(device=device, dtype=dtype)
            p.requires_grad_(True)
            n += p.numel()
    if n == 0:
        raise ValueError(f"LoRA found no target module among {list(settings.targets)}; fix --lora-targets")
    logger.info(
        "LoRA r=%d alpha=%g dropout=%g on %s: %.2f M adapter parameters",
        settings.rank,
        settings.alpha,
        settings.dropout,
        ",".join(settings.targets),
        n / 1e6,
    )
    return n


def is_lora_key(key: str) -> bool:
    return _LORA_KEY in key


def merged_state_dict(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every LoRA layer folded into its base weight and the peft keys removed.

    ``...c_attn.base_layer.weight`` + scaling * B @ A becomes ``...c_attn.weight``; the ``lora_*`` keys are
    dropped. The module itself is not changed (the adapters keep training after an export).
    """
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, m in module.named_modules(remove_duplicate=False):  # aliases (gpt_inference) too
        if isinstance(m, LoraLayer) and ADAPTER in getattr(m, "lora_A", {}):
            with torch.no_grad():
                deltas[f"{prefix}{name}.weight" if name else f"{prefix}weight"] = m.get_delta_weight(ADAPTER)
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict(prefix=prefix).items():
        if is_lora_key(key):
            continue
        key = key.replace(_BASE_LAYER, ".")
        if key in deltas:
            value = (value.float() + deltas[key].float()).to(value.dtype)
        out[key] = value.detach()
    return out
