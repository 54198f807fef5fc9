"""The Train tab: a form generated from the config dataclasses (backend, base folder, the basic options, an
advanced section per group and per backend), doctor's checks and recommended settings, start / stop (SIGINT,
like Ctrl+C) / resume of ``voicetune train`` in its own process, and the run's live curves, memory, ETA and
log, all read from the run folder every two seconds."""

from __future__ import annotations

import html
import json
import logging
import subprocess
import sys
import time
from typing import Any

import gradio as gr
import pandas as pd

from voicetune.config import ConfigError, TrainConfig
from voicetune.ui import process, runview
from voicetune.ui.forms import GROUP_TITLES, cli_flags, recommended_values, to_overrides, train_fields
from voicetune.ui.safety import UiSafetyError
from voicetune.ui.widgets import choices_update, message, option_widget, widget_value
from voicetune.ui.workspace import Workspace

logger = logging.getLogger(__name__)

REFRESH_S = 2.0
BASIC_PER_ROW = 4
LOG_LINES = 14  # shown, so that the newest line is in view without scrolling
DOCTOR_TIMEOUT_S = 600
_BADGE = {"running": "running", "stopping": "running", "finished": "ok", "stopped": "warn", "failed": "error",
          "idle": "muted"}


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def _curve(title: str, elem_id: str, **kwargs: Any) -> gr.LinePlot:
    """One live chart of the Train tab: ``value`` per ``step``, a line per ``series``."""
    return gr.LinePlot(x="step", y="value", color="series", title=title, height=260, elem_id=elem_id,
                       **kwargs)


def _doctor(ws: Workspace, base: str, backend: str, dataset: str | None) -> dict[str, Any]:
    """`voicetune doctor --json` in a process of its own (its GPU dry run must not hold memory in the UI)."""
    argv = [sys.executable, "-m", "voicetune.cli", "doctor", "--json", "--backend", backend]
    if base:
        argv += ["--base", str(ws.path(base, must_exist=True))]
    if dataset:
        argv += ["--dataset", str(ws.path(dataset, must_exist=True))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=DOCTOR_TIMEOUT_S, cwd=ws.root,
                          stdin=subprocess.DEVNULL, check=False)  # a failed check exits 1 and still reports
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(
            f"doctor failed (exit status {done.returncode}): {done.stderr.strip()[-800:]}"
        ) from None


def _doctor_html(report: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td><span class='vt-badge vt-{c['status']}'>{c['status'].upper()}</span></td>"
                   f"<td>{html.escape(c['name'])}</td><td>{html.escape(c['detail'])}</td></tr>"
                   for c in report.get("checks", []))
    recs = "".join(f"<li><pre>{html.escape(r)}</pre></li>" for r in report.get("recommendations", []))
    verdict = message("error", "a check failed: fix it before training") if report.get("failed") else ""
    return (f"{verdict}<table class='vt-doctor'>{rows}</table>"
            + (f"<p><b>Recommended settings</b> (Apply fills them in):</p><ul>{recs}</ul>" if recs else ""))


def _status_html(view: runview.RunView) -> str:
    state, text = runview.status(view)
    total = view.total_steps
    pct = 100.0 * view.step / total if total else 0.0
    bar = (f"<div class='vt-bar'><div style='width:{min(pct, 100):.1f}%'></div></div>" if view.steps else "")
    last = view.last
    rate = (f"{last['samples_per_s']:.1f} samples/s · {last.get('audio_s_per_s', 0):.0f} audio-s/s · "
            if isinstance(last.get("samples_per_s"), (int, float)) else "")
    evals = f" · {len(view.evals)} evaluation(s)" if view.evals else ""
    return (
        f"<div class='vt-run-status' data-state='{state}'><span class='vt-badge "
        f"vt-{_BADGE[state]}'>{state}</span> <b>{html.escape(view.name)}</b>: {html.escape(text)}{bar}<div "
        f"class='vt-muted'>{rate}{html.escape(runview.memory_text(last))}{evals}</div></div>"
    )


