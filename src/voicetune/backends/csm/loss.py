"""The CSM training loss from cached codes, with compute amortisation, and what makes it fast and lean.

``csm_loss`` computes what ``CsmForConditionalGeneration.forward(..., labels=...)`` computes (a test checks it
against transformers on the same frames), from the batches of :mod:`.features`:

* the backbone reads text embeddings at text positions and the sum of the codebook embeddings at frame
  positions; its hidden state at position t-1 predicts codebook 0 of the frame at t (``backbone_ce``, every
  target frame);
* the depth decoder, for the chosen frames only (``depth_idx``: the CSM paper's compute amortisation), reads
  that hidden state and the frame's codebooks 0..N-2 and predicts codebooks 1..N-1 (``depth_ce``).

How it differs from the plain path, for speed: no Mimi in the step (codes are cached); no attention mask
(padding at the end of each row: the flash kernel); the codebook heads as one batched matmul instead of 31;
the transformer layers run from a loop here, so that one compiled layer serves a whole stack
(``--compile-scope layers``), whole-layer recomputation is a flag, and the shapes depend only on the padded
length (CUDA graphs: one per shape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

LOSS_KEYS = ("tokens", "codes", "is_audio", "target", "depth_idx", "depth_valid", "text_embeds")
Layer = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def run_layer(layer: torch.nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One ``CsmDecoderLayer`` with a plain causal mask (``attention_mask=None``: SDPA's ``is_causal``)."""
    out = layer(h, attention_mask=None, position_embeddings=(cos, sin))
    return out[0] if isinstance(out, tuple) else out  # transformers 4.x returned a tuple


def run_stack(
    stack: Any, h: torch.Tensor, layer_fn: Layer = run_layer, recompute: bool = False
) -> torch.Tensor:
    """The layers and final norm of a transformers CSM stack (``backbone_model`` or
    ``depth_decoder.model``)."""
    positions = torch.arange(h.shape[1], device=h.device)[None]
    cos, sin = stack.rotary_emb(h, positions)
    for layer in stack.layers:
        if recompute and torch.is_grad_enabled():
            h = checkpoint(layer_fn, layer, h, cos, sin, use_reentrant=False)
        else:
            h = layer_fn(layer, h, cos, sin)
    return stack.norm(h)


def backbone_inputs(model: Any, tokens: torch.Tensor, codes: torch.Tensor, is_audio: torch.Tensor,
                    text_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Input embeddings: text token embeddings (``text_embeds`` when the batch brings them, looked up on the
    CPU), or at frame positions the sum of the frame's codebook embeddings (transformers'
    ``_merge_input_ids_with_input_values``, with the codes given)."""
    text = model.embed_text_tokens(tokens) if text_embeds is None else text_embeds
    audio = model.backbone_model.embed_tokens(codes)
    return torch.where(is_audio[..., None], audio.to(text.dtype), text)


def depth_hidden(model: Any, first_hidden: torch.Tensor, codes: torch.Tensor, layer_fn: Layer = run_layer,
                 recompute: bool = False) -> torch.Tensor:
    """Depth-decoder hidden states ``[D, N, H]`` for frames with ``codes`` ``[D, N]``: position 0 reads the
    backbone's hidden state (``first_hidden``), position i the embedding of codebook i-1."""
    dec = model.depth_decoder.model
    ids = F.pad(codes[:, :-1], (1, 0))  # position 0 is replaced by the backbone state
    offsets = torch.clamp(torch.arange(ids.shape[1], device=ids.device) - 1, min=0) * int(dec.vocab_size)
    x = dec.embed_tokens(ids + offsets)
    x = torch.cat([first_hidden[:, None].to(x.dtype), x[:, 1:]], dim=1)
    return run_stack(dec, dec.inputs_embeds_projector(x), layer_fn, recompute)


