"""Options every backend of the UnifiedVoice family has: what trains (``--freeze``, ``--lora-targets``,
``--dropout``) and how fast (the packed loss, attention kernels, compile scope, padding, MLP recomputation).

A backend's options dataclass declares each of these fields with the factory below (so that it keeps its own
field order, defaults and wording) and inherits :class:`GptTtsOptions` for their checks::

    @dataclass
    class MyOptions(GptTtsOptions, BackendOptions):
        PARTS: ClassVar[dict[str, str]] = MY_PARTS
        freeze: str = freeze_field(MY_PARTS)
        ...

(The speed fields and their checks moved here from ``backends/xtts/options.py`` unchanged.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from voicetune.backends.gpt_tts.parts import LORA_TARGETS, split_names
from voicetune.config import ConfigError, opt

if TYPE_CHECKING:
    from voicetune.config import TrainConfig


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def lora_targets_field() -> Any:
    return opt(
        "c_attn,c_proj,c_fc",
        "Comma-separated GPT-2 modules that get LoRA adapters: c_attn (fused q/k/v), "
        "c_proj (attention output and MLP output), c_fc (MLP input).",
    )


def freeze_field(parts: Iterable[str]) -> Any:
    return opt("", f"Comma-separated GPT parts that do not train: {', '.join(parts)}.")


def dropout_field(base: str) -> Any:
    return opt(-1.0, f"Dropout of the GPT-2 layers while training (-1: the base model's, {base}).")


def fast_loss_field(reference: str) -> Any:
    return opt(True, "Packed GPT forward for the training loss (padding at the end of each row, so attention "
               f"needs no mask and runs the flash kernel; same loss as coqui-tts's {reference}). false: "
               f"coqui-tts's {reference}.", resumable=True)


def attention_field() -> Any:
    return opt("sdpa", "Attention kernels: sdpa (fused scaled_dot_product_attention) or eager (the original "
               "math).", choices=("sdpa", "eager"), resumable=True)


def compile_scope_field(n_layers: int) -> Any:
    return opt(
        "layers",
        f"What one compiled graph covers: layers (one transformer layer, reused by all {n_layers}, "
        "plus the conditioning encoder and the loss head: compiles in seconds) or model (the whole loss: "
        "fewer launches, minutes of compiling per padded length).",
        choices=("layers", "model"),
        resumable=True,
    )


def pad_multiple_field() -> Any:
    return opt(64, "Pad each batch's sequence length up to a multiple of this (1: no padding), so that a "
               "compiled graph is reused; padding is ignored by the loss.", low=1, resumable=True)


def checkpoint_mlp_field() -> Any:
    return opt(
        False,
        "Recompute only each transformer layer's MLP (norm, first projection, activation: its "
        "largest tensors) in the backward pass. Less memory than none at a few percent of speed; unlike "
        "--gradient-checkpointing it draws no random numbers, so it works with --cuda-graphs. Packed loss "
        "only.",
        resumable=True,
    )


class GptTtsOptions:
    """The checks of the shared fields (a mixin of a backend's options dataclass, before BackendOptions)."""

    PARTS: ClassVar[dict[str, str]] = {}
    """The backend's part names (--freeze) -> GPT submodules."""

    lora_targets: str
    freeze: str
    dropout: float
    fast_loss: bool
    attention: str
    compile_scope: str
    pad_multiple: int
    checkpoint_mlp: bool

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # BackendOptions: choices and bounds
        targets = split_names(self.lora_targets)
        _check(bool(targets) and set(targets) <= set(LORA_TARGETS),
               f"lora_targets {self.lora_targets!r}: choose from {list(LORA_TARGETS)}; fix --lora-targets")
        unknown = sorted(set(split_names(self.freeze)) - set(self.PARTS))
        _check(
            not unknown, f"freeze: unknown part(s) {unknown}; choose from {list(self.PARTS)}; fix --freeze"
        )
        _check(self.dropout == -1.0 or 0.0 <= self.dropout < 1.0,
               "dropout must be -1 or lie in [0, 1); fix --dropout")
        _check(not self.checkpoint_mlp or self.fast_loss,
               "checkpoint_mlp works on the packed loss; set --fast-loss (or drop --checkpoint-mlp)")

    def validate(self, cfg: TrainConfig) -> None:
        _check(not (self.checkpoint_mlp and cfg.gradient_checkpointing),
               "--gradient-checkpointing recomputes whole layers, MLPs included; drop --checkpoint-mlp")
        _check(self.fast_loss or cfg.compile != "on",
               "compile needs the packed loss; set --fast-loss or --compile off")
        _check(cfg.finetune == "lora" or bool(set(self.PARTS) - set(split_names(self.freeze))),
               "--freeze names every part: nothing would train; remove some, or use --finetune lora")

    def recompute_modes(self) -> tuple[str, ...]:
        """Each layer's MLP (packed loss only), then whole layers."""
        return ("none", "mlp", "layer") if self.fast_loss else ("none", "layer")

    def recompute(self) -> str:
        return "mlp" if self.checkpoint_mlp else "none"

    def with_recompute(self, mode: str) -> Any:
        return replace(self, checkpoint_mlp=mode == "mlp")  # type: ignore[type-var]
