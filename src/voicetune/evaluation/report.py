"""``RUN_DIR/report.html`` (self-contained apart from the run's own wavs) and its compact text version.

The report reads only files of the run folder: metrics.jsonl (loss curves), ``eval/baseline`` and
``eval/step_N`` metrics.json (metric curves, the table), ``best.json`` and ``eval/in_loop.json``.
Plots are PNGs inlined as base64; audio players link the wavs under ``eval/`` relatively, so the report
works wherever the run folder is opened or copied to. Only evaluations of the baseline's protocol (same
sentences, seed, references, ASR model) are compared; others are counted and left out.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetune.evaluation import change, validation
from voicetune.evaluation.encoders import encoder_note
from voicetune.evaluation.harness import TABLE_METRICS
from voicetune.evaluation.metrics import DIRECTIONS
from voicetune.evaluation.report_speakers import encoders_html, speakers_html, speakers_text
from voicetune.evaluation.speakers import DEGRADES
from voicetune.evaluation.suite import BASELINE, eval_docs, load_doc, partial_errors
from voicetune.evaluation.verdict import Verdict, verdict
from voicetune.run import best_checkpoint, list_checkpoints
from voicetune.scoring import dvector
from voicetune.utils.io import atomic_write_json, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

AUDIO_SENTENCES = 4  # sentences with players: the first eval-split ones and the first probes
CURVES = [("composite", "composite score"), ("speaker_similarity", "speaker similarity"), ("wer", "WER"),
          ("mos", "predicted MOS"), ("failure_rate", "failure rate"), ("mcd", "MCD (dB), eval split")]


@dataclass
class RunEvals:
    """Everything the report shows, read from the run folder."""

    run_dir: Path
    eval_root: Path  # RUN_DIR/eval, or a folder of evaluations made with another protocol
    baseline: dict[str, Any] | None
    evals: list[dict[str, Any]]
    train: list[dict[str, Any]]
    best: dict[str, Any] | None
    in_loop: dict[str, Any] | None
    kept: set[str]
    other_protocol: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # software errors (every sentence failed to synthesize)
    loss_parts: list[str] = field(
        default_factory=lambda: ["text_ce", "mel_ce"]
    )  # run.json: the backend's parts
    loss_note: str = ""  # run.json: how to read them (Backend.loss_note)
    verdict: Verdict | None = None  # the plain verdict (verdict.py), at the top of the report
    val: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl eval records with val_ losses
    change: dict[str, Any] | None = None  # EVAL_ROOT/change.json: did the finetune change the voice?

    @property
    def base_agg(self) -> dict[str, Any]:
        """The baseline's metrics ({} when it failed: a failed render has no values, not the worst ones)."""
        if (self.baseline or {}).get("error"):
            return {}
        return (self.baseline or {}).get("base", {}).get("aggregate", {})

    @property
    def best_step(self) -> int | None:
        return self.best.get("step") if self.best else None

    @property
    def report_path(self) -> Path:
        main = self.eval_root.resolve() == (self.run_dir / "eval").resolve()
        return self.run_dir / "report.html" if main else self.eval_root / "report.html"


def collect(run_dir: Path | str, eval_root: Path | str | None = None) -> RunEvals:
    """Read a run's evaluations (under ``eval_root``, default RUN_DIR/eval), losses and selection.

    Missing parts are simply absent. For RUN_DIR/eval the best is the one ``checkpoints/best`` marks
    (described by RUN_DIR/best.json); for another folder, that folder's best.json.
    """
    run_dir = Path(run_dir)
    root = Path(eval_root) if eval_root else run_dir / "eval"
    main = root.resolve() == (run_dir / "eval").resolve()
    baseline = load_doc(root / BASELINE / "metrics.json")
    key = (baseline or {}).get("protocol", {}).get("key")
    every = eval_docs(root)
    evals = [d for d in every if key is None or d.get("protocol", {}).get("key") == key]
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if "kind" not in r and "loss" in r]
    best = load_doc((run_dir if main else root) / "best.json")
    marked = best_checkpoint(run_dir)
    if main and best and (marked is None or marked.name != best.get("checkpoint")):
        best = None  # best.json from an older decision whose checkpoint is no longer marked
    in_loop = load_doc(root / "in_loop.json") if main else None
    out = RunEvals(run_dir, root, baseline, evals, train, best, in_loop,
                   {p.name for p in list_checkpoints(run_dir)}, other_protocol=len(every) - len(evals))
    out.errors = _errors(out)
    training = (load_doc(run_dir / "run.json") or {}).get("training") or {}
    if isinstance(training.get("loss_parts"), list):
        out.loss_parts = [str(p) for p in training["loss_parts"]]
    out.loss_note = str(training.get("loss_note") or "")
    out.val = _validation_records(records if main else [], [baseline] if baseline else [], evals)
    out.change = change.load(root)
    out.warnings = _warnings(out)
    out.verdict = run_verdict(out)
    return out


