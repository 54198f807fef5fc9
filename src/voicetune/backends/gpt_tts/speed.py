"""Fast, lean training of a GPT of the UnifiedVoice family: packed rows, SDPA, torch.compile, bf16 weights.

coqui-tts lays a batch out as ``[conditioning | text + padding | audio codes + padding]`` and runs
transformers' ``GPT2Model`` on it; XTTS's ``GPT.forward`` masks the padding in the middle with an attention
mask, which keeps PyTorch off the flash-attention kernel, its Python loops synchronise with the GPU several
times per step, and its shapes change with every batch, which defeats ``torch.compile``. A *packed* row puts
the conditioning tokens first and each position's text or audio-code id and position after them, with all
padding that the loss ignores at the END of the row (each backend's ``pack`` decides the layout: XTTS packs
each clip's text and codes side by side; Tortoise keeps coqui's layout, whose padding its loss counts)::

    row:  [cond | text or audio-code ids with their own positions | pad (targets -1) ...]

The GPT has no position embedding of its own (text and audio positions are embedded per segment, before the
segments are joined), so with a plain causal mask every real token sees exactly the tokens it saw in
coqui's layout, and the padding, at the end, is seen by no real token. The loss is the same (checked against
coqui-tts's forward in each backend's tests); attention needs no mask (``is_causal``, the flash kernel), and
the row length is padded up to a multiple of ``pad_multiple`` so that a compiled graph is reused from batch to
batch.

The packing itself happens on the CPU when the batch is collated (lengths are known there), so the step
has no host-device synchronisation before the loss.

When the optimizer keeps the trainable weights in flat buffers (``FlatAdamW``, bf16 weights), the loss takes
those buffers as its inputs and splits the weights out of them inside the graph
(``torch.func.functional_call`` over :class:`FlatLayout`): backward then yields one gradient per buffer, added
into the optimizer's gradient buffer in one kernel, instead of ~450 per-parameter accumulations, and a
compiled graph has a few weight inputs instead of hundreds. Both were host time that left the GPU idle.

What a backend supplies is a :class:`GptFamily`: its conditioning, its packing and its loss head.
(Moved from ``backends/xtts/speed.py``; the XTTS pieces stay there.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from voicetune.backends.gpt_tts.layers import _block, check_gpt2_blocks, embed, layers, set_attention

logger = logging.getLogger(__name__)

PACKED_KEYS = ("text_ids", "text_pos", "mel_ids", "mel_pos", "is_text", "text_targets", "mel_targets")
"""What a packed batch holds besides ``cond_mels`` (the loss reads exactly these: CUDA graphs copy them)."""


@dataclass(frozen=True)
class GptFamily:
    """What one GPT of the family brings to the packed loss; the functions are module-level (compiled as they
    are, one graph each, when --compile-scope layers).

    ``conditioning(gpt, cond_mels)``: the conditioning tokens ``[B, C, D]`` that start every row.
    ``head_loss(gpt, h, text_targets, mel_targets)``: (text CE, mel CE) of the last hidden states.
    ``constants(gpt)``: what ``pack`` needs of the GPT (token ids, limits); raises ValueError naming the
    option to change when this GPT cannot use the packed loss. ``pack(batch, constants, pad_multiple)``: the
    collated batch plus :data:`PACKED_KEYS`.
    """

    name: str  # "XTTS", "Tortoise": in logs and errors
    conditioning: Callable[[Any, torch.Tensor], torch.Tensor]
    head_loss: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    constants: Callable[[Any], Any]
    pack: Callable[[dict[str, torch.Tensor], Any, int], dict[str, torch.Tensor]]

    def fns(self) -> dict[str, Any]:
        """The pieces :func:`packed_loss` runs (``block``: the shared GPT-2 layer)."""
        return {"conditioning": self.conditioning, "block": _block, "head_loss": self.head_loss}


def packed_loss(gpt: Any, batch: dict[str, torch.Tensor], sdpa: bool = True, checkpointing: str = "none",
                fns: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text CE, mel CE) of a packed batch. ``fns``: the family's pieces (:meth:`GptFamily.fns`:
    ``conditioning`` and ``head_loss`` are required; ``block`` defaults to the shared GPT-2 layer), or
    compiled versions of them."""
    if not fns or "conditioning" not in fns or "head_loss" not in fns:
        raise ValueError("packed_loss needs the GPT family's conditioning and head_loss (GptFamily.fns())")
    cond = fns["conditioning"](gpt, batch["cond_mels"])
    h = layers(gpt.gpt, embed(gpt, cond, batch), sdpa, checkpointing, fns.get("block"))
    return fns["head_loss"](gpt, h, batch["text_targets"], batch["mel_targets"])