def codebook_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Logits ``[D, N-1, V]`` of codebooks 1..N-1 from depth positions 1..N-1: ``CsmCodebooksHead`` as one
    batched matmul (one projection per codebook)."""
    weight = model.depth_decoder.codebooks_head.weight  # [N-1, H, V]
    return torch.einsum("dnh,nhv->dnv", hidden[:, 1:], weight.to(hidden.dtype))


def csm_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    backbone_weight: float = 1.0,
    depth_weight: float = 1.0,
    layer_fn: Layer = run_layer,
    recompute: bool = False,
) -> dict[str, torch.Tensor]:
    """{"loss": weighted total, "backbone_ce", "depth_ce"} of a collated batch (``depth_ce`` is 0 without
    depth frames)."""
    tokens, codes, target = batch["tokens"], batch["codes"], batch["target"]
    x = backbone_inputs(model, tokens, codes, batch["is_audio"], batch.get("text_embeds"))
    h = run_stack(model.backbone_model, x, layer_fn, recompute)
    logits = model.lm_head(h[:, :-1])
    labels = codes[:, 1:, 0].masked_fill(~target[:, 1:], -100)
    backbone_ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    if "depth_idx" in batch and depth_weight > 0:
        idx, valid = batch["depth_idx"], batch["depth_valid"]
        flat_h, flat_codes = h.flatten(0, 1), codes.flatten(0, 1)
        frame_codes = flat_codes[idx]  # [D, N]
        hidden = depth_hidden(model, flat_h[idx - 1], frame_codes, layer_fn, recompute)
        dlogits = codebook_logits(model, hidden)
        dlabels = frame_codes[:, 1:].masked_fill(~valid[:, None], -100)
        depth_ce = F.cross_entropy(dlogits.flatten(0, 1).float(), dlabels.flatten(), ignore_index=-100)
    else:
        depth_ce = torch.zeros((), device=h.device)
    total = backbone_weight * backbone_ce + depth_weight * depth_ce
    return {"loss": total, "backbone_ce": backbone_ce.detach(), "depth_ce": depth_ce.detach()}


# ------------------------------------------------------------------------------------------- speed settings


@dataclass(frozen=True)
class Speed:
    """How the loss runs (from the config and the device; backend.configure_training)."""

    compile: bool = False
    compile_scope: str = "layers"
    compile_mode: str = "default"
    recompute: bool = False
    pad_multiple: int = 1
    depth_multiple: int = 1


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_speed(cfg: Any, opts: Any, device: torch.device) -> Speed:
    """The loss settings of ``cfg`` on ``device``: compile (auto: CUDA with Triton), padding to a multiple and
    depth frames in multiples of 8 on a GPU (repeating shapes), whole-layer recomputation."""
    on_gpu = device.type == "cuda"
    compile_on = cfg.compile == "on" or (cfg.compile == "auto" and on_gpu and _triton_available())
    return Speed(compile=compile_on, compile_scope=opts.compile_scope, compile_mode=cfg.compile_mode,
                 recompute=cfg.recompute == "layer", pad_multiple=opts.pad_multiple if on_gpu else 1,
                 depth_multiple=8 if on_gpu else 1)


def _raise_recompile_limit(limit: int = 64) -> None:
    """Each padded length is one compiled graph; allow more than dynamo's default of 8 per function."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name) and getattr(dc, name) < limit:
            setattr(dc, name, limit)


class CsmLoss:
    """``csm_loss`` with the speed settings applied (compiled layers or a compiled whole loss)."""

    def __init__(self, speed: Speed, backbone_weight: float, depth_weight: float):
        self.speed, self.backbone_weight, self.depth_weight = speed, backbone_weight, depth_weight
        self._layer: Layer = run_layer
        self._whole: Any = None
        mode = None if speed.compile_mode == "default" else speed.compile_mode
        if speed.compile:
            _raise_recompile_limit()
            if speed.compile_scope == "model":
                self._whole = torch.compile(csm_loss, mode=mode, dynamic=False)
            else:  # one compiled layer serves every layer of a stack (its weights are graph inputs)
                self._layer = torch.compile(run_layer, mode=mode, dynamic=False)

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fn = self._whole or csm_loss
        return fn(model, batch, self.backbone_weight, self.depth_weight, self._layer, self.speed.recompute)
