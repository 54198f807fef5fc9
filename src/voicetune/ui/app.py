"""The Gradio app: four tabs over one workspace, and its launch with the safety settings.

Every tab is a thin caller of the library (prepare, curate, train in its own process, evaluate, synthesize,
export) and reads state from files, so a reload shows what is on disk. Gradio is imported here only, and only
when the UI starts (``import voicetune`` never imports it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from voicetune.ui.safety import check_bind, parse_auth
from voicetune.ui.workspace import Workspace

logger = logging.getLogger(__name__)

CSS = """
.vt-muted { color: var(--body-text-color-subdued); font-size: 0.9em; }
.vt-badge { display: inline-block; padding: 0 6px; border-radius: 4px; font-size: 0.8em; font-weight: 600; }
.vt-kept, .vt-ok, .vt-pass, .vt-better { color: #15803d; }
.vt-badge.vt-kept, .vt-badge.vt-ok, .vt-badge.vt-pass { background: #dcfce7; }
.vt-badge.vt-quarantined, .vt-badge.vt-error, .vt-badge.vt-fail { background: #fee2e2; color: #b91c1c; }
.vt-badge.vt-review, .vt-badge.vt-warn { background: #fef3c7; color: #92400e; }
.vt-badge.vt-running { background: #dbeafe; color: #1d4ed8; }
.vt-badge.vt-best { background: #fde68a; color: #78350f; }
.vt-badge.vt-muted { background: #e5e7eb; color: #374151; }
.vt-worse { color: #b91c1c; }
tr.vt-quarantined td { background: rgba(254, 226, 226, 0.35); }
tr.vt-best-row td { background: rgba(253, 230, 138, 0.35); }
.vt-table-wrap { overflow-x: auto; max-height: 640px; overflow-y: auto; }
table.vt-clips, table.vt-evals, table.vt-doctor { border-collapse: collapse; width: 100%; font-size: 0.88em; }
table.vt-clips th, table.vt-clips td, table.vt-evals th, table.vt-evals td, table.vt-doctor td {
  border-bottom: 1px solid var(--border-color-primary); padding: 3px 6px; text-align: left;
  vertical-align: middle; }
table.vt-clips th[data-sort] { cursor: pointer; white-space: nowrap; position: sticky; top: 0;
  background: var(--background-fill-secondary); }
table.vt-clips audio { height: 30px; width: 210px; }
.vt-text { display: inline-block; min-width: 16em; }
.vt-msg { padding: 6px 10px; border-radius: 6px; margin: 4px 0; }
.vt-msg-ok { background: #dcfce7; color: #14532d; }
.vt-msg-error { background: #fee2e2; color: #7f1d1d; }
.vt-msg-warn { background: #fef3c7; color: #78350f; }
.vt-msg-info { background: #e0f2fe; color: #0c4a6e; }
.vt-bar { height: 10px; background: #e5e7eb; border-radius: 5px; overflow: hidden; margin: 4px 0; }
.vt-bar > div { height: 100%; background: #2563eb; }
.vt-done .vt-bar > div { background: #16a34a; }
.vt-run-status { font-size: 1.05em; }
.vt-verdict { border-left: 4px solid #2563eb; padding: 6px 12px; background: #eff6ff; }
iframe.vt-report { width: 100%; height: 720px; border: 1px solid var(--border-color-primary); }
.vt-pre, table.vt-doctor pre, .vt-warnings { font-size: 0.85em; white-space: pre-wrap; }
"""


def build_app(workspace: Path | str, max_upload_mb: float = 2048.0) -> Any:
    """The Gradio Blocks of the UI over ``workspace`` (created with its folders when missing)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from voicetune.ui import tab_dataset, tab_evaluate, tab_export, tab_train

    ws = Workspace(workspace, max_upload_mb).ensure()
    with gr.Blocks(title="voicetune") as demo:
        gr.Markdown(f"## voicetune\nYour recordings → a finetuned voice, measured against its base model. "
                    f"Workspace: `{ws.root}` (every path is inside it).")
        with gr.Tabs():
            with gr.Tab("1 · Dataset", id="dataset") as t1:
                dataset = tab_dataset.build(ws)
            with gr.Tab("2 · Train", id="train") as t2:
                train = tab_train.build(ws)
            with gr.Tab("3 · Evaluate", id="evaluate") as t3:
                evaluate = tab_evaluate.build(ws)
            with gr.Tab("4 · Export", id="export") as t4:
                export = tab_export.build(ws)
        # What is on disk is the state: every page load and every tab switch re-reads the workspace.
        demo.load(dataset["on_load"], dataset["dataset"], dataset["dataset"])
        t1.select(dataset["on_load"], dataset["dataset"], dataset["dataset"]).then(*dataset["show"])
        train_io = [train["run"], train["dataset"], train["base"]]
        demo.load(train["on_load"], train_io, train_io)
        t2.select(train["on_load"], train_io, train_io)
        demo.load(evaluate["on_load"], evaluate["run"], evaluate["run"])
        t3.select(evaluate["on_load"], evaluate["run"], evaluate["run"]).then(*evaluate["show"])
        demo.load(export["on_load"], export["run"], export["run"])
        t4.select(export["on_load"], export["run"], export["run"]).then(*export["show"])
    demo.voicetune_workspace = ws
    return demo


def theme() -> Any:
    """Gradio's default look with the system's fonts (no font is fetched from the internet)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def launch(workspace: Path | str = "voicetune_workspace", host: str = "127.0.0.1", port: int = 7860,
           auth: str | None = None, allow_remote: bool = False, max_upload_mb: float = 2048.0,
           block: bool = True, quiet: bool = False) -> Any:
    """Start the UI on ``host:port`` over ``workspace``.

    A non-loopback ``host`` needs ``allow_remote`` (a UiSafetyError otherwise) and prints a warning; ``auth``
    ("USER:PASS") turns on basic auth; uploads over ``max_upload_mb`` are refused. ``block=False`` returns the
    running app (``demo``, with ``demo.local_url``) for tests and embedding; close it with ``demo.close()``.
    """
    warning = check_bind(host, allow_remote)
    credentials = parse_auth(auth)
    if warning:
        logger.warning("%s", warning)
    demo = build_app(workspace, max_upload_mb)
    ws: Workspace = demo.voicetune_workspace
    allowed = [str(ws.folder(k)) for k in ("datasets", "runs", "exports")]
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, auth=credentials, prevent_thread_lock=True,
                max_file_size=f"{max_upload_mb:g}mb", allowed_paths=allowed, ssr_mode=False, quiet=True,
                footer_links=[], theme=theme(), css=CSS, show_error=True,
                auth_message="voicetune: sign in with the --auth credentials")
    if not quiet:
        logger.info("voicetune UI on %s (workspace %s%s); Ctrl+C stops the UI, not the training it started",
                    demo.local_url, ws.root, ", password required" if credentials else "")
    if block:
        demo.block_thread()
    return demo
