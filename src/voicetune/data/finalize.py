"""The dataset-wide end of `voicetune prepare` / `import`: decisions, split, metadata, report.

After every clip is processed: per-speaker checks (:func:`voicetune.data.quality.dataset_reasons`),
the manual decisions of ``voicetune dataset restore/quarantine`` (``curation.json``, keyed by source
content hash and span, so they survive re-runs), kept/quarantined status (quarantined wavs move to
``quarantine/``), the deterministic train/eval split per speaker, and the metadata files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicetune.config import PrepareConfig, save_yaml
from voicetune.data.cache import clip_key
from voicetune.data.manifest import ClipRecord, read_clips_jsonl, write_clips_jsonl, write_metadata_csv
from voicetune.data.quality import dataset_reasons
from voicetune.data.split import MIN_RECOMMENDED_SECONDS, split_train_eval
from voicetune.utils.io import atomic_write_json
from voicetune.utils.paths import UnsafePathError, inside

if TYPE_CHECKING:
    from voicetune.data.prepare import PrepareResult

logger = logging.getLogger(__name__)

CURATION = "curation.json"


@dataclass
class PreviousDataset:
    """What an earlier run left in the output folder that this run can reuse."""

    wavs: dict[str, Path] = field(default_factory=dict)  # ClipRecord.audio_key -> wav file
    curation: dict[str, dict[str, Any]] = field(default_factory=dict)


def previous_dataset(out_dir: Path) -> PreviousDataset:
    """The reusable wavs and the manual decisions of the dataset already in ``out_dir`` (if any)."""
    prev = PreviousDataset()
    try:
        for r in read_clips_jsonl(out_dir / "clips.jsonl"):
            if r.audio_key and r.audio_file:
                try:
                    wav = inside(out_dir, r.audio_file, f"{out_dir / 'clips.jsonl'} (clip {r.id})")
                except UnsafePathError as e:
                    logger.warning("%s; not reused", e)
                    continue
                if wav.is_file():
                    prev.wavs[r.audio_key] = wav
    except ValueError as e:
        logger.warning("ignoring the previous clips.jsonl (%s); every clip is rebuilt", e)
    prev.curation = read_curation(out_dir)
    return prev


def read_curation(root: Path) -> dict[str, dict[str, Any]]:
    """Manual decisions of a dataset folder: clip key -> {"action", "text"?, "id", "at"}."""
    path = root / CURATION
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("%s: unreadable (%s); manual decisions ignored", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def record_key(r: ClipRecord) -> str:
    """The curation key of a record: its source's content hash and its span."""
    return clip_key(r.source_sha256 or r.source_file, r.start, r.end)


def apply_status(r: ClipRecord) -> None:
    """kept when it has a wav and no reason (or a person restored it), and no person quarantined it."""
    ok = bool(r.audio_file) and (not r.reasons or r.manual == "restored") and r.manual != "quarantined"
    r.status = "kept" if ok else "quarantined"
    if not ok:
        r.split = ""


def apply_curation(
    records: list[ClipRecord], curation: dict[str, dict[str, Any]], warnings: list[str]
) -> None:
    """Re-apply manual restore/quarantine decisions to the matching clips."""
    matched = set()
    for r in records:
        d = curation.get(record_key(r))
        if d is None:
            continue
        matched.add(record_key(r))
        if d.get("action") == "restore":
            r.manual = "restored"
            if d.get("text"):
                r.text = str(d["text"])
        elif d.get("action") == "quarantine":
            r.manual = "quarantined"
            if "quarantined by hand" not in r.reasons:
                r.reasons.append("quarantined by hand")
    stale = len(set(curation) - matched)
    if stale:
        warnings.append(
            f"{stale} manual decision(s) in {CURATION} no longer match a clip (segmentation changed)"
        )


def place_wav(root: Path, r: ClipRecord) -> None:
    """Move the record's wav to ``wavs/`` (kept) or ``quarantine/`` (quarantined) and update audio_file."""
    if not r.audio_file:
        return
    folder = "wavs" if r.status == "kept" else "quarantine"
    want = f"{folder}/{Path(r.audio_file).name}"
    if want != r.audio_file:
        (root / folder).mkdir(exist_ok=True)
        os.replace(root / r.audio_file, root / want)
        r.audio_file = want


