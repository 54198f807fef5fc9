"""The UI's workspace: one folder holding everything the UI reads and writes.

Layout (each sub-folder created on first use)::

    WORKSPACE/
      recordings/<set>/    uploaded recordings (sanitised names), or any folder the user put here
      datasets/<name>/     written by prepare (clips.jsonl, wavs/, quarantine/, report.html, ...)
      bases/<name>/        base models (copy or link them here; links made by the workspace's owner are read)
      runs/<name>/         training runs (the run folder of `voicetune train`)
      runs/.ui/<name>/     what the UI launched for a run: process.json and console.log
      exports/<name>/      model packages, and <name>.zip for download

Paths the user types go through :func:`voicetune.ui.safety.resolve_inside`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from voicetune.ui.process import STATE_FOLDER
from voicetune.ui.safety import UiSafetyError, check_upload_size, resolve_inside, safe_name, safe_upload_name
from voicetune.utils.io import file_sha256

logger = logging.getLogger(__name__)

FOLDERS = ("recordings", "datasets", "bases", "runs", "exports")


@dataclass(frozen=True)
class SavedUploads:
    """What :meth:`Workspace.save_uploads` stored and what it refused (name -> reason)."""

    folder: Path
    saved: list[str]
    refused: dict[str, str]


class Workspace:
    """The workspace root and its folders (see the module doc)."""

    def __init__(self, root: Path | str, max_upload_mb: float = 2048.0):
        self.root = Path(root).expanduser().resolve()
        self.max_upload_mb = max_upload_mb

    def ensure(self) -> Workspace:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in FOLDERS:
            (self.root / name).mkdir(exist_ok=True)
        return self

    def folder(self, kind: str) -> Path:
        assert kind in FOLDERS, kind
        return self.root / kind

    def path(self, user_path: str, *, must_exist: bool = False, for_writing: bool = False) -> Path:
        """A path typed by the user, inside the workspace (or a UiSafetyError saying why not)."""
        return resolve_inside(self.root, user_path, must_exist=must_exist, for_writing=for_writing)

    def relative(self, path: Path) -> str:
        """``path`` as shown to the user: relative to the workspace when inside it."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def new_child(self, kind: str, name: str, what: str) -> Path:
        """``WORKSPACE/<kind>/<name>`` for a new dataset/run/package: a safe name, inside the workspace."""
        folder = self.folder(kind) / safe_name(name, what)
        return resolve_inside(self.root, str(folder), for_writing=True)

    # ------------------------------------------------------------------ listings

    def datasets(self) -> list[str]:
        """Dataset folders (those with clips.jsonl or metadata_train.csv), newest first, as workspace
        paths."""
        found = [p for p in self._children("datasets")
                 if (p / "clips.jsonl").is_file() or (p / "metadata_train.csv").is_file()]
        return [self.relative(p) for p in found]

    def runs(self) -> list[str]:
        """Run folders (a run.json or a config.yaml) and runs the UI launched, newest first."""
        found = [
            p for p in self._children("runs") if (p / "run.json").exists() or (p / "config.yaml").exists()
        ]
        launched = self.folder("runs") / STATE_FOLDER
        found += [p for p in (launched.iterdir() if launched.is_dir() else ()) if p.is_dir()
                  and p.name not in {f.name for f in found}]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def bases(self) -> list[str]:
        """Folders under bases/ (the backend checks their layout), as workspace paths."""
        return [self.relative(p) for p in self._children("bases")]

    def recording_sets(self) -> list[str]:
        return [self.relative(p) for p in self._children("recordings")]

    def _children(self, kind: str) -> list[Path]:
        folder = self.folder(kind)
        if not folder.is_dir():
            return []
        kids = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(kids, key=lambda p: p.stat().st_mtime, reverse=True)

    def run_dir(self, name: str) -> Path:
        """An existing run folder by name (a UiSafetyError when there is none)."""
        path = self.folder("runs") / safe_name(name, "run name")
        if not path.is_dir() and not (self.folder("runs") / STATE_FOLDER / path.name).is_dir():
            raise UiSafetyError(f"no run named {name!r} in {self.folder('runs')}")
        return path

    # ------------------------------------------------------------------ uploads

    def save_uploads(self, files: list[tuple[str, Path]], set_name: str) -> SavedUploads:
        """Copy uploaded files (``(name the browser gave, temporary path)``) into ``recordings/<set_name>/``.

        Each name is sanitised (:func:`safe_upload_name`) and each size checked; a refused file is reported
        with its reason and the others are still saved. An existing file of the same name is never
        overwritten: a different file gets a numbered name (the same content again is stored once).
        """
        folder = self.new_child("recordings", set_name, "recording set name")
        folder.mkdir(parents=True, exist_ok=True)
        saved, refused = [], {}
        for given, tmp in files:
            try:
                name = safe_upload_name(given)
                check_upload_size(Path(tmp).stat().st_size, self.max_upload_mb, name)
                same = folder / name
                if same.is_file() and file_sha256(same) == file_sha256(Path(tmp)):
                    saved.append(same.name)  # the same recording uploaded again
                    continue
                dest = _free_name(folder, name)
                resolve_inside(self.root, str(dest), for_writing=True)
                shutil.copyfile(tmp, dest)
                saved.append(dest.name)
            except (UiSafetyError, OSError) as e:
                refused[str(given)] = str(e)
                logger.warning("upload %r refused: %s", given, e)
        return SavedUploads(folder, saved, refused)


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem_2.ext`` ... when that file exists (uploads never overwrite)."""
    dest = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 2
    while dest.exists():
        dest = folder / f"{stem}_{n}{suffix}"
        n += 1
    return dest
