"""The XTTS backend's own options (``--backend xtts``; the ``xtts:`` section of a config.yaml).

Everything here is specific to the XTTS-v2 GPT: its two losses, its named parts (``--freeze``, the per-side
learning rates), the GPT-2 modules LoRA adapts, its BPE vocabulary, its dropout, and the speed options of its
packed loss (``backends/xtts/speed.py``). What is generic (optimizer, schedule, precision, LoRA rank/alpha,
compile, CUDA graphs, whole-layer recomputation) stays in :class:`~voicetune.config.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from voicetune.backends.xtts.parts import LORA_TARGETS, PARTS, split_names
from voicetune.config import BackendOptions, ConfigError, opt

if TYPE_CHECKING:
    from voicetune.config import TrainConfig


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class XttsOptions(BackendOptions):
    """Options of the XTTS-v2 backend (flags ``--<field>``)."""

    text_ce_weight: float = opt(
        0.01, "Weight of the text cross-entropy in the total loss (Coqui default 0.01).", low=0.0)
    mel_ce_weight: float = opt(
        1.0, "Weight of the audio-code (mel) cross-entropy in the total loss.", low=0.0)
    lora_targets: str = opt(
        "c_attn,c_proj,c_fc", "Comma-separated GPT-2 modules that get LoRA adapters: c_attn (fused q/k/v), "
        "c_proj (attention output and MLP output), c_fc (MLP input).")
    freeze: str = opt(
        "", "Comma-separated GPT parts that do not train: conditioning_encoder, conditioning_perceiver, "
        "text_embedding, text_pos_embedding, text_head, mel_embedding, mel_pos_embedding, mel_head, "
        "transformer, final_norm.")
    lr_text_mult: float = opt(
        1.0, "LR multiplier of the text side (text_embedding, text_pos_embedding, text_head).")
    lr_audio_mult: float = opt(
        1.0, "LR multiplier of the audio side (mel_embedding, mel_pos_embedding, mel_head).")
    lr_cond_mult: float = opt(1.0, "LR multiplier of the conditioning encoder and perceiver.")
    dropout: float = opt(
        -1.0, "Dropout of the GPT-2 layers while training (-1: the base model's, 0.1 in XTTS-v2).")
    extend_vocab: bool = opt(
        False, "Extend the BPE vocabulary with the characters (and merges for the words) of the transcripts "
        "that it cannot encode (new scripts, accented names); text_embedding and text_head grow, new rows "
        "start at the mean of the old ones. The run keeps the extended vocab.json and export writes it.")
    extend_vocab_size: int = opt(
        256, "At most this many new tokens from --extend-vocab (every missing character is added "
        "regardless).", low=1)
    fast_loss: bool = opt(
        True, "Packed GPT forward for the training loss (padding at the end of each row, so attention needs "
        "no mask and runs the flash kernel; same loss as coqui-tts's GPT.forward). false: coqui-tts's "
        "GPT.forward.", resumable=True)
    attention: str = opt(
        "sdpa", "Attention kernels: sdpa (fused scaled_dot_product_attention) or eager (the original math).",
        choices=("sdpa", "eager"), resumable=True)
    compile_scope: str = opt(
        "layers", "What one compiled graph covers: layers (one transformer layer, reused by all 30, plus the "
        "conditioning encoder and the loss head: compiles in seconds) or model (the whole loss: fewer "
        "launches, minutes of compiling per padded length).", choices=("layers", "model"), resumable=True)
    pad_multiple: int = opt(
        64, "Pad each batch's sequence length up to a multiple of this (1: no padding), so that a compiled "
        "graph is reused; padding is ignored by the loss.", low=1, resumable=True)
    checkpoint_mlp: bool = opt(
        False, "Recompute only each transformer layer's MLP (norm, first projection, activation: its largest "
        "tensors) in the backward pass. Less memory than none at a few percent of speed; unlike "
        "--gradient-checkpointing it draws no random numbers, so it works with --cuda-graphs. Packed loss "
        "only.", resumable=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        targets = split_names(self.lora_targets)
        _check(bool(targets) and set(targets) <= set(LORA_TARGETS),
               f"lora_targets {self.lora_targets!r}: choose from {list(LORA_TARGETS)}; fix --lora-targets")
        unknown = sorted(set(split_names(self.freeze)) - set(PARTS))
        _check(not unknown, f"freeze: unknown part(s) {unknown}; choose from {list(PARTS)}; fix --freeze")
        for name in ("lr_text_mult", "lr_audio_mult", "lr_cond_mult"):
            flag = "--" + name.replace("_", "-")
            _check(getattr(self, name) > 0, f"{name} must be > 0 (to stop a part training use --freeze); fix {flag}")
        _check(self.dropout == -1.0 or 0.0 <= self.dropout < 1.0,
               "dropout must be -1 or lie in [0, 1); fix --dropout")
        _check(not self.checkpoint_mlp or self.fast_loss,
               "checkpoint_mlp works on the packed loss; set --fast-loss (or drop --checkpoint-mlp)")

    def validate(self, cfg: TrainConfig) -> None:
        _check(not (self.checkpoint_mlp and cfg.gradient_checkpointing),
               "--gradient-checkpointing recomputes whole layers, MLPs included; drop --checkpoint-mlp")
        _check(self.fast_loss or cfg.compile != "on",
               "compile needs the packed loss; set --fast-loss or --compile off")
        _check(cfg.finetune == "lora" or bool(set(PARTS) - set(split_names(self.freeze))),
               "--freeze names every part: nothing would train; remove some, or use --finetune lora")

    def recompute_modes(self) -> tuple[str, ...]:
        """Each layer's MLP (packed loss only), then whole layers."""
        return ("none", "mlp", "layer") if self.fast_loss else ("none", "layer")

    def recompute(self) -> str:
        return "mlp" if self.checkpoint_mlp else "none"

    def with_recompute(self, mode: str) -> XttsOptions:
        return replace(self, checkpoint_mlp=mode == "mlp")