def build(ws: Workspace) -> dict[str, Any]:
    from voicetune.backends.registry import available_backends, train_config

    backends = available_backends()
    default_fields = train_fields(TrainConfig.backend)
    generic = [f for f in default_fields if f.group != "backend_options"]
    per_backend = {b: [f for f in train_fields(b) if f.group == "backend_options"] for b in backends}

    gr.Markdown("### New training run")
    with gr.Row():
        run_name = gr.Textbox(
            label="run name", value=time.strftime("run-%Y%m%d-%H%M%S"), elem_id="vt-run-name"
        )
        dataset = gr.Dropdown(
            label="dataset", choices=[], allow_custom_value=True, elem_id="vt-train-dataset"
        )
        base = gr.Dropdown(label="base model folder (in the workspace, e.g. bases/XTTS-v2)", choices=[],
                           allow_custom_value=True, elem_id="vt-train-base")
    widgets: dict[str, Any] = {}
    basic = [f for f in generic if f.basic]
    with gr.Group(elem_id="vt-basic-options"):
        for i in range(0, len(basic), BASIC_PER_ROW):
            with gr.Row(equal_height=True):
                for f in basic[i:i + BASIC_PER_ROW]:
                    widgets[f.name] = option_widget(f)
    for group in ("", "eval"):
        with gr.Accordion(f"Advanced: {GROUP_TITLES[group]}", open=False):
            for f in generic:
                if f.group == group and not f.basic:
                    widgets[f.name] = option_widget(f)
    backend_widgets: dict[str, dict[str, Any]] = {}
    accordions = {}
    for b in backends:
        with gr.Accordion(f"Advanced: {b} backend", open=False, visible=b == TrainConfig.backend) as acc:
            backend_widgets[b] = {f.name: option_widget(f) for f in per_backend[b]}
        accordions[b] = acc
    with gr.Row():
        doctor_btn = gr.Button("Check this machine and base (doctor)", elem_id="vt-doctor")
        apply_btn = gr.Button("Apply recommended settings", elem_id="vt-apply-recs")
        start_btn = gr.Button("Start training", variant="primary", elem_id="vt-start")
    doctor_out = gr.HTML(elem_id="vt-doctor-out")
    doctor_state = gr.State({})
    start_msg = gr.HTML(elem_id="vt-start-msg")

    gr.Markdown("### Runs")
    with gr.Row():
        run = gr.Dropdown(label="run", choices=[], elem_id="vt-run", scale=3)
        stop_btn = gr.Button("Stop (saves a checkpoint)", variant="stop", elem_id="vt-stop", scale=1)
        until = gr.Number(
            label="resume until step (0: the run's own length)",
            value=0,
            precision=0,
            minimum=0,
            elem_id="vt-resume-until",
            scale=1,
        )
        resume_btn = gr.Button("Resume", elem_id="vt-resume", scale=1)
    control_msg = gr.HTML(elem_id="vt-control-msg")
    status = gr.HTML(elem_id="vt-run-status")
    with gr.Row():
        loss_plot = _curve("training loss (and validation loss)", "vt-loss-plot")
        eval_plot = _curve("evaluation: similarity, WER, failures", "vt-eval-plot", y_lim=[0.0, 1.05])
    with gr.Row():
        quality_plot = _curve("predicted MOS and composite score", "vt-quality-plot")
        memory_plot = _curve("memory (GiB)", "vt-memory-plot")
    log = gr.Textbox(
        label="console (its last lines: the whole of it is runs/.ui/RUN/console.log)",
        lines=LOG_LINES + 4,
        max_lines=LOG_LINES + 4,
        interactive=False,
        elem_id="vt-log",
        autoscroll=True,
    )
    with gr.Accordion("config.yaml of this run", open=False):
        config_view = gr.Code(language="yaml", interactive=False, elem_id="vt-config")
    seen = gr.State("")
    timer = gr.Timer(REFRESH_S)

    all_inputs = [*widgets.values(), *(w for b in backends for w in backend_widgets[b].values())]
    names = [*widgets, *(f"{b}:{n}" for b in backends for n in backend_widgets[b])]

    def values_of(args: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
        """(backend, options by flat name) from the form's values."""
        by_name = dict(zip(names, args, strict=True))
        chosen = by_name["backend"]
        values = {n: v for n, v in by_name.items() if ":" not in n}
        values.update({n.split(":", 1)[1]: v for n, v in by_name.items() if n.startswith(f"{chosen}:")})
        return chosen, values

    def on_backend(chosen: str) -> list[Any]:
        return [gr.update(visible=b == chosen) for b in backends]

    widgets["backend"].change(on_backend, widgets["backend"], list(accordions.values()))

    def run_doctor(base_dir: str, ds: str, *args: Any) -> tuple[str, dict[str, Any]]:
        chosen, _ = values_of(args)
        try:
            report = _doctor(ws, base_dir or "", chosen, ds or None)
        except (UiSafetyError, RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            return message("error", str(e)), {}
        return _doctor_html(report), report

    doctor_btn.click(
        run_doctor, [base, dataset, *all_inputs], [doctor_out, doctor_state], concurrency_limit=1
    )

    def apply_recs(report: dict[str, Any], *args: Any) -> list[Any]:
        chosen, _ = values_of(args)
        fields = train_fields(chosen)
        rec = recommended_values(report.get("recommendations", []), fields)
        by_field = {f.name: f for f in fields}
        out = []
        for n in names:
            key = n.split(":", 1)[-1]
            owner = n.split(":", 1)[0] if ":" in n else chosen
            out.append(widget_value(by_field[key], rec[key]) if key in rec and owner == chosen else gr.skip())
        return out

    apply_btn.click(apply_recs, [doctor_state, *all_inputs], all_inputs)

    def start(name: str, ds: str, base_dir: str, *args: Any) -> tuple[str, Any]:
        try:
            chosen, values = values_of(args)
            fields = train_fields(chosen)
            overrides = to_overrides(fields, values)
            train_config(**overrides)  # validated here: a bad option is named before anything starts
            run_dir = ws.new_child("runs", name, "run name")
            if run_dir.exists() and any(run_dir.iterdir()):
                raise UiSafetyError(
                    f"runs/{name} exists already: choose another run name (or Resume it below)"
                )
            if not ds:
                raise UiSafetyError("choose a dataset (prepare one in the Dataset tab)")
            if not base_dir:
                raise UiSafetyError(
                    "choose the base model folder (put or link it under bases/ in the workspace)"
                )
            data_dir, base_path = ws.path(ds, must_exist=True), ws.path(base_dir, must_exist=True)
            argv = process.train_command(data_dir, base_path, run_dir, cli_flags(fields, overrides))
            process.start(run_dir, argv, cwd=ws.root)
        except (UiSafetyError, ConfigError, RuntimeError, OSError) as e:
            return message("error", str(e)), gr.skip()
        return (message("ok", f"started {name}: its page below reads the run folder runs/{name}"),
                gr.update(choices=ws.runs(), value=run_dir.name))

    start_btn.click(start, [run_name, dataset, base, *all_inputs], [start_msg, run], concurrency_limit=1)

    def stop(name: str) -> str:
        try:
            process.stop(ws.run_dir(name))
        except (UiSafetyError, RuntimeError, OSError) as e:
            return message("error", str(e))
        return message(
            "ok",
            f"asked {name} to stop (as Ctrl+C): it finishes its step and saves a checkpoint; "
            "press Stop again to stop at once",
        )

    stop_btn.click(stop, run, control_msg)

    def resume(name: str, until_step: Any) -> str:
        try:
            run_dir = ws.run_dir(name)
            flags = ["--max-steps", str(int(until_step))] if until_step and int(until_step) > 0 else []
            view = runview.read_run(run_dir)
            if view.latest is None:
                raise UiSafetyError(f"{name} has no checkpoint to resume from; start a new run instead")
            process.start(
                run_dir, process.train_command(None, None, run_dir, flags, resume=True), cwd=ws.root
            )
        except (UiSafetyError, RuntimeError, OSError) as e:
            return message("error", str(e))
        return message("ok", f"resuming {name} from {view.latest}")

    resume_btn.click(resume, [run, until], control_msg, concurrency_limit=1)

    def refresh(name: str | None, last_seen: str) -> tuple[Any, ...]:
        if not name:
            empty = _frame([])
            return (
                "<p class='vt-muted'>No run yet: start one above.</p>",
                empty,
                empty,
                empty,
                empty,
                "",
                "",
                gr.update(interactive=False),
                gr.update(interactive=False),
                "",
            )
        try:
            view = runview.read_run(ws.run_dir(name))
        except UiSafetyError as e:
            return (message("error", str(e)), *(gr.skip(),) * 6, gr.skip(), gr.skip(), last_seen)
        key = f"{name}|{len(view.steps)}|{len(view.evals)}"
        plots: tuple[Any, ...] = (gr.skip(),) * 4
        if key != last_seen:
            plots = tuple(_frame(rows(view)) for rows in
                          (runview.loss_rows, runview.eval_rows, runview.quality_rows, runview.memory_rows))
        config = (view.path / "config.yaml").read_text() if (view.path / "config.yaml").is_file() else ""
        running = view.process.running
        return (
            _status_html(view),
            *plots,
            "\n".join(view.log_lines[-LOG_LINES:]),
            config,
            gr.update(interactive=running),
            gr.update(interactive=not running and view.latest is not None),
            key,
        )

    outputs = [
        status,
        loss_plot,
        eval_plot,
        quality_plot,
        memory_plot,
        log,
        config_view,
        stop_btn,
        resume_btn,
        seen,
    ]
    timer.tick(refresh, [run, seen], outputs, show_progress="hidden")
    run.change(lambda n: refresh(n, ""), run, outputs, show_progress="hidden")

    def on_load(current_run: str | None, ds: str | None, base_dir: str | None) -> tuple[Any, Any, Any]:
        bases = ws.bases()
        return (choices_update(ws.runs(), current_run), choices_update(ws.datasets(), ds),
                gr.update(choices=bases, value=base_dir or (bases[0] if bases else None)))

    return {"run": run, "dataset": dataset, "base": base, "on_load": on_load}

