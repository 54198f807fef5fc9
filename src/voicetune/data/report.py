"""``report.html`` of a prepared dataset: one self-contained page (plots are inline base64 PNGs).

Totals (files, clips, minutes kept/quarantined), warnings, speakers, the duration histogram, the
distribution of every QA score with its threshold, the quarantine reasons, and a table of the clips that
need a person (needs review first) with a player and the command that restores each one.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from voicetune.config import PrepareConfig
from voicetune.data.manifest import ClipRecord
from voicetune.utils.io import atomic_write_text

if TYPE_CHECKING:
    from voicetune.data.prepare import PrepareResult

logger = logging.getLogger(__name__)

MAX_LISTED = 300  # quarantined clips listed individually (the rest are counted)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top;font-size:14px}th{background:#f3f3f3}.warn{color:#a40}.num{text-align:right}
img{max-width:100%}code{background:#f3f3f3;padding:1px 4px}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _duration_plot(records: list[ClipRecord], cfg: PrepareConfig) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    kept = [r.duration for r in records if r.status == "kept"]
    quar = [r.duration for r in records if r.status != "kept"]
    top = max([cfg.max_seconds + 1] + kept + quar)
    bins = [i * 0.5 for i in range(math.ceil(top / 0.5) + 1)]
    ax.hist([kept, quar], bins=bins, stacked=True, label=["kept", "quarantined"], color=["#4a7", "#c54"])
    for x in (cfg.min_seconds, cfg.max_seconds):
        ax.axvline(x, color="#555", ls="--", lw=1)
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("clips")
    ax.legend()
    return _png(fig)


_SCORES = [
    ("snr_db", "estimated SNR (dB)", "min_snr_db", "min"),
    ("mos", "predicted MOS", "min_mos", "min"),
    ("speaker_similarity", "speaker similarity", "min_speaker_similarity", "min"),
    ("chars_per_second", "speaking rate (chars/s)", None, None),
    ("silence_ratio", "silence ratio", "max_silence_ratio", "max"),
    ("clipping_ratio", "clipping ratio", "max_clipping_ratio", "max"),
]


def _scores_plot(records: list[ClipRecord], cfg: PrepareConfig) -> str | None:
    import matplotlib.pyplot as plt

    panels = []
    for key, label, limit, _ in _SCORES:
        vals = [
            (r.quality.get(key), r.status) for r in records if isinstance(r.quality.get(key), (int, float))
        ]
        if vals:
            panels.append((key, label, limit, vals))
    logprobs = [
        (r.asr.get("word_logprob"), r.status) for r in records if r.asr.get("word_logprob") is not None
    ]
    if logprobs:
        panels.append(("word_logprob", "ASR mean word log-prob", "asr_recheck_logprob", logprobs))
    if not panels:
        return None
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.8 * rows), squeeze=False)
    for ax, (key, label, limit, vals) in zip(axes.flat, panels):
        kept = [v for v, s in vals if s == "kept"]
        quar = [v for v, s in vals if s != "kept"]
        ax.hist([kept, quar], bins=20, stacked=True, color=["#4a7", "#c54"], label=["kept", "quarantined"])
        if limit:
            ax.axvline(getattr(cfg, limit), color="#555", ls="--", lw=1)
        ax.set_title(label, fontsize=10)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _table(rows: list[list[str]], head: list[str]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


def _totals(result: PrepareResult) -> str:
    rows = [
        [
            "input files",
            (f"{result.n_files} audio ({result.n_files_failed} skipped, {len(result.no_speech)} without "
             f"speech, {len(result.duplicates)} duplicate); {len(result.skipped_inputs)} other entries not "
             "used"),
        ],
        [
            "clips",
            (f"{result.n_clips}: {result.n_kept} kept, {result.n_quarantined} quarantined "
             f"({result.n_needs_review} need review)"),
        ],
        [
            "minutes",
            (f"{result.minutes_input:.1f} input, {result.minutes_kept:.1f} kept, "
             f"{result.minutes_quarantined:.1f} quarantined"),
        ],
        ["split", f"{result.n_train} train / {result.n_eval} eval"],
        ["ASR", html.escape(result.asr_model) + f" ({result.n_second_opinions} second opinions)"],
        ["predicted MOS", "checked" if result.mos_checked else "not checked (CPU default; --qa-mos on)"],
        ["time", f"{result.seconds_elapsed:.0f} s, {result.speed:.0f}x real time"],
    ]
    return _table(rows, ["", ""])


def _clip_rows(records: list[ClipRecord]) -> str:
    quar = sorted((r for r in records if r.status != "kept"), key=lambda r: (not r.needs_review, r.id))
    rows = []
    for r in quar[:MAX_LISTED]:
        player = (
            f'<audio controls preload="none" src="{html.escape(r.audio_file)}"></audio>'
            if r.audio_file
            else ""
        )
        text = html.escape(r.text or r.asr.get("text", ""))
        rows.append(
            [
                html.escape(r.id),
                html.escape(r.speaker),
                f"{r.duration:.1f}",
                "<br>".join(html.escape(x) for x in r.reasons),
                text,
                player,
            ]
        )
    more = f"<p>... and {len(quar) - MAX_LISTED} more (see clips.jsonl)</p>" if len(quar) > MAX_LISTED else ""
    hint = (
        "<p>Listen, then keep a clip with <code>voicetune dataset restore DATASET_DIR CLIP_ID</code> "
        '(optionally <code>--text "corrected transcript"</code>), or drop a kept one with '
        "<code>voicetune dataset quarantine DATASET_DIR CLIP_ID</code>.</p>"
    )
    return hint + _table(rows, ["clip", "speaker", "s", "reasons", "text", ""]) + more


def write_report_html(
    path: Path, records: list[ClipRecord], cfg: PrepareConfig, result: PrepareResult
) -> None:
    """Write the self-contained HTML report of a dataset (atomically)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>voicetune dataset report</title>",
        f"<style>{_CSS}</style></head><body><h1>Dataset report</h1>",
        f"<p>{html.escape(str(result.out_dir))}</p>",
        _totals(result),
    ]
    if result.warnings:
        parts.append(
            "<h2>Warnings</h2><ul>"
            + "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in result.warnings)
            + "</ul>"
        )
    if len(result.speakers) > 1 or result.speakers:
        rows = [
            [html.escape(n), str(int(s["clips"])), str(int(s["kept"])), f"{s['minutes_kept']:.1f}"]
            for n, s in sorted(result.speakers.items())
        ]
        parts.append("<h2>Speakers</h2>" + _table(rows, ["speaker", "clips", "kept", "minutes kept"]))
    parts.append(f"<h2>Clip durations</h2><img alt='durations' src='{_duration_plot(records, cfg)}'>")
    scores = _scores_plot(records, cfg)
    if scores:
        parts.append(
            f"<h2>Quality scores</h2><p>dashed: the quarantine threshold</p><img alt='scores' src='{scores}'>"
        )
    reasons = Counter(reason for r in records if r.status != "kept" for reason in result_reason_kinds(r))
    if reasons:
        rows = [[html.escape(k), str(n)] for k, n in reasons.most_common()]
        parts.append("<h2>Quarantine reasons</h2>" + _table(rows, ["reason", "clips"]))
    if result.errors or result.duplicates or result.no_speech or result.skipped_inputs:
        items = [f"skipped {html.escape(k)}: {html.escape(v)}" for k, v in result.errors.items()]
        items += [f"no clip from {html.escape(k)}: {html.escape(v)}" for k, v in result.no_speech.items()]
        items += [html.escape(d) for d in result.duplicates]
        items += [f"not used: {html.escape(k)}: {html.escape(v)}" for k, v in result.skipped_inputs.items()]
        listed = "".join(f"<li>{i}</li>" for i in items)
        parts.append(f"<h2>Skipped, empty and duplicate inputs</h2><ul>{listed}</ul>")
    parts.append("<h2>Clips for a person</h2>" + _clip_rows(records))
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))


def result_reason_kinds(r: ClipRecord) -> list[str]:
    """The kind of each reason (text before the first parenthesis or colon)."""
    import re

    return [re.split(r" \(|: ", x)[0] for x in r.reasons]
