"""The report's sections on speakers: every voice of a multi-speaker dataset (:mod:`.speakers`) and the
second speaker encoder's opinion (:mod:`.encoders`). Kept apart from :mod:`.report`, which calls them."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from voicetune.evaluation.encoders import KEY as DV_KEY
from voicetune.evaluation.encoders import agreement_text
from voicetune.evaluation.speakers import DEGRADES, FOLDER, IMPROVES
from voicetune.evaluation.suite import BASELINE, load_doc


def _f(v: Any, fmt: str = "{:.3f}", signed: bool = False) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return ("{:+" + fmt[2:]).format(v) if signed else fmt.format(v)


def _change(summary: dict[str, Any], key: str, fmt: str = "{:.3f}") -> str:
    m = summary.get(key) or {}
    return f"{_f(m.get('base'), fmt)} → {_f(m.get('finetuned'), fmt)} ({_f(m.get('delta'), fmt, True)})"


def encoders_html(doc: dict[str, Any] | None) -> str:
    """One paragraph on the two speaker encoders for an evaluation document (the best or last step): their
    changes against the base model, and the disagreement note when they disagree ("" without a document)."""
    if not doc:
        return ""
    summary, note = doc.get("summary") or {}, doc.get("speaker_encoders") or ""
    dv = (summary.get(DV_KEY) or {}).get("delta")
    if note and not (isinstance(dv, (int, float)) and math.isfinite(dv)):
        return f"<p class='small'>{html.escape(note)}</p>"  # the encoder is absent here, and why
    if not isinstance(dv, (int, float)) or not math.isfinite(dv):
        return ""
    said = (f"Speaker similarity of {html.escape(str(doc.get('name')))} against the base model: Resemblyzer "
            f"{_change(summary, 'speaker_similarity')}, d-vector encoder {_change(summary, DV_KEY)}.")
    if note:
        return f"<div class='warn'>{html.escape(note)}<br><span class='small'>{said}</span></div>"
    return f"<p class='small'>{said} {html.escape(agreement_text(summary))}</p>"


def _audio(path: Path, report_dir: Path) -> str:
    if not path.is_file():
        return "—"
    rel = Path(os.path.relpath(path, report_dir)).as_posix()
    return f'<audio controls preload="none" src="{html.escape(rel)}"></audio>'


def speakers_html(eval_root: Path, report_dir: Path) -> str:
    """The per-speaker section ("" for a single-speaker dataset or before `voicetune evaluate` wrote one):
    the verdict over the voices, then per speaker its judgement, composite, metric changes and a sample."""
    root = Path(eval_root) / FOLDER
    doc = load_doc(root / "speakers.json")
    if not doc or doc.get("kind") != "speakers":
        return ""
    cls = "warn" if any(s.get("judgement") == DEGRADES for s in doc.get("speakers", [])) else "small"
    out = [f"<p class='{cls}'><b>{html.escape(doc.get('verdict', ''))}</b></p>",
           (f"<p class='small'>Checkpoint {html.escape(str(doc.get('checkpoint')))}, each speaker rendered "
            "with its own references and scored against its own held-out clips and its own baseline (the "
            "base model on that speaker). A speaker improves or degrades when the 95 % paired interval of "
            "its composite score lies above or below 0 (or its speaker similarity falls significantly below "
            "the base model's); with too few held-out sentences for an interval, when its composite moves "
            f"by more than {_f(doc.get('threshold'), '{:.3f}')} either way, and the row says so.</p>"),
           ("<table><tr><th>speaker</th><th>verdict</th><th>composite (95 % CI)</th>"
            "<th>speaker similarity ↑</th>"
            "<th>speaker similarity (d-vector) ↑</th><th>WER ↓</th><th>base</th><th>finetuned</th></tr>")]
    for s in doc.get("speakers", []):
        summary, folder = s.get("summary") or {}, root / str(s.get("folder"))
        j = s.get("judgement", "")
        mark = {IMPROVES: "good", DEGRADES: "bad"}.get(j, "")
        base = _audio(folder / BASELINE / "base" / "00.wav", report_dir)
        ft = _audio(folder / str(doc.get("checkpoint")) / "finetuned" / "00.wav", report_dir)
        notes = [str(s[k]) for k in ("reason", "speaker_encoders") if s.get(k)]
        note = "".join(f"<br><span class='small'>{html.escape(n)}</span>" for n in notes)
        ci = s.get("interval") or []
        ci_text = "" if len(ci) != 2 else (
            f"<br><span class='small'>{_f(ci[0], '{:.3f}', True)} to {_f(ci[1], '{:.3f}', True)}</span>")
        out.append(f"<tr><td>{html.escape(str(s.get('speaker')))}</td><td><span class='{mark}'>"
                   f"{html.escape(s.get('error') and 'not judged: ' + s['error'] or j)}</span>{note}</td>"
                   f"<td>{_f(s.get('composite'), '{:.3f}', True)}{ci_text}</td>"
                   f"<td>{_change(summary, 'speaker_similarity')}</td><td>{_change(summary, DV_KEY)}</td>"
                   f"<td>{_change(summary, 'wer', '{:.2f}')}</td><td>{base}</td><td>{ft}</td></tr>")
    out.append("</table>")
    for name, why in (doc.get("skipped") or {}).items():
        out.append(f"<p class='small'>{html.escape(name)}: not evaluated ({html.escape(why)}).</p>")
    return "\n".join(out)


def speakers_text(eval_root: Path) -> list[str]:
    """The per-speaker verdict and one line per speaker, for the text report ([] without a per-speaker
    evaluation)."""
    doc = load_doc(Path(eval_root) / FOLDER / "speakers.json")
    if not doc or doc.get("kind") != "speakers":
        return []
    lines = [f"every voice ({doc.get('checkpoint')}): {doc.get('verdict', '')}"]
    lines += [f"  {s.get('line', '')}" for s in doc.get("speakers", [])]
    lines += [f"  {name}: not evaluated ({why})" for name, why in (doc.get("skipped") or {}).items()]
    return lines
