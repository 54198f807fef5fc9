"""A training run as the Train tab shows it, read only from its run folder (no Gradio here).

Everything comes from files: ``config.yaml`` (the settings), ``run.json`` (clips used, batch geometry, loss
parts), ``metrics.jsonl`` (one record per logged step, ``"kind": "eval"`` records per evaluation),
``checkpoints/`` (``latest``, ``best``), ``RUNS/.ui/<run>/console.log`` (the process's console) and
``process.json`` (:mod:`voicetune.ui.process`). A reloaded page, a second browser or a restarted UI therefore
shows the same.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from voicetune.run import best_checkpoint, latest_checkpoint, list_checkpoints
from voicetune.ui.process import ProcessState, log_path, process_state
from voicetune.utils.io import read_jsonl

LOG_TAIL_BYTES = 64 * 1024
EVAL_SERIES = (("speaker_similarity", "speaker similarity"), ("wer", "WER"), ("cer", "CER"),
               ("failure_rate", "failure rate"))
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class RunView:
    """What the run folder says about one run."""

    name: str
    path: Path
    process: ProcessState
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # training records of metrics.jsonl
    evals: list[dict[str, Any]] = field(default_factory=list)  # evaluation records
    checkpoints: list[str] = field(default_factory=list)
    latest: str | None = None
    best: str | None = None
    log_lines: list[str] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.steps[-1] if self.steps else {}

    @property
    def step(self) -> int:
        return int(self.last.get("step", 0))

    @property
    def total_steps(self) -> int | None:
        """max_steps, else epochs x steps per epoch (ceil(clips used / global batch), as the sampler has
        it)."""
        max_steps = int(self.config.get("max_steps") or 0)
        if max_steps:
            return max_steps
        training = self.info.get("training", {})
        clips, batch = training.get("clips_used"), training.get("global_batch")
        if not clips or not batch:
            return None
        return max(1, math.ceil(clips / batch)) * int(self.config.get("epochs") or 1)

    @property
    def loss_parts(self) -> list[str]:
        return list(self.info.get("training", {}).get("loss_parts", []))


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def log_tail(path: Path, lines: int = 40) -> list[str]:
    """The last ``lines`` lines of a console log; a progress bar's carriage-return updates collapse to their
    latest state, and terminal colour codes are removed."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.split("\n"):
        line = _ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1]).rstrip()
        if line:
            out.append(line)
    return out[-lines:]


def read_run(run_dir: Path) -> RunView:
    """Everything the Train tab shows about ``run_dir``."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    latest, best = latest_checkpoint(run_dir), best_checkpoint(run_dir)
    return RunView(
        name=run_dir.name, path=run_dir, process=process_state(run_dir),
        config=_yaml(run_dir / "config.yaml"), info=_json(run_dir / "run.json"),
        steps=[r for r in records if r.get("kind") is None and "loss" in r],
        evals=[r for r in records if r.get("kind") == "eval"],
        checkpoints=[p.name for p in list_checkpoints(run_dir)],
        latest=latest.name if latest else None, best=best.name if best else None,
        log_lines=log_tail(log_path(run_dir)),
    )


# ------------------------------------------------------------------------------------------ curves


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def loss_rows(view: RunView) -> list[dict[str, Any]]:
    """(step, value, series) rows of the training loss, its parts and any validation losses (``val_*`` keys,
    in step or evaluation records)."""
    rows = []
    for r in view.steps:
        for key in ["loss", *view.loss_parts]:
            if _finite(r.get(key)):
                rows.append({"step": r["step"], "value": r[key], "series": key})
    for r in view.steps + view.evals:
        for key, v in r.items():
            if key.startswith("val_") and _finite(v):
                rows.append({"step": r["step"], "value": v, "series": key})
    return rows


def eval_rows(view: RunView) -> list[dict[str, Any]]:
    """(step, value, series) rows of the evaluation metrics on a 0-1 scale (similarity, WER, CER,
    failures)."""
    return [{"step": r["step"], "value": r[key], "series": label}
            for r in view.evals for key, label in EVAL_SERIES if _finite(r.get(key))]


def quality_rows(view: RunView) -> list[dict[str, Any]]:
    """(step, value, series) rows of predicted MOS and the composite score."""
    return [{"step": r["step"], "value": r[key], "series": label}
            for r in view.evals for key, label in (("mos", "predicted MOS"), ("composite", "composite score"))
            if _finite(r.get(key))]


def memory_rows(view: RunView) -> list[dict[str, Any]]:
    """(step, GiB, series) rows of memory: GPU allocated/peak/reserved, or the process's RSS on a CPU."""
    names = {"mem_alloc_gib": "GPU allocated", "mem_peak_gib": "GPU peak", "mem_reserved_gib": "GPU reserved",
             "mem_rss_gib": "process RSS (CPU)"}
    return [{"step": r["step"], "value": r[k], "series": label}
            for r in view.steps for k, label in names.items() if _finite(r.get(k))]


