"""Atomic output: every file voicetune writes goes to a temporary name first and is renamed into place,
so an interrupted run never leaves a half-written checkpoint, manifest or wav behind."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _umask_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for folders) less the process umask, as open()/mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _umask_mode(0o666))  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    # Through a Python file object that keeps what interrupted a write: torch's writer reports any failed
    # write as "unexpected pos"; the real cause (OSError(ENOSPC) of a full disk, a KeyboardInterrupt) is
    # raised instead.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _KeepError(f)
        try:
            torch.save(obj, out)  # type: ignore[arg-type]  # a file-like object: it only needs write()
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise
        if out.error is not None:
            raise out.error


class _KeepError:
    """A writable file that remembers the exception a write raised (torch.save would swallow it)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except BaseException as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


PARTIAL_MARKER = ".voicetune-partial.json"  # inside every folder under construction: who builds it


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied, ...: not a process we can see
        return None


def new_tmp_dir(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden folder ``.NAME.XXXX.tmp`` beside ``path``, marked as a partial output of this process (and the
    leftovers of interrupted runs for ``path`` removed first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".tmp":
        clean_stale_tmp(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid()),
              "for": path.name}
    (tmp / PARTIAL_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    return tmp


def _abandoned(folder: Path) -> bool:
    """A partial folder whose writer is gone (same host, and its process no longer runs)."""
    try:
        info = json.loads((folder / PARTIAL_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return False
    started = _process_start(int(info.get("pid", -1)))
    return started is None or (info.get("started") is not None and abs(started - info["started"]) > 1e-3)


def remove_partial(folder: Path) -> None:
    """Remove a marked partial folder (:func:`new_tmp_dir`) with its marker last, so that a kill during the
    removal leaves a folder that :func:`clean_stale_tmp` still recognises as voicetune's and removes."""
    folder = Path(folder)
    for p in folder.iterdir():
        if p.name != PARTIAL_MARKER:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def clean_stale_tmp(path: Path) -> list[Path]:
    """Remove the partial folders ``.NAME.*.tmp`` / ``.NAME.*.old`` beside ``path`` that an interrupted
    voicetune left (killed: ``kill -9``, power loss). Only folders holding voicetune's partial marker whose
    process is gone are removed, and empty ones (a kill between creating the folder and marking it); an
    unmarked look-alike with content is left alone and reported."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if not (p.is_dir() and not p.is_symlink() and p.name.endswith((".tmp", ".old"))):
            continue
        if _abandoned(p):
            logger.info("removing %s, left behind by an interrupted voicetune run", p)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif not any(p.iterdir()):
            with contextlib.suppress(OSError):  # rmdir removes an empty folder only
                p.rmdir()
                removed.append(p)
        elif not (p / PARTIAL_MARKER).exists():
            logger.warning("%s looks like a leftover of an interrupted run of an older voicetune; it is not "
                           "removed automatically (delete it by hand if you do not need it)", p)
    return removed


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it onto ``path`` when complete.

    An existing ``path`` is replaced only after the new one is fully written. For folders voicetune owns (a
    run's checkpoints and evaluations, caches); a user-chosen ``--out`` goes through
    :mod:`voicetune.utils.outputs`.
    """
    path = Path(path)
    tmp = new_tmp_dir(path)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp creates 0700
        if path.exists():
            trash = new_tmp_dir(path, ".old")  # marked: if killed before the rmtree, the next run removes it
            os.replace(path, trash / path.name)
            os.replace(tmp, path)
            remove_partial(trash)
        else:
            os.replace(tmp, path)
        (path / PARTIAL_MARKER).unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def append_jsonl(path: Path, record: dict[str, Any], sync: bool = True) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written).

    ``sync=False``: hand it to the operating system only (it survives the process, not a power cut) and leave
    the disk write to a later :func:`fsync_path`; an fsync costs milliseconds, a training step's logging
    should not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """Flush what was written to ``path`` to disk (no-op when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a crash is ignored
    return out


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
