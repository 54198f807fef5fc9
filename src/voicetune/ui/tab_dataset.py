"""The Dataset tab: recordings in (upload, or a folder of the workspace), ``prepare`` with live progress, then
a review table of every clip with a player, transcript, scores and reasons; a transcript is edited and a clip
quarantined or restored through :mod:`voicetune.data.curate`; the dataset report is shown inline."""

from __future__ import annotations

import html
import logging
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from voicetune.config import ConfigError, PrepareConfig, merge
from voicetune.data.manifest import DatasetError
from voicetune.ui import clips as C
from voicetune.ui.forms import form_fields, to_overrides
from voicetune.ui.safety import UiSafetyError
from voicetune.ui.widgets import choices_update, file_url, message, option_widget, progress_html
from voicetune.ui.workspace import Workspace

logger = logging.getLogger(__name__)

BASIC_PREPARE = ("language", "asr_model", "speaker_name", "qa_mos")
AUDIO_TYPES = [".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus", ".aac", ".webm"]
PAGE_SIZES = ["10", "25", "50", "100"]
_TABLE_JS = """
element.addEventListener('click', (ev) => {
  const edit = ev.target.closest('button.vt-edit');
  if (edit) { trigger('click', {clip: edit.dataset.clip}); return; }
  const th = ev.target.closest('th[data-sort]');
  if (th) trigger('click', {sort: th.dataset.sort});
});
"""


def _dataset_dir(ws: Workspace, value: str | None) -> Path:
    if not value:
        raise UiSafetyError("choose a dataset (prepare one first)")
    path = ws.path(value, must_exist=True)
    if not (path / "clips.jsonl").is_file():
        raise UiSafetyError(f"{value}: no clips.jsonl (not a dataset written by prepare)")
    return path


def _prepare(ws: Workspace, files: list[str] | None, folder: str, name: str, options: dict[str, Any]) -> Any:
    """Generator: save uploads, run prepare in a worker thread, yield its progress as it comes."""
    from voicetune.data.prepare import prepare

    out = ws.new_child("datasets", name, "dataset name")
    fields = form_fields(PrepareConfig)
    cfg = merge(PrepareConfig(), to_overrides(fields, options))
    notes = []
    if files:
        saved = ws.save_uploads([(Path(f).name, Path(f)) for f in files], name)
        notes += [f"refused {n}: {why}" for n, why in saved.refused.items()]
        if not saved.saved:
            raise UiSafetyError("no uploaded file could be saved: " + "; ".join(notes))
        src = saved.folder
        notes.insert(0, f"saved {len(saved.saved)} recording(s) to {ws.relative(src)}")
    elif folder and folder.strip():
        src = ws.path(folder, must_exist=True)
    else:
        raise UiSafetyError("upload recordings or type a folder of the workspace that holds them")
    state: dict[str, Any] = {"done": 0, "total": 1, "what": "starting", "result": None, "error": None}

    def progress(done: int, total: int, what: str) -> None:
        state.update(done=done, total=total, what=what)

    def work() -> None:
        try:
            state["result"] = prepare(src, out, cfg, progress=progress)
        except (ValueError, OSError, RuntimeError) as e:
            state["error"] = e
            logger.exception("prepare failed")

    worker = threading.Thread(target=work, name="voicetune-ui-prepare", daemon=True)
    worker.start()
    pre = "".join(message("info", n) for n in notes)
    while worker.is_alive():
        yield pre + progress_html(state["done"], state["total"], state["what"]), gr.skip()
        worker.join(0.5)
    if state["error"] is not None:
        yield pre + message("error", f"prepare failed: {state['error']}"), gr.skip()
        return
    res = state["result"]
    summary = "<br>".join(html.escape(line) for line in res.summary().splitlines())
    yield (pre + progress_html(state["total"], state["total"], "done", running=False)
           + f"<div class='vt-msg vt-msg-ok' id='vt-prepare-done'>{summary}</div>",
           choices_update(ws.datasets(), ws.relative(out)))


