"""A run's evaluations as the Evaluate tab shows them (no Gradio here).

It reads what the evaluation wrote, through :func:`voicetune.evaluation.report.collect` (the reader the HTML
report uses): ``eval/baseline`` and ``eval/step_N`` metrics.json, ``best.json``, ``checkpoints/best``. From
that come the checkpoint table (every metric with its change against the base model, the best marked), the
sentences of the probe set with the audio of the real recording, the base model and each checkpoint, and the
run's verdict when the evaluation wrote one.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetune.evaluation.harness import TABLE_METRICS
from voicetune.evaluation.metrics import DIRECTIONS
from voicetune.evaluation.report import RunEvals, collect
from voicetune.evaluation.suite import BASELINE

VERDICT_FILES = ("best.json", "eval/in_loop.json")


def load(run_dir: Path) -> RunEvals:
    return collect(Path(run_dir))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class Row:
    name: str
    step: int
    composite: float | None
    metrics: dict[str, float | None]
    deltas: dict[str, float | None]
    best: bool
    on_disk: bool


def rows(r: RunEvals) -> list[Row]:
    """The baseline, then every evaluation of the run's protocol, with deltas against the baseline."""
    base = r.base_agg
    out = []
    if r.baseline:
        out.append(Row(BASELINE, 0, 0.0, {k: base.get(k) for k, _, _ in TABLE_METRICS}, {}, False, True))
    for d in r.evals:
        agg = d.get("finetuned", {}).get("aggregate", {})
        name = d.get("name") or f"step_{d['step']}"
        deltas = {
            k: agg[k] - base[k] for k, _, _ in TABLE_METRICS if _finite(agg.get(k)) and _finite(base.get(k))
        }
        out.append(
            Row(
                name,
                int(d.get("step", 0)),
                d.get("composite"),
                {k: agg.get(k) for k, _, _ in TABLE_METRICS},
                deltas,
                d.get("step") == r.best_step,
                name in r.kept,
            )
        )
    return out


def _cell(key: str, fmt: str, value: Any, delta: Any) -> str:
    if not _finite(value):
        return "<td class='vt-muted'>n/a</td>"
    text = fmt.format(value)
    if _finite(delta):
        shown = fmt.format(abs(delta))
        if float(shown) == 0.0:  # a change smaller than the shown precision is no change
            text += " <span>(±0)</span>"
        else:
            better = (delta > 0) == (DIRECTIONS.get(key) == "higher")
            text += (f" <span class='{'vt-better' if better else 'vt-worse'}'>"
                     f"({'+' if delta > 0 else '-'}{shown})</span>")
    return f"<td>{text}</td>"


def table_html(r: RunEvals) -> str:
    """The checkpoint table: composite score, every metric (change against the base model), kept on disk."""
    table = rows(r)
    if not table:
        return (
            "<p class='vt-muted'>No evaluation yet: in-loop evaluation scores the base model before the "
            "first step and then each evaluated checkpoint.</p>"
        )
    shown = [
        (k, label, fmt) for k, label, fmt in TABLE_METRICS if any(_finite(x.metrics.get(k)) for x in table)
    ]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in shown)
    body = []
    for row in table:
        name = html.escape(row.name) + (" <span class='vt-badge vt-best'>best</span>" if row.best else "")
        c = row.composite
        comp = "n/a" if c is None or not _finite(c) else "0.000" if abs(c) < 5e-4 else f"{c:+.3f}"
        cells = "".join(_cell(k, fmt, row.metrics.get(k), row.deltas.get(k)) for k, _, fmt in shown)
        disk = "" if row.name == BASELINE else ("yes" if row.on_disk else "no (pruned)")
        body.append(f"<tr class='{'vt-best-row' if row.best else ''}'><td>{name}</td><td>{row.step}</td>"
                    f"<td>{comp}</td>{cells}<td>{disk}</td></tr>")
    note = (
        f"<p class='vt-muted'>{r.other_protocol} evaluation(s) made with another protocol are not compared "
        f"here.</p>"
        if r.other_protocol
        else ""
    )
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in r.warnings)
    return (f"<table class='vt-evals'><thead><tr><th>evaluation</th><th>step</th><th>composite</th>{head}"
            f"<th>checkpoint on disk</th></tr></thead><tbody>{''.join(body)}</tbody></table>{note}"
            + (f"<ul class='vt-warnings'>{warnings}</ul>" if warnings else ""))


