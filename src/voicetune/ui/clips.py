"""The dataset review table: every clip of ``clips.jsonl`` (kept and quarantined), filtered, sorted and paged,
as HTML with a player per row (no Gradio here).

Scores are the numbers prepare recorded per clip: its duration, the ASR's confidences (``asr.*``) and the
quality checks (``quality.*``: SNR, silence, clipping, speaking rate, speaker similarity, MOS, ...). Any of
them can sort or filter the table. Changes go through :mod:`voicetune.data.curate`, never through here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetune.data.manifest import ClipRecord, read_clips_jsonl

STATUSES = ("all", "kept", "quarantined", "needs review")
MANUAL = {"restored": "kept by hand", "quarantined": "quarantined by hand"}  # ClipRecord.manual, as shown
TEXT_COLUMNS = ("id", "status", "split", "speaker", "text")
LABELS = {
    "duration": "dur s", "asr.avg_logprob": "ASR logprob", "asr.word_logprob": "ASR word logprob",
    "asr.no_speech_prob": "no-speech", "quality.snr_db": "SNR dB", "quality.silence_ratio": "silence",
    "quality.clipping_ratio": "clipping", "quality.chars_per_second": "chars/s",
    "quality.speaker_similarity": "speaker sim", "quality.mos": "MOS", "quality.speech_seconds": "speech s",
    "quality.input_lufs": "input LUFS", "quality.gain_db": "gain dB", "quality.peak_dbfs": "peak dBFS",
}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def score_value(r: ClipRecord, key: str) -> float | None:
    """The clip's score ``key`` ("duration", "asr.<name>", "quality.<name>"), None when it has none."""
    if key == "duration":
        return _number(r.duration)
    group, _, name = key.partition(".")
    source = r.asr if group == "asr" else r.quality if group == "quality" else {}
    return _number(source.get(name))


def score_keys(records: list[ClipRecord]) -> list[str]:
    """Every score some clip has: duration first, then ASR and quality scores in a stable order."""
    keys = {f"asr.{k}" for r in records for k, v in r.asr.items() if _number(v) is not None}
    keys |= {f"quality.{k}" for r in records for k, v in r.quality.items() if _number(v) is not None}
    known = [k for k in LABELS if k in keys]
    return ["duration", *[k for k in known if k != "duration"], *sorted(keys - set(known))]


def label(key: str) -> str:
    return LABELS.get(key, key.split(".", 1)[-1].replace("_", " "))


@dataclass
class ClipQuery:
    """What the review table shows: status filter, text search, a score range, sort order and page."""

    status: str = "all"
    search: str = ""
    score: str = ""  # the score the range applies to ("" for none)
    low: float | None = None
    high: float | None = None
    sort: str = "id"  # a text column or a score key
    descending: bool = False
    page: int = 1
    page_size: int = 25


@dataclass
class Page:
    rows: list[ClipRecord]
    total: int  # clips that pass the filters
    page: int
    pages: int


def _matches(r: ClipRecord, q: ClipQuery) -> bool:
    if q.status == "kept" and r.status != "kept":
        return False
    if q.status == "quarantined" and r.status == "kept":
        return False
    if q.status == "needs review" and not r.needs_review:
        return False
    if q.search:
        hay = " ".join([r.id, r.text, r.raw_text, r.source_file, *r.reasons]).lower()
        if q.search.lower() not in hay:
            return False
    if q.score and (q.low is not None or q.high is not None):
        v = score_value(r, q.score)
        if v is None or (q.low is not None and v < q.low) or (q.high is not None and v > q.high):
            return False
    return True


def query(records: list[ClipRecord], q: ClipQuery) -> Page:
    """Filter, sort (clips without the sorted score last, whatever the direction) and cut one page."""
    rows = [r for r in records if _matches(r, q)]
    if q.sort in TEXT_COLUMNS:
        rows.sort(key=lambda r: str(getattr(r, q.sort)).lower(), reverse=q.descending)
    else:
        have = [r for r in rows if score_value(r, q.sort) is not None]
        have.sort(key=lambda r: score_value(r, q.sort) or 0.0, reverse=q.descending)
        rows = have + [r for r in rows if score_value(r, q.sort) is None]
    size = max(1, int(q.page_size))
    pages = max(1, math.ceil(len(rows) / size))
    page = min(max(1, int(q.page)), pages)
    return Page(rows[(page - 1) * size: page * size], len(rows), page, pages)


def load(dataset: Path) -> list[ClipRecord]:
    return read_clips_jsonl(Path(dataset) / "clips.jsonl")


def counts(records: list[ClipRecord]) -> dict[str, Any]:
    kept = [r for r in records if r.status == "kept"]
    return {
        "clips": len(records),
        "kept": len(kept),
        "quarantined": len(records) - len(kept),
        "needs_review": sum(1 for r in records if r.needs_review),
        "train": sum(1 for r in kept if r.split == "train"),
        "eval": sum(1 for r in kept if r.split == "eval"),
        "minutes_kept": sum(r.duration for r in kept) / 60,
    }


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def table_html(
    page: Page, keys: list[str], dataset: Path, url_for: Callable[[Path], str], q: ClipQuery
) -> str:
    """The page as an HTML table: a player, id, status, split, transcript, reasons and every score per row.
    Column headers carry ``data-sort`` and rows an Edit button with ``data-clip`` (the tab's script turns
    clicks on them into events)."""
    e = html.escape
    arrow = " ▼" if q.descending else " ▲"
    heads = [
        ("", ""),
        ("", ""),
        ("id", "clip"),
        ("status", "status"),
        ("split", "split"),
        ("text", "transcript"),
    ]
    heads += [(k, label(k)) for k in keys] + [("", "reasons")]
    head = "".join(
        f"<th data-sort='{e(k)}' title='sort by {e(k)}'>{e(t)}{arrow if k and k == q.sort else ''}</th>"
        if k else f"<th>{e(t)}</th>" for k, t in heads)
    body = []
    for r in page.rows:
        audio = (f"<audio controls preload='none' src='{e(url_for(Path(dataset) / r.audio_file))}'></audio>"
                 if r.audio_file else "<span class='vt-muted'>no audio</span>")
        status = "kept" if r.status == "kept" else "quarantined"
        flag = " <span class='vt-badge vt-review'>review</span>" if r.needs_review else ""
        manual = f" <span class='vt-muted'>({MANUAL.get(r.manual, r.manual)})</span>" if r.manual else ""
        cells = [
            f"<button class='vt-edit' data-clip='{e(r.id)}' title='edit clip {e(r.id)}'>Edit</button>",
            audio,
            f"<code>{e(r.id)}</code>",
            f"<span class='vt-badge vt-{status}'>{status}</span>{flag}{manual}",
            e(r.split or "-"),
            f"<span class='vt-text'>{e(r.text)}</span>",
        ]
        cells += [_fmt(score_value(r, k)) for k in keys]
        cells.append(e("; ".join(r.reasons)))
        body.append(
            f"<tr data-clip-row='{e(r.id)}' class='vt-{status}'>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    if not body:
        body.append(
            f"<tr><td colspan='{len(heads)}' class='vt-muted'>no clip matches these filters</td></tr>"
        )
    return (f"<div class='vt-table-wrap'><table class='vt-clips'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>"
            f"<p class='vt-muted'>{page.total} clip(s) match; page {page.page} of {page.pages}</p>")