def _query(status: str, search: str, score: str, low: Any, high: Any, sort: str, desc: bool, page: Any,
           size: Any) -> C.ClipQuery:
    def num(v: Any) -> float | None:
        if v is None or not str(v).strip():
            return None
        try:
            return float(v)
        except ValueError:
            raise UiSafetyError(f"{v!r} is not a number (score filter)") from None

    return C.ClipQuery(
        status=status or "all",
        search=search or "",
        score=score or "",
        low=num(low),
        high=num(high),
        sort=sort or "id",
        descending=bool(desc),
        page=int(page or 1),
        page_size=int(size or 25),
    )


def build(ws: Workspace) -> dict[str, Any]:
    """The tab's widgets and events; returns what the app refreshes on page load."""
    prepare_fields = form_fields(PrepareConfig)
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("### 1 · Recordings\nUpload audio files (any of wav/flac/mp3/ogg/m4a; your files are "
                        "copied, never changed), or name a folder of the workspace that holds them.")
            uploads = gr.File(label="Upload recordings", file_count="multiple", file_types=AUDIO_TYPES,
                              elem_id="vt-uploads")
            folder = gr.Textbox(label="…or a folder in the workspace", placeholder="recordings/my_session",
                                elem_id="vt-rec-folder")
        with gr.Column(scale=1):
            gr.Markdown(
                "### 2 · Prepare\nCut, transcribe and check the recordings into a dataset folder under "
                "`datasets/`. Running it again on the same name adds new recordings only."
            )
            name = gr.Textbox(label="dataset name", value="my_voice", elem_id="vt-dataset-name")
            widgets = {}
            for f in prepare_fields:
                if f.name in BASIC_PREPARE:
                    widgets[f.name] = option_widget(f)
            with gr.Accordion("All prepare options", open=False):
                for f in prepare_fields:
                    if f.name not in BASIC_PREPARE:
                        widgets[f.name] = option_widget(f)
            run_btn = gr.Button("Prepare dataset", variant="primary", elem_id="vt-prepare")
    prep_status = gr.HTML(elem_id="vt-prepare-status")

    gr.Markdown("### 3 · Review every clip")
    with gr.Row():
        dataset = gr.Dropdown(
            label="dataset", choices=[], allow_custom_value=True, elem_id="vt-review-dataset", scale=3
        )
        reload_btn = gr.Button("Reload", scale=0, min_width=90)
    counts = gr.HTML(elem_id="vt-counts")
    with gr.Row():
        status = gr.Radio(list(C.STATUSES), value="all", label="show", elem_id="vt-filter-status")
        search = gr.Textbox(label="search id / transcript / reason", elem_id="vt-search")
    with gr.Row(equal_height=True):
        score = gr.Dropdown(
            label="filter by score", choices=[""], value="", elem_id="vt-filter-score", scale=2
        )
        low = gr.Textbox(label="min", elem_id="vt-filter-min", scale=1, min_width=90)
        high = gr.Textbox(label="max", elem_id="vt-filter-max", scale=1, min_width=90)
        sort = gr.Dropdown(label="sort by (or click a column)", choices=list(C.TEXT_COLUMNS), value="id",
                           elem_id="vt-sort", scale=2)
        desc = gr.Checkbox(label="descending", value=False, elem_id="vt-desc", scale=1, min_width=110)
        size = gr.Dropdown(label="per page", choices=PAGE_SIZES, value="25", elem_id="vt-page-size", scale=1,
                           min_width=90)
        prev_btn = gr.Button("◀", scale=0, min_width=50, elem_id="vt-prev")
        page = gr.Number(
            label="page", value=1, precision=0, minimum=1, elem_id="vt-page", scale=1, min_width=80
        )
        next_btn = gr.Button("▶", scale=0, min_width=50, elem_id="vt-next")
    table = gr.HTML(elem_id="vt-clip-table", js_on_load=_TABLE_JS)

    with gr.Group(elem_id="vt-editor"):
        gr.Markdown("#### Edit a clip (click Edit in its row)")
        with gr.Row():
            clip_id = gr.Textbox(label="clip", elem_id="vt-clip-id", scale=1)
            clip_audio = gr.Audio(
                label="listen", type="filepath", interactive=False, elem_id="vt-clip-audio", scale=2
            )
        clip_text = gr.Textbox(label="transcript", lines=2, elem_id="vt-clip-text")
        clip_info = gr.HTML(elem_id="vt-clip-info")
        with gr.Row():
            save_btn = gr.Button(
                "Save transcript and keep the clip", variant="primary", elem_id="vt-save-text"
            )
            quarantine_btn = gr.Button("Quarantine", variant="stop", elem_id="vt-quarantine")
            restore_btn = gr.Button("Restore", elem_id="vt-restore")
        edit_msg = gr.HTML(elem_id="vt-edit-msg")
        sink = gr.State()  # where a reload of the edited clip puts the message it would clear
    with gr.Accordion("Dataset report (report.html, as prepare wrote it)", open=False):
        report = gr.HTML(elem_id="vt-dataset-report")

    query_inputs = [status, search, score, low, high, sort, desc, page, size]

    def render(ds: str | None, *q: Any) -> tuple[Any, ...]:
        if not ds:
            return "<p class='vt-muted'>No dataset yet: prepare one above.</p>", "", gr.skip(), gr.skip(), ""
        try:
            root = _dataset_dir(ws, ds)
            records = C.load(root)
        except (UiSafetyError, DatasetError, OSError) as e:
            return message("error", str(e)), "", gr.skip(), gr.skip(), ""
        keys = C.score_keys(records)
        try:
            query = _query(*q)
        except UiSafetyError as e:
            return message("error", str(e)), "", gr.skip(), gr.skip(), gr.skip()
        if query.sort not in C.TEXT_COLUMNS and query.sort not in keys:
            query.sort = "id"
        pg = C.query(records, query)
        n = C.counts(records)
        summary = (
            f"<div class='vt-counts'><b>{n['clips']}</b> clips: <b>{n['kept']}</b> kept ({n['train']} train, "
            f"{n['eval']} eval; {n['minutes_kept']:.1f} min), <b>{n['quarantined']}</b> quarantined, "
            f"{n['needs_review']} need review</div>"
        )
        rep = root / "report.html"
        report_html = (
            f"<iframe class='vt-report' src='{file_url(rep)}?t={rep.stat().st_mtime:.0f}'></iframe>"
            if rep.is_file()
            else "<p class='vt-muted'>no report.html</p>"
        )
        sort_choices = [*C.TEXT_COLUMNS, *keys]
        return (C.table_html(pg, keys, root, file_url, query), summary,
                gr.update(choices=["", *keys]), gr.update(choices=sort_choices), report_html)

    render_outputs = [table, counts, score, sort, report]
    changing: list[Any] = [dataset, status, score, sort, desc, size, page]
    for comp in changing:
        comp.change(render, [dataset, *query_inputs], render_outputs, show_progress="hidden")
    for comp in [search, low, high]:
        comp.submit(render, [dataset, *query_inputs], render_outputs, show_progress="hidden")
        comp.blur(render, [dataset, *query_inputs], render_outputs, show_progress="hidden")
    reload_btn.click(render, [dataset, *query_inputs], render_outputs)
    prev_btn.click(lambda p: max(1, int(p or 1) - 1), page, page)
    next_btn.click(lambda p: int(p or 1) + 1, page, page)

    def on_table_click(evt: gr.EventData, current_sort: str, current_desc: bool) -> tuple[Any, Any, Any]:
        data = getattr(evt, "_data", None) or {}
        if data.get("clip"):
            return gr.skip(), gr.skip(), data["clip"]
        if data.get("sort"):
            flip = data["sort"] == current_sort
            return data["sort"], (not current_desc) if flip else False, gr.skip()
        return gr.skip(), gr.skip(), gr.skip()

    table.click(on_table_click, [sort, desc], [sort, desc, clip_id])

    def load_clip(ds: str | None, cid: str) -> tuple[Any, Any, Any, Any]:
        if not ds or not cid:
            return None, "", "", ""
        try:
            root = _dataset_dir(ws, ds)
            rec = next((r for r in C.load(root) if r.id == cid.strip()), None)
        except (UiSafetyError, DatasetError, OSError) as e:
            return None, "", "", message("error", str(e))
        if rec is None:
            return None, "", "", message("error", f"no clip named {cid!r} in {ds}")
        scores = ", ".join(f"{C.label(k)} {C.score_value(rec, k):.3g}" for k in C.score_keys([rec]))
        info = (
            f"<div class='vt-muted'>status <b>{rec.status}</b> {('(' + rec.split + ')') if rec.split else ''}"
            f"; source {html.escape(rec.source_file)} {rec.start:.2f}–{rec.end:.2f} s; {html.escape(scores)}"
            + (f"<br>reasons: {html.escape('; '.join(rec.reasons))}" if rec.reasons else "")
            + (
                f"<br>ASR heard: “{html.escape(rec.raw_text)}”"
                if rec.raw_text and rec.raw_text != rec.text
                else ""
            )
            + "</div>"
        )
        audio = str(root / rec.audio_file) if rec.audio_file and (root / rec.audio_file).is_file() else None
        return audio, rec.text, info, ""

    clip_id.change(load_clip, [dataset, clip_id], [clip_audio, clip_text, clip_info, edit_msg])
    clip_id.submit(load_clip, [dataset, clip_id], [clip_audio, clip_text, clip_info, edit_msg])

    def curate(action: str, ds: str | None, cid: str, text: str) -> str:
        from voicetune.data import curate as cur

        try:
            root = _dataset_dir(ws, ds)
            if not cid or not cid.strip():
                raise UiSafetyError("choose a clip first (Edit in its row)")
            if action == "text":
                if not text or not text.strip():
                    raise UiSafetyError("the transcript is empty; type what is said in the clip")
                res = cur.restore(root, [cid.strip()], text=text)
            elif action == "restore":
                res = cur.restore(root, [cid.strip()])
            else:
                res = cur.quarantine(root, [cid.strip()])
        except (UiSafetyError, DatasetError, OSError) as e:
            return message("error", str(e))
        done = {"text": "transcript saved", "restore": "restored", "quarantine": "quarantined"}[action]
        return message("ok", f"{cid}: {done}. " + res.summary().replace("\n", " "))

    for btn, action in ((save_btn, "text"), (restore_btn, "restore"), (quarantine_btn, "quarantine")):
        btn.click(lambda ds, cid, text, a=action: curate(a, ds, cid, text), [dataset, clip_id, clip_text],
                  edit_msg).then(render, [dataset, *query_inputs], render_outputs).then(
            load_clip, [dataset, clip_id], [clip_audio, clip_text, clip_info, sink])

    def start_prepare(files: list[str] | None, fold: str, nm: str, *values: Any) -> Any:
        t0 = time.time()
        try:
            yield from _prepare(ws, files, fold, nm, dict(zip(widgets, values, strict=True)))
        except (UiSafetyError, ConfigError) as e:
            yield message("error", str(e)), gr.skip()
        logger.info("prepare request handled in %.1f s", time.time() - t0)

    run_btn.click(start_prepare, [uploads, folder, name, *widgets.values()], [prep_status, dataset],
                  concurrency_limit=1)

    def on_load(current: str | None) -> Any:
        return choices_update(ws.datasets(), current)

    return {
        "dataset": dataset,
        "on_load": on_load,
        "show": (render, [dataset, *query_inputs], render_outputs),
    }