# ------------------------------------------------------------------------------------------ listening


def sentences(r: RunEvals) -> list[tuple[str, int]]:
    """(label, index) of every sentence of the probe set: "eval 0: <text>" (with a real recording) or
    "probe 2: <text>"."""
    per = (r.baseline or {}).get("base", {}).get("per_sentence", [])
    first = per[0].get("seed") if per else None  # renders with the other seeds (--eval-seeds) say theirs

    def label(i: int, s: dict[str, Any]) -> str:
        seed = f" (seed {s['seed']})" if s.get("seed", first) != first else ""
        return f"{s.get('group', '?')} {s.get('sentence', s.get('index', i))}: {s.get('text', '')}{seed}"

    return [(label(i, s), int(s.get("index", i))) for i, s in enumerate(per)]


def evaluation_names(r: RunEvals) -> list[str]:
    return [d.get("name") or f"step_{d['step']}" for d in r.evals]


def _sentence(doc: dict[str, Any] | None, model: str, index: int) -> dict[str, Any] | None:
    for s in (doc or {}).get(model, {}).get("per_sentence", []):
        if int(s.get("index", -1)) == index:
            return s
    return None


@dataclass
class Take:
    """One rendering (or recording) of a sentence: its audio file and scores."""

    who: str
    audio: Path | None
    scores: dict[str, Any]

    def caption(self) -> str:
        bits = []
        for key, label in (("speaker_similarity", "similarity"), ("wer", "WER"), ("mos", "MOS")):
            if _finite(self.scores.get(key)):
                bits.append(f"{label} {self.scores[key]:.2f}")
        if self.scores.get("flags"):
            bits.append("flags: " + ", ".join(self.scores["flags"]))
        if self.scores.get("hypothesis") is not None and self.who != "recording":
            heard = self.scores["hypothesis"].strip()
            bits.append(f"ASR heard: “{heard}”" if heard else "ASR heard nothing")
        return "; ".join(bits)


def takes(r: RunEvals, index: int, name: str | None) -> list[Take]:
    """The real recording (eval-split sentences only), the base model and evaluation ``name`` on sentence
    ``index``, with the files the evaluation wrote (missing ones are None)."""
    out = []
    base_dir = r.eval_root / BASELINE
    for model, who in (("real", "recording"), ("base", "base model")):
        s = _sentence(r.baseline, model, index)
        if s is not None:
            path = base_dir / s["audio_file"] if s.get("audio_file") else None
            out.append(Take(who, path if path and path.is_file() else None, s))
    doc = next((d for d in r.evals if (d.get("name") or f"step_{d['step']}") == name), None)
    s = _sentence(doc, "finetuned", index)
    if name and s is not None:
        path = r.eval_root / name / s["audio_file"] if s.get("audio_file") else None
        out.append(Take(name, path if path and path.is_file() else None, s))
    return out


# ------------------------------------------------------------------------------------------ verdict


def _verdict_text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict):
        for key in ("text", "summary", "verdict", "sentence"):
            if isinstance(value.get(key), str) and value[key].strip():
                return value[key].strip()
    return None


def verdict(run_dir: Path) -> str | None:
    """The run's verdict, when its evaluation wrote one: a ``verdict`` field of best.json or
    eval/in_loop.json, else of the newest evaluation's metrics.json. None when none exists."""
    run_dir = Path(run_dir)
    docs = [run_dir / f for f in VERDICT_FILES]
    steps = sorted(
        (run_dir / "eval").glob("step_*/metrics.json"),
        key=lambda p: int(p.parent.name.split("_")[1]) if p.parent.name.split("_")[1].isdigit() else -1,
    )
    for path in docs + steps[::-1]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        text = _verdict_text(data.get("verdict")) if isinstance(data, dict) else None
        if text:
            return text
    return None
