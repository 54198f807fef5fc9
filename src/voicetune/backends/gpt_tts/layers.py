"""The pieces of the packed GPT-TTS forward, shared by every GPT of Tortoise's UnifiedVoice family.

XTTS's ``GPT`` (coqui-tts ``TTS/tts/layers/xtts/gpt.py``) and Tortoise's ``UnifiedVoice``
(``TTS/tts/layers/tortoise/autoregressive.py``) are one design: a transformers ``GPT2Model`` without its own
token and position tables, fed ``[conditioning | text embeddings + positions | audio-code embeddings +
positions]``, with a conditioning encoder (``conditioning_encoder``: tortoise ``AttentionBlock``s) in front
and two heads (``text_head``, ``mel_head``) after ``final_norm``. What differs is the conditioning (XTTS: a
perceiver's 32 latents; Tortoise: one latent) and which padding the loss counts; each backend supplies those
(its ``speed.py``) and uses these pieces for the rest:

* :func:`layers`: the GPT-2 blocks with a plain causal mask on SDPA, optionally recomputing each MLP
  (:func:`_block`) or each whole layer in the backward pass;
* :func:`embed`: the packed input embeddings; :func:`head_loss`: the final norms, both heads and the two
  cross-entropies (:func:`aligned_linear` pads the heads' odd output sizes for the tensor cores);
* :class:`SdpaQKVAttention` / :func:`set_attention`: fused attention in the conditioning encoder and GPT-2.

Moved here from ``backends/xtts/speed.py`` unchanged (names and numbers), so that both backends share them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from voicetune.config import RECOMPUTE_MODES


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (1: unchanged)."""
    return -(-n // multiple) * multiple if multiple > 1 else n


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, sdpa: bool) -> torch.Tensor:
    """Causal attention over ``[B, H, L, d]``: SDPA (flash on GPUs) or the explicit softmax (for checking)."""
    if sdpa:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    length = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")).float(), dim=-1).to(v.dtype)
    return F.dropout(weights, dropout) @ v


def _mlp(block: Any, h: torch.Tensor) -> torch.Tensor:
    """A ``GPT2Block``'s MLP on its second norm, up to (not including) the MLP's dropout: no random numbers
    inside, so recomputing it needs no saved RNG state and can be captured in a CUDA graph."""
    mlp = block.mlp
    return mlp.c_proj(mlp.act(mlp.c_fc(block.ln_2(h))))


