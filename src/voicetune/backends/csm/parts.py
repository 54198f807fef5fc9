"""Named parts of ``CsmForConditionalGeneration``: what ``--freeze`` accepts and where LoRA may go.

Kept free of heavy imports: :mod:`.options` validates its flags against these up front.
"""

from __future__ import annotations

# part name -> the parameter-name prefixes of transformers' CsmForConditionalGeneration it covers.
PARTS: dict[str, tuple[str, ...]] = {
    "text_embedding": ("embed_text_tokens.",),  # text token embeddings of the backbone (Llama-3 vocabulary)
    # the codebook embeddings: the backbone sums one per codebook for each frame, and the depth decoder reads
    # the same table (CSM ties them: one tensor under two names)
    "audio_embedding": ("backbone_model.embed_tokens.", "depth_decoder.model.embed_tokens."),
    "backbone": ("backbone_model.layers.", "backbone_model.norm."),  # the Llama-like transformer
    "backbone_head": ("lm_head.",),  # hidden state -> codebook 0
    "depth_decoder": ("depth_decoder.model.layers.", "depth_decoder.model.norm.",
                      "depth_decoder.model.inputs_embeds_projector."),
    "depth_head": ("depth_decoder.codebooks_head.",),  # one projection per codebook 1..N-1
}

# The transformer stacks LoRA may adapt (--lora-parts) -> the module-name prefix of their layers.
LORA_PARTS: dict[str, str] = {
    "backbone": "backbone_model.layers",
    "depth_decoder": "depth_decoder.model.layers",
}

# Linear layers of CsmDecoderLayer (Llama-like) that LoRA may adapt.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

CODEC_PREFIX = "codec_model."  # the Mimi codec: never trains, never gets adapters


def split_names(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty string -> [])."""
    return [v.strip() for v in value.split(",") if v.strip()]


def part_of(param_name: str) -> str:
    """The :data:`PARTS` name of a parameter of the model ("" for the codec or an unknown name)."""
    for part, prefixes in PARTS.items():
        if param_name.startswith(prefixes):
            return part
    return ""


def lora_pattern(parts: list[str], targets: list[str]) -> str:
    """The peft ``target_modules`` regex (matched against full module names) for LoRA on the layers of
    ``parts`` (:data:`LORA_PARTS` names) in the modules named ``targets``: it never matches the Mimi codec,
    whose attention layers share the names q_proj/k_proj/v_proj/o_proj."""
    stacks = "|".join(LORA_PARTS[p].replace(".", r"\.") for p in parts)
    return rf"^(?:{stacks})\.\d+\.(?:self_attn|mlp)\.(?:{'|'.join(targets)})$"
