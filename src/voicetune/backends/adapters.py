"""Model-agnostic LoRA adapters (peft): inject, recognise, save in peft's own format, and merge for export.

A backend decides WHERE adapters go (its module and target names, e.g. XTTS's GPT-2 ``Conv1D`` layers,
``backends/gpt_tts/lora.py``); everything else about them is the same for every model and lives here, in the
spirit of torchtune's ``modules/peft/_utils.py``. Adapters are injected with ``peft.inject_adapter_in_model``
into the backend's own module (no ``PeftModel`` wrapper), so the module keeps its class and its state-dict
keys, plus ``lora_A``/``lora_B`` keys and ``base_layer`` renames that :func:`merged_state_dict` removes again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from voicetune.utils.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file names: PeftModel.from_pretrained reads them
ADAPTER_CONFIG = "adapter_config.json"
_LORA_KEY = ".lora_"
_BASE_LAYER = ".base_layer."


@dataclass(frozen=True)
class LoraSettings:
    """What :func:`inject_lora` injects; stored in checkpoints so that any loader can rebuild the adapters."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    # A regex over full module names that replaces ``targets`` as peft's target_modules when set: for models
    # where a target name also occurs in modules that must not be adapted (CSM's Mimi codec has q_proj too).
    target_regex: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraSettings:
        return cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]),
                   str(d.get("target_regex") or ""))

    def peft_config(self, fan_in_fan_out: bool = False) -> Any:
        """The ``peft.LoraConfig`` of these settings (``fan_in_fan_out``: weights stored [in, out], as in
        transformers' ``Conv1D``)."""
        from peft import LoraConfig

        targets: Any = self.target_regex or list(self.targets)
        # (type: ignore: peft annotates lora_alpha as int, but scales by lora_alpha / r in floats)
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,  # type: ignore[arg-type]
                          target_modules=targets, fan_in_fan_out=fan_in_fan_out, bias="none")


def has_lora(module: torch.nn.Module) -> bool:
    """Whether peft LoRA layers were injected into ``module``."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def is_lora_key(key: str) -> bool:
    """Whether a parameter/state-dict key belongs to an adapter (``...lora_A...``/``...lora_B...``)."""
    return _LORA_KEY in key


def inject_lora(module: torch.nn.Module, settings: LoraSettings, fan_in_fan_out: bool = False) -> int:
    """Inject LoRA adapters into ``module``'s target layers; returns the number of adapter parameters.

    The adapters start as a no-op (``lora_B`` is zero) on the module's device and dtype, and are set to train;
    the caller decides about the rest of the module. Raises ValueError when no target module matched.
    """
    from peft import inject_adapter_in_model

    if has_lora(module):
        raise ValueError("LoRA adapters are already injected into this model")
    first = next(module.parameters())
    try:
        inject_adapter_in_model(settings.peft_config(fan_in_fan_out), module, adapter_name=ADAPTER)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"LoRA: {e}; fix --lora-targets") from None
    n = 0
    for name, p in module.named_parameters():
        if is_lora_key(name):
            p.data = p.data.to(device=first.device, dtype=first.dtype)
            p.requires_grad_(True)
            n += p.numel()
    if n == 0:
        raise ValueError(f"LoRA found no target module among {list(settings.targets)}; fix --lora-targets")
    logger.info(
        "LoRA r=%d alpha=%g dropout=%g on %s: %.2f M adapter parameters",
        settings.rank,
        settings.alpha,
        settings.dropout,
        settings.target_regex or ",".join(settings.targets),
        n / 1e6,
    )
    return n


PEFT_PREFIX = "base_model.model."  # where a PeftModel keeps the wrapped module: its saved keys start with it


def adapter_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights alone, keyed as ``PeftModel.save_pretrained`` writes them (and
    ``PeftModel.from_pretrained`` reads them) for a PeftModel wrapping ``module``."""
    from peft import get_peft_model_state_dict

    return {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in
            get_peft_model_state_dict(module, adapter_name=ADAPTER).items()}


def save_adapter(module: torch.nn.Module, settings: LoraSettings, out: Path, fan_in_fan_out: bool = False,
                 base_model: str | None = None) -> Path:
    """Write the adapter in peft's format (``adapter_model.safetensors`` + ``adapter_config.json``) to
    ``out``,
    each file atomically; ``peft.PeftModel.from_pretrained(base, out)`` loads it onto the same base module."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        save_file(adapter_state_dict(module), str(tmp))
    config = settings.peft_config(fan_in_fan_out).to_dict()
    config["base_model_name_or_path"] = base_model
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    atomic_write_text(out / ADAPTER_CONFIG, json.dumps(config, indent=2, default=str) + "\n")
    return out


def merged_state_dict(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every LoRA layer folded into its base weight and the peft keys removed.

    ``...q.base_layer.weight`` + scaling * B @ A becomes ``...q.weight``; the ``lora_*`` keys are dropped, so
    the keys are exactly those of the module without adapters. The module itself is not changed (the adapters
    keep training after an export).
    """
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, m in module.named_modules(remove_duplicate=False):  # aliases too
        if isinstance(m, LoraLayer) and ADAPTER in getattr(m, "lora_A", {}):
            with torch.no_grad():
                # (type: ignore: the base LoraLayer leaves get_delta_weight to its layer kinds; all have it)
                delta = m.get_delta_weight(ADAPTER)  # type: ignore[attr-defined]
                deltas[f"{prefix}{name}.weight" if name else f"{prefix}weight"] = delta
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict(prefix=prefix).items():
        if is_lora_key(key):
            continue
        key = key.replace(_BASE_LAYER, ".")
        if key in deltas:
            value = (value.float() + deltas[key].float()).to(value.dtype)
        out[key] = value.detach()
    return out
