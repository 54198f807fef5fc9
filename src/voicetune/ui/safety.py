"""The web UI's safety checks, as plain functions (unit-tested without a browser).

* Paths typed by a user resolve inside the workspace or are refused (:func:`resolve_inside`).
* Names given to uploads, datasets, runs and packages are single safe file names (:func:`safe_upload_name`,
  :func:`safe_name`); a name that tries to leave its folder is refused, not repaired.
* Uploads have a size limit (:func:`check_upload_size`).
* The UI listens on the loopback interface unless the user passes ``--allow-remote`` (:func:`check_bind`);
  basic auth is optional (:func:`parse_auth`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_NAME_CHARS = 120
_UNSAFE_CHARS = re.compile(r"[^\w.\- ()+,=@]+", re.UNICODE)


class UiSafetyError(ValueError):
    """A path, name, upload or bind address is refused; the message says which and why."""


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_inside(workspace: Path | str, user_path: str | Path, *, must_exist: bool = False,
                   for_writing: bool = False) -> Path:
    """The absolute path of ``user_path`` (relative to the workspace, or absolute under it).

    Refused with a message naming the path: an empty path, one that leaves the workspace (``..``, an
    absolute path elsewhere, a NUL byte), a missing one when ``must_exist``. For reading, links that the
    workspace's owner placed inside it are followed (e.g. ``bases/xtts_v2 -> /models/XTTS-v2``); for writing
    (``for_writing``) the real location must lie inside the workspace too, so nothing is ever written
    outside it.
    """
    root = Path(workspace).resolve()
    text = str(user_path).strip()
    if not text:
        raise UiSafetyError("no path given: type a folder inside the workspace")
    if "\x00" in text:
        raise UiSafetyError(f"{text!r}: a path cannot contain a NUL byte")
    given = Path(os.path.expanduser(text)) if text.startswith("~") else Path(text)
    lexical = Path(os.path.normpath(given if given.is_absolute() else root / given))
    if not _inside(lexical, root):
        raise UiSafetyError(f"{text}: outside the workspace {root}; only paths inside it can be used "
                            f"(put or link the folder under {root})")
    if for_writing and not _inside(lexical.resolve(), root):
        raise UiSafetyError(f"{text}: resolves to {lexical.resolve()}, outside the workspace {root}; "
                            "voicetune writes only inside the workspace")
    if must_exist and not lexical.exists():
        raise UiSafetyError(f"{text}: does not exist in the workspace {root}")
    return lexical


def safe_upload_name(name: str) -> str:
    """The file name an upload is stored under: the given name with odd characters replaced by ``_``.

    A name that carries a folder (``/`` or ``\\``), is ``.`` / ``..``, starts with a dot (hidden files,
    ``..evil``), holds control characters, or is empty is refused: uploads never choose where they are
    written.
    """
    raw = str(name)
    if not raw.strip():
        raise UiSafetyError("an uploaded file has no name")
    if "/" in raw or "\\" in raw or raw in (".", "..") or raw.startswith("."):
        raise UiSafetyError(f"uploaded file name {raw!r} is refused: it names a folder or a hidden file "
                            "(path traversal); rename the file and upload it again")
    if any(unicodedata.category(c) == "Cc" for c in raw):
        raise UiSafetyError(f"uploaded file name {raw!r} is refused: it contains control characters")
    stem, dot, ext = unicodedata.normalize("NFC", raw).rpartition(".")
    stem, ext = (stem, ext) if dot else (ext, "")
    stem = _UNSAFE_CHARS.sub("_", stem).strip(" ._") or "file"
    ext = re.sub(r"[^A-Za-z0-9]", "", ext).lower()
    return (stem[:MAX_NAME_CHARS] + (f".{ext}" if ext else ""))


def safe_name(name: str, what: str = "name") -> str:
    """A dataset, run or package name: letters, digits, ``_ - .``; refused (not repaired) otherwise, so that
    the folder it names is exactly the one the user asked for."""
    text = str(name).strip()
    if not text:
        raise UiSafetyError(f"the {what} is empty: give it a name (letters, digits, _ - .)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", text) or ".." in text or len(text) > MAX_NAME_CHARS:
        raise UiSafetyError(
            f"{what} {text!r} is refused: use letters, digits and _ - . (no spaces, no slashes, "
            f"no '..', at most {MAX_NAME_CHARS} characters)"
        )
    return text


def check_upload_size(size_bytes: int, limit_mb: float, name: str) -> None:
    """Refuse an upload over the limit, naming the file, its size and the flag that raises the limit."""
    if size_bytes > limit_mb * 1024 * 1024:
        raise UiSafetyError(
            f"{name}: {size_bytes / 1024**2:.1f} MB is over the upload limit of {limit_mb:g} MB "
            "(start the UI with --max-upload-mb to change it)"
        )


def is_local_host(host: str) -> bool:
    """Whether ``host`` is a loopback address (only this machine can connect)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> str | None:
    """Refuse a non-loopback ``host`` unless ``allow_remote``; returns the warning to print when it is
    allowed (None for a local bind)."""
    if is_local_host(host):
        return None
    if not allow_remote:
        raise UiSafetyError(
            f"--host {host} would make the UI reachable from other machines; it can start and "
            "stop training and read and write the workspace. Pass --allow-remote as well if you "
            "mean it (and set --auth USER:PASS), or keep the default --host 127.0.0.1"
        )
    return (
        f"WARNING: the voicetune UI listens on {host}: anyone who can reach this machine on that interface "
        "can use it, including starting training and reading the workspace. Use --auth USER:PASS and a "
        "trusted network."
    )


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` -> (user, password); None when not given. Both parts must be non-empty."""
    if text is None or text == "":
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UiSafetyError("--auth expects USER:PASS (both non-empty)")
    return user, password
