"""The XTTS backend's own options (``--backend xtts``; the ``xtts:`` section of a config.yaml).

Everything here is specific to the XTTS-v2 GPT: its two losses, its named parts (``--freeze``, the per-side
learning rates), the GPT-2 modules LoRA adapts, its BPE vocabulary, its dropout, and the speed options of its
packed loss (``backends/xtts/speed.py``). What is generic (optimizer, schedule, precision, LoRA rank/alpha,
compile, CUDA graphs, whole-layer recomputation) stays in :class:`~voicetune.config.TrainConfig`. The fields
shared with Tortoise and their checks come from :mod:`voicetune.backends.gpt_tts.options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from voicetune.backends.gpt_tts.options import (
    GptTtsOptions,
    attention_field,
    checkpoint_mlp_field,
    compile_scope_field,
    dropout_field,
    fast_loss_field,
    freeze_field,
    lora_targets_field,
    pad_multiple_field,
)
from voicetune.backends.xtts.parts import PARTS
from voicetune.config import BackendOptions, ConfigError, opt


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class XttsOptions(GptTtsOptions, BackendOptions):
    """Options of the XTTS-v2 backend (flags ``--<field>``)."""

    PARTS: ClassVar[dict[str, str]] = PARTS

    text_ce_weight: float = opt(
        0.01, "Weight of the text cross-entropy in the total loss (Coqui default 0.01).", low=0.0)
    mel_ce_weight: float = opt(
        1.0, "Weight of the audio-code (mel) cross-entropy in the total loss.", low=0.0)
    lora_targets: str = lora_targets_field()
    freeze: str = freeze_field(PARTS)
    lr_text_mult: float = opt(
        1.0, "LR multiplier of the text side (text_embedding, text_pos_embedding, text_head).")
    lr_audio_mult: float = opt(
        1.0, "LR multiplier of the audio side (mel_embedding, mel_pos_embedding, mel_head).")
    lr_cond_mult: float = opt(1.0, "LR multiplier of the conditioning encoder and perceiver.")
    dropout: float = dropout_field("0.1 in XTTS-v2")
    extend_vocab: bool = opt(
        False, "Extend the BPE vocabulary with the characters (and merges for the words) of the transcripts "
        "that it cannot encode (new scripts, accented names); text_embedding and text_head grow, new rows "
        "start at the mean of the old ones. The run keeps the extended vocab.json and export writes it.")
    extend_vocab_size: int = opt(
        256, "At most this many new tokens from --extend-vocab (every missing character is added "
        "regardless).", low=1)
    fast_loss: bool = fast_loss_field("GPT.forward")
    attention: str = attention_field()
    compile_scope: str = compile_scope_field(30)
    pad_multiple: int = pad_multiple_field()
    checkpoint_mlp: bool = checkpoint_mlp_field()

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared checks (gpt_tts.options.GptTtsOptions)
        for name in ("lr_text_mult", "lr_audio_mult", "lr_cond_mult"):
            flag = "--" + name.replace("_", "-")
            _check(
                getattr(self, name) > 0,
                f"{name} must be > 0 (to stop a part training use --freeze); fix {flag}",
            )
