"""One-line descriptions of exceptions, for messages that name a cause without a traceback."""

from __future__ import annotations

import traceback


def where(exc: BaseException) -> str:
    """``package/module.py:LINE`` of the innermost frame of ``exc`` (relative to site-packages or src/)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    name = frame.filename.replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/", "/src/"):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f"{name}:{frame.lineno}"


def one_line(exc: BaseException) -> str:
    """The exception's type, the first line of its message and where it was raised, e.g. ``AttributeError:
    'NoneType' object has no attribute 'get_seq_length' (at TTS/.../gpt_inference.py:62)``."""
    text = str(exc).strip()
    message = text.splitlines()[0] if text else ""
    out = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    at = where(exc)
    return f"{out} (at {at})" if at else out
