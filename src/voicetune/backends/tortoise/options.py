"""The Tortoise backend's own options (``--backend tortoise``; the ``tortoise:`` section of a config.yaml).

The training controls that mrq's ai-voice-cloning wiki documents for finetuning Tortoise's autoregressive
model with DL-Art-School, with the same defaults: the text and mel loss weights, the text and mel
learning-rate weights, and, as backend defaults of the generic options
(:meth:`TortoiseOptions.generic_defaults`), the learning rate, MultiStepLR by epochs, AdamW's betas and weight
decay and the gradient clip. The fields shared with XTTS (freeze, LoRA targets, dropout, the speed options of
the packed loss) come from
:mod:`voicetune.backends.gpt_tts.options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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
from voicetune.backends.tortoise.parts import PARTS
from voicetune.config import BackendOptions, ConfigError, opt

SAMPLE_RATE = 22050
MILESTONES = [2, 4, 9, 18, 25, 33, 50]  # ai-voice-cloning's default "Learning Rate Schedule", in epochs


@dataclass
class TortoiseOptions(GptTtsOptions, BackendOptions):
    """Options of the Tortoise backend (flags ``--<field>``)."""

    PARTS: ClassVar[dict[str, str]] = PARTS

    text_ce_weight: float = opt(
        0.01, "Weight of the text cross-entropy (loss_text_ce) in the total loss: DL-Art-School's 0.01.",
        low=0.0, basic=True)
    mel_ce_weight: float = opt(
        1.0, "Weight of the audio-code cross-entropy (loss_mel_ce) in the total loss: DL-Art-School's 1.",
        low=0.0, basic=True)
    text_lr_weight: float = opt(
        0.01, "\"Text LR weight\": learning-rate multiplier of the text side (text_embedding, "
        "text_pos_embedding, text_head). 0.01 with --mel-lr-weight 1 finetunes a new voice in English (the "
        "default); 1 with --mel-lr-weight 0.01 teaches the model a new language.", low=0.0, basic=True)
    mel_lr_weight: float = opt(
        1.0, "\"Mel LR weight\": learning-rate multiplier of the audio-code side (mel_embedding, "
        "mel_pos_embedding, mel_head). 1 for a new English voice (the default), 0.01 for a new language.",
        low=0.0, basic=True)
    conditioning_clips: int = opt(
        2, "Conditioning inputs per training clip: crops of other clips of the same speaker (the clip itself "
        "when it is the speaker's only one), as DL-Art-School's num_conditioning_candidates.", low=1, high=2)
    conditioning_length: int = opt(
        44000, "Samples (at 22.05 kHz) of each conditioning crop: DL-Art-School's conditioning_length (2 s).",
        low=1024, high=132300)
    lora_targets: str = lora_targets_field()
    freeze: str = freeze_field(PARTS)
    dropout: float = dropout_field("0.1 in tortoise-v2")
    fast_loss: bool = fast_loss_field("UnifiedVoice.forward")
    attention: str = attention_field()
    compile_scope: str = compile_scope_field(30)
    pad_multiple: int = pad_multiple_field()
    checkpoint_mlp: bool = checkpoint_mlp_field()

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared checks (gpt_tts.options.GptTtsOptions)
        for name in ("text_lr_weight", "mel_lr_weight"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 (to stop a part training use --freeze); "
                                  f"fix --{name.replace('_', '-')}")

    @classmethod
    def generic_defaults(cls) -> dict[str, Any]:
        """ai-voice-cloning's DL-Art-School defaults: learning rate 1e-5, MultiStepLR (gamma 0.5) at epochs
        [2, 4, 9, 18, 25, 33, 50], AdamW betas (0.9, 0.96) with weight decay 0.01, gradient clip 4."""
        return {
            "lr": 1e-5,
            "scheduler": "multistep",
            "milestones": list(MILESTONES),
            "milestone_unit": "epochs",
            "lr_gamma": 0.5,
            "betas": [0.9, 0.96],
            "weight_decay": 0.01,
            "grad_clip": 4.0,
        }

    @classmethod
    def help_notes(cls) -> str:
        return _HELP_NOTES


_HELP_NOTES = """\
tortoise backend: the training controls of the ai-voice-cloning wiki (DL-Art-School), with its defaults:
  loss weights          --text-ce-weight 0.01 --mel-ce-weight 1 (loss_text_ce x 0.01, loss_mel_ce x 1)
  LR weights            --text-lr-weight 0.01 --mel-lr-weight 1: a new voice in English (the default);
                        --text-lr-weight 1 --mel-lr-weight 0.01: teaching the model a new language
  learning rate         --lr 1e-5
  schedule              --scheduler multistep --milestone-unit epochs --lr-gamma 0.5
                        --milestones 2 4 9 18 25 33 50 (the LR halves after each of these epochs)
  optimizer             AdamW --betas 0.9 0.96 --weight-decay 0.01, gradient clipping --grad-clip 4
  clips                 up to 11.6 s at 22.05 kHz (255,995 samples; --max-audio-seconds lowers it)
  resume                --resume RUN_DIR continues a run exactly where it stopped
  finetune a finetune   --base may be a voicetune Tortoise export, or a tortoise-v2 folder holding an
                        ai-voice-cloning / DL-Art-School finetune as its autoregressive.pth
  multi-GPU             --gpus N (or torchrun / accelerate launch)
`voicetune train --backend tortoise --help-all` describes every option."""