def assign_split(records: list[ClipRecord], cfg: PrepareConfig, warnings: list[str]) -> None:
    """Deterministic train/eval split of the kept clips, stratified by duration within each speaker."""
    kept = [r for r in records if r.status == "kept"]
    speakers = sorted({r.speaker for r in kept})
    total = sum(r.duration for r in kept)
    if total < MIN_RECOMMENDED_SECONDS:
        warnings.append(
            f"only {total / 60:.1f} minutes ({total:.0f} s) of usable speech in {len(kept)} clips; at least "
            "3 minutes are recommended for finetuning (10+ minutes give clearly better results)"
        )
    for spk in speakers:
        mine = [r for r in kept if r.speaker == spk]
        split = split_train_eval([r.duration for r in mine], cfg.eval_fraction, cfg.min_eval_clips, cfg.seed)
        for i in split.train:
            mine[i].split = "train"
        for i in split.eval:
            mine[i].split = "eval"
        for w in split.warnings:
            if w.startswith("only") and "minutes" in w and len(speakers) == 1:
                continue  # the dataset-wide warning above says it already
            warnings.append(f"speaker {spk!r}: {w}" if len(speakers) > 1 else w)


def finish(
    root: Path,
    records: list[ClipRecord],
    embeddings: dict[str, np.ndarray | None],
    cfg: PrepareConfig,
    result: PrepareResult,
    curation: dict[str, dict[str, Any]],
) -> None:
    """Dataset-level checks, manual decisions, status, wav placement, split, and the metadata files."""
    result.warnings.extend(dataset_reasons(records, embeddings, cfg))
    apply_curation(records, curation, result.warnings)
    for r in records:
        apply_status(r)
        place_wav(root, r)
    assign_split(records, cfg, result.warnings)
    write_dataset_files(root, records)
    save_yaml(cfg, root / "prepare.yaml")
    atomic_write_json(root / CURATION, curation)
    summarize(records, result)


def write_dataset_files(root: Path, records: list[ClipRecord]) -> None:
    """metadata_train.csv, metadata_eval.csv and clips.jsonl from the records (each written atomically)."""
    for split in ("train", "eval"):
        rows = [(r.audio_file, r.text, r.speaker) for r in records if r.status == "kept" and r.split == split]
        write_metadata_csv(root / f"metadata_{split}.csv", rows)
    write_clips_jsonl(root / "clips.jsonl", records)


def summarize(records: list[ClipRecord], result: PrepareResult) -> None:
    """Counts, minutes, reasons and per-speaker totals into ``result``."""
    kept = [r for r in records if r.status == "kept"]
    quarantined = [r for r in records if r.status != "kept"]
    result.n_clips, result.n_kept, result.n_quarantined = len(records), len(kept), len(quarantined)
    result.n_needs_review = sum(1 for r in quarantined if r.needs_review)
    result.n_train = sum(1 for r in kept if r.split == "train")
    result.n_eval = sum(1 for r in kept if r.split == "eval")
    result.minutes_kept = round(sum(r.duration for r in kept) / 60, 3)
    result.minutes_quarantined = round(sum(r.duration for r in quarantined) / 60, 3)
    result.quarantine_reasons = dict(
        Counter(re.split(r" \(|: ", reason)[0] for r in quarantined for reason in r.reasons)
    )
    result.speakers = {}
    for r in records:
        s = result.speakers.setdefault(r.speaker, {"clips": 0, "kept": 0, "minutes_kept": 0.0})
        s["clips"] += 1
        if r.status == "kept":
            s["kept"] += 1
            s["minutes_kept"] = round(s["minutes_kept"] + r.duration / 60, 3)


def write_report(root: Path, records: list[ClipRecord], cfg: PrepareConfig, result: PrepareResult) -> None:
    """report.html (see :mod:`voicetune.data.report`)."""
    from voicetune.data.report import write_report_html

    write_report_html(root / "report.html", records, cfg, result)
