"""Optimizer and learning-rate schedule built from a TrainConfig."""

from __future__ import annotations

import math
from typing import Any

import torch

from voicetune.config import TrainConfig
from voicetune.utils import flat as flat_params


def build_optimizer(
    param_groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (AdamW by default) over the backend's parameter groups (only parameters that train).

    Groups may carry their own ``lr`` (per-part multipliers) and ``weight_decay``. Fused kernels on CUDA for
    AdamW/Adam/SGD, foreach elsewhere; bf16 weights (``param_dtype``) get :class:`FlatAdamW`.
    """
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in param_groups]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the backend exposes no trainable parameters")
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    if getattr(cfg, "param_dtype", "fp32") == "bf16":
        state_dtype = (
            torch.bfloat16 if getattr(cfg, "optimizer_state_dtype", "fp32") == "bf16" else torch.float32
        )
        return FlatAdamW(groups, state_dtype=state_dtype, **kwargs)
    return make_torch_optimizer(groups, cfg, device, kwargs)


def make_torch_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device,
                         kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    """The torch.optim optimizer named by ``cfg.optimizer`` (adamw, adam, sgd, rmsprop)."""
    kind = getattr(cfg, "optimizer", "adamw")
    fast: dict[str, Any] = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if kind == "adamw":
        return torch.optim.AdamW(groups, **kwargs, **fast)
    if kind == "adam":  # L2 weight decay through the gradient, as torch.optim.Adam does
        return torch.optim.Adam(groups, **kwargs, **fast)
    momentum, lr, wd = float(cfg.momentum), kwargs["lr"], kwargs["weight_decay"]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=wd, **fast)
    if kind == "rmsprop":  # no fused kernel
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, weight_decay=wd, foreach=True)
    raise ValueError(f"unknown optimizer {kind!r}; choose adamw, adam, sgd or rmsprop with --optimizer")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int,
                    steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``cfg.warmup_steps``, then ``cfg.scheduler`` (see
    voicetune.training.schedulers)."""
    from voicetune.training.schedulers import build_scheduler as _build

    return _build(optimizer, cfg, total_steps, steps_per_epoch)


# ------------------------------------------------------------------------------ AdamW for bf16 weights
_CHUNK = 1 << 22  # elements per eager update (bounds the temporaries of stochastic rounding)
_compiled_update: Any = None


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Round float32 ``x`` to ``dtype`` (bf16) up or down at random, with the probability that makes the
    result exact on average: tiny updates (lr 5e-6 on weights ~0.02, below bf16's spacing) are not lost.

    ``noise``: uniform integers in [0, 2**16) (int32 or int64), one per element; drawn here when None.
    """
    if dtype == torch.float32:
        return x
    if dtype != torch.bfloat16:
        raise ValueError(f"stochastic rounding to {dtype} is not supported (float32 or bfloat16)")
    if noise is None:
        noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)
    bits = x.contiguous().view(torch.int32)
    return ((bits + noise.to(torch.int32)) & -65536).view(torch.float32).to(torch.bfloat16)


def _adamw_update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, s: Any,
                  grad_scale: Any = 1.0) -> None:
    """One AdamW step in float32 on flat tensors, written back (stochastically rounded) in their dtypes.

    ``s`` = (1 - lr * weight_decay, beta1, beta2, lr / bias_correction1, sqrt(bias_correction2), eps);
    ``grad_scale`` multiplies the gradient first (gradient clipping folded into the update). Same arithmetic
    as ``torch.optim.AdamW``. One 48-bit random draw per element gives the three independent 16-bit rounding
    noises (generating random numbers, not memory traffic, was what this kernel spent its time on).
    """
    g32 = g.float() * grad_scale
    m32 = m.float() * s[1] + g32 * (1 - s[1])
    v32 = v.float() * s[2] + g32 * g32 * (1 - s[2])
    p32 = p.float() * s[0] - s[3] * m32 / (v32.sqrt() / s[4] + s[5])
    r = torch.randint(0, 1 << 48, p.shape, dtype=torch.int64, device=p.device)
    p.copy_(stochastic_round(p32, p.dtype, r & 65535))
    m.copy_(stochastic_round(m32, m.dtype, (r >> 16) & 65535))
    v.copy_(stochastic_round(v32, v.dtype, r >> 32))


class FlatAdamW(torch.optim.Optimizer):
    """AdamW for bf16 (or fp32) weights: weights, gradients and moments live in flat buffers.

    * The parameters of a group (one buffer per dtype in it: bf16 weights, fp32 norm gains) become views of
      one buffer, and their ``.grad`` views of another (backward accumulates into it; ``zero_grad`` zeroes it,
      whatever ``set_to_none`` says), so a step is one fused pass per buffer instead of hundreds of kernels.
      The buffer is a leaf that requires grad and is recorded on each parameter (:mod:`voicetune.utils.flat`):
      a loss computed on the buffer (parameters split out of it) leaves its gradient in the same place.
    * The update is computed in float32 and rounded stochastically into bf16 weights and (optionally bf16)
      moments, so that it is exact on average even when it is far below bf16's resolution.
    * On CUDA with Triton the update is compiled (one kernel, random bits generated inside it).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        state_dtype: torch.dtype = torch.float32,
        compiled: bool | None = None,
    ):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.state_dtype = state_dtype
        self._flat: list[dict[str, Any]] = []  # buckets: one per (group, dtype, device)
        flat_groups = []
        for index, group in enumerate(groups):
            kinds: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
            for p in group["params"]:
                kinds.setdefault((p.dtype, p.device), []).append(p)
            buckets = [self._flatten(index, ps) for ps in kinds.values()]
            self._flat += buckets
            # What the optimizer's groups hold (and what a loop clips, all-reduces and counts): the flat
            # buffers, a handful of tensors instead of hundreds.
            flat_groups.append({**group, "params": [b["param"] for b in buckets]})
        super().__init__(
            flat_groups, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        )
        if compiled is None:
            compiled = self._flat[0]["param"].device.type == "cuda" and _has_triton()
        self.compiled = compiled
        self._grad_scale: torch.Tensor | None = None  # set by clip_gradients, used by the next step

    def _flatten(self, group: int, params: list[torch.Tensor]) -> dict[str, Any]:
        dtype, device = params[0].dtype, params[0].device
        total = sum(p.numel() for p in params)
        flat = torch.empty(total, dtype=dtype, device=device)
        grad = torch.zeros(total, dtype=dtype, device=device)
        views, offset = [], 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                flat[offset : offset + n].copy_(p.reshape(-1))
                p.data = flat[offset : offset + n].view_as(p)
                view = grad[offset : offset + n].view_as(p)
                p.grad = view
                views.append(view)
                offset += n
        flat.requires_grad_(True)  # a leaf outside any graph: it carries .grad, and may be a loss's input
        flat.grad = grad
        flat_params.attach(params, flat)  # a backend may compute its loss on `flat` (voicetune.utils.flat)
        return {"group": group, "params": params, "param": flat, "grad": grad, "views": views, "step": 0,
                "exp_avg": torch.zeros(total, dtype=self.state_dtype, device=device),
                "exp_avg_sq": torch.zeros(total, dtype=self.state_dtype, device=device)}

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """The gradients' total L2 norm (a device tensor; no synchronisation); the next :meth:`step` scales
        the gradients by ``min(1, max_norm / norm)`` inside its update, as ``clip_grad_norm_`` would have,
        without a separate pass over them. The gradient buffers themselves are left as they are."""
        grads = [f["grad"] for f in self._flat]
        norm: torch.Tensor = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
        )
        self._grad_scale = (max_norm / (norm + 1e-6)).clamp(max=1.0) if math.isfinite(max_norm) else None
        return norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient buffers (the views stay attached; ``set_to_none`` is ignored)."""
        self._grad_scale = None
        for flat in self._flat:
            flat["grad"].zero_()
            if flat["param"].grad is not flat["grad"]:
                flat["param"].grad = flat["grad"]
            for p, view in zip(flat["params"], flat["views"]):
                if p.grad is not view:
                    p.grad = view

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        all_scalars = []
        for flat in self._flat:
            group = self.param_groups[flat["group"]]
            flat["step"] += 1
            t, (b1, b2) = flat["step"], group["betas"]
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            all_scalars.append(
                (1.0 - lr * wd, b1, b2, lr / (1.0 - b1**t), math.sqrt(1.0 - b2**t), group["eps"])
            )
        tensors = [(f["param"], f["grad"], f["exp_avg"], f["exp_avg_sq"]) for f in self._flat]
        device = self._flat[0]["param"].device
        scale = self._grad_scale if self._grad_scale is not None else torch.ones((), device=device)
        self._grad_scale = None
        if self.compiled:  # one call (one host-to-device copy of the scalars) for every bucket
            _compiled()(
                tensors, torch.tensor(all_scalars, dtype=torch.float32).to(device, non_blocking=True), scale
            )
        else:
            for bucket, scalars in zip(tensors, all_scalars):
                for start in range(0, bucket[0].numel(), _CHUNK):
                    p, g, m, v = (x[start : start + _CHUNK] for x in bucket)
                    _adamw_update(p, g, m, v, scalars, scale)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["flat_state"] = [{"step": f["step"], "exp_avg": f["exp_avg"], "exp_avg_sq": f["exp_avg_sq"]}
                               for f in self._flat]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        flat_state = state_dict.pop("flat_state", None)
        if flat_state is None or [s["exp_avg"].numel() for s in flat_state] != [
            f["param"].numel() for f in self._flat
        ]:
            raise ValueError("not a FlatAdamW state of these parameters (another optimizer, or other groups)")
        super().load_state_dict(state_dict)
        for flat, saved in zip(self._flat, flat_state):
            flat["step"] = int(saved["step"])
            flat["exp_avg"].copy_(saved["exp_avg"])
            flat["exp_avg_sq"].copy_(saved["exp_avg_sq"])


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _update_all(
    buckets: list[tuple[torch.Tensor, ...]], scalars: torch.Tensor, grad_scale: torch.Tensor
) -> None:
    for (p, g, m, v), s in zip(buckets, scalars):
        _adamw_update(p, g, m, v, s, grad_scale)


def _compiled() -> Any:
    global _compiled_update
    if _compiled_update is None:
        _compiled_update = torch.compile(_update_all, dynamic=True)  # one graph for any bucket sizes
    return _compiled_update
