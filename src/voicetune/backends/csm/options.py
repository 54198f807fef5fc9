"""The CSM backend's own options (``--backend csm``; the ``csm:`` section of a config.yaml).

**Reading the loss.** CSM predicts each audio frame's 32 Mimi codes in two stages: the backbone predicts
codebook 0 (the semantic code: what is said, and much of who says it and how), and the depth decoder predicts
codebooks 1-31 from it (acoustic detail). The console, metrics.jsonl and the report show both parts:
``c0`` (``backbone_ce``) and ``c1+`` (``depth_ce``, the mean over the 31 depth codebooks). The depth part is
close to irreducible: fine acoustic codes carry recording noise that no model predicts, so it barely moves,
and with the default weights it dominates a total of about 12 nats. A total that drops from 12.0 to 11.9 can
therefore hide a real fall of ``c0``, the part where a new voice is learned. Judge a run by ``c0`` and, above
all, by the evaluation (speaker similarity, WER, MOS against the base model), not by the total.

**Compute amortisation** (the CSM paper): the backbone learns on every frame, the depth decoder on a random
``--depth-fraction`` of them (1/16 by default), which cuts its memory and time by ~16x while its loss stays an
unbiased estimate.

What is generic (optimizer, schedule, precision, LoRA rank/alpha/dropout, compile, CUDA graphs, whole-layer
recomputation) stays in :class:`~voicetune.config.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from voicetune.backends.csm.parts import LORA_PARTS, LORA_TARGETS, PARTS, split_names
from voicetune.config import BackendOptions, ConfigError, opt

if TYPE_CHECKING:
    from voicetune.config import TrainConfig


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


LOSS_NOTE = (
    "CSM's loss has two parts: c0 (backbone_ce: codebook 0, what is said and much of the voice) and c1+ "
    "(depth_ce: codebooks 1-31, fine acoustic detail, close to irreducible). The depth part dominates the "
    "total and barely moves, so a nearly flat total (e.g. 12.0 -> 11.9) can hide a real fall of c0. Judge "
    "the run by c0 and by the evaluation against the base model, not by the total."
)


@dataclass
class CsmOptions(BackendOptions):
    """Options of the Sesame CSM backend (flags ``--<field>``)."""

    backbone_weight: float = opt(
        1.0, "Weight of the backbone loss (cross-entropy of codebook 0, every frame) in the total.", low=0.0)
    depth_weight: float = opt(
        1.0, "Weight of the depth-decoder loss (mean cross-entropy of codebooks 1-31 on the --depth-fraction "
        "frames) in the total. The two parts are logged separately (c0, c1+): the depth part is nearly "
        "irreducible and keeps the total flat while c0 falls; judge a run by c0 and the evaluation.", low=0.0)
    depth_fraction: float = opt(
        1 / 16,
        "Compute amortisation (CSM paper): the depth decoder trains on this random fraction of each "
        "batch's audio frames (rounded up to a multiple of 8 on a GPU, so compiled shapes repeat); the "
        "backbone on all of them. 1: every frame (what transformers' processor does by default); 0: the "
        "depth decoder does not train.",
        low=0.0,
        high=1.0,
    )
    lora_targets: str = opt(
        ",".join(LORA_TARGETS),
        "Comma-separated Linear layers of each transformer layer that get LoRA adapters "
        "(--finetune lora): q_proj, k_proj, v_proj, o_proj (attention), gate_proj, up_proj, down_proj (MLP).",
    )
    lora_parts: str = opt(
        "backbone,depth_decoder", "Comma-separated transformer stacks that get LoRA adapters: backbone (the "
        "1B Llama-like model that predicts codebook 0) and/or depth_decoder (the small one that predicts "
        "codebooks 1-31). The Mimi codec never does.")
    freeze: str = opt(
        "", "Comma-separated parts that do not train in full finetuning: text_embedding, audio_embedding, "
        "backbone, backbone_head, depth_decoder, depth_head. The Mimi codec never trains.")
    speaker_id: int = opt(
        0,
        "CSM speaker id ('[0]' in the prompt) of the dataset's speaker, in training and synthesis; a dataset "
        "of several speakers gives them consecutive ids from this one, in name order.",
        low=0,
    )
    context_clips: int = opt(
        0, "Voice prompting in training: put this many other clips of the same speaker (text and audio, not "
        "scored) before each training clip, as synthesis puts the reference clips. 0: each clip alone "
        "(faster); synthesis always uses the references as context.", low=0, high=8)
    context_seconds: float = opt(
        24.0,
        "Synthesis (and training with --context-clips): at most this many seconds of reference audio as "
        "context before the text to speak.",
        low=0.0,
    )
    synthesis_max_seconds: float = opt(
        30.0, "Synthesis: stop generating after this many seconds of audio (or 2 s + 0.25 s per character of "
        "the text, whichever is shorter) when the model has not ended the utterance itself.", low=0.5)
    temperature: float = opt(0.9, "Synthesis sampling temperature (backbone and depth decoder).", low=0.01)
    top_k: int = opt(50, "Synthesis: sample among the top-k codes of each codebook.", low=1)
    pad_multiple: int = opt(
        64, "Pad each batch's sequence length up to a multiple of this on a GPU (1: no padding), so that a "
        "compiled graph or a CUDA graph is reused; padding is ignored by the loss. CPU runs do not pad.",
        low=1, resumable=True)
    compile_scope: str = opt(
        "layers", "What one compiled graph covers (with --compile): layers (one transformer layer, reused by "
        "every layer of a stack: compiles in seconds) or model (the whole loss: fewer kernels, minutes of "
        "compiling per padded length).", choices=("layers", "model"), resumable=True)
    attention: str = opt(
        "sdpa", "Attention kernels in training: sdpa (fused scaled_dot_product_attention, the flash kernel "
        "without a mask) or eager (transformers' reference math).", choices=("sdpa", "eager"), resumable=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        targets = split_names(self.lora_targets)
        _check(bool(targets) and set(targets) <= set(LORA_TARGETS),
               f"lora_targets {self.lora_targets!r}: choose from {list(LORA_TARGETS)}; fix --lora-targets")
        stacks = split_names(self.lora_parts)
        _check(bool(stacks) and set(stacks) <= set(LORA_PARTS),
               f"lora_parts {self.lora_parts!r}: choose from {list(LORA_PARTS)}; fix --lora-parts")
        unknown = sorted(set(split_names(self.freeze)) - set(PARTS))
        _check(not unknown, f"freeze: unknown part(s) {unknown}; choose from {list(PARTS)}; fix --freeze")
        _check(self.backbone_weight + self.depth_weight > 0,
               "backbone_weight and depth_weight are both 0: nothing would train; fix --backbone-weight")

    def validate(self, cfg: TrainConfig) -> None:
        _check(cfg.finetune == "lora" or bool(set(PARTS) - set(split_names(self.freeze))),
               "--freeze names every part: nothing would train; remove some, or use --finetune lora")
        _check(self.depth_fraction > 0 or self.backbone_weight > 0,
               "--depth-fraction 0 leaves only the backbone loss, whose --backbone-weight is 0; raise one")

    @classmethod
    def help_notes(cls) -> str:
        return _HELP_NOTES

    def recompute_modes(self) -> tuple[str, ...]:
        """No recomputation, or whole transformer layers (--gradient-checkpointing)."""
        return ("none", "layer")

    @property
    def trains_depth(self) -> bool:
        """Whether the depth decoder's loss is computed at all."""
        return self.depth_fraction > 0 and self.depth_weight > 0


_HELP_NOTES = """\
csm backend: on a GPU, add --param-dtype bf16 --optimizer-state-dtype bf16. With them LoRA trains in bf16 with
  fused AdamW moments in fixed buffers, which CUDA graphs need: 205 samples/s on an H200 against 46 without them
  (benchmarks/results/csm_train_step_h200_2026-12-03.json), at the same memory.
"""
