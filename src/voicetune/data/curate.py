"""Manual curation of a prepared dataset: a person restores quarantined clips or quarantines kept ones.

``voicetune dataset restore DATASET_DIR CLIP_ID...`` and ``voicetune dataset quarantine DATASET_DIR
CLIP_ID...`` call :func:`restore` and :func:`quarantine`. Each decision moves the wav between ``wavs/`` and
``quarantine/``, updates ``clips.jsonl`` and the metadata CSVs, and is recorded in ``curation.json`` (keyed
by the clip's source content hash and span), which `voicetune prepare` re-applies when the dataset is
rebuilt. Crash safety: the wav is first linked at its new place, then the metadata are rewritten
atomically, and only then is the old name removed, so the CSVs never name a missing file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from voicetune.config import PrepareConfig, load_yaml
from voicetune.data.finalize import (
    CURATION,
    apply_status,
    read_curation,
    record_key,
    write_dataset_files,
)
from voicetune.data.manifest import ClipRecord, DatasetError, read_clips_jsonl
from voicetune.data.split import eval_count
from voicetune.utils.io import atomic_write_json
from voicetune.utils.paths import UnsafePathError, inside

logger = logging.getLogger(__name__)


@dataclass
class CurateResult:
    """Which clips changed status and which were already where asked."""

    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    n_kept: int = 0
    n_quarantined: int = 0

    def summary(self) -> str:
        lines = [
            (
                f"{len(self.changed)} clip(s) changed; dataset: {self.n_kept} kept, "
                f"{self.n_quarantined} quarantined"
            )
        ]
        if self.unchanged:
            lines.append(f"  already so: {', '.join(self.unchanged)}")
        return "\n".join(lines)


def _load(root: Path, clip_ids: list[str]) -> tuple[list[ClipRecord], dict[str, ClipRecord]]:
    root = Path(root)
    if not (root / "clips.jsonl").is_file():
        raise DatasetError(f"{root}: no clips.jsonl (not a dataset written by `voicetune prepare`)")
    records = read_clips_jsonl(root / "clips.jsonl")
    by_id = {r.id: r for r in records}
    missing = [c for c in clip_ids if c not in by_id]
    if missing:
        raise DatasetError(f"{root / 'clips.jsonl'}: no clip(s) named {', '.join(missing)}")
    if not clip_ids:
        raise DatasetError("name at least one CLIP_ID")
    return records, by_id


def _split_for(r: ClipRecord, records: list[ClipRecord], root: Path) -> str:
    """eval when the speaker's eval split is short of its share (else train): restored clips never
    reshuffle the existing split."""
    try:
        cfg = load_yaml(PrepareConfig, root / "prepare.yaml")
    except (ValueError, OSError):
        cfg = PrepareConfig()
    mine = [x for x in records if x.speaker == r.speaker and x.status == "kept" and x is not r]
    n_eval = sum(1 for x in mine if x.split == "eval")
    return "eval" if n_eval < eval_count(len(mine) + 1, cfg.eval_fraction, cfg.min_eval_clips) else "train"


def _move(root: Path, r: ClipRecord, folder: str) -> tuple[Path, Path] | None:
    """Link the wav at its new place; returns (old, new) so the old name can go once metadata are written."""
    if not r.audio_file:
        raise DatasetError(f"clip {r.id} has no audio ({'; '.join(r.reasons)}); it cannot be restored")
    try:  # clips.jsonl is a file anyone can edit: its paths must stay in the dataset folder
        old = inside(root, r.audio_file, f"{root / 'clips.jsonl'} (clip {r.id})")
        new = inside(root, f"{folder}/{Path(r.audio_file).name}", f"{root / 'clips.jsonl'} (clip {r.id})")
    except UnsafePathError as e:
        raise DatasetError(str(e)) from None
    if old == new:
        return None
    if not old.is_file():
        raise DatasetError(f"{old}: audio of clip {r.id} is missing")
    new.parent.mkdir(exist_ok=True)
    if new.exists():
        new.unlink()
    os.link(old, new)
    r.audio_file = f"{folder}/{new.name}"
    return old, new


def _apply(root: Path, clip_ids: list[str], action: str, text: str | None) -> CurateResult:
    root = Path(root)
    records, by_id = _load(root, clip_ids)
    curation = read_curation(root)
    result = CurateResult()
    moves: list[tuple[Path, Path]] = []
    for cid in dict.fromkeys(clip_ids):
        r = by_id[cid]
        want = "kept" if action == "restore" else "quarantined"
        if r.status == want and not (text and action == "restore"):
            result.unchanged.append(cid)
            continue
        r.manual = "restored" if action == "restore" else "quarantined"
        if action == "restore" and text:
            r.text = " ".join(text.replace("|", " ").split())
        if action == "quarantine" and "quarantined by hand" not in r.reasons:
            r.reasons.append("quarantined by hand")
        apply_status(r)
        if r.status == "kept" and not r.split:
            r.split = _split_for(r, records, root)
        move = _move(root, r, "wavs" if r.status == "kept" else "quarantine")
        if move:
            moves.append(move)
        entry = {"action": action, "id": cid, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if action == "restore" and text:
            entry["text"] = r.text
        curation[record_key(r)] = entry
        result.changed.append(cid)
    write_dataset_files(root, records)
    atomic_write_json(root / CURATION, curation)
    for old, _ in moves:
        old.unlink()
    result.n_kept = sum(1 for r in records if r.status == "kept")
    result.n_quarantined = len(records) - result.n_kept
    logger.info("%s %s: %s", action, root, ", ".join(result.changed) or "nothing changed")
    return result


def restore(dataset_dir: Path | str, clip_ids: list[str], text: str | None = None) -> CurateResult:
    """Keep the named quarantined clips (a person listened and approves them), optionally with a corrected
    ``text`` (one clip). Raises DatasetError for unknown ids or clips without audio."""
    if text and len(clip_ids) != 1:
        raise DatasetError("a corrected --text applies to exactly one clip")
    return _apply(Path(dataset_dir), list(clip_ids), "restore", text)


def quarantine(dataset_dir: Path | str, clip_ids: list[str]) -> CurateResult:
    """Take the named clips out of training (kept on disk under ``quarantine/`` and in clips.jsonl)."""
    return _apply(Path(dataset_dir), list(clip_ids), "quarantine", None)
