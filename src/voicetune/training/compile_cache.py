"""Compile once per machine, not once per run: torch.compile's results kept in voicetune's cache folder.

What torch already keeps, and where (torch 2.9-2.11):

* Inductor's FX graph cache and AOTAutograd's cache (compiled forward/backward graphs, with the Triton kernels
  bundled in) and the autotuning cache, all under ``TORCHINDUCTOR_CACHE_DIR`` (default
  ``/tmp/torchinductor_<user>``), keyed by the graph, the torch version and the settings, not by weight values
  (the weights are graph inputs). They are on by default and voicetune leaves them on: a second run on the
  same machine skips Inductor's code generation and autotuning. ``/tmp`` does not survive a reboot, and many
  systems clean it.
* Dynamo's tracing and the CUDA-graph capture are not cached: every run traces (seconds) and captures
  (a warm-up and a capture per padded length).

This module keeps what torch compiled in a place that lasts: after a run has compiled something new, the
artifacts (``torch.compiler.save_cache_artifacts``, the "mega-cache") are written to
``<cache>/compile/<key>/<hash>.bin``, and every later run loads them
(``torch.compiler.load_cache_artifacts``) before its first step, which puts them back into torch's own
caches. ``<cache>`` is ``$VOICETUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/voicetune``, else
``~/.cache/voicetune``; ``<key>`` hashes the torch, CUDA, Triton and Python versions, the GPU, and the shapes
and dtypes of what trains with the settings that shape the compiled graphs (so a folder holds one model's
artifacts). Each padded length is its own graph (compiled with ``dynamic=False``: the CUDA graphs need static
shapes anyway, and static shapes get the fastest kernels), so the cache fills up with the lengths the data
has, and a later run compiles only the lengths it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from voicetune.utils.io import atomic_path

logger = logging.getLogger(__name__)

FORMAT = 1  # of the folder layout below <cache>/compile


def cache_root() -> Path:
    """voicetune's cache folder: ``$VOICETUNE_CACHE_DIR``, ``$XDG_CACHE_HOME/voicetune`` or
    ``~/.cache/voicetune``."""
    if os.environ.get("VOICETUNE_CACHE_DIR"):
        return Path(os.environ["VOICETUNE_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "voicetune"


def machine_key(device: torch.device) -> dict[str, Any]:
    """What compiled code depends on besides the model: software versions and the GPU."""
    key: dict[str, Any] = {"format": FORMAT, "torch": torch.__version__, "cuda": torch.version.cuda,
                           "python": platform.python_version(), "device": device.type}
    try:
        import triton

        key["triton"] = triton.__version__
    except ImportError:
        key["triton"] = None
    if device.type == "cuda":
        key["gpu"] = torch.cuda.get_device_name(device)
        key["capability"] = list(torch.cuda.get_device_capability(device))
    else:
        key["cpu"] = platform.machine()
    return key


def model_key(module: torch.nn.Module, settings: dict[str, Any]) -> dict[str, Any]:
    """The shapes and dtypes of ``module``'s parameters (which ones train) and ``settings``."""
    shapes = hashlib.sha256()
    for name, p in module.named_parameters():
        shapes.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad};".encode())
    return {"parameters": shapes.hexdigest()[:16], "settings": settings}


def cache_counters() -> str:
    """Hits, misses and bypasses of torch's compile caches in this process (Inductor's FX graph cache,
    AOTAutograd's cache), e.g. "fx graphs 12 hit / 0 miss / 0 bypass, autograd 6 hit / 0 miss / 0 bypass"."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return "(no counters)"
    fx: Mapping[str, int] = counters.get("inductor", {})
    aot: Mapping[str, int] = counters.get("aot_autograd", {})
    return (f"fx graphs {fx.get('fxgraph_cache_hit', 0)} hit / {fx.get('fxgraph_cache_miss', 0)} miss / "
            f"{fx.get('fxgraph_cache_bypass', 0)} bypass, autograd {aot.get('autograd_cache_hit', 0)} hit / "
            f"{aot.get('autograd_cache_miss', 0)} miss / {aot.get('autograd_cache_bypass', 0)} bypass")


@dataclass
class CompileCache:
    """The persisted compile artifacts of one (machine, model) key; :meth:`load` before the first step,
    :meth:`save` after steps that may have compiled (it writes only when something new was compiled)."""

    folder: Path
    known: set[tuple[str, str]] = field(default_factory=set)  # (artifact type, key) already on disk
    files: dict[Path, set[tuple[str, str]]] = field(default_factory=dict)  # what each file on disk holds
    loaded_files: int = 0
    load_seconds: float = 0.0

    @classmethod
    def for_run(cls, device: torch.device, module: torch.nn.Module, settings: dict[str, Any],
                root: Path | None = None) -> CompileCache:
        blob = json.dumps({**machine_key(device), **model_key(module, settings)}, sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:20]
        return cls((root or cache_root()) / "compile" / digest)

    def load(self) -> int:
        """Load every artifact file of this key into torch's caches; returns how many artifacts were loaded.
        An unreadable or incompatible file is skipped with a warning (torch ignores artifacts of other
        versions by itself)."""
        t0 = time.perf_counter()
        loaded = 0
        for path in sorted(self.folder.glob("*.bin")) if self.folder.is_dir() else []:
            try:
                info = torch.compiler.load_cache_artifacts(path.read_bytes())
                keys = _keys(info) if info is not None else None
            except Exception as e:  # noqa: BLE001 - a cache that cannot be read only costs a recompilation
                logger.warning("%s: compile cache file not loaded (%s: %s); it will be rebuilt", path,
                               type(e).__name__, e)
                continue
            if keys is None:
                logger.warning("%s: not a compile cache file of this torch version; ignored", path)
                continue
            self.loaded_files += 1
            self.files[path], loaded = keys, loaded + len(keys)
            self.known |= keys
        self.load_seconds = time.perf_counter() - t0
        if loaded:
            logger.info("compile cache: %d artifacts from %d file(s) in %s loaded in %.1f s", loaded,
                        self.loaded_files, self.folder, self.load_seconds)
        return loaded

    def save(self) -> Path | None:
        """Write what this process compiled (or used) when it holds artifacts not yet on disk; returns the
        file written, or None. Older files of this key that the new one covers are removed (torch hands over
        everything recorded since the process started, cache hits included)."""
        try:
            result = torch.compiler.save_cache_artifacts()
            keys = _keys(result[1]) if result is not None else set()
        except Exception as e:  # noqa: BLE001 - a cache that cannot be written must not stop training
            logger.warning("compile cache not saved: %s: %s", type(e).__name__, e)
            return None
        logger.info("compile cache: this run %s", cache_counters())
        if result is None:
            return None
        data = result[0]
        new = keys - self.known
        if not new:
            return None
        path = self.folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except OSError as e:
            logger.warning("compile cache not saved to %s: %s", path, e)
            return None
        for old, held in list(self.files.items()):
            if old != path and held <= keys:  # everything in it is in the new file
                old.unlink(missing_ok=True)
                del self.files[old]
        self.files[path] = keys
        self.known |= keys
        logger.info("compile cache: %d new artifacts saved to %s (%.1f MB)", len(new), path, len(data) / 1e6)
        return path


def _keys(info: Any) -> set[tuple[str, str]]:
    """(artifact type, key) of every artifact a ``CacheInfo`` lists."""
    return {(kind, k) for kind, ks in info.artifacts.items() for k in ks}
