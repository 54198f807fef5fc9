"""Free disk space: checked before large writes, and a full disk reported as such.

Libraries report a full disk in their own words (torch: ``unexpected pos``; libsndfile: ``System error``).
:func:`disk_full_guard` turns any failed write on a file system that is (nearly) full into a
:class:`DiskFullError` that says so, where, and how much space the write needed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NEARLY_FULL = 4 << 20  # less than this left after a failed write: the write failed for want of space


class DiskFullError(OSError):
    """Not enough disk space for a write; the message says where and how much is needed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: Path | str) -> int:
    """Free bytes (for this user) on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _message(path: Path | str, need: int, what: str, free: int) -> str:
    return (
        f"disk full: {what} needs about {human_bytes(need)} in {path}, but only {human_bytes(free)} "
        "is free on that disk. Free some space (or choose a folder on another disk) and run the command "
        "again; what was written before is intact."
    )


def ensure_free_space(path: Path | str, need: int, what: str) -> None:
    """Raise :class:`DiskFullError` when less than ``need`` bytes are free where ``path`` is."""
    free = free_bytes(path)
    if free < need:
        raise DiskFullError(_message(path, need, what, free))


def warn_if_short(path: Path | str, need: int, what: str) -> bool:
    """Log a warning (and return True) when ``need`` bytes will not fit where ``path`` is."""
    free = free_bytes(path)
    if free < need:
        logger.warning(
            "%s will need about %s in %s, but only %s is free on that disk: it may stop with a full disk",
            what, human_bytes(need), path, human_bytes(free),
        )
        return True
    return False


def is_disk_full(exc: BaseException, path: Path | str) -> bool:
    """Whether ``exc`` (raised by a write under ``path``) means the disk is full."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    try:
        return isinstance(exc, (OSError, RuntimeError)) and free_bytes(path) < _NEARLY_FULL
    except OSError:
        return False


@contextlib.contextmanager
def disk_full_guard(path: Path | str, need: int, what: str) -> Iterator[None]:
    """Turn a write that failed because the disk is full into a :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as e:
        if is_disk_full(e, path):
            raise DiskFullError(_message(path, need, what, free_bytes(path))) from e
        raise


def tree_bytes(*paths: Path | str) -> int:
    """Total size of the files under ``paths`` (files or folders; missing ones count 0)."""
    total = 0
    for path in paths:
        p = Path(path)
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total
