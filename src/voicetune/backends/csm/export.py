"""CSM export: a merged model folder that ``CsmForConditionalGeneration.from_pretrained`` loads unchanged, and
the LoRA adapter in peft's own format.

    PACKAGE/
      config.json, generation_config.json, model.safetensors   the model, LoRA folded into the weights
      tokenizer.json, tokenizer_config.json, processor_config.json (or preprocessor_config.json),
      chat_template.jinja                                       the processor, as the base had it
      voicetune_csm.json                                        speaker id, reference transcripts
      adapter/adapter_model.safetensors, adapter_config.json    LoRA runs only: ``PeftModel.from_pretrained(
                                                                base_model, "adapter")`` on the base model

**The codebook-embedding warning.** CSM ties its codebook embeddings: the backbone's frame embedding and the
depth decoder's input embedding are one tensor (``tie_codebooks_embeddings``). A checkpoint that stores two
*different* copies (a finetune whose trainer untied them) makes transformers warn, on every load, that "both
are present in the checkpoints with different values, so we will NOT tie them": the model then runs with the
two copies as stored. voicetune keeps CSM's tie while training (full finetuning updates the one shared tensor;
LoRA leaves it alone), so its exports store one copy and load without the warning. When the base itself has
two different copies, voicetune says so once at load time, trains both as they are, and writes a config that
says so (``tie_codebooks_embeddings: false``), so that the export loads without the warning too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from voicetune.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
BACKBONE_AUDIO = "backbone_model.embed_tokens.embed_audio_tokens.weight"
DEPTH_AUDIO = "depth_decoder.model.embed_tokens.weight"


def codebook_embeddings_tied(model: Any) -> bool:
    """Whether the backbone's and the depth decoder's codebook embeddings are one tensor (CSM's design)."""
    return (
        model.backbone_model.embed_tokens.embed_audio_tokens.weight
        is model.depth_decoder.model.embed_tokens.weight
    )


def explain_untied(model: Any, where: Path | str) -> None:
    """After loading: when the config ties the codebook embeddings but the checkpoint held two different
    copies (transformers' "will NOT tie them" warning), say what it means and make the config match the
    weights."""
    if codebook_embeddings_tied(model) or not getattr(model.config, "tie_codebooks_embeddings", False):
        return
    diff = (model.backbone_model.embed_tokens.embed_audio_tokens.weight.detach().float()
            - model.depth_decoder.model.embed_tokens.weight.detach().float()).abs().max().item()
    logger.warning(
        "%s stores two different copies of CSM's codebook embeddings (backbone input and depth-decoder "
        "input; largest difference %.3g), which CSM normally ties into one tensor: some earlier finetune "
        "untied them. This is what transformers' warning above ('both are present ... with different "
        "values, so we will NOT tie them') means: the model runs with both copies as stored, which is how "
        "it was trained, so its output is as intended. voicetune trains them as two tensors and writes "
        "tie_codebooks_embeddings: false into the config of its exports, which then load without the "
        "warning.",
        where,
        diff,
    )
    model.config.tie_codebooks_embeddings = False
    model.config.tie_word_embeddings = False


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def save_merged(model: Any, processor: Any, out: Path, dtype: torch.dtype) -> None:
    """The model folder with every LoRA adapter folded into its weights (``dtype``: the base's), and the
    processor files; ``from_pretrained`` of ``out`` gives the finetuned model."""
    from voicetune.backends.adapters import merged_state_dict

    state = _cast({k: v.detach().cpu() for k, v in merged_state_dict(model).items()}, dtype)
    if codebook_embeddings_tied(model):  # one tensor under two names: store it once, as transformers does
        state.pop(BACKBONE_AUDIO, None)
    model.save_pretrained(out, state_dict=state)
    processor.save_pretrained(out)


def save_adapter(model: Any, settings: Any, out: Path, base: str) -> Path:
    """The LoRA adapter in peft's format (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    from voicetune.backends.adapters import save_adapter as save

    return save(model, settings, Path(out) / ADAPTER_DIR, base_model=base)


def write_sidecar(out: Path, data: dict[str, Any]) -> None:
    from voicetune.backends.csm.layout import SIDECAR

    atomic_write_json(Path(out) / SIDECAR, data)
