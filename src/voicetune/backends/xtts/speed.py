"""Fast, lean training of the XTTS GPT: packed sequences, SDPA attention, torch.compile, bf16 parameters.

coqui-tts's ``GPT.forward`` lays a batch out as ``[conditioning | text + padding | audio codes + padding]``
and masks the padding in the middle with an attention mask; that mask keeps PyTorch off the flash-attention
kernel, its Python loops synchronise with the GPU several times per step, and its shapes change with every
batch, which defeats ``torch.compile``. The *packed* layout used here puts each clip's conditioning latents,
text and audio codes side by side, with all padding at the END of the row::

    clip i:  [cond (32) | start, text_1..text_t | start, code_1..code_c, stop x 3 | pad ...]

The GPT has no position embedding of its own (text and audio positions are embedded per segment, before the
segments are joined), so with a plain causal mask every real token sees exactly the tokens it saw in
coqui's layout, and the padding, at the end, is seen by no real token. The loss is the same (checked against
``GPT.forward`` in the tests); attention needs no mask (``is_causal``, the flash kernel), and the row length
is padded up to a multiple of ``pad_multiple`` so that a compiled graph is reused from batch to batch.

The packing itself happens on the CPU when the batch is collated (lengths are known there), so the step
has no host-device synchronisation before the loss.

When the optimizer keeps the trainable weights in flat buffers (``FlatAdamW``, bf16 weights), the loss takes
those buffers as its inputs and splits the weights out of them inside the graph (``torch.func.functional_call``
over :class:`FlatLayout`): backward then yields one gradient per buffer, added into the optimizer's gradient
buffer in one kernel, instead of ~450 per-parameter accumulations, and a compiled graph has a few weight
inputs instead of hundreds. Both were host time that left the GPU idle.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from voicetune.config import RECOMPUTE_MODES

logger = logging.getLogger(__name__)

PACKED_KEYS = ("text_ids", "text_pos", "mel_ids", "mel_pos", "is_text", "text_targets", "mel_targets")


@dataclass(frozen=True)
class GptConstants:
    """The token ids and limits of a coqui-tts ``GPT`` that the packing needs."""

    start_text: int
    stop_text: int
    start_audio: int
    stop_audio: int
    code_stride: int
    cond_tokens: int  # perceiver latents (32 in XTTS-v2)
    max_text_positions: int
    max_mel_positions: int

    @classmethod
    def of(cls, gpt: Any) -> GptConstants:
        return cls(
            start_text=int(gpt.start_text_token), stop_text=int(gpt.stop_text_token),
            start_audio=int(gpt.start_audio_token), stop_audio=int(gpt.stop_audio_token),
            code_stride=int(gpt.code_stride_len),
            cond_tokens=int(gpt.conditioning_perceiver.latents.shape[0]),
            max_text_positions=int(gpt.text_pos_embedding.emb.num_embeddings),
            max_mel_positions=int(gpt.mel_pos_embedding.emb.num_embeddings),
        )


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (1: unchanged)."""
    return -(-n // multiple) * multiple if multiple > 1 else n


def coqui_targets(batch: dict[str, torch.Tensor], c: GptConstants) -> dict[str, torch.Tensor]:
    """Inputs and targets exactly as ``GPT.forward`` builds them (padded layout), vectorised on the host.

    Returns text/mel inputs and targets ``[B, T+2]`` / ``[B, M+2]`` (targets -1 where ignored) and the
    per-clip counts of valid positions (``text_lengths + 1``, ``code_lengths + 1``).
    """
    text_lengths = batch["text_lengths"].long().cpu()
    wav_lengths = batch["wav_lengths"].long().cpu()
    t_max = int(text_lengths.max())
    text = F.pad(batch["text_inputs"].long().cpu()[:, :t_max], (0, 1), value=c.stop_text)
    text_in = F.pad(text, (1, 0), value=c.start_text)
    text_tg = F.pad(text, (0, 1), value=c.stop_text)
    n_text = text_lengths + 1
    text_tg[torch.arange(t_max + 2)[None, :] >= n_text[:, None]] = -1

    code_lengths = (wav_lengths + c.code_stride - 1) // c.code_stride + 3  # ceil(wav / stride) + 3
    m_max = int(code_lengths.max())
    codes = batch["audio_codes"].long().cpu()
    if m_max > codes.shape[-1]:
        codes = F.pad(codes, (0, m_max - codes.shape[-1]))
    codes = F.pad(codes[:, :m_max], (0, 1), value=c.stop_audio)
    codes[torch.arange(m_max + 1)[None, :] >= (code_lengths - 3)[:, None]] = c.stop_audio
    mel_in = F.pad(codes, (1, 0), value=c.start_audio)
    mel_tg = F.pad(codes, (0, 1), value=c.stop_audio)
    n_mel = code_lengths + 1
    mel_tg[torch.arange(m_max + 2)[None, :] >= n_mel[:, None]] = -1
    return {"text_in": text_in, "text_tg": text_tg, "mel_in": mel_in, "mel_tg": mel_tg,
            "n_text": n_text, "n_mel": n_mel}


def pack_batch(batch: dict[str, torch.Tensor], c: GptConstants, pad_multiple: int = 64) -> dict[str, torch.Tensor]:
    """Add the packed-layout tensors (see the module doc) to a batch from ``features.collate``.

    Every packed tensor is ``[B, L]`` (``L`` = the longest clip's cond + text + audio positions, rounded up
    to ``pad_multiple``); ``text_*``/``mel_*`` ids and positions cover the ``L - cond_tokens`` positions after
    the conditioning; targets cover all ``L`` positions, -1 where ignored.
    """
    t = coqui_targets(batch, c)
    n_text, n_mel = t["n_text"], t["n_mel"]
    if int(n_text.max()) > c.max_text_positions or int(n_mel.max()) > c.max_mel_positions:
        raise ValueError(
            f"a clip needs {int(n_text.max())} text / {int(n_mel.max())} audio positions; the model has "
            f"{c.max_text_positions} / {c.max_mel_positions}")
    b = n_text.shape[0]
    length = round_up(c.cond_tokens + int((n_text + n_mel).max()), pad_multiple)
    span = length - c.cond_tokens
    q = torch.arange(span)[None, :].expand(b, span)
    is_text = q < n_text[:, None]
    mel_q = q - n_text[:, None]
    is_mel = (mel_q >= 0) & (mel_q < n_mel[:, None])
    text_pos = torch.where(is_text, q, 0)
    mel_pos = torch.where(is_mel, mel_q, 0)
    text_ids = torch.where(is_text, t["text_in"].gather(1, text_pos.clamp(max=t["text_in"].shape[1] - 1)), 0)
    mel_ids = torch.where(is_mel, t["mel_in"].gather(1, mel_pos.clamp(max=t["mel_in"].shape[1] - 1)), 0)
    ignore = torch.full((b, c.cond_tokens), -1, dtype=torch.long)
    text_tg = torch.where(is_text, t["text_tg"].gather(1, text_pos.clamp(max=t["text_tg"].shape[1] - 1)), -1)
    mel_tg = torch.where(is_mel, t["mel_tg"].gather(1, mel_pos.clamp(max=t["mel_tg"].shape[1] - 1)), -1)
    packed = {
        "text_ids": text_ids, "text_pos": text_pos, "mel_ids": mel_ids, "mel_pos": mel_pos, "is_text": is_text,
        "text_targets": torch.cat([ignore, text_tg], dim=1), "mel_targets": torch.cat([ignore, mel_tg], dim=1),
    }
    return {**batch, **packed}


# ----------------------------------------------------------------------------------------- model pieces
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


def _check_gpt2_blocks(gpt2: Any) -> None:
    """The packed forward reimplements GPT2Block: refuse configurations it does not cover."""
    cfg = gpt2.config
    unsupported = [name for name in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention")
                   if getattr(cfg, name, False)]
    if not getattr(cfg, "scale_attn_weights", True):
        unsupported.append("scale_attn_weights=False")
    if unsupported:
        raise ValueError(f"the packed XTTS forward does not support GPT2Config {unsupported}; set fast_loss: false")


def layers(gpt2: Any, h: torch.Tensor, sdpa: bool = True, checkpointing: str = "none",
           block_fn: Any = None) -> torch.Tensor:
    """The layers of transformers' ``GPT2Model`` on input embeddings, without its final LayerNorm (its
    position table is coqui's zero function). ``block_fn(block, h, sdpa, recompute_mlp)`` runs one layer
    (default :func:`_block`; a compiled one for speed). ``checkpointing`` (one of ``RECOMPUTE_MODES``): "layer"
    recomputes each whole layer in the backward pass (saving and restoring the RNG state for its dropout),
    "mlp" only each layer's MLP (no random numbers: CUDA graphs can capture it)."""
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


def conditioning(gpt: Any, cond_mels: torch.Tensor) -> torch.Tensor:
    """Perceiver conditioning latents ``[B, 32, D]`` of ``[B, 1, 80, frames]`` conditioning mels."""
    return gpt.get_style_emb(cond_mels).transpose(1, 2)


def embed(gpt: Any, cond: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The packed input embeddings: conditioning latents, then text or audio-code embeddings + positions."""
    text = gpt.text_embedding(batch["text_ids"]) + gpt.text_pos_embedding.emb(batch["text_pos"])
    mel = gpt.mel_embedding(batch["mel_ids"]) + gpt.mel_pos_embedding.emb(batch["mel_pos"])
    x = torch.where(batch["is_text"][..., None], text, mel)
    dtype = torch.promote_types(cond.dtype, x.dtype)  # what torch.cat does in coqui's layout
    return torch.cat([cond.to(dtype), x.to(dtype)], dim=1)


def aligned_linear(x: torch.Tensor, layer: torch.nn.Linear, multiple: int = 64) -> torch.Tensor:
    """``layer(x)`` computed with the output dimension padded (zero rows) to a multiple of ``multiple`` and
    sliced back: the same numbers, but matrix shapes the fast tensor-core kernels accept (the XTTS heads have
    6681 and 1026 outputs; odd sizes fall back to slow unaligned kernels)."""
    n = layer.weight.shape[0]
    pad = -n % multiple
    if not pad:
        return layer(x)
    bias = None if layer.bias is None else F.pad(layer.bias, (0, pad))
    return F.linear(x, F.pad(layer.weight, (0, 0, 0, pad)), bias)[..., :n]


def head_loss(gpt: Any, h: torch.Tensor, text_targets: torch.Tensor,
              mel_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Final norms, both heads on every position, and the two cross-entropies (-1 targets ignored)."""
    h = gpt.final_norm(gpt.gpt.ln_f(h))
    smoothing = float(gpt.label_smoothing)
    text_logits = aligned_linear(h, gpt.text_head).flatten(0, 1).float()
    mel_logits = aligned_linear(h, gpt.mel_head).flatten(0, 1).float()
    text_ce = F.cross_entropy(text_logits, text_targets.flatten(), ignore_index=-1, label_smoothing=smoothing)
    mel_ce = F.cross_entropy(mel_logits, mel_targets.flatten(), ignore_index=-1, label_smoothing=smoothing)
    return text_ce, mel_ce


def packed_loss(gpt: Any, batch: dict[str, torch.Tensor], sdpa: bool = True, checkpointing: str = "none",
                fns: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text CE, mel CE) of coqui-tts's ``GPT.forward`` computed on a :func:`pack_batch` batch.

    ``fns`` may replace the pieces (``conditioning``, ``block``, ``head_loss``) by compiled versions.
    """
    fns = fns or {}
    cond = fns.get("conditioning", conditioning)(gpt, batch["cond_mels"])
    h = layers(gpt.gpt, embed(gpt, cond, batch), sdpa, checkpointing, fns.get("block"))
    return fns.get("head_loss", head_loss)(gpt, h, batch["text_targets"], batch["mel_targets"])


class SdpaQKVAttention(torch.nn.Module):
    """Drop-in for tortoise's ``QKVAttentionLegacy`` (the conditioning encoder's attention) through SDPA.

    Same math (softmax(q k^T / sqrt(d)) v over ``[N, H*3*C, T]`` qkv), one fused kernel instead of two
    einsums and a materialised ``T x T`` matrix (q, k, v are made contiguous first, or SDPA would take its
    math path and materialise it anyway). No parameters: state dicts are unchanged.
    """

    def __init__(self, legacy: torch.nn.Module):
        super().__init__()
        self.n_heads = legacy.n_heads
        self.legacy = legacy  # masks and relative positions (unused by XTTS) go to the original

    def forward(self, qkv: torch.Tensor, mask: torch.Tensor | None = None, rel_pos: Any = None) -> torch.Tensor:
        # In eval mode the original kernels run: synthesis during training must sound exactly like synthesis from
        # the exported model (which has no voicetune code in it); only training gets the fused kernel.
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


# ----------------------------------------------------------------------------------------- flat weights
class PackedLossModule(torch.nn.Module):
    """:func:`packed_loss` as a module's forward, so that ``torch.func.functional_call`` can run it on other
    tensors than the GPT's own parameters (parameter names get a ``gpt.`` prefix)."""

    def __init__(self, gpt: Any):
        super().__init__()
        self.gpt = gpt

    def forward(self, batch: dict[str, torch.Tensor], sdpa: bool, checkpointing: str) -> tuple[torch.Tensor, torch.Tensor]:
        return packed_loss(self.gpt, batch, sdpa, checkpointing)


@dataclass(frozen=True, eq=False)
class FlatLayout:
    """Where each trainable GPT parameter lives in the optimizer's flat buffers (:mod:`voicetune.utils.flat`)."""

    flats: tuple[torch.Tensor, ...]
    names: tuple[tuple[str, ...], ...]  # per buffer, in buffer order, as PackedLossModule names them
    shapes: tuple[tuple[torch.Size, ...], ...]
    sizes: tuple[tuple[int, ...], ...]
    first: tuple[torch.Tensor, ...]  # one parameter per buffer: the layout is stale once it lives elsewhere

    @classmethod
    def of(cls, gpt: Any) -> FlatLayout | None:
        """The layout of ``gpt``'s trainable parameters; None unless flat buffers hold exactly them."""
        from voicetune.utils import flat

        groups = flat.buckets(p for p in gpt.parameters() if p.requires_grad)
        if not groups:
            return None
        names = {id(p): "gpt." + n for n, p in gpt.named_parameters()}
        return cls(
            flats=tuple(f for f, _ in groups), names=tuple(tuple(names[id(p)] for p in ps) for _, ps in groups),
            shapes=tuple(tuple(p.shape for p in ps) for _, ps in groups),
            sizes=tuple(tuple(p.numel() for p in ps) for _, ps in groups), first=tuple(ps[0] for _, ps in groups),
        )

    def current(self) -> bool:
        from voicetune.utils import flat

        return all(flat.owner(p) is f for p, f in zip(self.first, self.flats))

    def tensors(self, flats: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The parameters as views split out of ``flats`` (inside autograd: their gradients reach the buffers)."""
        out = {}
        for buffer, names, shapes, sizes in zip(flats, self.names, self.shapes, self.sizes):
            for name, shape, piece in zip(names, shapes, buffer.split(sizes)):
                out[name] = piece.view(shape)
        return out


def flat_loss_fn(layout: FlatLayout) -> Any:
    """``fn(flats, module, batch, sdpa, checkpointing)``: :func:`packed_loss` with the trainable weights taken
    from ``flats`` (a :class:`PackedLossModule` for ``module``)."""

    def fn(flats: list[torch.Tensor], module: PackedLossModule, batch: dict[str, torch.Tensor], sdpa: bool,
           checkpointing: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.func.functional_call(module, layout.tensors(flats), (batch, sdpa, checkpointing), strict=False)

    return fn


# ----------------------------------------------------------------------------------------- settings
@dataclass
class SpeedSettings:
    """The resolved speed/memory options of a TrainConfig for one device."""

    fast_loss: bool
    attention: str
    compile: bool
    compile_mode: str
    compile_scope: str
    pad_multiple: int
    recompute: str  # what the backward pass recomputes (TrainConfig.recompute)
    param_dtype: torch.dtype
    # the training loop will not capture CUDA graphs (Backend.configure_training)
    cuda_graphs_excluded: bool = True

    def describe(self) -> str:
        """One readable line, e.g. "packed loss, SDPA attention, no compile, padding to 64, fp32 weights"."""
        parts = ["packed loss" if self.fast_loss else "coqui's loss", f"{self.attention.upper()} attention",
                 f"torch.compile ({self.compile_mode}, {self.compile_scope})" if self.compile
                 else "no compile",
                 f"padding to multiples of {self.pad_multiple}",
                 "bf16 weights" if self.param_dtype == torch.bfloat16 else "fp32 weights"]
        if self.recompute != "none":
            parts.append(f"recomputing {self.recompute} in backward")
        return ", ".join(parts)

    @classmethod
    def resolve(cls, cfg: Any, device: torch.device, cuda_graphs: bool = False) -> SpeedSettings:
        """``cuda_graphs``: the training loop will capture micro-batches in CUDA graphs (its decision)."""
        from voicetune.backends.xtts.options import XttsOptions
        from voicetune.utils.device import resolve_precision

        opts = XttsOptions.of(cfg)
        compile_on = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda" and _triton_available())
        if compile_on and not opts.fast_loss:
            raise ValueError("compile needs the packed loss; set fast_loss: true or compile: off")

        if cfg.param_dtype == "bf16" and resolve_precision(cfg.precision, device) == "fp32":
            raise ValueError(f"param_dtype bf16 trains under bf16 autocast, but precision {cfg.precision!r} is fp32 "
                             f"on {device}; set precision: bf16")
        return cls(
            fast_loss=bool(opts.fast_loss), attention=opts.attention, compile=compile_on,
            compile_mode=cfg.compile_mode, compile_scope=opts.compile_scope,
            pad_multiple=int(opts.pad_multiple),
            recompute=cfg.recompute,
            param_dtype=torch.bfloat16 if cfg.param_dtype == "bf16" else torch.float32,
            cuda_graphs_excluded=not cuda_graphs,
        )


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _raise_recompile_limit(limit: int = 64) -> None:
    """Each padded length is one compiled graph; allow more than dynamo's default of 8 per function."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


class GptTrainingSpeed:
    """Applies :class:`SpeedSettings` to a coqui-tts ``GPT`` and computes its training loss.

    ``pack`` runs on the host at collate time; ``loss`` returns (text CE, mel CE).
    """

    def __init__(self, gpt: Any, settings: SpeedSettings):
        self.settings = settings
        self.gpt = gpt
        set_attention(gpt, settings.attention)
        if settings.param_dtype != torch.float32:
            gpt.to(settings.param_dtype)
            for module in gpt.modules():  # norms stay fp32: the conditioning encoder's GroupNorm runs in fp32
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    module.float()
        self.constants: GptConstants | None = None
        if settings.fast_loss:
            if not getattr(gpt, "use_perceiver_resampler", False):
                raise ValueError("the packed XTTS loss needs the perceiver conditioning of XTTS-v2; set fast_loss: false")
            _check_gpt2_blocks(gpt.gpt)
            self.constants = GptConstants.of(gpt)
        elif settings.recompute == "layer":
            gpt.gpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._fn, self._fns = packed_loss, {}
        self._compile_mode = None if settings.compile_mode == "default" else settings.compile_mode
        if settings.compile:
            _raise_recompile_limit()
            if settings.compile_scope == "model":
                self._fn = torch.compile(packed_loss, mode=self._compile_mode, dynamic=False)
            else:  # one compiled layer serves all 30 (its weights are inputs of the graph, not constants)
                self._fns = {name: torch.compile(fn, mode=self._compile_mode, dynamic=False)
                             for name, fn in (("conditioning", conditioning), ("block", _block), ("head_loss", head_loss))}
        # The flat-buffer loss (module doc) replaces the whole-loss path; a per-layer compiled block would see
        # the split-out weights as ordinary inputs (copied into CUDA graphs every step), so not with "layers".
        # Under CUDA graphs (the loop's decision, passed in by Backend.configure_training) per-parameter
        # accumulation costs no host time and frees each gradient as it goes, where the flat form holds a
        # whole flat gradient extra at the end of backward.
        self._flat_allowed = (settings.fast_loss and (not settings.compile or settings.compile_scope == "model")
                              and settings.cuda_graphs_excluded)
        self._module = PackedLossModule(gpt)
        self._flat: FlatLayout | None = None
        self._flat_fn: Any = None
        logger.info("XTTS training speed settings: %s", settings.describe())

    def _flat_loss(self) -> tuple[FlatLayout, Any] | None:
        """The flat-buffer loss and its layout, when the optimizer keeps the weights in flat buffers."""
        if not self._flat_allowed:
            return None
        if self._flat is not None and self._flat.current():
            return self._flat, self._flat_fn
        from voicetune.utils import flat

        first = next((p for p in self.gpt.parameters() if p.requires_grad), None)
        if first is None or flat.owner(first) is None:  # cheap test: no flat buffers (another optimizer)
            return None
        self._flat = FlatLayout.of(self.gpt)
        if self._flat is None:
            return None
        fn = flat_loss_fn(self._flat)
        if self.settings.compile:
            if self._compile_mode == "reduce-overhead":  # fixed addresses: CUDA graphs need not copy the weights
                for buffer in self._flat.flats:
                    torch._dynamo.mark_static_address(buffer)
            fn = torch.compile(fn, mode=self._compile_mode, dynamic=False)
        self._flat_fn = fn
        logger.info("XTTS loss on %d flat weight buffers (%d parameters)", len(self._flat.flats),
                    sum(len(n) for n in self._flat.names))
        return self._flat, self._flat_fn

    def pack(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.constants is None:
            return batch
        return pack_batch(batch, self.constants, self.settings.pad_multiple)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(text CE, mel CE) on a packed batch; None when the batch is not packed (use coqui's forward)."""
        if self.constants is None or "text_targets" not in batch:
            return None
        if self.settings.compile and self.settings.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        sdpa, checkpointing = self.settings.attention == "sdpa", self.settings.recompute
        flat = self._flat_loss()
        if flat is not None:
            return flat[1](list(flat[0].flats), self._module, batch, sdpa, checkpointing)
        return self._fn(self.gpt, batch, sdpa, checkpointing, self._fns)

    @contextlib.contextmanager
    def inference_context(self, device: torch.device, decoder: torch.nn.Module | None = None) -> Iterator[None]:
        """bf16 weights: synthesis runs under bf16 autocast, except ``decoder`` (the frozen fp32 HiFi-GAN),
        which gets float32 inputs and no autocast, so that the waveform is float32 as with fp32 weights."""
        if self.settings.param_dtype == torch.float32:
            yield
            return
        contexts: list[Any] = []

        def to_fp32(x: Any) -> Any:
            return x.float() if torch.is_tensor(x) and x.is_floating_point() else x

        def before(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            contexts.append(torch.autocast(device_type=device.type, enabled=False))
            contexts[-1].__enter__()
            return tuple(to_fp32(a) for a in args), {k: to_fp32(v) for k, v in kwargs.items()}

        def after(module: Any, args: tuple, output: Any) -> Any:
            contexts.pop().__exit__(None, None, None)
            return output

        handles = []
        if decoder is not None:
            handles = [decoder.register_forward_pre_hook(before, with_kwargs=True), decoder.register_forward_hook(after)]
        try:
            with torch.autocast(device_type=device.type, dtype=self.settings.param_dtype):
                yield
        finally:
            for handle in handles:
                handle.remove()


def configure_training(gpt: Any, cfg: Any, device: torch.device,
                       cuda_graphs: bool = False) -> GptTrainingSpeed:
    """Resolve ``cfg``'s speed options for ``device`` and apply them to ``gpt`` (before the optimizer is
    built); ``cuda_graphs``: whether the training loop will capture micro-batches in CUDA graphs."""
    return GptTrainingSpeed(gpt, SpeedSettings.resolve(cfg, device, cuda_graphs))


__all__ = [
    "FlatLayout",
    "GptConstants",
    "GptTrainingSpeed",
    "PackedLossModule",
    "SdpaQKVAttention",
    "SpeedSettings",
    "conditioning",
    "configure_training",
    "coqui_targets",
    "embed",
    "flat_loss_fn",
    "head_loss",
    "layers",
    "pack_batch",
    "packed_loss",
    "round_up",
    "set_attention",
]
