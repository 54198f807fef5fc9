"""The commit a benchmark ran on, for its result file (imported by the scripts beside it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit() -> str:
    """``VOICETUNE_COMMIT`` when set (the GPU box's copy of .git can be stale: the caller says), else git's
    HEAD of this checkout, else "unknown"."""
    if os.environ.get("VOICETUNE_COMMIT"):
        return os.environ["VOICETUNE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
