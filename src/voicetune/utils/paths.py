"""Paths read from files (metadata rows, markers, package manifests) stay inside their folder.

A dataset's metadata, a run's ``latest``/``best`` markers or a package's ``voicetune.json`` name files
relative to their folder. :func:`inside` resolves such a name and refuses one that leaves the folder (``..``,
an absolute path, a symlink pointing elsewhere), naming the file and line it came from and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path


class UnsafePathError(ValueError):
    """A path read from a file leads outside its folder; the message names the file, the line and the
    reason."""


def inside(folder: Path | str, name: str, source: str) -> Path:
    """``folder / name`` resolved, when it stays inside ``folder``; else :class:`UnsafePathError`.

    ``source`` says where ``name`` was read (``"metadata.csv:12"``) for the message.
    """
    folder = Path(folder)
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{source}: empty file name")
    if "\x00" in name:
        raise UnsafePathError(f"{source}: file name {name!r} contains a NUL byte")
    if Path(name).is_absolute() or name.startswith("~"):
        raise UnsafePathError(
            f"{source}: {name!r} is an absolute path; paths here must be relative to {folder} (refused)"
        )
    root = folder.resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        how = "goes up out of" if ".." in Path(name).parts else "is a symlink that leads out of"
        raise UnsafePathError(f"{source}: {name!r} {how} the folder {folder} (to {target}); refused")
    return target


def display_name(path: Path | str) -> str:
    """``path`` as text that can always be printed and written as UTF-8: bytes of a file name that are not
    valid UTF-8 (Python keeps them as surrogate escapes) appear as ``\\xe9``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def file_problem(p: Path) -> str | None:
    """Why ``p`` is not a usable file ("missing", "empty"...), or None."""
    if not p.exists():
        return "missing"
    if not p.is_file():
        return "not a file"
    try:
        with open(p, "rb") as f:
            if not f.read(1):
                return "empty"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None
