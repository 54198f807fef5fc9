"""Output folders a user names (``--out``): written atomically, and never at the cost of a file voicetune did
not write.

Every such folder holds ``.voicetune-output.json``: for each kind of output in it ("dataset", "package",
"base-evaluation", "tiny-base") the top-level entries that output is made of. Rules:

* A missing or empty ``--out`` is written; so is one that already holds an output of the same kind (a re-run).
* Any other non-empty folder is refused unless ``force``: the message names what is in it. With ``force`` the
  output is added next to the files there, which are never removed or replaced (a name clash is refused).
* ``--out`` is never an input of the command, nor a folder that holds one, not even with ``force``.
* The output is built in a hidden folder beside ``--out`` and moved into place when complete. When
  ``--out`` held only the previous output of the same kind, the two folders are swapped (atomic); when it
  also holds other files, only the previous output's own entries are replaced, the one that makes it look
  complete (``complete``) last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from voicetune.utils.io import PARTIAL_MARKER, atomic_write_json, new_tmp_dir, remove_partial

MARKER = ".voicetune-output.json"

WHAT = {  # who writes each kind of output
    "dataset": "`voicetune prepare` (or `voicetune dataset import`)",
    "package": "`voicetune export`",
    "base-evaluation": "`voicetune evaluate --base`",
    "tiny-base": "`voicetune make-tiny-base`",
}


class OutputError(ValueError):
    """An output folder cannot be written without touching files voicetune did not write; says what to do."""


def read_marker(folder: Path) -> dict[str, Any]:
    """The marker of ``folder``: {kind: {"entries": [...], ...}} ({} when absent or unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    outputs = data.get("outputs") if isinstance(data, dict) else None
    return outputs if isinstance(outputs, dict) else {}


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {MARKER, PARTIAL_MARKER} if folder.is_dir() else set()


Signature = str | Callable[[Path], bool] | None


def own_entries(
    folder: Path,
    kind: str,
    known: Iterable[str] = (),
    signature: Signature = None,
    interim: Iterable[str] = (),
) -> set[str] | None:
    """The entries of ``folder`` that belong to its ``kind`` output, or None when it holds no such output.

    With a marker: the recorded entries (and ``known`` names). Without one (written before the marker
    existed): recognised only when every entry is one of the ``known`` names (any, when none are given) and
    ``signature`` holds (a file name that must be there, or a test of the folder). A folder holding only
    ``interim`` entries (what the command writes there before its output is complete: caches) is one too.
    """
    folder = Path(folder)
    present = _listing(folder)
    marker = read_marker(folder)
    if kind in marker:
        recorded = marker[kind].get("entries", []) if isinstance(marker[kind], dict) else []
        return present & (set(map(str, recorded)) | set(known))
    only_known = not known or present <= set(known)
    if present and not marker and signature and only_known and _signed(folder, signature):
        return present
    if present and present <= set(interim):
        return present
    return None


def _signed(folder: Path, signature: Signature) -> bool:
    """Whether ``folder`` shows ``signature``: a file name it holds, or a test of the folder that holds."""
    if not callable(signature):
        return (folder / str(signature)).exists()
    try:
        return bool(signature(folder))
    except (OSError, ValueError, KeyError, TypeError):  # the test read files that are missing or not its own
        return False


def _same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(
    out: Path | str,
    kind: str,
    *,
    force: bool = False,
    inputs: Iterable[Path | str] = (),
    known: Iterable[str] = (),
    signature: Signature = None,
    interim: Iterable[str] = (),
    option: str = "--out",
) -> None:
    """Raise :class:`OutputError` unless ``out`` may receive a ``kind`` output (rules in the module doc)."""
    out = Path(out)
    target = out.resolve()
    for given in inputs:
        inp = Path(given).resolve()
        if _same_or_inside(inp, target):
            what = "is" if inp == target else "contains"
            raise OutputError(
                f"{option} {out} {what} an input of this command ({given}); voicetune never writes over its "
                "inputs (not even with --force): choose another folder"
            )
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise OutputError(f"{option} {out} exists and is not a folder; choose another name")
    present = _listing(out)
    if not present or own_entries(out, kind, known, signature, interim) is not None or force:
        return
    shown = ", ".join(sorted(present)[:6]) + (", ..." if len(present) > 6 else "")
    raise OutputError(
        f"{option} {out} is not empty ({shown}) and was not written by {WHAT.get(kind, kind)}. "
        "voicetune never deletes or replaces files it did not write: choose a new or empty folder, or add "
        "--force to write the output next to those files (they are kept)"
    )


@contextlib.contextmanager
def output_dir(
    out: Path | str,
    kind: str,
    *,
    force: bool = False,
    inputs: Iterable[Path | str] = (),
    known: Iterable[str] = (),
    signature: Signature = None,
    interim: Iterable[str] = (),
    complete: Iterable[str] = (),
) -> Iterator[Path]:
    """Check ``out`` (:func:`check_output`), yield a hidden folder to build the output in, and publish it into
    ``out`` when the block completes. On an exception nothing in ``out`` changes."""
    out = Path(out)
    known, interim = tuple(known), tuple(interim)
    check_output(out, kind, force=force, inputs=inputs, known=known, signature=signature, interim=interim)
    tmp = new_tmp_dir(out)
    try:
        yield tmp
        ours = own_entries(out, kind, known, signature, interim) or set()
        _publish(tmp, out, kind, ours, tuple(complete))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _marker_doc(outputs: dict[str, Any]) -> dict[str, Any]:
    from voicetune import __version__

    return {"written_by": f"voicetune {__version__}", "outputs": outputs}


def _entry(names: Iterable[str]) -> dict[str, Any]:
    return {"entries": sorted(names), "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _publish(tmp: Path, out: Path, kind: str, ours_old: set[str], complete: tuple[str, ...]) -> None:
    os.chmod(tmp, 0o777 & ~_umask())
    new = _listing(tmp)
    marker = read_marker(out) if out.is_dir() else {}
    others = _listing(out) - ours_old
    if not others and set(marker) <= {kind}:  # out holds nothing but the previous output: swap the folders
        atomic_write_json(tmp / MARKER, _marker_doc({kind: _entry(new)}))
        if out.exists() or out.is_symlink():
            trash = new_tmp_dir(out, ".old")
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            remove_partial(trash)
        else:
            os.replace(tmp, out)
        (out / PARTIAL_MARKER).unlink()
        return
    clash = sorted(new & others)
    if clash:
        raise OutputError(
            f"{out} already holds {', '.join(clash)}, which voicetune did not write (or another output "
            "owns); they are not replaced: choose a new or empty folder"
        )
    # Merge into a folder that also holds other files: the previous output stops claiming to be complete
    # first, its own entries go, the new ones come in (what makes the output look complete last), then the
    # marker.
    marker.pop(kind, None)
    atomic_write_json(out / MARKER, _marker_doc(marker))
    trash = new_tmp_dir(out, ".old")
    for name in sorted(ours_old):
        os.replace(out / name, trash / name)
    for name in sorted(new, key=lambda n: (n in complete, n)):
        os.replace(tmp / name, out / name)
    marker[kind] = _entry(new)
    atomic_write_json(out / MARKER, _marker_doc(marker))
    remove_partial(trash)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
