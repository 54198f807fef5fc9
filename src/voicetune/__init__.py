"""voicetune: finetune a voice-cloning TTS model on your own recordings, and measure when it is good.

The stages are library functions; the CLI and the web UI only call them::

    import voicetune
    voicetune.prepare("recordings/", "dataset/")
    voicetune.make_tiny_base("xtts", "tiny_base/")
    voicetune.train("dataset/", base="tiny_base/", out="run/")
    voicetune.evaluate("run/")
    voicetune.export("run/", "package/")
    voicetune.synthesize("package/", "Hello there.", "hello.wav")
    voicetune.check_stack().ok          # does the installed stack work? (what `voicetune doctor` runs)

Nothing heavy is imported until a stage is called.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "prepare": "voicetune.data.prepare:prepare",
    "make_tiny_base": "voicetune.backends.tiny:make_tiny_base",
    "train": "voicetune.finetune:train",
    "evaluate": "voicetune.evaluation.rescore:rescore_run",
    "export": "voicetune.packaging:export",
    "synthesize": "voicetune.synthesis:synthesize",
    "doctor": "voicetune.preflight:doctor",
    "check_stack": "voicetune.stackcheck:check_stack",
    "demo": "voicetune.demo_pipeline:demo",
}

__all__ = ["__version__", *_API]  # noqa: PLE0604 - the keys of _API, all strings, are the lazy names


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'voicetune' has no attribute {name!r}")