class PackedLossModule(torch.nn.Module):
    """:func:`packed_loss` as a module's forward, so that ``torch.func.functional_call`` can run it on other
    tensors than the GPT's own parameters (parameter names get a ``gpt.`` prefix)."""

    def __init__(self, gpt: Any, fns: dict[str, Any]):
        super().__init__()
        self.gpt = gpt
        self.fns = fns

    def forward(
        self, batch: dict[str, torch.Tensor], sdpa: bool, checkpointing: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return packed_loss(self.gpt, batch, sdpa, checkpointing, self.fns)


# ----------------------------------------------------------------------------------------- flat weights
@dataclass(frozen=True, eq=False)
class FlatLayout:
    """Where each trainable GPT parameter lives in the optimizer's flat buffers
    (:mod:`voicetune.utils.flat`)."""

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
            flats=tuple(f for f, _ in groups),
            names=tuple(tuple(names[id(p)] for p in ps) for _, ps in groups),
            shapes=tuple(tuple(p.shape for p in ps) for _, ps in groups),
            sizes=tuple(tuple(p.numel() for p in ps) for _, ps in groups),
            first=tuple(ps[0] for _, ps in groups),
        )

    def current(self) -> bool:
        from voicetune.utils import flat

        return all(flat.owner(p) is f for p, f in zip(self.first, self.flats))

    def tensors(self, flats: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The parameters as views split out of ``flats`` (inside autograd: their gradients reach the
        buffers)."""
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
        return torch.func.functional_call(
            module, layout.tensors(flats), (batch, sdpa, checkpointing), strict=False
        )

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
        parts = [
            "packed loss" if self.fast_loss else "coqui's loss",
            f"{self.attention.upper()} attention",
            f"torch.compile ({self.compile_mode}, {self.compile_scope})" if self.compile else "no compile",
            f"padding to multiples of {self.pad_multiple}",
            "bf16 weights" if self.param_dtype == torch.bfloat16 else "fp32 weights",
        ]
        if self.recompute != "none":
            parts.append(f"recomputing {self.recompute} in backward")
        return ", ".join(parts)

    @classmethod
    def resolve(
        cls, cfg: Any, device: torch.device, cuda_graphs: bool = False, opts: Any = None
    ) -> SpeedSettings:
        """``cuda_graphs``: the training loop will capture micro-batches in CUDA graphs (its decision).
        ``opts``: the backend's options, with the speed fields of
        :class:`voicetune.backends.gpt_tts.options.GptTtsOptions` (default: ``cfg.backend_options``)."""
        from voicetune.utils.device import resolve_precision

        opts = cfg.backend_options if opts is None else opts
        compile_on = cfg.compile == "on" or (
            cfg.compile == "auto" and device.type == "cuda" and _triton_available()
        )
        if compile_on and not opts.fast_loss:
            raise ValueError("compile needs the packed loss; set fast_loss: true or compile: off")

        if cfg.param_dtype == "bf16" and resolve_precision(cfg.precision, device) == "fp32":
            raise ValueError(
                f"param_dtype bf16 trains under bf16 autocast, but precision {cfg.precision!r} is fp32 "
                f"on {device}; set precision: bf16"
            )
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
    """Applies :class:`SpeedSettings` to a GPT of ``family`` (XTTS's ``GPT``, Tortoise's ``UnifiedVoice``) and
    computes its training loss.

    ``pack`` runs on the host at collate time; ``loss`` returns (text CE, mel CE).
    """

    def __init__(self, gpt: Any, settings: SpeedSettings, family: GptFamily):
        self.settings = settings
        self.gpt = gpt
        self.family = family
        set_attention(gpt, settings.attention)
        if settings.param_dtype != torch.float32:
            gpt.to(settings.param_dtype)
            for module in gpt.modules():  # norms stay fp32: the conditioning encoder's GroupNorm runs in fp32
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    module.float()
        self.constants: Any = None
        if settings.fast_loss:
            self.constants = family.constants(gpt)  # raises when this GPT cannot use the packed loss
            check_gpt2_blocks(gpt.gpt, family.name)
        elif settings.recompute == "layer":
            gpt.gpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._fn, self._fns = packed_loss, family.fns()
        self._compile_mode = None if settings.compile_mode == "default" else settings.compile_mode
        if settings.compile:
            _raise_recompile_limit()
            if settings.compile_scope == "model":
                self._fn = torch.compile(packed_loss, mode=self._compile_mode, dynamic=False)
            else:  # one compiled layer serves all 30 (its weights are inputs of the graph, not constants)
                self._fns = {name: torch.compile(fn, mode=self._compile_mode, dynamic=False)
                             for name, fn in family.fns().items()}
        # The flat-buffer loss (module doc) replaces the whole-loss path; a per-layer compiled block would see
        # the split-out weights as ordinary inputs (copied into CUDA graphs every step), so not with "layers".
        # Under CUDA graphs (the loop's decision, passed in by Backend.configure_training) per-parameter
        # accumulation costs no host time and frees each gradient as it goes, where the flat form holds a
        # whole flat gradient extra at the end of backward.
        self._flat_allowed = (
            settings.fast_loss
            and (not settings.compile or settings.compile_scope == "model")
            and settings.cuda_graphs_excluded
        )
        self._module = PackedLossModule(gpt, family.fns())
        self._flat: FlatLayout | None = None
        self._flat_fn: Any = None
        logger.info("%s training speed settings: %s", family.name, settings.describe())

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
            # fixed addresses: CUDA graphs need not copy the weights
            if self._compile_mode == "reduce-overhead":
                for buffer in self._flat.flats:
                    torch._dynamo.mark_static_address(buffer)
            fn = torch.compile(fn, mode=self._compile_mode, dynamic=False)
        self._flat_fn = fn
        logger.info(
            "%s loss on %d flat weight buffers (%d parameters)",
            self.family.name,
            len(self._flat.flats),
            sum(len(n) for n in self._flat.names),
        )
        return self._flat, self._flat_fn

    def pack(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.constants is None:
            return batch
        return self.family.pack(batch, self.constants, self.settings.pad_multiple)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(text CE, mel CE) on a packed batch; None when the batch is not packed (use coqui-tts's
        forward)."""
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
    def inference_context(
        self, device: torch.device, decoder: torch.nn.Module | Sequence[torch.nn.Module] | None = None
    ) -> Iterator[None]:
        """bf16 weights: synthesis runs under bf16 autocast, except ``decoder`` (frozen fp32 decoders: XTTS's
        HiFi-GAN; Tortoise's diffusion decoder and vocoder), whose forward gets float32 inputs and no
        autocast, so that the waveform is float32 as with fp32 weights."""
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

        decoders = (
            [] if decoder is None else [decoder] if isinstance(decoder, torch.nn.Module) else list(decoder)
        )
        handles = []
        for module in decoders:
            handles += [
                module.register_forward_pre_hook(before, with_kwargs=True),
                module.register_forward_hook(after),
            ]
        try:
            with torch.autocast(device_type=device.type, dtype=self.settings.param_dtype):
                yield
        finally:
            for handle in handles:
                handle.remove()


def configure_training(family: GptFamily, gpt: Any, cfg: Any, device: torch.device, cuda_graphs: bool = False,
                       opts: Any = None) -> GptTrainingSpeed:
    """Resolve ``cfg``'s speed options (``opts``: the backend's options, default ``cfg.backend_options``) for
    ``device`` and apply them to ``gpt`` of ``family`` (before the optimizer is built); ``cuda_graphs``:
    whether the training loop will capture micro-batches in CUDA graphs."""
    return GptTrainingSpeed(gpt, SpeedSettings.resolve(cfg, device, cuda_graphs, opts), family)


__all__ = [
    "PACKED_KEYS",
    "FlatLayout",
    "GptFamily",
    "GptTrainingSpeed",
    "PackedLossModule",
    "SpeedSettings",
    "configure_training",
    "flat_loss_fn",
    "packed_loss",
]
