"""The backends by name, and the TrainConfig of a backend (its options class comes from here).

Adding a backend means writing ``backends/<name>/`` (a :class:`~voicetune.backends.base.Backend` subclass and
a :class:`~voicetune.config.BackendOptions` subclass) and one entry in :data:`_BUILTIN`; tests register their
own with :func:`register_backend`. Nothing here imports torch or a backend until it is asked for one, so the
CLI can list backends and their options cheaply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicetune.config import (
    BackendOptions,
    ConfigError,
    TrainConfig,
    from_dict,
    load_yaml,
    merge,
)

if TYPE_CHECKING:
    from voicetune.backends.base import Backend


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend's class and its options class live ("module:Class", imported when first needed)."""

    backend: str
    options: str


_BUILTIN: dict[str, BackendEntry] = {
    "xtts": BackendEntry(
        "voicetune.backends.xtts.backend:XttsBackend", "voicetune.backends.xtts.options:XttsOptions"
    ),
    "tortoise": BackendEntry(
        "voicetune.backends.tortoise.backend:TortoiseBackend",
        "voicetune.backends.tortoise.options:TortoiseOptions",
    ),
    "csm": BackendEntry(
        "voicetune.backends.csm.backend:CsmBackend", "voicetune.backends.csm.options:CsmOptions"
    ),
}
_REGISTRY: dict[str, BackendEntry | type[Backend]] = dict(_BUILTIN)


def register_backend(name: str, backend: str | type, options: str | type | None = None) -> None:
    """Register a backend under ``name``: its class (or "module:Class"), and its options class (default: the
    class's ``options`` attribute). A later registration of the same name replaces the earlier one."""
    if isinstance(backend, str) or isinstance(options, str):
        if not isinstance(backend, str) or not isinstance(options, str):
            raise TypeError("register a backend either as two 'module:Class' strings or as a class")
        _REGISTRY[name] = BackendEntry(backend, options)
    else:
        _REGISTRY[name] = backend


def unregister_backend(name: str) -> None:
    """Remove a backend registered by :func:`register_backend` (tests); built-in backends come back."""
    _REGISTRY.pop(name, None)
    if name in _BUILTIN:
        _REGISTRY[name] = _BUILTIN[name]


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def _load(target: str) -> Any:
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def _entry(name: str) -> BackendEntry | type[Backend]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; choose one of {available_backends()} with --backend")
    return _REGISTRY[name]


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass registered as ``name`` (imported on first use)."""
    entry = _entry(name)
    return _load(entry.backend) if isinstance(entry, BackendEntry) else entry


def options_class(name: str) -> type[BackendOptions]:
    """The options dataclass of backend ``name`` (without importing the backend itself)."""
    entry = _entry(name)
    cls = _load(entry.options) if isinstance(entry, BackendEntry) else entry.options
    if not (isinstance(cls, type) and issubclass(cls, BackendOptions)):
        raise TypeError(f"backend {name!r}: its options {cls!r} are not a BackendOptions subclass")
    return cls


def detect_backend(path: Path) -> str:
    """The name of the registered backend whose native layout the folder ``path`` has (imports each backend);
    a ConfigError listing the layouts when none matches."""
    for name in available_backends():
        if backend_class(name).is_native_folder(Path(path)):
            return name
    layouts = "; ".join(f"{n}: {backend_class(n).base_layout}" for n in available_backends())
    raise ConfigError(f"{path}: not a model folder of any backend ({layouts}); pass --backend")


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate a backend by name (imports it lazily: no heavy imports at voicetune import time)."""
    return backend_class(name)(**kwargs)


# ------------------------------------------------------------------------------ configs of a backend


def resolve(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its backend's options class (the defaults when it holds the placeholder), validated."""
    if type(cfg.backend_options) is not BackendOptions:
        if not isinstance(cfg.backend_options, options_class(cfg.backend)):
            raise ConfigError(f"backend_options {type(cfg.backend_options).__name__} do not belong to the "
                              f"{cfg.backend} backend; set --backend")
        return cfg
    return merge(cfg, {}, options_for=options_class)


def train_config(**options: Any) -> TrainConfig:
    """A validated TrainConfig from options by flat name (the flags without dashes: ``batch_size=4``,
    ``eval_every=10``, ``dropout=0.0``), the backend's options resolved. None values are ignored."""
    return merge(TrainConfig(backend=options.get("backend") or TrainConfig.backend), options,
                 options_for=options_class)


def merge_options(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """:func:`voicetune.config.merge` with the registry's options classes."""
    return merge(cfg, overrides, options_for=options_class)


def train_config_from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    return from_dict(TrainConfig, data, source=source, options_for=options_class)


def load_train_config(path: Path | str) -> TrainConfig:
    """A config.yaml (this version's layout, or the flat one of earlier versions), validated."""
    return load_yaml(TrainConfig, Path(path), options_for=options_class)
