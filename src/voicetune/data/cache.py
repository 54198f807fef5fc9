"""The stage caches of `voicetune prepare`, kept in ``DATASET_DIR/cache/`` so that re-runs do only new work.

Every stage is keyed by the source file's content hash (SHA-256) and the settings that stage depends on,
nothing else, so a re-run redoes exactly the stages whose inputs changed:

| stage      | stored in                      | key                                                     |
|------------|--------------------------------|---------------------------------------------------------|
| hashing    | ``files.jsonl``                | absolute path + size + mtime (skips re-hashing)         |
| decode+VAD | ``analysis/<sha>.npz``         | sha + VAD model version (frame probabilities, energy)   |
| segments   | (recomputed: pure and cheap)   | VAD/segmentation settings                               |
| ASR        | ``asr.jsonl``                  | sha + clip span + model + decoding settings + language  |
| QA         | ``qa.jsonl``                   | sha + clip span + QA version (+ MOS on/off)             |
| clip wav   | the previous ``wavs/``         | ``ClipRecord.audio_key``: sha + span + rate + loudness  |

Entries are appended (and fsynced) the moment they exist, so an interrupted run resumes where it
stopped; when a run completes, only the entries it used are carried into the new dataset folder, so
the cache does not grow without bound. A file that is not decoded at all on a re-run (everything hit)
costs one stat() call and a small .npz read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.utils.io import append_jsonl, atomic_path, atomic_write_text, file_sha256, read_jsonl

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"
LEGACY_ASR_CACHE = "asr_cache.jsonl"  # the first prepare version kept ASR results here
ANALYSIS_VERSION = "silero-seq-v1"  # bump when VAD framing/energy computation changes


class JsonlCache:
    """key -> JSON entry, appended to ``<dir>/<name>.jsonl`` as entries are made."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}.jsonl"
        self.entries: dict[str, dict[str, Any]] = {
            e["key"]: e for e in read_jsonl(self.path) if isinstance(e, dict) and "key" in e
        }
        self.used: dict[str, dict[str, Any]] = {}
        self.hits = 0

    def get(self, key: str) -> dict[str, Any] | None:
        e = self.entries.get(key)
        if e is not None:
            self.used[key] = e
            self.hits += 1
        return e

    def put(self, key: str, value: dict[str, Any]) -> None:
        entry = {"key": key, **value}
        self.entries[key] = self.used[key] = entry
        append_jsonl(self.path, entry)

    def export(self, folder: Path) -> None:
        """Write the entries this run used into ``folder`` (the new dataset's cache)."""
        atomic_write_text(
            folder / self.path.name,
            "".join(json.dumps(e, ensure_ascii=False, default=float) + "\n" for e in self.used.values()),
        )


class StageCache:
    """All caches of one dataset folder (see the module doc)."""

    def __init__(self, out_dir: Path) -> None:
        self.root = out_dir / CACHE_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.asr = JsonlCache(self.root, "asr")
        self.qa = JsonlCache(self.root, "qa")
        self._files = {
            e["path"]: e for e in read_jsonl(self.root / "files.jsonl") if isinstance(e, dict) and "path" in e
        }
        self._files_used: dict[str, dict[str, Any]] = {}
        self._analyses_used: set[str] = set()
        self.analysis_hits = 0

    # ---------------------------------------------------------------------------------------- hashing
    def sha256(self, path: Path) -> str:
        """Content hash of ``path``, from the index when its size and mtime are unchanged."""
        key = str(path.resolve())
        st = path.stat()
        e = self._files.get(key)
        if e is None or e.get("size") != st.st_size or e.get("mtime_ns") != st.st_mtime_ns:
            e = {"path": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}
            self._files[key] = e
            append_jsonl(self.root / "files.jsonl", e)
        self._files_used[key] = e
        return str(e["sha256"])

    # --------------------------------------------------------------------------------------- analysis
    def _analysis_path(self, sha: str) -> Path:
        return self.root / "analysis" / f"{sha}.npz"

    def load_analysis(self, sha: str) -> dict[str, Any] | None:
        """The stored VAD analysis of a source (probs, energy_db, sr, n_samples, duration), or None."""
        path = self._analysis_path(sha)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["version"]) != ANALYSIS_VERSION:
                    return None
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            logger.debug("ignoring unreadable analysis cache %s (%s)", path, e)
            return None
        self._analyses_used.add(sha)
        self.analysis_hits += 1
        return {
            "probs": data["probs"].astype(np.float32),
            "energy_db": data["energy_db"].astype(np.float32),
            "sr": int(data["sr"]),
            "n_samples": int(data["n_samples"]),
            "duration": float(data["duration"]),
        }

    def save_analysis(self, sha: str, analysis: dict[str, Any]) -> None:
        path = self._analysis_path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, version=np.array(ANALYSIS_VERSION), **analysis)
        self._analyses_used.add(sha)

    # ----------------------------------------------------------------------------------------- export
    def export(self, dest_dataset: Path) -> None:
        """Carry the entries this run used into ``dest_dataset/cache`` (hard links where possible)."""
        dest = dest_dataset / CACHE_DIR
        dest.mkdir(parents=True, exist_ok=True)
        self.asr.export(dest)
        self.qa.export(dest)
        atomic_write_text(
            dest / "files.jsonl", "".join(json.dumps(e) + "\n" for e in self._files_used.values())
        )
        for sha in sorted(self._analyses_used):
            link_or_copy(self._analysis_path(sha), dest / "analysis" / f"{sha}.npz")


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system, no extra space), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def clip_key(sha: str, start: float, end: float) -> str:
    """The identity of a clip: its source content and its span (milliseconds)."""
    return f"{sha}|{start:.3f}|{end:.3f}"
