"""Which flat buffer holds a parameter, for parameters flattened by an optimizer (``FlatAdamW``).

An optimizer that moves parameters into one buffer (each parameter's data a view of it) records the buffer on
each parameter. A backend can then compute its loss with the buffer itself as the input (the parameters'
tensors are split out of it inside the graph): backward produces one gradient per buffer instead of one per
parameter, and a compiled graph has a handful of weight inputs instead of hundreds.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_ATTR = "_voicetune_flat"


def attach(params: Iterable[torch.Tensor], flat: torch.Tensor) -> None:
    """Record ``flat`` as the buffer that holds ``params`` (their data must already be views of it)."""
    for p in params:
        setattr(p, _ATTR, flat)


def owner(p: torch.Tensor) -> torch.Tensor | None:
    """The flat buffer recorded for ``p`` (None when it has none, or when ``p`` no longer lives in it)."""
    flat = getattr(p, _ATTR, None)
    if flat is None or p.untyped_storage().data_ptr() != flat.untyped_storage().data_ptr():
        return None
    return flat


def buckets(params: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, list[torch.Tensor]]] | None:
    """``params`` grouped by their flat buffers, each group in buffer order: ``[(buffer, [params])]``.

    None unless every parameter lives in a buffer and each buffer is exactly tiled by the given parameters
    (contiguous, no gaps, no overlap, nothing else in it): only then is ``buffer.split(sizes)`` the
    parameters.
    """
    groups: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
    for p in params:
        flat = owner(p)
        if flat is None or not p.is_contiguous():
            return None
        groups.setdefault(id(flat), (flat, []))[1].append(p)
    out = []
    for flat, ps in groups.values():
        ps = sorted(ps, key=lambda t: t.storage_offset())
        offset = flat.storage_offset()
        for p in ps:
            if p.storage_offset() != offset:
                return None
            offset += p.numel()
        if offset != flat.storage_offset() + flat.numel():
            return None
        out.append((flat, ps))
    return out