# ------------------------------------------------------------------------------------------ status


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def memory_text(last: dict[str, Any]) -> str:
    if _finite(last.get("mem_alloc_gib")):
        return (
            f"GPU memory {last['mem_alloc_gib']:.2f} GiB allocated, {last.get('mem_peak_gib', 0):.2f} GiB "
            f"peak, {last.get('mem_reserved_gib', 0):.2f} GiB reserved"
        )
    if _finite(last.get("mem_rss_gib")):
        return f"no GPU: process memory {last['mem_rss_gib']:.2f} GiB (RSS)"
    return "memory: not measured yet"


def _ended_how(view: RunView) -> str:
    """How a run ended when its exit status is unknown (the UI was restarted), from its log."""
    text = "\n".join(view.log_lines[-15:])
    if re.search(r"stopped by SIG|interrupted \(SIG|interrupted$", text, re.MULTILINE):
        return "stopped"
    if re.search(r"run folder: |report: ", text):
        return "finished"
    if re.search(r"failed|Traceback|Error", text):
        return "failed"
    return "ended"


def status(view: RunView) -> tuple[str, str]:
    """(state, one-line description): state is one of running, stopping, finished, stopped, failed, idle."""
    p, total = view.process, view.total_steps
    where = f"step {view.step}" + (f" of {total}" if total else "")
    if p.running:
        if p.stop_requests:
            return "stopping", f"stopping: finishing {where}, then saving a checkpoint"
        if not view.steps:
            last = view.log_lines[-1] if view.log_lines else "starting"
            return "running", f"setting up (features, baseline evaluation): {last[-160:]}"
        eta = float(view.last.get("eta_s") or 0.0)
        pct = f" ({100 * view.step / total:.0f}%)" if total else ""
        return "running", (
            f"training: {where}{pct}, loss {view.last.get('loss', float('nan')):.4f}"
            + (f", ETA {format_seconds(eta)}" if math.isfinite(eta) and view.step != total else "")
        )
    stopped = {130: "stopped", 143: "stopped", -2: "stopped", -15: "stopped"}  # by SIGINT/SIGTERM
    how = {"exited": {0: "finished", **stopped}.get(p.exit_code or 0, "failed")
           if p.exit_code is not None else "", "gone": _ended_how(view)}.get(p.state, "")
    ckpt = f"; latest checkpoint {view.latest}" if view.latest else ""
    if how == "finished":
        return "finished", f"finished at {where}{ckpt}" + (f"; best {view.best}" if view.best else "")
    if how == "stopped":
        return "stopped", f"stopped at {where}{ckpt}; Resume continues exactly from it"
    if how == "failed":
        code = f" (exit status {p.exit_code})" if p.exit_code is not None else ""
        return "failed", f"failed{code}: see the end of the log below"
    if total and view.step >= total and view.latest:  # e.g. trained with the CLI
        return "finished", f"finished at {where}{ckpt}" + (f"; best {view.best}" if view.best else "")
    if view.steps or view.latest:
        return "idle", f"not running: {where}{ckpt}"
    return "idle", "not started"