def _block(block: Any, h: torch.Tensor, sdpa: bool, recompute_mlp: bool = False) -> torch.Tensor:
    """One transformers ``GPT2Block`` (pre-LN attention + MLP) with a plain causal mask. ``recompute_mlp``:
    keep only the MLP's input for the backward pass and recompute the rest there (its norm, first projection
    and activation: the largest tensors of a layer)."""
    attn = block.attn
    b, length, d = h.shape
    heads = attn.num_heads
    x = block.ln_1(h)
    q, k, v = attn.c_attn(x).split(d, dim=2)
    q, k, v = (t.view(b, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    dropout = attn.attn_dropout.p if block.training else 0.0
    y = _attention(q, k, v, dropout, sdpa).transpose(1, 2).reshape(b, length, d)
    h = h + attn.resid_dropout(attn.c_proj(y))
    if recompute_mlp and torch.is_grad_enabled():
        out = checkpoint(_mlp, block, h, use_reentrant=False, preserve_rng_state=False)
    else:
        out = _mlp(block, h)
    return h + block.mlp.dropout(out)


def check_gpt2_blocks(gpt2: Any, family: str = "GPT-TTS") -> None:
    """The packed forward reimplements GPT2Block: refuse configurations it does not cover."""
    cfg = gpt2.config
    unsupported = [
        name
        for name in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention")
        if getattr(cfg, name, False)
    ]
    if not getattr(cfg, "scale_attn_weights", True):
        unsupported.append("scale_attn_weights=False")
    if unsupported:
        raise ValueError(f"the packed {family} forward does not support GPT2Config {unsupported}; "
                         "set fast_loss: false")


def layers(gpt2: Any, h: torch.Tensor, sdpa: bool = True, checkpointing: str = "none",
           block_fn: Any = None) -> torch.Tensor:
    """The layers of transformers' ``GPT2Model`` on input embeddings, without its final LayerNorm (its
    position table is coqui's zero function). ``block_fn(block, h, sdpa, recompute_mlp)`` runs one layer
    (default :func:`_block`; a compiled one for speed). ``checkpointing`` (one of ``RECOMPUTE_MODES``):
    "layer" recomputes each whole layer in the backward pass (saving and restoring the RNG state for its
    dropout), "mlp" only each layer's MLP (no random numbers: CUDA graphs can capture it)."""
    if checkpointing not in RECOMPUTE_MODES:
        raise ValueError(f"checkpointing must be one of {RECOMPUTE_MODES}, not {checkpointing!r}")
    block_fn = block_fn or _block
    h = gpt2.drop(h)
    for block in gpt2.h:
        if checkpointing == "layer" and torch.is_grad_enabled():
            h = checkpoint(block_fn, block, h, sdpa, False, use_reentrant=False)
        else:
            h = block_fn(block, h, sdpa, checkpointing == "mlp")
    return h


def embed(gpt: Any, cond: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The packed input embeddings: conditioning tokens, then text or audio-code embeddings + positions."""
    text = gpt.text_embedding(batch["text_ids"]) + gpt.text_pos_embedding.emb(batch["text_pos"])
    mel = gpt.mel_embedding(batch["mel_ids"]) + gpt.mel_pos_embedding.emb(batch["mel_pos"])
    x = torch.where(batch["is_text"][..., None], text, mel)
    dtype = torch.promote_types(cond.dtype, x.dtype)  # what torch.cat does in coqui's layout
    return torch.cat([cond.to(dtype), x.to(dtype)], dim=1)


def aligned_linear(x: torch.Tensor, layer: torch.nn.Linear, multiple: int = 64) -> torch.Tensor:
    """``layer(x)`` computed with the output dimension padded (zero rows) to a multiple of ``multiple`` and
    sliced back: the same numbers, but matrix shapes the fast tensor-core kernels accept (the XTTS heads have
    6681 and 1026 outputs, Tortoise's 256 and 8194; odd sizes fall back to slow unaligned kernels)."""
    n = layer.weight.shape[0]
    pad = -n % multiple
    if not pad:
        return layer(x)
    bias = None if layer.bias is None else F.pad(layer.bias, (0, pad))
    return F.linear(x, F.pad(layer.weight, (0, 0, 0, pad)), bias)[..., :n]


def head_loss(gpt: Any, h: torch.Tensor, text_targets: torch.Tensor, mel_targets: torch.Tensor,
              smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Final norms, both heads on every position, and the two cross-entropies (-1 targets ignored;
    ``smoothing``: label smoothing, XTTS's ``gpt.label_smoothing``)."""
    h = gpt.final_norm(gpt.gpt.ln_f(h))
    text_logits = aligned_linear(h, gpt.text_head).flatten(0, 1).float()
    mel_logits = aligned_linear(h, gpt.mel_head).flatten(0, 1).float()
    text_ce = F.cross_entropy(text_logits, text_targets.flatten(), ignore_index=-1, label_smoothing=smoothing)
    mel_ce = F.cross_entropy(mel_logits, mel_targets.flatten(), ignore_index=-1, label_smoothing=smoothing)
    return text_ce, mel_ce


class SdpaQKVAttention(torch.nn.Module):
    """Drop-in for tortoise's ``QKVAttentionLegacy`` (the conditioning encoder's attention) through SDPA.

    Same math (softmax(q k^T / sqrt(d)) v over ``[N, H*3*C, T]`` qkv), one fused kernel instead of two
    einsums and a materialised ``T x T`` matrix (q, k, v are made contiguous first, or SDPA would take its
    math path and materialise it anyway). No parameters: state dicts are unchanged.
    """

    def __init__(self, legacy: torch.nn.Module):
        super().__init__()
        self.n_heads = int(getattr(legacy, "n_heads"))  # noqa: B009 - an attribute torch.nn.Module does not type
        self.legacy = legacy  # masks and relative positions (unused by XTTS and Tortoise) go to the original

    def forward(
        self, qkv: torch.Tensor, mask: torch.Tensor | None = None, rel_pos: Any = None
    ) -> torch.Tensor:
        # In eval mode the original kernels run: synthesis during training must sound exactly like synthesis
        # from the exported model (which has no voicetune code in it); only training gets the fused kernel.
        if mask is not None or rel_pos is not None or not self.training:
            return self.legacy(qkv, mask, rel_pos)
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        # contiguous head dims: the fused kernels need a unit stride there, and without one SDPA falls back to
        # the math path, which materialises (and keeps for backward) every [T, T] attention matrix
        qkv = qkv.reshape(bs, self.n_heads, ch * 3, length).transpose(-1, -2).contiguous()
        q, k, v = qkv.split(ch, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)  # [bs, H, T, ch]
        return a.transpose(-1, -2).reshape(bs, -1, length)


def set_attention(gpt: Any, attention: str) -> None:
    """``sdpa``: SDPA in the conditioning encoder and transformers' GPT2; ``eager``: the original kernels."""
    from TTS.tts.layers.tortoise.arch_utils import AttentionBlock

    for module in gpt.conditioning_encoder.modules():
        if isinstance(module, AttentionBlock):
            current = module.attention
            legacy = current.legacy if isinstance(current, SdpaQKVAttention) else current
            module.attention = SdpaQKVAttention(legacy) if attention == "sdpa" else legacy
    hf = gpt.gpt
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation(attention)
    else:  # transformers < 4.48
        hf.config._attn_implementation = attention