def _validation_records(records: list[dict[str, Any]], *docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The validation losses per evaluation, in step order: metrics.jsonl's eval records (in-loop
    evaluations), then those `voicetune evaluate` recorded in an evaluation's metrics.json ("validation")
    for steps the log does not have."""
    logged = [x for x in records if x.get("kind") == "eval" and validation.PREFIX + "loss" in x]
    steps = {int(x["step"]) for x in logged}
    for d in (d for group in docs for d in group):
        val = d.get("validation")
        if isinstance(val, dict) and validation.PREFIX + "loss" in val and int(d["step"]) not in steps:
            logged.append({"kind": "eval", "step": int(d["step"]), **val})
            steps.add(int(d["step"]))
    return sorted(logged, key=lambda x: int(x["step"]))


def _val_loss(r: RunEvals, step: int) -> float | None:
    """The validation loss recorded for the evaluation at ``step`` (None: none was computed)."""
    v = next((x.get(validation.PREFIX + "loss") for x in r.val if int(x["step"]) == step), None)
    return v if isinstance(v, (int, float)) else None


def guards(r: RunEvals) -> list[dict[str, str]]:
    """Where a guard decided: ``{"checkpoint", "guard", "message"}`` per evaluation a guard excluded from
    being the best (:meth:`Selector.blocked`), per WER guard stop ("wer") and warning ("wer_warn")."""
    out = []
    for d in r.evals:
        sel, name = d.get("selection") or {}, d.get("name") or f"step_{d['step']}"
        if sel.get("blocked"):
            out.append({"checkpoint": name, "guard": sel.get("guard") or "", "message": sel["blocked"]})
        wer = [("wer", m) for m in (sel.get("reason") or "").split("; ") if m.startswith("WER guard")]
        wer += [("wer_warn", w) for w in sel.get("warnings", []) if w.startswith("WER guard")]
        out += [{"checkpoint": name, "guard": kind, "message": m} for kind, m in wer]
    return out


def guard_lines(r: RunEvals) -> list[str]:
    """:func:`guards` as lines: "step_200: similarity guard: ..."."""
    return [f"{g['checkpoint']}: {g['message']}" for g in guards(r)]


def verdict_notes(r: RunEvals) -> list[str]:
    """The "why" notes of the other checks, read from the run folder: the no-effect check (change.json),
    overfitting seen in the validation loss (metrics.jsonl), a voice the finetune degrades (speakers.json)
    and the two speaker encoders disagreeing on the chosen checkpoint."""
    notes = change.notes(r.change) + validation.run_notes(r.run_dir)
    voices = load_doc(r.eval_root / "speakers" / "speakers.json") or {}
    if any(s.get("judgement") == DEGRADES for s in voices.get("speakers") or []):
        notes.append(str(voices.get("verdict", "")).rstrip("."))
    chosen = (r.best or {}).get("checkpoint")
    doc = next((d for d in r.evals if (d.get("name") or f"step_{d.get('step')}") == chosen), None)
    if doc and not dvector.unavailable():
        disagreement = encoder_note(doc.get("summary") or {})
        if disagreement:
            notes.append(disagreement.rstrip("."))
    return notes


def run_verdict(r: RunEvals) -> Verdict:
    """The verdict of what ``r`` holds (:func:`voicetune.evaluation.verdict.verdict`)."""
    evaluated = sum(1 for d in r.evals if not d.get("error"))
    return verdict(r.best, evaluated, guards=guards(r), notes=verdict_notes(r))


def record_verdict(run_dir: Path | str, eval_root: Path | str | None = None) -> Verdict:
    """Compute the verdict and write it as the ``verdict`` field of best.json (when there is a best), of
    eval/in_loop.json (a run's own evaluations) and of the newest evaluation's metrics.json (what the web UI
    reads, in that order)."""
    r = collect(run_dir, eval_root)
    assert r.verdict is not None
    main = r.eval_root.resolve() == (r.run_dir / "eval").resolve()
    paths = [(r.run_dir if main else r.eval_root) / "best.json"] if r.best else []
    paths += [r.eval_root / "in_loop.json"] if main and r.in_loop else []
    if r.evals:
        newest = r.evals[-1].get("name") or f"step_{r.evals[-1]['step']}"
        paths.append(r.eval_root / newest / "metrics.json")
    for path in paths:
        doc = load_doc(path)
        if isinstance(doc, dict):
            atomic_write_json(path, {**doc, "verdict": r.verdict.as_dict()})
    return r.verdict


def _errors(r: RunEvals) -> list[str]:
    """Software errors recorded by the baseline, any evaluation or the in-loop summary, once each."""
    found = [(r.baseline or {}).get("error")] + [d.get("error") for d in r.evals]
    found.append((r.in_loop or {}).get("error"))
    return list(dict.fromkeys(e for e in found if e))


def _warnings(r: RunEvals) -> list[str]:
    out = []
    if r.baseline is None:
        out.append("no baseline evaluation (eval/baseline): deltas and the composite score are unavailable")
    partial = [partial_errors("baseline", r.base_agg)]
    partial += [partial_errors(f"step {d['step']}", d.get("finetuned", {}).get("aggregate", {}))
                for d in r.evals]
    out += [p for p in partial if p]
    for d in r.evals:
        out += [f"step {d['step']}: {w}" for w in (d.get("selection") or {}).get("warnings", [])]
    # failure flags of the baseline, the best and the last evaluation (every step's are in its metrics.json)
    shown = [("baseline", r.base_agg)]
    picks = [d for d in r.evals if d["step"] == r.best_step] + [d for d in r.evals[-1:] if not d.get("error")]
    for d in {d["step"]: d for d in picks}.values():
        label = f"step {d['step']}" + (" (best)" if d["step"] == r.best_step else " (last)")
        shown.append((label, d.get("finetuned", {}).get("aggregate", {})))
    for label, agg in shown:
        failures = agg.get("failures") or {}
        if failures:
            n = agg.get("n_sentences") or "?"
            unit = "renders" if (agg.get("seeds") or 1) > 1 else "sentences"  # sentences x seeds
            flags = ", ".join(f"{k} in {v}/{n}" for k, v in sorted(failures.items()))
            out.append(f"{label}: failure detectors flagged {flags} {unit}")
    if r.best and not r.best.get("beats_baseline"):
        out.append(f"no evaluated checkpoint beats the base model: the best, {r.best['checkpoint']}, scores "
                   f"{r.best['composite']:+.3f}; consider the base model, more data or a lower learning rate")
    if r.in_loop and r.in_loop.get("stop_reason") and r.in_loop["stop_reason"] not in r.errors:
        out.append(f"training stopped early: {r.in_loop['stop_reason']}")
    if r.in_loop and r.in_loop.get("skipped_steps"):
        n = len(r.in_loop["skipped_steps"])
        out.append(f"{n} scheduled evaluation(s) skipped to keep evaluation under "
                   f"{100 * r.in_loop['max_overhead']:.0f}% of the wall time")
    span = _overfit_span(r)
    if span:
        out.append(validation.overfit_text(span))
    out += change.warnings(r.change)
    if r.other_protocol:
        out.append(
            f"{r.other_protocol} evaluation(s) made with another protocol (sentences, seed, references or "
            "ASR model) are not compared here"
        )
    return out


# ------------------------------------------------------------------------------------------ text


def _f(v: Any, fmt: str, signed: bool = False) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return ("+" if signed and v > 0 else "") + fmt.format(v)


def _rows(r: RunEvals) -> list[dict[str, Any]]:
    """Table rows: the baseline, then each evaluation, with deltas against the baseline."""
    rows = []
    if r.baseline:
        rows.append(
            {"name": BASELINE, "step": 0, "composite": 0.0, "agg": r.base_agg, "kept": "", "best": False}
        )
    for d in r.evals:
        name = d.get("name") or f"step_{d['step']}"
        failed = bool(d.get("error"))  # nothing was synthesized: no values, not the worst possible ones
        rows.append({"name": name + (" (error)" if failed else ""), "step": d["step"],
                     "composite": d.get("composite"), "selection": d.get("selection") or {},
                     "agg": {} if failed else d.get("finetuned", {}).get("aggregate", {}),
                     "kept": "yes" if name in r.kept else "no", "best": d["step"] == r.best_step})
    return rows


def text_report(run_dir: Path | str, eval_root: Path | str | None = None) -> str:
    """A compact text version of the report: one line per evaluation, the best, the warnings."""
    r = collect(run_dir, eval_root)
    base = r.base_agg
    cols = [("speaker_similarity", "sim", "{:.3f}"), ("wer", "WER", "{:.3f}"), ("mos", "MOS", "{:.2f}"),
            ("failure_rate", "fail", "{:.2f}")]
    with_val = bool(r.val)
    header = ["evaluation", "composite", *(c[1] for c in cols), *(["val loss"] if with_val else []), "kept"]
    lines = [header]
    for row in _rows(r):
        ci = (row.get("selection") or {}).get("interval")
        ci = f" [{_f(ci[0], '{:.2f}', True)}, {_f(ci[1], '{:.2f}', True)}]" if ci else ""
        cells = [row["name"] + (" *" if row["best"] else ""), _f(row["composite"], "{:.3f}", True) + ci]
        for key, _, fmt in cols:
            v, b = row["agg"].get(key), base.get(key)
            delta = "" if row["name"] == BASELINE or not isinstance(b, (int, float)) or not isinstance(
                v, (int, float)) else f" ({_f(v - b, fmt, True)})"
            cells.append(_f(v, fmt) + delta)
        if with_val:
            cells.append(_f(_val_loss(r, row["step"]), "{:.3f}"))
        cells.append(row["kept"])
        lines.append(cells)
    widths = [max(len(x[i]) for x in lines) for i in range(len(header))]
    text = [f"ERROR: {e}" for e in r.errors]
    text += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(x, widths, strict=True))) for x in lines]
    if r.best:
        where = (
            "marked in checkpoints/best" if r.report_path == r.run_dir / "report.html" else "this protocol"
        )
        ci = r.best.get("composite_interval")
        ci_text = f", 95% CI {ci[0]:+.3f} to {ci[1]:+.3f}" if ci else ", no interval"
        text.append(f"best: {r.best['checkpoint']} (composite {r.best['composite']:+.3f}{ci_text}, {where})")
    elif r.evals:
        text.append("best: none marked")
    if r.in_loop and r.in_loop.get("overhead_fraction") is not None:
        text.append(f"evaluation cost: {r.in_loop['eval_seconds']:.1f} s in {len(r.in_loop['evaluations'])} "
                    f"evaluations = {100 * r.in_loop['overhead_fraction']:.1f}% of the training wall time "
                    f"(+{r.in_loop['baseline_seconds']:.1f} s baseline)")
    text += [f"guard: {g}" for g in guard_lines(r)]
    text += [f"note: {n}" for n in _notes(r)]
    text += [f"warning: {w}" for w in r.warnings]
    text += speakers_text(r.eval_root)
    return "\n".join(text)


def _notes(r: RunEvals) -> list[str]:
    """How selection decided where it is not obvious ("cannot be told apart", no interval), per step."""
    return [f"step {d['step']}: {(d.get('selection') or {})['note']}" for d in r.evals
            if (d.get("selection") or {}).get("note")]


# ------------------------------------------------------------------------------------------ plots


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _overfit_span(r: RunEvals) -> tuple[validation.Point, validation.Point] | None:
    """Where the validation loss rose while the training loss fell for --eval-overfit-evals evaluations."""
    n = (r.in_loop or {}).get("overfit_evals", validation.DEFAULT_OVERFIT_EVALS)
    return validation.overfitting(validation.points(r.train + r.val), int(n)) if r.val else None


def loss_plot(train: list[dict[str, Any]], eval_steps: Sequence[int] = (), best_step: int | None = None,
              parts: Sequence[str] = ("text_ce", "mel_ce"), val: Sequence[dict[str, Any]] = (),
              overfit: tuple[validation.Point, validation.Point] | None = None) -> str | None:
    """Base64 PNG of the training losses (the total and the backend's ``parts``) against the step, and the
    validation losses of the evaluations (``val``: ``val_<part>`` records) on the same axes, dashed with dots
    in the colour of their training part; evaluations dotted, the best one red, an overfitting span shaded."""
    if not train:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    steps = [t["step"] for t in train]
    for key in ("loss", *parts):
        ys = [t.get(key) for t in train]
        if any(isinstance(y, (int, float)) for y in ys):
            line = ax.plot(steps, ys, label=key, linewidth=1.2)[0]
            pts = [(v["step"], v[validation.PREFIX + key]) for v in val
                   if isinstance(v.get(validation.PREFIX + key), (int, float))]
            if pts:
                ax.plot(*zip(*pts, strict=True), linestyle="--", marker="o", markersize=4, linewidth=1.2,
                        color=line.get_color(), label=f"{key} (validation)")
    if not ax.lines:  # no finite loss value at all
        return None
    if overfit:
        ax.axvspan(overfit[0].step, overfit[1].step, color="tab:red", alpha=0.08, label="overfitting")
    for step in eval_steps:
        ax.axvline(step, linestyle=":", linewidth=1, color="tab:red" if step == best_step else "grey")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training and validation loss" if val else "training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, not over them
    return _png(fig)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#666", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _bars(r: RunEvals, key: str, base: Any) -> list[tuple[int, float, float]]:
    """(step, low, high) per evaluation: the 95 % paired interval of the change against the baseline, drawn
    around the baseline's value (a bar crossing the dashed baseline line: within the noise)."""
    out = []
    for d in r.evals:
        sel = d.get("selection") or {}
        if key == "composite":
            lo_hi, offset = sel.get("interval"), 0.0
        else:
            delta = (sel.get("deltas") or {}).get(key) or {}
            lo_hi, offset = [delta.get("low"), delta.get("high")], base
        if (isinstance(lo_hi, list) and len(lo_hi) == 2 and isinstance(offset, (int, float))
                and all(isinstance(x, (int, float)) for x in lo_hi)):
            out.append((d["step"], offset + lo_hi[0], offset + lo_hi[1]))
    return out


def metric_plot(r: RunEvals) -> str | None:
    """Base64 PNG: composite score and the main metrics per evaluation, baseline dashed, best starred."""
    fig = metric_figure(r)
    return _png(fig) if fig is not None else None


def metric_figure(r: RunEvals) -> Any:
    """The figure of :func:`metric_plot` (None without evaluations); a panel without data says so."""
    if not r.evals:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5.5))
    steps = [d["step"] for d in r.evals]
    for i, (key, label) in enumerate(CURVES):
        ax = fig.add_subplot(2, 3, i + 1)
        if key == "composite":
            ys, base = [d.get("composite") for d in r.evals], 0.0
        else:
            ys = [d.get("finetuned", {}).get("aggregate", {}).get(key) for d in r.evals]
            base = r.base_agg.get(key)
        ys = [None if d.get("error") else y for d, y in zip(r.evals, ys, strict=True)]  # nothing was measured
        ys = [y if isinstance(y, (int, float)) else math.nan for y in ys]
        arrow = "" if key == "composite" else (" ↑" if DIRECTIONS.get(key) == "higher" else " ↓")
        ax.set_title(label + arrow, fontsize=10)
        if not any(math.isfinite(y) for y in ys):  # say so, instead of drawing empty axes
            _no_data(ax, "no data: no evaluation has a value\n(failed renders, or the metric is off)")
            continue
        ax.plot(steps, ys, marker="o", linewidth=1.2)
        bars = _bars(r, key, base)
        if bars:
            xs, lows, highs = zip(*bars, strict=True)
            ax.vlines(xs, lows, highs, color="tab:blue", alpha=0.35, linewidth=4)
        if isinstance(base, (int, float)):
            ax.axhline(base, linestyle="--", color="grey", linewidth=1, label="baseline")
        if r.best_step in steps:
            j = steps.index(r.best_step)
            ax.plot([r.best_step], [ys[j]], marker="*", markersize=14, color="tab:red", label="best")
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ html

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.best{background:#fff6d6}
.good{color:#11772d}.bad{color:#b3261e}.same{color:#777}
.verdict{border-left:6px solid #2563eb;background:#eff6ff;padding:10px 14px;margin:12px 0;font-size:16px}
.verdict.improved{border-color:#11772d;background:#edf7ef}
.verdict.worse{border-color:#b3261e;background:#fdf0ee}
.warn{background:#fff3f0;border-left:4px solid #b3261e;padding:4px 10px;
margin:4px 0}audio{height:32px;width:220px}.small{color:#666;font-size:12px}
.error{background:#fde7e4;border:2px solid #b3261e;padding:8px 12px;margin:8px 0;color:#5c0f0a}
table.facts{font-size:14px}table.facts th,table.facts td{border:none;text-align:left;padding:2px 12px 2px 0;
background:none}table.facts th{white-space:nowrap;vertical-align:top}"""


def _interval(lo_hi: Any, fmt: str) -> str:
    """"<br><span class=small>[+0.09, +0.15]</span>" for a 95 % interval, "" without one."""
    if not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2 or not all(
            isinstance(x, (int, float)) and math.isfinite(x) for x in lo_hi):
        return ""
    return f"<br><span class='small'>[{_f(lo_hi[0], fmt, True)}, {_f(lo_hi[1], fmt, True)}]</span>"


def _cell(v: Any, base: Any, key: str, fmt: str, is_baseline: bool, delta_ci: Any = None,
          value_ci: Any = None) -> str:
    """The value and its change against the baseline: green/red when the change's 95 % paired interval
    (shown under it) excludes 0, grey when it holds 0; by its sign when there is no interval. The value's own
    95 % interval is its tooltip."""
    value = _f(v, fmt)
    tip = ""
    if _interval(value_ci, fmt):  # a finite pair
        tip = f"[{_f(value_ci[0], fmt)}, {_f(value_ci[1], fmt)}]"
    if tip:
        value = f"<span title='95 % interval of the value: {tip}'>{value}</span>"
    if is_baseline or not isinstance(v, (int, float)) or not isinstance(base, (int, float)):
        return f"<td>{value}</td>"
    delta = v - base
    if not math.isfinite(delta):
        return f"<td>{value}</td>"
    good = (delta > 0) == (DIRECTIONS.get(key) == "higher")
    cls = "" if delta == 0 else ("good" if good else "bad")
    ci = _interval(delta_ci, fmt)
    if ci and delta_ci[0] <= 0 <= delta_ci[1]:
        cls = "same"  # within the noise
    return f'<td>{value} <span class="{cls}">({_f(delta, fmt, True)})</span>{ci}</td>'


def _decided(row: dict[str, Any]) -> str:
    """The selection column: how this evaluation was decided (best, a guard, within the noise)."""
    sel = row.get("selection") or {}
    if row["best"]:
        return "★ best"
    guard = {"similarity": "excluded by the similarity guard", "wer": "WER guard stopped training",
             "worse_than_base": "worse than base beyond noise"}.get(sel.get("guard") or "")
    if guard:
        return guard
    versus = sel.get("versus_best")
    if isinstance(versus, dict) and str(sel.get("note") or "").startswith("cannot be told apart"):
        return f"cannot be told apart from step {versus.get('step')}"
    return ""


def _table(r: RunEvals) -> str:
    head = "".join(f"<th>{html.escape(label)} {'↑' if DIRECTIONS[k] == 'higher' else '↓'}</th>"
                   for k, label, _ in TABLE_METRICS)
    head += "<th>validation loss ↓</th>" if r.val else ""
    out = [(f"<table><tr><th>evaluation</th><th>composite</th>{head}<th>selection</th>"
            "<th>checkpoint kept</th></tr>")]
    for row in _rows(r):
        is_base = row["name"] == BASELINE
        deltas = row.get("selection", {}).get("deltas") or {}
        if is_base:  # the baseline's own intervals: from any evaluation's paired deltas (the same draws)
            deltas = next((d.get("selection", {}).get("deltas") for d in r.evals
                           if (d.get("selection") or {}).get("deltas")), None) or {}
        own = "base" if is_base else "value"

        def ci(k: str, low: str, high: str) -> list[Any]:
            d = deltas.get(k) or {}  # noqa: B023 - used at once, in this iteration
            return [d.get(low), d.get(high)]

        cells = "".join(_cell(row["agg"].get(k), r.base_agg.get(k), k, fmt, is_base, ci(k, "low", "high"),
                              ci(k, f"{own}_low", f"{own}_high")) for k, _, fmt in TABLE_METRICS)
        cells += f"<td>{_f(_val_loss(r, row['step']), '{:.3f}')}</td>" if r.val else ""
        name = html.escape(row["name"])
        cls = ' class="best"' if row["best"] else ""
        composite = _f(row["composite"], "{:.3f}", True) + _interval(row.get("selection", {}).get("interval"),
                                                                     "{:.3f}")
        out.append(f"<tr{cls}><td>{name}</td><td>{composite}</td>{cells}"
                   f"<td>{html.escape(_decided(row))}</td><td>{row['kept']}</td></tr>")
    out.append("</table>")
    seeds = {(row.get("selection") or {}).get("seeds") for row in _rows(r)} - {None, 0}
    n = {(row.get("selection") or {}).get("n_sentences") for row in _rows(r)} - {None, 0}
    if n:
        out.append(f"<p class='small'>Under each change: its 95 % paired interval against the baseline "
                   f"(cluster bootstrap over {max(n)} sentences x {max(seeds or {1})} seeds; "
                   "voicetune/evaluation/stats.py). Green or red only when the interval excludes 0 (beyond "
                   "noise); grey when the change is within the noise. Hover a value for its own 95 % "
                   "interval.</p>")
    else:
        out.append("<p class='small'>No intervals: too few sentences or no per-sentence scores "
                   "(see voicetune/evaluation/stats.py).</p>")
    return "\n".join(out)


def _audio_tag(path: Path | None, report_dir: Path) -> str:
    """A player for ``path``, linked relative to the report's folder (the report travels with the run)."""
    if path is None or not path.is_file():
        return "<td>—</td>"
    rel = Path(os.path.relpath(path, report_dir)).as_posix()
    return f'<td><audio controls preload="none" src="{html.escape(rel)}"></audio></td>'


def _file(folder: Path, rows: list[dict[str, Any]], i: int) -> Path | None:
    return folder / rows[i]["audio_file"] if i < len(rows) and rows[i].get("audio_file") else None


def _audio_section(r: RunEvals) -> str:
    if not r.baseline:
        return ""
    shown = r.best_step if r.best_step is not None else (r.evals[-1]["step"] if r.evals else None)
    doc = next((d for d in r.evals if d["step"] == shown), None)
    sentences = r.baseline.get("sentences", [])
    picks = [s for s in sentences if s["group"] == "eval"][:AUDIO_SENTENCES // 2]
    picks += [s for s in sentences if s["group"] == "probe"][: AUDIO_SENTENCES - len(picks)]
    label = f"step_{shown}" + (" (best)" if shown == r.best_step else " (last)") if doc else "—"
    header = f"<th>sentence</th><th>ground truth</th><th>baseline</th><th>{html.escape(label)}</th>"
    out = [f"<table><tr>{header}</tr>"]
    base_rows = r.baseline.get("base", {}).get("per_sentence", [])
    real_rows = r.baseline.get("real", {}).get("per_sentence", [])
    for s in picks:
        i = s["index"]
        real = _file(r.eval_root / BASELINE, real_rows, i) if s["group"] == "eval" else None
        base = _file(r.eval_root / BASELINE, base_rows, i)
        ft = None
        if doc:
            ft = _file(
                r.eval_root / doc.get("name", f"step_{shown}"),
                doc.get("finetuned", {}).get("per_sentence", []),
                i,
            )
        text = html.escape(s["text"]) + f' <span class="small">({s["group"]})</span>'
        where = r.report_path.parent
        out.append(f"<tr><td style='max-width:380px'>{text}</td>{_audio_tag(real, where)}"
                   f"{_audio_tag(base, where)}{_audio_tag(ft, where)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _protocol_text(b: dict[str, Any]) -> str:
    """The evaluation protocol in words, e.g. "4 eval-split sentences with their recordings + 4 probe
    sentences, conditioned on 2 reference clips, sampling seed 0; MCD/PESQ/STOI on"."""
    p, sentences = b.get("protocol") or {}, b.get("sentences") or []
    n_eval = sum(1 for x in sentences if x.get("group") == "eval")
    n_probe = len(sentences) - n_eval
    refs = len(b.get("references") or []) or p.get("num_references")
    text = (f"{n_eval} eval-split sentence{'s' * (n_eval != 1)} with their recordings + {n_probe} probe "
            f"sentence{'s' * (n_probe != 1)}, conditioned on {refs} reference clip{'s' * (refs != 1)} "
            f"of the speaker, " + _seeds_text(b.get("seeds") or [p.get("seed", "?")]))
    if "intrusive" in p:
        text += "; MCD/PESQ/STOI against the recordings " + ("on" if p["intrusive"] else "off")
    return text + (f" (protocol {p['key']})" if p.get("key") else "")


def _seeds_text(seeds: list[Any]) -> str:
    """"sampling seed 0" or "each sentence rendered 2 times, with sampling seeds 0, 1"."""
    if len(seeds) == 1:
        return f"sampling seed {seeds[0]}"
    return f"each sentence rendered {len(seeds)} times, with sampling seeds {', '.join(map(str, seeds))}"


def _weights_text(weights: dict[str, Any]) -> str:
    """"speaker similarity x1, WER x2, predicted MOS x0.5, failures x1" (zero weights left out)."""
    names = {"similarity": "speaker similarity", "wer": "WER", "cer": "CER", "mos": "predicted MOS",
             "failures": "failure rate"}
    return ", ".join(f"{names.get(k, k)} ×{v:g}" for k, v in weights.items()
                     if isinstance(v, (int, float)) and v)


def _verdict_html(r: RunEvals) -> str:
    if r.verdict is None or (not r.evals and not r.baseline):
        return ""
    return (f"<div class='verdict {html.escape(r.verdict.kind)}'><b>Verdict.</b> "
            f"{html.escape(r.verdict.text)}</div>")


def _header(r: RunEvals) -> list[str]:
    b = r.baseline or {}
    facts = [("run", str(r.run_dir.resolve())), ("base model", b.get("base_model")),
             ("dataset", b.get("dataset")), ("speaker", b.get("speaker")), ("language", b.get("language")),
             ("ASR model", b.get("asr_model")), ("evaluation", _protocol_text(b) if b else None)]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts if v)
    parts = [f"<table class='facts'>{rows}</table>"]
    for e in r.errors:
        parts.insert(0, "<div class='error'><b>Software error (not a voice quality result):</b><br>"
                     f"{html.escape(e)}</div>")
    return parts


def render_html(r: RunEvals) -> str:
    """The report page as a string."""
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>voicetune report</title>"
              f"<style>{_CSS}</style></head><body><h1>voicetune report</h1>"), _verdict_html(r), *_header(r)]
    if r.best:
        ci = r.best.get("composite_interval")
        ci = f", 95 % CI {ci[0]:+.3f} to {ci[1]:+.3f}" if ci else ", no interval"
        parts.append(f"<h2>Best checkpoint: {html.escape(r.best['checkpoint'])} "
                     f"(composite {r.best['composite']:+.3f}{ci})</h2>"
                     "<p class='small'>Composite score = weighted change against the baseline (the base "
                     f"model, zero-shot): {html.escape(_weights_text(r.best.get('weights', {})))}. 0 is the "
                     "base model; above 0 is better. The best moves to a later checkpoint only when its gain "
                     "beats the noise (see voicetune/evaluation/selection.py).</p>")
    elif r.evals:
        parts.append("<h2>Best checkpoint: none</h2><p class='small'>No evaluation qualified "
                     "(see the verdict, the selection column, the errors and warnings).</p>")
    if r.warnings:
        parts.append(
            "<h2>Warnings</h2>" + "".join(f"<div class='warn'>{html.escape(w)}</div>" for w in r.warnings)
        )
    parts.append("<h2>Evaluations</h2>" + _table(r) if (r.baseline or r.evals) else "")
    parts.append(encoders_html(next((d for d in r.evals if d["step"] == r.best_step), r.evals[-1] if r.evals
                                    else None)))
    speakers = speakers_html(r.eval_root, r.report_path.parent)
    parts.append(f"<h2>Every voice</h2>{speakers}" if speakers else "")
    if r.in_loop:
        parts.append(f"<p class='small'>Evaluation cost: {r.in_loop.get('eval_seconds', 0):.1f} s over "
                     f"{len(r.in_loop.get('evaluations', []))} in-loop evaluations "
                     f"({100 * (r.in_loop.get('overhead_fraction') or 0):.1f}% of the training wall time), "
                     f"{r.in_loop.get('baseline_seconds', 0):.1f} s for the baseline.</p>")
    losses = loss_plot(r.train, [d["step"] for d in r.evals], r.best_step, r.loss_parts, r.val,
                       _overfit_span(r))
    plots = (("Metrics", metric_plot(r), "No evaluation after the baseline yet: nothing to plot."),
             ("Training loss", losses, "No training step was logged: nothing to plot."))
    for title, png, empty in plots:
        body = (f"<img alt='{title}' src='data:image/png;base64,{png}'>" if png
                else f"<p class='small'>{empty}</p>")
        parts.append(f"<h2>{title}</h2>{body}")
        if title == "Metrics" and png:
            parts.append("<p class='small'>Shaded bars: the 95 % paired interval of each change against the "
                         "baseline (dashed line); a bar that crosses the line is within the noise.</p>")
        if title == "Training loss" and png and r.loss_note:
            parts.append(f"<p class='small'>{html.escape(r.loss_note)}</p>")
        if title == "Training loss" and png:
            parts.append(_validation_note(r))
    parts.append(_change_section(r))
    audio = _audio_section(r)
    if audio:
        parts.append("<h2>Listen</h2>" + audio)
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _validation_note(r: RunEvals) -> str:
    """One line under the loss plot: what the dashed validation curves are, or why there are none."""
    if not r.val:
        return ("<p class='small'>No validation losses: the run made no evaluation (in the loop or with "
                "`voicetune evaluate`), or its dataset has no usable eval-split clip.</p>") if r.train else ""
    return ("<p class='small'>Dashed with dots: the same loss parts, teacher-forced on the eval split at "
            "each evaluation (validation losses). Training loss falling while validation loss rises means "
            "the "
            "model is learning the training clips by heart (overfitting).</p>")


def _change_section(r: RunEvals) -> str:
    """"Did the finetune change the voice?": the base and the finetune rendered with the same sentences and
    seeds, compared (voicetune.evaluation.change)."""
    c = r.change
    if not c:
        return ""
    verdict = (f"<div class='warn'>{html.escape(c['message'])}</div>" if c.get("indistinguishable")
               else f"<p>{html.escape(c['message'])}</p>")
    compared = f"{c.get('finetuned')} against {c.get('base')}, {c.get('pairs')} sentence(s), same seeds"
    rows = [("compared", compared),
            ("speaker-embedding distance (median, 1 − cosine)",
             change.number(c.get("speaker_distance"), ".4f")),
            ("spectral distance (median MCD, dB)", change.number(c.get("spectral_distance"), ".2f")),
            ("renders identical to the base's", f"{c.get('identical')} of {c.get('pairs')}")]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return ("<h2>Did the finetune change the voice?</h2>" + verdict + f"<table class='facts'>{table}</table>"
            f"<p class='small'>{html.escape(change.METHOD)}</p>")


def write_report(run_dir: Path | str, eval_root: Path | str | None = None) -> Path:
    """Write the report (RUN_DIR/report.html, or EVAL_ROOT/report.html for another protocol's folder)."""
    data = collect(run_dir, eval_root)
    atomic_write_text(data.report_path, render_html(data))
    return data.report_path
